//! What a key limited to projects may see of the records that name resources: a sandbox is in
//! the project of the filesystem it mounts, a filesystem in its own. Log records and audit
//! records of resources outside the key's projects are left out of what it reads.

use std::collections::HashMap;

use bulkhead_core::Principal;

use crate::state::AppState;

/// Which resources a principal may see, each looked up once (a resource's project never
/// changes). Every principal but a key limited to projects sees everything of its namespace.
pub struct Visible {
    principal: Principal,
    known: HashMap<String, bool>,
}

impl Visible {
    /// Resources remembered before the memory starts again.
    const MAX_KNOWN: usize = 10_000;

    pub fn new(principal: Principal) -> Visible {
        Visible { principal, known: HashMap::new() }
    }

    /// Whether the principal may see sandbox `id` of `ns`. One the store does not know (or
    /// cannot read now) is not shown.
    pub async fn sandbox(&mut self, state: &AppState, ns: &str, id: &str) -> bool {
        self.resource(state, ns, "sandbox", id).await
    }

    /// Whether the principal may see the resource an audit record names (`sandbox:<id>`,
    /// `filesystem:<id>`, `project:<id>`; anything else is the namespace's).
    pub async fn named(&mut self, state: &AppState, ns: &str, resource: &str) -> bool {
        match resource.split_once(':') {
            Some((kind @ ("sandbox" | "filesystem" | "project"), id)) => self.resource(state, ns, kind, id).await,
            _ => true,
        }
    }

    async fn resource(&mut self, state: &AppState, ns: &str, kind: &str, id: &str) -> bool {
        if !self.principal.limited_to_projects() {
            return true;
        }
        let name = format!("{kind}:{id}");
        if let Some(v) = self.known.get(&name) {
            return *v;
        }
        let v = match kind {
            "sandbox" => match state.store.get_sandbox(ns, id).await {
                Ok(Some(row)) => self.principal.sees_sandbox(row.filesystem.is_some(), row.project.as_deref()),
                _ => false,
            },
            "filesystem" => match state.store.get_filesystem(ns, id).await {
                Ok(Some(row)) => self.principal.sees_project(row.project_id.as_deref()),
                _ => false,
            },
            _ => self.principal.sees_project(Some(id)),
        };
        if self.known.len() >= Self::MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(name, v);
        v
    }
}
