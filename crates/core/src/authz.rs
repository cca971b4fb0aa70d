//! Who asks, what for, and on what. Every request the server accepts is one [`Action`] of a
//! [`Principal`] on a [`Target`], and every decision about it is a [`Decision`] of one function,
//! `bulkhead_policy::decide`: [`tenancy`] draws the hard line first (a principal of namespace A
//! asking about B is answered as if B did not exist, from the principal alone), then a key limited
//! to projects is answered as if what lies outside them did not exist, then the namespace's Cedar
//! policies decide, the built-in ones expressing the roles.

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
    /// A sandbox's workload identity; `task` is the task whose agent it runs, if any.
    Sandbox { id: String, namespace: String, creator: String, project: Option<String>, task: Option<String> },
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

/// Every action of the API, [`Action::ALL`]. What an action is on is its [`Target`]; for the
/// actions on keys the target carries the role of the key concerned, because an `admin` may
/// manage every key but an `owner`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    NamespaceCreate,
    NamespaceList,
    NamespaceGet,
    NamespaceUpdate,
    NamespaceDelete,
    KeyCreate,
    KeyList,
    KeyGet,
    KeyRevoke,
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
    /// A sandbox connecting to a host (or asking the gateway's DNS for it); the sandbox is the
    /// principal, the target a [`Target::Host`].
    NetworkConnect,
    /// Importing an image into the namespace (`PUT .../images/{name}/archive`).
    ImageCreate,
    /// Listing the namespace's images (its own and the public ones).
    ImageList,
    /// Reading one image of the namespace (or a public one, as the namespace sees it).
    ImageGet,
    /// Deleting one of the namespace's own images.
    ImageDelete,
    /// Publishing a public image every namespace may use (platform admin only).
    PlatformImageCreate,
    /// Listing the public images as the platform sees them (platform admin only).
    PlatformImageList,
    /// Deleting a public image (platform admin only).
    PlatformImageDelete,
    AgentCreate,
    AgentList,
    AgentGet,
    AgentDelete,
    AgentVersionCreate,
    AgentDeploy,
    TaskCreate,
    TaskList,
    TaskGet,
    TaskEvent,
    TaskCancel,
    TaskStateRead,
    TaskStateWrite,
    TaskToolCall,
    PoolList,
    PoolSet,
    PlatformPoolSet,
}

impl Action {
    /// Every action, once: the one list the policy engine, its schema and the explain endpoint
    /// take their action names from.
    pub const ALL: [Action; 74] = [
        Action::NamespaceCreate,
        Action::NamespaceList,
        Action::NamespaceGet,
        Action::NamespaceUpdate,
        Action::NamespaceDelete,
        Action::KeyCreate,
        Action::KeyList,
        Action::KeyGet,
        Action::KeyRevoke,
        Action::AuditRead,
        Action::AuditVerify,
        Action::PlatformAuditRead,
        Action::PlatformAuditVerify,
        Action::SandboxCreate,
        Action::SandboxList,
        Action::SandboxGet,
        Action::SandboxDelete,
        Action::SandboxExec,
        Action::SandboxFileRead,
        Action::SandboxFileWrite,
        Action::ProjectCreate,
        Action::ProjectList,
        Action::ProjectDelete,
        Action::FilesystemCreate,
        Action::FilesystemList,
        Action::FilesystemGet,
        Action::FilesystemResize,
        Action::FilesystemDelete,
        Action::FilesystemArchiveRead,
        Action::FilesystemArchiveWrite,
        Action::FilesystemFileRead,
        Action::FilesystemFileWrite,
        Action::FilesystemFileDelete,
        Action::UsageRead,
        Action::PlatformMetricsRead,
        Action::MetricsRead,
        Action::LogsRead,
        Action::IdentityGet,
        Action::IdentitySet,
        Action::PolicyCreate,
        Action::PolicyList,
        Action::PolicyDelete,
        Action::AuthzExplain,
        Action::SecretCreate,
        Action::SecretList,
        Action::SecretDelete,
        Action::SecretRead,
        Action::FilesystemMountRw,
        Action::FilesystemMountRo,
        Action::NetworkConnect,
        Action::ImageCreate,
        Action::ImageList,
        Action::ImageGet,
        Action::ImageDelete,
        Action::PlatformImageCreate,
        Action::PlatformImageList,
        Action::PlatformImageDelete,
        Action::AgentCreate,
        Action::AgentList,
        Action::AgentGet,
        Action::AgentDelete,
        Action::AgentVersionCreate,
        Action::AgentDeploy,
        Action::TaskCreate,
        Action::TaskList,
        Action::TaskGet,
        Action::TaskEvent,
        Action::TaskCancel,
        Action::TaskStateRead,
        Action::TaskStateWrite,
        Action::TaskToolCall,
        Action::PoolList,
        Action::PoolSet,
        Action::PlatformPoolSet,
    ];

    /// The action named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The stable name used in audit records, logs, metrics and the policies
    /// (`Bulkhead::Action::"<name>"`).
    pub const fn name(&self) -> &'static str {
        match self {
            Action::NamespaceCreate => "namespace.create",
            Action::NamespaceList => "namespace.list",
            Action::NamespaceGet => "namespace.get",
            Action::NamespaceUpdate => "namespace.update",
            Action::NamespaceDelete => "namespace.delete",
            Action::KeyCreate => "key.create",
            Action::KeyList => "key.list",
            Action::KeyGet => "key.get",
            Action::KeyRevoke => "key.revoke",
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
            Action::NetworkConnect => "network.connect",
            Action::ImageCreate => "image.create",
            Action::ImageList => "image.list",
            Action::ImageGet => "image.get",
            Action::ImageDelete => "image.delete",
            Action::PlatformImageCreate => "platform.image.create",
            Action::PlatformImageList => "platform.image.list",
            Action::PlatformImageDelete => "platform.image.delete",
            Action::AgentCreate => "agent.create",
            Action::AgentList => "agent.list",
            Action::AgentGet => "agent.get",
            Action::AgentDelete => "agent.delete",
            Action::AgentVersionCreate => "agent.version.create",
            Action::AgentDeploy => "agent.deploy",
            Action::TaskCreate => "task.create",
            Action::TaskList => "task.list",
            Action::TaskGet => "task.get",
            Action::TaskEvent => "task.event",
            Action::TaskCancel => "task.cancel",
            Action::TaskStateRead => "task.state.read",
            Action::TaskStateWrite => "task.state.write",
            Action::TaskToolCall => "task.tool_call",
            Action::PoolList => "pool.list",
            Action::PoolSet => "pool.set",
            Action::PlatformPoolSet => "platform.pool.set",
        }
    }

    /// True for actions that change state; these are always audited, reads only when denied.
    pub fn is_mutating(&self) -> bool {
        match self {
            Action::NamespaceCreate
            | Action::NamespaceUpdate
            | Action::NamespaceDelete
            | Action::KeyCreate
            | Action::KeyRevoke
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
            | Action::SecretDelete
            | Action::ImageCreate
            | Action::ImageDelete
            | Action::PlatformImageCreate
            | Action::PlatformImageDelete
            | Action::AgentCreate
            | Action::AgentDelete
            | Action::AgentVersionCreate
            | Action::AgentDeploy
            | Action::TaskCreate
            | Action::TaskEvent
            | Action::TaskCancel
            | Action::TaskStateWrite
            | Action::TaskToolCall
            | Action::PoolSet
            | Action::PlatformPoolSet => true,
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
            | Action::FilesystemMountRo
            | Action::NetworkConnect
            | Action::ImageList
            | Action::ImageGet
            | Action::PlatformImageList
            | Action::AgentList
            | Action::AgentGet
            | Action::TaskList
            | Action::TaskGet
            | Action::TaskStateRead
            | Action::PoolList => false,
        }
    }
}

/// What an action is on, with what a decision needs to know of it. Every variant but
/// [`Target::Platform`] names its namespace. A target is built from what the request names and,
/// once it has been looked up, what the store knows of it (a filesystem's project).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The whole platform: listing and creating namespaces, the platform's audit chain and
    /// metrics.
    Platform,
    /// A namespace as a whole: the namespace itself, or what an action does in it at large
    /// (listing its sandboxes, reading its usage, creating a secret).
    Namespace { namespace: String },
    /// A sandbox, in the scope of the filesystem it mounts: it exposes that filesystem's data.
    Sandbox { namespace: String, id: String, scope: Scope },
    /// A filesystem, in its project if it has one.
    Filesystem { namespace: String, id: String, scope: Scope },
    /// A project; `id: None` is the part of the namespace outside every project, where a
    /// filesystem of no project or a new project is created.
    Project { namespace: String, id: Option<String> },
    /// A secret, by name.
    Secret { namespace: String, name: String },
    /// A key; `id: None` is a key being created. `role` is the role of the key concerned when it
    /// is known; the policies see it as `context.target_role`.
    Key { namespace: String, id: Option<String>, role: Option<Role> },
    /// A custom policy of the namespace.
    Policy { namespace: String, id: String },
    /// An image as the namespace sees it, by name: one of its own, or a public one.
    Image { namespace: String, name: String },
    /// A destination of a sandbox's egress: its DNS name, or its address when it has none.
    /// `port` (0 for a DNS query, which names no port) and `protocol` (`tcp` or `dns`) are what
    /// the policies see as `context.port` and `context.protocol`.
    Host { namespace: String, host: String, port: u16, protocol: String },
    /// An agent of the namespace, by name.
    Agent { namespace: String, name: String },
    /// A task, in the scope of the filesystem it works on (as a sandbox is).
    Task { namespace: String, id: String, scope: Scope },
    /// A tool call a task's agent asks permission for: the task, and the call's ACP `kind`
    /// (`read`, `edit`, `delete`, `move`, `search`, `execute`, `think`, `fetch`, `other`) and
    /// `title`, which the policies see as `context.kind` and `context.title`.
    ToolCall { namespace: String, task: String, kind: String, title: String },
}

/// Where a sandbox or a filesystem stands with respect to the namespace's projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Not looked up yet: the decision is on the id alone and hides nothing; the lookup decides
    /// again with what it found.
    Unknown,
    /// Everyone's in the namespace: a sandbox that mounts no filesystem.
    Open,
    /// Outside every project: a filesystem of no project, or a sandbox that mounts one.
    Namespace,
    /// In a project: a filesystem of it, or a sandbox that mounts one of its filesystems.
    Project(String),
}

impl Scope {
    /// The scope of a filesystem of `project`.
    pub fn of_filesystem(project: Option<&str>) -> Scope {
        project.map_or(Scope::Namespace, |p| Scope::Project(p.to_owned()))
    }

    /// The scope of a sandbox: `Open` when it mounts no filesystem, else the filesystem's
    /// (`project` is that filesystem's project).
    pub fn of_sandbox(mounts_filesystem: bool, project: Option<&str>) -> Scope {
        if mounts_filesystem {
            Scope::of_filesystem(project)
        } else {
            Scope::Open
        }
    }

    /// The project, when the scope is one.
    pub fn project(&self) -> Option<&str> {
        match self {
            Scope::Project(p) => Some(p),
            Scope::Unknown | Scope::Open | Scope::Namespace => None,
        }
    }
}

impl Target {
    /// The namespace `ns` as a whole.
    pub fn namespace(ns: &str) -> Target {
        Target::Namespace { namespace: ns.to_owned() }
    }

    /// Sandbox `id` of `ns`, as the request names it (what it mounts not yet known).
    pub fn sandbox(ns: &str, id: &str) -> Target {
        Target::Sandbox { namespace: ns.to_owned(), id: id.to_owned(), scope: Scope::Unknown }
    }

    /// Filesystem `id` of `ns`, as the request names it (its project not yet known).
    pub fn filesystem(ns: &str, id: &str) -> Target {
        Target::Filesystem { namespace: ns.to_owned(), id: id.to_owned(), scope: Scope::Unknown }
    }

    /// Project `id` of `ns`, or with `None` the namespace outside every project.
    pub fn project(ns: &str, id: Option<&str>) -> Target {
        Target::Project { namespace: ns.to_owned(), id: id.map(str::to_owned) }
    }

    /// Secret `name` of `ns`.
    pub fn secret(ns: &str, name: &str) -> Target {
        Target::Secret { namespace: ns.to_owned(), name: name.to_owned() }
    }

    /// Key `id` of `ns` (`None`: a key being created), whose role is `role` when known.
    pub fn key(ns: &str, id: Option<&str>, role: Option<Role>) -> Target {
        Target::Key { namespace: ns.to_owned(), id: id.map(str::to_owned), role }
    }

    /// Custom policy `id` of `ns`.
    pub fn policy(ns: &str, id: &str) -> Target {
        Target::Policy { namespace: ns.to_owned(), id: id.to_owned() }
    }

    /// Image `name` as namespace `ns` sees it (its own, or a public one).
    pub fn image(ns: &str, name: &str) -> Target {
        Target::Image { namespace: ns.to_owned(), name: name.to_owned() }
    }

    /// Host `host` of `ns`'s egress, reached on `port` by `protocol` (`tcp`, or `dns` with port 0).
    pub fn host(ns: &str, host: &str, port: u16, protocol: &str) -> Target {
        Target::Host { namespace: ns.to_owned(), host: host.to_owned(), port, protocol: protocol.to_owned() }
    }

    /// Agent `name` of `ns`.
    pub fn agent(ns: &str, name: &str) -> Target {
        Target::Agent { namespace: ns.to_owned(), name: name.to_owned() }
    }

    /// Task `id` of `ns`, as the request names it (what it works on not yet known).
    pub fn task(ns: &str, id: &str) -> Target {
        Target::Task { namespace: ns.to_owned(), id: id.to_owned(), scope: Scope::Unknown }
    }

    /// A tool call of task `task` of `ns`, of ACP kind `kind`, titled `title`.
    pub fn tool_call(ns: &str, task: &str, kind: &str, title: &str) -> Target {
        Target::ToolCall {
            namespace: ns.to_owned(),
            task: task.to_owned(),
            kind: kind.to_owned(),
            title: title.to_owned(),
        }
    }

    /// The namespace the target is in; `None` for the platform.
    pub fn namespace_name(&self) -> Option<&str> {
        match self {
            Target::Platform => None,
            Target::Namespace { namespace }
            | Target::Sandbox { namespace, .. }
            | Target::Filesystem { namespace, .. }
            | Target::Project { namespace, .. }
            | Target::Secret { namespace, .. }
            | Target::Key { namespace, .. }
            | Target::Policy { namespace, .. }
            | Target::Image { namespace, .. }
            | Target::Host { namespace, .. }
            | Target::Agent { namespace, .. }
            | Target::Task { namespace, .. }
            | Target::ToolCall { namespace, .. } => Some(namespace),
        }
    }

    /// How the target appears in audit records: `platform`, `namespace:<name>`, `sandbox:<id>`,
    /// `filesystem:<id>`, `project:<id>`, `secret:<name>`, `key:<id>`, `policy:<id>`,
    /// `image:<name>`, `host:<name>`, `agent:<name>` or `task:<id>` (a tool call's too); what is
    /// being created in a namespace (a key, a project) is the namespace's.
    pub fn audit_name(&self) -> String {
        match self {
            Target::Platform => "platform".to_owned(),
            Target::Namespace { namespace }
            | Target::Project { namespace, id: None }
            | Target::Key { namespace, id: None, .. } => format!("namespace:{namespace}"),
            Target::Sandbox { id, .. } => format!("sandbox:{id}"),
            Target::Filesystem { id, .. } => format!("filesystem:{id}"),
            Target::Project { id: Some(id), .. } => format!("project:{id}"),
            Target::Secret { name, .. } => format!("secret:{name}"),
            Target::Key { id: Some(id), .. } => format!("key:{id}"),
            Target::Policy { id, .. } => format!("policy:{id}"),
            Target::Image { name, .. } => format!("image:{name}"),
            Target::Host { host, .. } => format!("host:{host}"),
            Target::Agent { name, .. } => format!("agent:{name}"),
            Target::Task { id, .. } | Target::ToolCall { task: id, .. } => format!("task:{id}"),
        }
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A principal of the namespace that the policies do not allow: 403 `forbidden`. `policies`
    /// are the ids of the `forbid`s that denied, sorted; empty when nothing permitted.
    Forbidden {
        policies: Vec<String>,
    },
    /// Answered exactly as what does not exist: 404.
    NotFound(Hidden),
}

/// Why a decision is [`Decision::NotFound`], which says what the 404 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// The target's namespace is another tenant's: answered as a namespace that does not exist.
    Namespace,
    /// The target is outside the projects a key is limited to: answered as that target missing.
    Target,
}

impl Decision {
    /// True for [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
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
        let sandbox = Principal::Sandbox {
            id: "sbx_1".into(),
            namespace: "acme".into(),
            creator: "key:k".into(),
            project: None,
            task: None,
        };
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
        let s = Principal::Sandbox {
            id: "sbx_1".into(),
            namespace: "acme".into(),
            creator: "key:k".into(),
            project: None,
            task: None,
        };
        assert_eq!(s.audit_name(), "sandbox:sbx_1");
        assert_eq!(s.role(), None);
        assert_eq!(key(Role::Admin).role(), Some(Role::Admin));
    }

    #[test]
    fn every_action_is_listed_once_by_a_distinct_name() {
        let mut names: Vec<&str> = Action::ALL.iter().map(Action::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Action::ALL.len());
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
        }
        assert_eq!(Action::from_name("sandbox.execute"), None);
    }

    #[test]
    fn targets_are_named_for_the_audit_log() {
        assert_eq!(Target::sandbox("acme", "sbx_1").audit_name(), "sandbox:sbx_1");
        assert_eq!(Target::project("acme", None).audit_name(), "namespace:acme");
        assert_eq!(Target::key("acme", None, Some(Role::Owner)).audit_name(), "namespace:acme");
        assert_eq!(Target::key("acme", Some("key_1"), None).audit_name(), "key:key_1");
        assert_eq!(Target::Platform.namespace_name(), None);
        assert_eq!(Target::secret("acme", "db").namespace_name(), Some("acme"));
        assert_eq!(Scope::of_sandbox(false, Some("prj_a")), Scope::Open);
        assert_eq!(Scope::of_sandbox(true, None), Scope::Namespace);
        assert_eq!(Scope::of_filesystem(Some("prj_a")).project(), Some("prj_a"));
    }

    #[test]
    fn role_parses() {
        assert_eq!("developer".parse::<Role>().unwrap(), Role::Developer);
        assert!("root".parse::<Role>().is_err());
    }
}
