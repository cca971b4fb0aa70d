//! This server's share of the host registry ([`bulkhead_runtime::hostreg`]): the owner is the
//! store's id, so replicas of one store are one owner. At start the server claims its cgroup
//! prefix and registers the ranges its namespaces already hold; a namespace create takes a fresh
//! range and a namespace delete gives it back once everything of the namespace is gone.
//! Registry calls lock and rewrite a file, so they run on the blocking pool.

use bulkhead_runtime::hostreg::{HostRegistry, RegistryError};
use bulkhead_runtime::IdRange;
use bulkhead_store::NamespaceRow;

/// The registry and the owner this server acts for.
#[derive(Debug, Clone)]
pub struct HostIds {
    pub registry: HostRegistry,
    /// The store's id.
    pub owner: String,
    /// Prefix for this owner's host-global names (network namespaces, veths).
    pub net_prefix: String,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(RegistryError::Io { path: "(registry task)".into(), source: std::io::Error::other(e.to_string()) })
    })
}

impl HostIds {
    /// Registers `owner` (labelled with `label`, its data dir), claims `cgroup_prefix` and makes
    /// the owner's ranges exactly those of `namespaces`, in one change of the registry. Another
    /// owner's prefix or range is an error naming that owner, and changes nothing.
    pub fn start(
        registry: HostRegistry,
        owner: &str,
        label: &str,
        cgroup_prefix: &str,
        namespaces: &[NamespaceRow],
    ) -> Result<HostIds, RegistryError> {
        let keep: Vec<(IdRange, String)> =
            namespaces.iter().map(|n| (IdRange { host_start: n.id_start, size: n.id_count }, n.name.clone())).collect();
        let (entry, report) = registry.start_owner(owner, label, cgroup_prefix, &keep)?;
        for gone in &report.superseded {
            tracing::warn!(
                superseded = %gone,
                data_dir = label,
                registry = %registry.path().display(),
                "the data dir holds a new store; the host registry entry of the store it replaced is forgotten"
            );
        }
        if report.registered > 0 || report.released > 0 {
            tracing::info!(
                registered = report.registered,
                released = report.released,
                registry = %registry.path().display(),
                "host id ranges synced with the host registry"
            );
        }
        Ok(HostIds { registry, owner: owner.to_owned(), net_prefix: entry.net_prefix })
    }

    /// A fresh range for the namespace `name`.
    pub async fn allocate(&self, name: &str) -> Result<IdRange, RegistryError> {
        let (r, owner, name) = (self.registry.clone(), self.owner.clone(), name.to_owned());
        blocking(move || r.allocate_ids(&owner, &name)).await
    }

    /// Makes sure this owner still holds `row`'s range (a replica of the store that started
    /// meanwhile may have released it as unused before the row was committed).
    pub async fn confirm(&self, row: &NamespaceRow) -> Result<(), RegistryError> {
        let (r, owner, name) = (self.registry.clone(), self.owner.clone(), row.name.clone());
        let range = IdRange { host_start: row.id_start, size: row.id_count };
        blocking(move || r.hold_ids(&owner, range, &name)).await
    }

    /// Gives back `range`; a failure is logged, and the next start releases it.
    pub async fn release(&self, range: IdRange) {
        let (r, owner) = (self.registry.clone(), self.owner.clone());
        if let Err(e) = blocking(move || r.release_ids(&owner, range).map(|_| ())).await {
            tracing::warn!(error = %e, start = range.host_start, "could not release a host id range; the next start will");
        }
    }
}
