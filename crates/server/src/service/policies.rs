//! A namespace's identity settings and custom policies, and the caches of them this server keeps.

use bulkhead_store::StoreError;

use super::records::PolicyRow;
use super::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

/// Stores namespace `ns`'s identity settings (`None`: single sign-on off) and drops its cached
/// identity provider.
pub async fn put_identity(state: &AppState, ns: &str, config: Option<&str>) -> ServiceResult<()> {
    state.store.put_identity(ns, config, now_ms()).await?;
    state.identity.forget_provider(ns);
    Ok(())
}

/// Every custom policy of namespace `ns`, as `(id, text)`.
pub async fn all(state: &AppState, ns: &str) -> ServiceResult<Vec<(String, String)>> {
    Ok(state.store.all_policies(ns).await?.into_iter().map(|p| (p.id, p.text)).collect())
}

/// Stores policy `row` (at most `max` per namespace) and drops the namespace's compiled set.
pub async fn create(state: &AppState, row: &PolicyRow, max: u32) -> ServiceResult<()> {
    match state.store.create_policy(row, max).await {
        Err(StoreError::Quota(b)) => {
            return Err(ServiceError::QuotaExceeded(format!("a namespace holds at most {} policies", b.limit)))
        }
        other => other?,
    }
    state.identity.forget_policies(&row.namespace);
    Ok(())
}

/// A page of namespace `ns`'s policies in id order after `after`.
pub async fn list(state: &AppState, ns: &str, after: Option<&str>, limit: u32) -> ServiceResult<Vec<PolicyRow>> {
    Ok(state.store.list_policies(ns, after, limit).await?)
}

/// Deletes policy `id`, which stops deciding at once; `false` when it did not exist.
pub async fn delete(state: &AppState, ns: &str, id: &str) -> ServiceResult<bool> {
    let deleted = state.store.delete_policy(ns, id).await?;
    state.identity.forget_policies(ns);
    Ok(deleted)
}
