//! Namespaces and their API keys: the rows, the host id range each namespace owns, the
//! namespace-level cgroup that carries its quotas, and what this server keeps per incarnation.

use bulkhead_core::Quotas;

use super::records::{KeyRow, NamespaceRow, NamespaceUse};
use super::{placement, sandboxes, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

/// The namespace named `name`, if it exists.
pub async fn get(state: &AppState, name: &str) -> ServiceResult<Option<NamespaceRow>> {
    Ok(state.store.get_namespace(name).await?)
}

/// Creates namespace `name`: a host id range from the host registry (so no other server maps
/// onto it), the row, and a fresh incarnation with nothing cached of an earlier namespace of the
/// same name. A failure gives the range back and leaves no row.
pub async fn create(
    state: &AppState,
    name: String,
    isolation: String,
    quotas: Quotas,
    placement: &placement::Request,
    egress: Option<bulkhead_core::egress::Ceiling>,
) -> ServiceResult<NamespaceRow> {
    let now = now_ms();
    let row = NamespaceRow {
        name,
        isolation,
        quotas,
        created_at_ms: now,
        updated_at_ms: now,
        incarnation: bulkhead_core::ids::new_incarnation(),
        egress,
        placement: Default::default(),
        id_start: 0,
        id_count: 0,
    };
    let row = placement::create(state, row, placement, |mut row| async move {
        let ids = state.host_ids.allocate(&row.name).await?;
        (row.id_start, row.id_count) = (ids.host_start, ids.size);
        if let Err(e) = state.store.create_namespace(&row).await {
            state.host_ids.release(ids).await;
            return Err(e.into());
        }
        if let Err(e) = state.host_ids.confirm(&row).await {
            let _ = state.store.delete_namespace(&row.name).await;
            return Err(e.into());
        }
        Ok(row)
    })
    .await?;
    state.namespaces.remove(&row.name);
    state.keys.evict_namespace(&row.name);
    state.identity.forget(&row.name);
    state.rate_limits.forget(&row.name);
    Ok(row)
}

/// A page of namespaces in name order after `after`; `only` restricts it to one name.
pub async fn list(
    state: &AppState,
    after: Option<&str>,
    limit: u32,
    only: Option<&str>,
) -> ServiceResult<Vec<NamespaceRow>> {
    Ok(state.store.list_namespaces(after, limit, only).await?)
}

/// What namespace `ns` uses now (active sandboxes, allocated disk), from the store.
pub async fn usage(state: &AppState, ns: &str) -> ServiceResult<NamespaceUse> {
    Ok(state.store.namespace_use(ns).await?)
}

/// Sets namespace `ns`'s quotas and has the kernel enforce them on its cgroup at once; `None`
/// when it does not exist (see [`placement::update_quotas`]).
pub async fn update_quotas(state: &AppState, ns: &str, quotas: &Quotas) -> ServiceResult<Option<NamespaceRow>> {
    placement::update_quotas(state, ns, quotas).await
}

/// Replaces namespace `ns`'s egress ceiling; `None` when it does not exist. The namespace cache
/// gets the new row, so the egress decider judges the next connection by it.
pub async fn update_egress(
    state: &AppState,
    ns: &str,
    egress: &bulkhead_core::egress::Ceiling,
) -> ServiceResult<Option<NamespaceRow>> {
    let Some(row) = state.store.update_namespace_egress(ns, egress, now_ms()).await? else { return Ok(None) };
    state.namespaces.put(row.clone());
    Ok(Some(row))
}

/// Deletes namespace `row` and everything it owns: its sandboxes, its row (and with it every
/// row of it), its host id range, and what this server keeps of its incarnation. `false` when
/// it was gone already.
pub async fn delete(state: &AppState, row: &NamespaceRow) -> ServiceResult<bool> {
    let ns = row.name.as_str();
    state.namespaces.remove(ns);
    sandboxes::destroy_namespace(state, ns).await?;
    // Its agents' bundles, named while the rows that name them exist.
    let bundles = super::agents::bundle_dirs(state, ns).await?;
    if !state.store.delete_namespace(ns).await? {
        return Ok(false);
    }
    // Nothing on the host is owned by the namespace's ids any more: its range goes back.
    state.host_ids.release(sandboxes::id_range(row)?).await;
    state.keys.evict_namespace(ns);
    state.namespaces.remove(ns);
    // Everything kept per incarnation outside the store goes with it.
    state.logs.forget(&row.incarnation).await;
    state.metrics.forget(&row.incarnation);
    state.identity.forget(ns);
    state.rate_limits.forget(ns);
    placement::forget(state, ns).await;
    // Its private images' rows went with the namespace; their layers go now.
    if let Err(e) = super::images::remove_namespace(state, ns).await {
        tracing::warn!(namespace = ns, error = %e, "removing the layer store of a deleted namespace failed");
    }
    super::agents::remove_bundles(&bundles).await;
    Ok(true)
}

/// Stores a new key.
pub async fn create_key(state: &AppState, row: &KeyRow) -> ServiceResult<()> {
    Ok(state.store.create_key(row).await?)
}

/// Key `id` of namespace `ns`, if it exists.
pub async fn get_key(state: &AppState, ns: &str, id: &str) -> ServiceResult<Option<KeyRow>> {
    Ok(state.store.get_key(ns, id).await?)
}

/// A page of namespace `ns`'s keys in id order after `after`.
pub async fn list_keys(state: &AppState, ns: &str, after: Option<&str>, limit: u32) -> ServiceResult<Vec<KeyRow>> {
    Ok(state.store.list_keys(ns, after, limit).await?)
}

/// Revokes key `id` at once on this server; `false` when it did not exist.
pub async fn delete_key(state: &AppState, ns: &str, id: &str) -> ServiceResult<bool> {
    let deleted = state.store.delete_key(ns, id).await?;
    state.keys.evict_key(id);
    Ok(deleted)
}
