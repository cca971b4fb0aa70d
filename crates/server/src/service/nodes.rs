//! This server among the replicas of a shared store (see [`crate::nodes`]): its lease, renewed
//! every third of its length; its peers, read at each renewal (where [`crate::forward`] sends a
//! sandbox's requests); peers whose lease lapsed, declared lost with their sandboxes; the
//! store's change notifications, which keep every replica's caches true at once (a key revoked
//! through one replica fails on all of them); and the sweep that frees the host side of this
//! node's sandboxes that a peer ended (a namespace delete through another replica).

use std::collections::HashSet;

use bulkhead_store::Change;

use super::ServiceResult;
use crate::state::AppState;
use crate::time::now_ms;

/// The reason a lost node's sandboxes end with.
pub const LOST_REASON: &str = "lost: the node that ran it stopped renewing its lease";

/// Starts the node's loops: for a shared store, the lease, the watch of peers and the listener
/// of changes; for any store, the sweep of sandboxes ended elsewhere. `url` is where peers reach
/// this server (its `--advertise-url`, else the address it bound).
pub async fn start(state: &AppState, url: String) -> ServiceResult<()> {
    if !state.node.shared {
        return Ok(());
    }
    state.node.set_url(url);
    state.node.started();
    let now = now_ms();
    state
        .store
        .register_node(&state.node.id, &state.node.url(), now, now.saturating_add(state.node.lease_ms()))
        .await?;
    renew(state).await?;
    let every = state.node.lease / 3;
    super::spawn_every(state, every, "node lease", |state| async move { renew(&state).await });
    super::spawn_every(
        state,
        super::sandboxes::HEALTH_INTERVAL,
        "sweep of sandboxes ended elsewhere",
        |state| async move { sweep(&state).await },
    );
    listen(state).await
}

/// Renews the lease (registering again when a peer declared this node lost meanwhile), reads
/// the peers, and declares lost those whose lease lapsed.
async fn renew(state: &AppState) -> ServiceResult<()> {
    let node = &state.node;
    let now = now_ms();
    let until = now.saturating_add(node.lease_ms());
    if !state.store.renew_node(&node.id, until).await? {
        // A peer found the lease lapsed (this process stalled, or lost the database for a
        // while) and ended this node's sandboxes; the sweep frees what of them still runs here.
        tracing::error!(node = %node.id, "this node was declared lost by a peer; registering again");
        state.store.register_node(&node.id, &node.url(), now, until).await?;
        sweep(state).await?;
    }
    for (lost, sandboxes) in state.store.expire_nodes(&node.id, now, LOST_REASON).await? {
        tracing::warn!(node = %lost, sandboxes = sandboxes.len(), "a node stopped renewing its lease: declared lost");
        for id in &sandboxes {
            state.keys.evict_sandbox(id);
        }
    }
    node.set_peers(state.store.nodes().await?);
    Ok(())
}

/// Frees the host side of this node's sandboxes whose rows ended (by a peer: a namespace
/// delete through another replica, or this node declared lost), the images of its filesystems
/// whose rows are gone, and the cgroups of namespaces that no longer exist.
async fn sweep(state: &AppState) -> ServiceResult<usize> {
    let mut freed = 0;
    for h in state.runtime.list().await? {
        let Some(ns) = h.namespace.as_deref() else { continue };
        let Some(row) = state.store.get_sandbox(ns, &h.id).await? else {
            // No row: its namespace was deleted through a peer (the rows went with it). A
            // sandbox being made has its row before anything of it is on the host, so one of a
            // namespace that still exists is left to its create.
            if state.store.get_namespace(ns).await?.is_none() {
                let _guard = state.sandbox_locks.lock(&h.id).await;
                state.runtime.delete(ns, &h.id).await?;
                state.keys.evict_sandbox(&h.id);
                tracing::info!(sandbox = %h.id, namespace = ns, "freed a sandbox of a namespace deleted elsewhere");
                freed += 1;
            }
            continue;
        };
        if row.status.is_active() || !state.node.is_mine(&row.node) {
            continue;
        }
        let _guard = state.sandbox_locks.lock(&row.id).await;
        if let Err(e) = super::metering::sample_until(state, &row, row.ended_at_ms).await {
            tracing::warn!(sandbox = %row.id, error = %e, "final metering sample failed");
        }
        state.runtime.delete(ns, &row.id).await?;
        state.keys.evict_sandbox(&row.id);
        tracing::info!(sandbox = %row.id, namespace = ns, reason = row.reason.as_deref(), "freed a sandbox ended elsewhere");
        freed += 1;
    }
    // Images of filesystems whose rows are gone (a namespace deleted through a peer), read
    // before the rows: an image is made only after its row is committed.
    let images = state.storage.ids();
    if !images.is_empty() {
        let known: HashSet<String> = state
            .store
            .all_filesystems()
            .await?
            .into_iter()
            .filter(|f| state.node.is_mine(&f.node))
            .map(|f| f.id)
            .collect();
        for id in images.into_iter().filter(|id| !known.contains(id)) {
            let _guard = state.sandbox_locks.lock(&id).await;
            state.storage.delete(&id).await?;
            tracing::info!(filesystem = %id, "removed the image of a filesystem deleted elsewhere");
        }
    }
    let live: HashSet<String> = state.runtime.namespaces().await?.into_iter().collect();
    for ns in live {
        if state.store.get_namespace(&ns).await?.is_none() {
            state.runtime.remove_namespace(&ns).await?;
        }
    }
    Ok(freed)
}

/// Applies the store's change notifications to this process's caches, for as long as the
/// server runs.
async fn listen(state: &AppState) -> ServiceResult<()> {
    let Some(mut changes) = state.store.changes().await? else { return Ok(()) };
    let weak = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            forget(&AppState(inner), &change);
        }
    });
    Ok(())
}

/// Forgets what `change` makes stale.
pub fn forget(state: &AppState, change: &Change) {
    match change {
        Change::Key { id, .. } => state.keys.evict_key(id),
        Change::Sandbox { id, .. } => state.keys.evict_sandbox(id),
        Change::Namespace { namespace } => {
            state.namespaces.remove(namespace);
            state.identity.forget(namespace);
            state.rate_limits.forget(namespace);
        }
        Change::Policies { namespace } => state.identity.forget_policies(namespace),
        Change::Identity { namespace } => state.identity.forget_provider(namespace),
        Change::Lost => {
            tracing::warn!("change notifications may have been missed: every cache is cleared");
            state.keys.clear();
            state.namespaces.clear();
            state.identity.forget_all();
        }
    }
}

/// Keeps only the rows of this node.
pub fn mine(state: &AppState, rows: Vec<bulkhead_store::SandboxRow>) -> Vec<bulkhead_store::SandboxRow> {
    rows.into_iter().filter(|r| state.node.is_mine(&r.node)).collect()
}
