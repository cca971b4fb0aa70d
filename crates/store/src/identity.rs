//! The identity aggregate of a namespace: its identity settings, its custom Cedar policies,
//! its data key and the secrets sealed under it.

use async_trait::async_trait;

use crate::Result;

/// A custom Cedar policy of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub text: String,
    pub created_at_ms: i64,
}

/// A secret as stored: its value sealed under the namespace's data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub sealed: Vec<u8>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Identity settings, policies, data keys and secrets of namespaces.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// A namespace's identity settings (JSON), if set.
    async fn get_identity(&self, namespace: &str) -> Result<Option<String>>;
    /// Sets (or with `None` clears) a namespace's identity settings.
    async fn put_identity(&self, namespace: &str, config: Option<&str>, now_ms: i64) -> Result<()>;

    /// Adds a policy; a name taken in the namespace is a conflict. At most `max` per namespace.
    async fn create_policy(&self, policy: &PolicyRow, max: u32) -> Result<()>;
    /// Every policy of a namespace, by id.
    async fn all_policies(&self, namespace: &str) -> Result<Vec<PolicyRow>>;
    async fn list_policies(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<PolicyRow>>;
    async fn delete_policy(&self, namespace: &str, id: &str) -> Result<bool>;

    /// The namespace's wrapped data key, storing `wrapped` first when it has none; whichever
    /// is stored is returned.
    async fn data_key(&self, namespace: &str, wrapped: &[u8]) -> Result<Vec<u8>>;
    /// Creates the secret or replaces its value; true when it was created.
    async fn put_secret(&self, secret: &SecretRow) -> Result<bool>;
    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<SecretRow>>;
    async fn list_secrets(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<SecretRow>>;
    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool>;
}
