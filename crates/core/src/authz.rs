//! Who asks and what for. Every request the server accepts is one [`Action`] of a [`Principal`]
//! on a namespace. [`tenancy`] draws the hard line first (a principal of namespace A asking about
//! B is answered as if B did not exist, from the principal alone); inside the namespace the
//! namespace's Cedar policies decide (the `bulkhead-policy` crate), the built-in ones expressing
//! the roles.

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
    /// A person signed in through the namespace's identity provider, with the strongest role
    /// its groups map to.
    User { sub: String, namespace: String, role: Role, email: Option<String>, groups: Vec<String> },
    /// A sandbox's workload identity; it has no role, only what the policies grant it.
    /// `project` is the project of the filesystem it mounts, if any.
    Sandbox { id: String, namespace: String, creator: String, project: Option<String> },
}

impl Principal {
    /// How the principal appears in audit records and logs: `admin`, `key:<id>`, `user:<sub>`
    /// or `sandbox:<id>`.
    pub fn audit_name(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Key { id, .. } => format!("key:{id}"),
            Principal::User { sub, .. } => format!("user:{sub}"),
            Principal::Sandbox { id, .. } => format!("sandbox:{id}"),
        }
    }

    /// The principal's role; the admin and sandboxes have none.
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Key { role, .. } | Principal::User { role, .. } => Some(*role),
            Principal::Admin | Principal::Sandbox { .. } => None,
        }
    }

    /// Whether the principal may see resources of `project` (`None`: resources in no project).
    /// A key limited to projects sees only theirs; anything else of the namespace is, to it,
    /// as if it did not exist.
    pub fn sees_project(&self, project: Option<&str>) -> bool {
        match self {
            Principal::Admin
            | Principal::Key { projects: None, .. }
            | Principal::User { .. }
            | Principal::Sandbox { .. } => true,
            Principal::Key { projects: Some(list), .. } => project.is_some_and(|p| list.iter().any(|x| x == p)),
        }
    }

    /// Whether the principal is a key limited to projects (and so sees only some filesystems
    /// and sandboxes of its namespace).
    pub fn limited_to_projects(&self) -> bool {
        matches!(self, Principal::Key { projects: Some(_), .. })
    }

    /// Whether the principal may see a sandbox. A sandbox exposes the data of the filesystem it
    /// mounts, so it is in that filesystem's scope: one that mounts nothing is the namespace's,
    /// one that mounts a filesystem is seen only by those who see that filesystem's `project`.
    pub fn sees_sandbox(&self, mounts_filesystem: bool, project: Option<&str>) -> bool {
        !mounts_filesystem || self.sees_project(project)
    }

    /// The namespace the principal belongs to; `None` for the platform admin.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Key { namespace, .. }
            | Principal::User { namespace, .. }
            | Principal::Sandbox { namespace, .. } => Some(namespace),
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
    IdentityGet,
    IdentitySet,
    PolicyCreate,
    PolicyList,
    PolicyDelete,
    AuthzExplain,
    SecretCreate,
    SecretList,
    SecretDelete,
    /// A sandbox being handed a secret (the sandbox is the principal).
    SecretRead,
    /// Mounting a filesystem into a sandbox read-write, or read-only.
    FilesystemMountRw,
    FilesystemMountRo,
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
            Action::IdentityGet => "identity.get",
            Action::IdentitySet => "identity.set",
            Action::PolicyCreate => "policy.create",
            Action::PolicyList => "policy.list",
            Action::PolicyDelete => "policy.delete",
            Action::AuthzExplain => "authz.explain",
            Action::SecretCreate => "secret.create",
            Action::SecretList => "secret.list",
            Action::SecretDelete => "secret.delete",
            Action::SecretRead => "secret.read",
            Action::FilesystemMountRw => "filesystem.mount_rw",
            Action::FilesystemMountRo => "filesystem.mount_ro",
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
            | Action::FilesystemFileDelete
            | Action::IdentitySet
            | Action::PolicyCreate
            | Action::PolicyDelete
            | Action::SecretCreate
            | Action::SecretDelete => true,
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
            | Action::LogsRead
            | Action::IdentityGet
            | Action::PolicyList
            | Action::AuthzExplain
            | Action::SecretList
            | Action::SecretRead
            | Action::FilesystemMountRw
            | Action::FilesystemMountRo => false,
        }
    }

    /// For actions on keys, the role of the key concerned.
    pub fn target_role(&self) -> Option<Role> {
        match self {
            Action::KeyCreate { role } | Action::KeyRevoke { role } => Some(*role),
            _ => None,
        }
    }
}

/// The outcome of an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A principal of this namespace that the policies do not allow: 403 `forbidden`.
    Forbidden,
    /// A principal of another namespace: answered exactly as a namespace that does not exist.
    NotFound,
}

/// Where a request stands with respect to the principal's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenancy<'a> {
    /// The platform admin: every namespace is its own.
    Operator,
    /// Inside the principal's own namespace (or, for platform-level actions, the principal's
    /// namespace is the one whose policies decide).
    Own(&'a str),
    /// Another namespace: the request ends here as a 404, before any policy is read.
    Foreign,
}

/// Draws the tenant boundary for `principal` and the namespace a request targets (`None` for
/// platform-level actions). It depends only on the principal and the name in the request, never
/// on what the store holds, so a foreign namespace and a missing one cannot be told apart, by
/// the answer or by its timing.
pub fn tenancy<'a>(principal: &'a Principal, namespace: Option<&str>) -> Tenancy<'a> {
    let Some(own) = principal.namespace() else { return Tenancy::Operator };
    match namespace {
        Some(target) if target != own => Tenancy::Foreign,
        _ => Tenancy::Own(own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role) -> Principal {
        Principal::Key { id: "key_1".into(), namespace: "acme".into(), role, projects: None }
    }

    #[test]
    fn foreign_namespace_is_foreign_for_every_principal_of_a_namespace() {
        let sandbox =
            Principal::Sandbox { id: "sbx_1".into(), namespace: "acme".into(), creator: "key:k".into(), project: None };
        let user = Principal::User {
            sub: "alice".into(),
            namespace: "acme".into(),
            role: Role::Owner,
            email: None,
            groups: vec![],
        };
        for p in [key(Role::Owner), key(Role::Viewer), sandbox, user] {
            assert_eq!(tenancy(&p, Some("globex")), Tenancy::Foreign);
            assert_eq!(tenancy(&p, Some("acme")), Tenancy::Own("acme"));
            assert_eq!(tenancy(&p, None), Tenancy::Own("acme"));
        }
        assert_eq!(tenancy(&Principal::Admin, Some("globex")), Tenancy::Operator);
    }

    #[test]
    fn principals_are_named_for_the_audit_log() {
        assert_eq!(key(Role::Viewer).audit_name(), "key:key_1");
        let s =
            Principal::Sandbox { id: "sbx_1".into(), namespace: "acme".into(), creator: "key:k".into(), project: None };
        assert_eq!(s.audit_name(), "sandbox:sbx_1");
        assert_eq!(s.role(), None);
        assert_eq!(key(Role::Admin).role(), Some(Role::Admin));
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
        // A sandbox is in the scope of the filesystem it mounts.
        assert!(k.sees_sandbox(false, None));
        assert!(k.sees_sandbox(true, Some("prj_a")));
        assert!(!k.sees_sandbox(true, Some("prj_b")));
        assert!(!k.sees_sandbox(true, None));
        assert!(key(Role::Viewer).sees_sandbox(true, Some("prj_b")));
    }

    #[test]
    fn role_parses() {
        assert_eq!("developer".parse::<Role>().unwrap(), Role::Developer);
        assert!("root".parse::<Role>().is_err());
    }
}
