//! Authorization in one place. Every request the server accepts is one [`Action`]; [`authorize`]
//! decides it for a [`Principal`] and the namespace the request targets, by an exhaustive match,
//! before the handler touches anything. A new action does not compile until it is decided here.

use std::fmt;
use std::str::FromStr;

/// A namespace principal's role, as in PRODUCT.md's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Developer,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Developer, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected one of owner, admin, developer, viewer"))
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The platform operator, holder of the admin token.
    Admin,
    /// An API key of one namespace; `projects` limits it to the filesystems of those projects.
    Key { id: String, namespace: String, role: Role, projects: Option<Vec<String>> },
}

impl Principal {
    /// How the principal appears in audit records and logs: `admin` or `key:<id>`.
    pub fn audit_name(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Key { id, .. } => format!("key:{id}"),
        }
    }

    /// Whether the principal may see resources of `project` (`None`: resources in no project).
    /// A key limited to projects sees only theirs; anything else of the namespace is, to it,
    /// as if it did not exist.
    pub fn sees_project(&self, project: Option<&str>) -> bool {
        match self {
            Principal::Admin | Principal::Key { projects: None, .. } => true,
            Principal::Key { projects: Some(list), .. } => project.is_some_and(|p| list.iter().any(|x| x == p)),
        }
    }

    /// The namespace the principal belongs to; `None` for the platform admin.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Key { namespace, .. } => Some(namespace),
        }
    }
}

/// Every action of the API. Actions that target one namespace carry it beside them in
/// [`authorize`]; actions on keys carry the role of the key concerned, because an `admin` may
/// manage every key but an `owner`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NamespaceCreate,
    NamespaceList,
    NamespaceGet,
    NamespaceUpdate,
    NamespaceDelete,
    KeyCreate {
        role: Role,
    },
    KeyList,
    KeyGet,
    KeyRevoke {
        role: Role,
    },
    AuditRead,
    AuditVerify,
    PlatformAuditRead,
    PlatformAuditVerify,
    SandboxCreate,
    SandboxList,
    SandboxGet,
    SandboxDelete,
    SandboxExec,
    SandboxFileRead,
    SandboxFileWrite,
    ProjectCreate,
    ProjectList,
    ProjectDelete,
    FilesystemCreate,
    FilesystemList,
    FilesystemGet,
    FilesystemResize,
    FilesystemDelete,
    FilesystemArchiveRead,
    FilesystemArchiveWrite,
    FilesystemFileRead,
    FilesystemFileWrite,
    FilesystemFileDelete,
    UsageRead,
    /// The Prometheus metrics of every namespace.
    PlatformMetricsRead,
    /// A namespace's own metrics.
    MetricsRead,
    /// The output of a namespace's execs.
    LogsRead,
}

impl Action {
    /// The stable name used in audit records, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::NamespaceCreate => "namespace.create",
            Action::NamespaceList => "namespace.list",
            Action::NamespaceGet => "namespace.get",
            Action::NamespaceUpdate => "namespace.update",
            Action::NamespaceDelete => "namespace.delete",
            Action::KeyCreate { .. } => "key.create",
            Action::KeyList => "key.list",
            Action::KeyGet => "key.get",
            Action::KeyRevoke { .. } => "key.revoke",
            Action::AuditRead => "audit.read",
            Action::AuditVerify => "audit.verify",
            Action::PlatformAuditRead => "platform.audit.read",
            Action::PlatformAuditVerify => "platform.audit.verify",
            Action::SandboxCreate => "sandbox.create",
            Action::SandboxList => "sandbox.list",
            Action::SandboxGet => "sandbox.get",
            Action::SandboxDelete => "sandbox.delete",
            Action::SandboxExec => "sandbox.exec",
            Action::SandboxFileRead => "sandbox.file.read",
            Action::SandboxFileWrite => "sandbox.file.write",
            Action::ProjectCreate => "project.create",
            Action::ProjectList => "project.list",
            Action::ProjectDelete => "project.delete",
            Action::FilesystemCreate => "filesystem.create",
            Action::FilesystemList => "filesystem.list",
            Action::FilesystemGet => "filesystem.get",
            Action::FilesystemResize => "filesystem.resize",
            Action::FilesystemDelete => "filesystem.delete",
            Action::FilesystemArchiveRead => "filesystem.archive.read",
            Action::FilesystemArchiveWrite => "filesystem.archive.write",
            Action::FilesystemFileRead => "filesystem.file.read",
            Action::FilesystemFileWrite => "filesystem.file.write",
            Action::FilesystemFileDelete => "filesystem.file.delete",
            Action::UsageRead => "usage.read",
            Action::PlatformMetricsRead => "platform.metrics.read",
            Action::MetricsRead => "metrics.read",
            Action::LogsRead => "logs.read",
        }
    }

    /// True for actions that change state; these are always audited, reads only when denied.
    pub fn is_mutating(&self) -> bool {
        match self {
            Action::NamespaceCreate
            | Action::NamespaceUpdate
            | Action::NamespaceDelete
            | Action::KeyCreate { .. }
            | Action::KeyRevoke { .. }
            | Action::SandboxCreate
            | Action::SandboxDelete
            | Action::SandboxExec
            | Action::SandboxFileWrite
            | Action::ProjectCreate
            | Action::ProjectDelete
            | Action::FilesystemCreate
            | Action::FilesystemResize
            | Action::FilesystemDelete
            | Action::FilesystemArchiveWrite
            | Action::FilesystemFileWrite
            | Action::FilesystemFileDelete => true,
            Action::NamespaceList
            | Action::NamespaceGet
            | Action::KeyList
            | Action::KeyGet
            | Action::AuditRead
            | Action::AuditVerify
            | Action::PlatformAuditRead
            | Action::PlatformAuditVerify
            | Action::SandboxList
            | Action::SandboxGet
            | Action::SandboxFileRead
            | Action::ProjectList
            | Action::FilesystemList
            | Action::FilesystemGet
            | Action::FilesystemArchiveRead
            | Action::FilesystemFileRead
            | Action::UsageRead
            | Action::PlatformMetricsRead
            | Action::MetricsRead
            | Action::LogsRead => false,
        }
    }
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A principal of this namespace whose role is too weak: 403 `forbidden`.
    Forbidden,
    /// A principal of another namespace: answered exactly as a namespace that does not exist.
    NotFound,
}

/// Decides `action` for `principal` on `namespace` (`None` for platform-level actions).
///
/// The decision depends only on the principal and the names in the request, never on what the
/// store holds, so a foreign namespace and a missing one cannot be told apart, by the answer or
/// by its timing.
pub fn authorize(principal: &Principal, action: Action, namespace: Option<&str>) -> Decision {
    let (own, role) = match principal {
        Principal::Admin => return Decision::Allow,
        Principal::Key { namespace, role, .. } => (namespace.as_str(), *role),
    };
    let Some(target) = namespace else {
        // Platform-level actions. A key may list namespaces (it sees only its own); everything
        // else at this level is the operator's.
        return match action {
            Action::NamespaceList => Decision::Allow,
            _ => Decision::Forbidden,
        };
    };
    if target != own {
        return Decision::NotFound;
    }
    let allowed = match action {
        Action::NamespaceGet
        | Action::AuditRead
        | Action::AuditVerify
        | Action::NamespaceList
        | Action::UsageRead
        | Action::MetricsRead
        | Action::LogsRead => true,
        // Quotas and the namespace's existence are the operator's to change.
        Action::NamespaceCreate
        | Action::NamespaceUpdate
        | Action::NamespaceDelete
        | Action::PlatformAuditRead
        | Action::PlatformAuditVerify
        | Action::PlatformMetricsRead => false,
        Action::KeyList | Action::KeyGet => matches!(role, Role::Owner | Role::Admin),
        Action::SandboxList
        | Action::SandboxGet
        | Action::ProjectList
        | Action::FilesystemList
        | Action::FilesystemGet => true,
        // Running code and file contents are a developer's; a viewer sees metadata only.
        Action::SandboxCreate
        | Action::SandboxDelete
        | Action::SandboxExec
        | Action::SandboxFileRead
        | Action::SandboxFileWrite
        | Action::ProjectCreate
        | Action::ProjectDelete
        | Action::FilesystemCreate
        | Action::FilesystemResize
        | Action::FilesystemDelete
        | Action::FilesystemArchiveRead
        | Action::FilesystemArchiveWrite
        | Action::FilesystemFileRead
        | Action::FilesystemFileWrite
        | Action::FilesystemFileDelete => role != Role::Viewer,
        Action::KeyCreate { role: target } | Action::KeyRevoke { role: target } => match role {
            Role::Owner => true,
            Role::Admin => target != Role::Owner,
            Role::Developer | Role::Viewer => false,
        },
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role) -> Principal {
        Principal::Key { id: "key_1".into(), namespace: "acme".into(), role, projects: None }
    }

    #[test]
    fn foreign_namespace_is_not_found_for_every_role_and_action() {
        for role in Role::ALL {
            for action in [Action::NamespaceGet, Action::KeyList, Action::AuditRead, Action::NamespaceDelete] {
                assert_eq!(authorize(&key(role), action, Some("globex")), Decision::NotFound);
            }
        }
    }

    #[test]
    fn admin_cannot_touch_owner_keys() {
        let p = key(Role::Admin);
        assert_eq!(authorize(&p, Action::KeyCreate { role: Role::Owner }, Some("acme")), Decision::Forbidden);
        assert_eq!(authorize(&p, Action::KeyRevoke { role: Role::Owner }, Some("acme")), Decision::Forbidden);
        assert_eq!(authorize(&p, Action::KeyCreate { role: Role::Admin }, Some("acme")), Decision::Allow);
        let o = key(Role::Owner);
        assert_eq!(authorize(&o, Action::KeyRevoke { role: Role::Owner }, Some("acme")), Decision::Allow);
    }

    #[test]
    fn viewer_reads_but_does_not_manage() {
        let v = key(Role::Viewer);
        assert_eq!(authorize(&v, Action::NamespaceGet, Some("acme")), Decision::Allow);
        assert_eq!(authorize(&v, Action::AuditRead, Some("acme")), Decision::Allow);
        assert_eq!(authorize(&v, Action::KeyList, Some("acme")), Decision::Forbidden);
        assert_eq!(authorize(&v, Action::KeyCreate { role: Role::Viewer }, Some("acme")), Decision::Forbidden);
    }

    #[test]
    fn viewers_see_sandboxes_but_never_run_code_or_read_files() {
        let v = key(Role::Viewer);
        assert_eq!(authorize(&v, Action::SandboxGet, Some("acme")), Decision::Allow);
        for a in [Action::SandboxCreate, Action::SandboxExec, Action::SandboxFileRead, Action::SandboxFileWrite] {
            assert_eq!(authorize(&v, a, Some("acme")), Decision::Forbidden);
            assert_eq!(authorize(&key(Role::Developer), a, Some("acme")), Decision::Allow);
        }
    }

    #[test]
    fn keys_never_reach_platform_actions() {
        for role in Role::ALL {
            assert_eq!(authorize(&key(role), Action::NamespaceCreate, None), Decision::Forbidden);
            assert_eq!(authorize(&key(role), Action::PlatformAuditRead, None), Decision::Forbidden);
            assert_eq!(authorize(&key(role), Action::NamespaceUpdate, Some("acme")), Decision::Forbidden);
        }
    }

    #[test]
    fn project_limited_keys_see_only_their_projects() {
        let k = Principal::Key {
            id: "k".into(),
            namespace: "acme".into(),
            role: Role::Developer,
            projects: Some(vec!["prj_a".into()]),
        };
        assert!(k.sees_project(Some("prj_a")));
        assert!(!k.sees_project(Some("prj_b")));
        assert!(!k.sees_project(None));
        assert!(key(Role::Viewer).sees_project(None));
        assert!(Principal::Admin.sees_project(Some("prj_b")));
    }

    #[test]
    fn role_parses() {
        assert_eq!("developer".parse::<Role>().unwrap(), Role::Developer);
        assert!("root".parse::<Role>().is_err());
    }
}
