//! Namespaces (platform admin) and their API keys.

use bulkhead_api::{CreateKey, CreateNamespace, CreatedKey, Key, Namespace, Page, UpdateNamespace};
use reqwest::Method;

use crate::{namespace_path, page, Client, Result};

impl Client {
    /// Creates a namespace with its quotas.
    pub async fn create_namespace(&self, req: &CreateNamespace) -> Result<Namespace> {
        self.send(self.request(Method::POST, "/v1/namespaces").json(req)).await
    }

    /// A page of the namespaces, by name.
    pub async fn list_namespaces(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Namespace>> {
        self.send(self.request(Method::GET, "/v1/namespaces").query(&page(limit, cursor))).await
    }

    /// A namespace with what it uses now.
    pub async fn get_namespace(&self, ns: &str) -> Result<Namespace> {
        self.send(self.request(Method::GET, &namespace_path(ns, ""))).await
    }

    /// Changes a namespace's quotas.
    pub async fn update_namespace(&self, ns: &str, req: &UpdateNamespace) -> Result<Namespace> {
        self.send(self.request(Method::PATCH, &namespace_path(ns, "")).json(req)).await
    }

    /// Deletes a namespace with everything in it.
    pub async fn delete_namespace(&self, ns: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &namespace_path(ns, ""))).await
    }

    /// Creates an API key; the answer holds its token, the only time it is shown.
    pub async fn create_key(&self, ns: &str, req: &CreateKey) -> Result<CreatedKey> {
        self.create_in(ns, "/keys", req).await
    }

    /// A page of the namespace's keys (never their tokens).
    pub async fn list_keys(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Key>> {
        self.list_in(ns, "/keys", limit, cursor).await
    }

    /// Revokes a key: its token stops working at once.
    pub async fn revoke_key(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_in(ns, "/keys", id).await
    }
}
