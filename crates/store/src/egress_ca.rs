//! A namespace's egress CA as stored: one sealed blob in `namespaces.egress_ca` (the server
//! seals and opens it; the store never sees the key in the clear).

use async_trait::async_trait;

use crate::Result;

/// The sealed egress CAs of namespaces.
#[async_trait]
pub trait EgressCaStore: Send + Sync {
    /// The namespace's sealed egress CA, storing `sealed` first when it has none; whichever is
    /// stored is returned, so concurrent first uses agree on one CA.
    ///
    /// # Errors
    /// [`crate::StoreError::NotFound`] when the namespace does not exist.
    async fn egress_ca(&self, namespace: &str, sealed: &[u8]) -> Result<Vec<u8>>;
    /// The namespace's sealed egress CA, if it has one (`None` also for no such namespace).
    async fn get_egress_ca(&self, namespace: &str) -> Result<Option<Vec<u8>>>;
}
