//! Which records naming resources a principal is shown: a log page or tail shows a sandbox's
//! output only where `logs.read` on that sandbox is allowed, an audit page a record of a sandbox,
//! filesystem or project only where `audit.read` on it is. Each is one decision of the request's
//! principal on the resource as the store has it (a sandbox in the scope of the filesystem it
//! mounts, a filesystem in its project), so a key limited to projects never reads the records of
//! what lies outside them, and policies on projects hold for the records too.

use std::collections::HashMap;

use bulkhead_core::{Action, Scope, Target};

use super::filesystems::filesystem_target;
use super::sandboxes::sandbox_target;
use crate::auth::Decider;
use crate::state::AppState;

/// Which resources a principal is shown in the answer of `action`, each looked up and decided
/// once (a resource's scope never changes; the decisions are made again when the policies are).
pub struct Visible {
    decider: Decider,
    action: Action,
    known: HashMap<String, bool>,
}

impl Visible {
    /// Resources remembered before the memory starts again.
    const MAX_KNOWN: usize = 10_000;

    pub fn new(decider: Decider, action: Action) -> Visible {
        Visible { decider, action, known: HashMap::new() }
    }

    /// Decides again from now on with `decider` (the namespace's policies as they are now).
    pub fn refresh(&mut self, decider: Decider) {
        self.decider = decider;
        self.known.clear();
    }

    /// Whether the principal is shown sandbox `id` of `ns`.
    pub async fn sandbox(&mut self, state: &AppState, ns: &str, id: &str) -> bool {
        self.resource(state, ns, "sandbox", id).await
    }

    /// Whether the principal is shown the resource an audit record names (`sandbox:<id>`,
    /// `filesystem:<id>`, `project:<id>`; anything else is the namespace's, shown to whoever
    /// may read the namespace's records).
    pub async fn named(&mut self, state: &AppState, ns: &str, resource: &str) -> bool {
        match resource.split_once(':') {
            Some((kind @ ("sandbox" | "filesystem" | "project"), id)) => self.resource(state, ns, kind, id).await,
            _ => true,
        }
    }

    async fn resource(&mut self, state: &AppState, ns: &str, kind: &str, id: &str) -> bool {
        let name = format!("{kind}:{id}");
        if let Some(v) = self.known.get(&name) {
            return *v;
        }
        // One the store does not know (any more) or cannot read now is outside every project.
        let (namespace, id) = (ns.to_owned(), id.to_owned());
        let target = match kind {
            "sandbox" => match crate::service::sandboxes::get(state, ns, &id).await {
                Ok(Some(row)) => sandbox_target(&row),
                _ => Target::Sandbox { namespace, id, scope: Scope::Namespace },
            },
            "filesystem" => match crate::service::filesystems::get(state, ns, &id).await {
                Ok(Some(row)) => filesystem_target(&row),
                _ => Target::Filesystem { namespace, id, scope: Scope::Namespace },
            },
            _ => Target::Project { namespace, id: Some(id) },
        };
        let v = self.decider.sees(self.action, &target);
        if self.known.len() >= Self::MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(name, v);
        v
    }
}
