//! The namespaces aggregate: the platform's own rows (admin token, store id), namespaces and
//! their API keys.

use async_trait::async_trait;
use bulkhead_core::{Quotas, Role};

use crate::Result;

/// A namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRow {
    pub name: String,
    pub isolation: String,
    pub quotas: Quotas,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// First host uid/gid of the namespace's range, as the host registry handed it out.
    pub id_start: u32,
    /// Ids in the range.
    pub id_count: u32,
    /// This incarnation of the name: made at creation, never reused (see
    /// [`bulkhead_core::ids::new_incarnation`]). Per-namespace state kept outside the store is keyed
    /// by it, so a namespace deleted and created again starts with nothing of the old one's.
    pub incarnation: String,
    /// The namespace's egress ceiling; `None`: the default, empty one (no egress).
    pub egress: Option<bulkhead_core::egress::Ceiling>,
    /// Where its sandboxes run: shared cores, or cores and memory of its own.
    pub placement: bulkhead_core::placement::Placement,
}

/// An API key as stored: metadata and the keyed hash of its token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub role: Role,
    pub token_hash: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// Projects the key is limited to; `None`: the whole namespace.
    pub projects: Option<Vec<String>>,
}

/// What a namespace holds now: its active sandboxes and its filesystems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceUse {
    pub sandboxes: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Sum of its filesystems' sizes.
    pub disk_bytes: u64,
    pub filesystem_ids: Vec<String>,
}

/// The platform's rows, namespaces and API keys.
#[async_trait]
pub trait NamespaceStore: Send + Sync {
    /// The keyed hash of the platform admin token, once bootstrapped.
    async fn admin_token_hash(&self) -> Result<Option<String>>;
    /// Records the admin token's hash. Fails with `Conflict` when one is already set.
    async fn init_admin_token_hash(&self, hash: &str, now_ms: i64) -> Result<()>;

    /// The id under which this store holds host-global resources in the host registry: made
    /// with the store, the same for every replica of it, never changed.
    async fn store_id(&self) -> Result<String>;

    async fn create_namespace(&self, ns: &NamespaceRow) -> Result<()>;
    async fn get_namespace(&self, name: &str) -> Result<Option<NamespaceRow>>;
    /// Namespaces in name order after `after`, at most `limit`; only `only` when given.
    async fn list_namespaces(&self, after: Option<&str>, limit: u32, only: Option<&str>) -> Result<Vec<NamespaceRow>>;
    async fn update_namespace_quotas(&self, name: &str, quotas: &Quotas, now_ms: i64) -> Result<Option<NamespaceRow>>;
    /// Sets the namespace's egress ceiling; `None` when the namespace does not exist.
    async fn update_namespace_egress(
        &self,
        name: &str,
        egress: &bulkhead_core::egress::Ceiling,
        now_ms: i64,
    ) -> Result<Option<NamespaceRow>>;
    /// Sets the namespace's placement (admitted by the caller); `None` when the namespace does
    /// not exist.
    async fn update_namespace_placement(
        &self,
        name: &str,
        placement: &bulkhead_core::placement::Placement,
        now_ms: i64,
    ) -> Result<Option<NamespaceRow>>;
    /// Deletes a namespace and everything it owns: keys, its audit chain, idempotent replays.
    /// Returns whether it existed.
    async fn delete_namespace(&self, name: &str) -> Result<bool>;
    /// What the namespace holds now, in one read.
    async fn namespace_use(&self, namespace: &str) -> Result<NamespaceUse>;

    async fn create_key(&self, key: &KeyRow) -> Result<()>;
    async fn get_key(&self, namespace: &str, id: &str) -> Result<Option<KeyRow>>;
    async fn list_keys(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<KeyRow>>;
    async fn delete_key(&self, namespace: &str, id: &str) -> Result<bool>;
    async fn key_by_token_hash(&self, token_hash: &str) -> Result<Option<KeyRow>>;
}
