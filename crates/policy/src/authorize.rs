//! The one decision function. Every authorization of Bulkhead, whatever asks it (a request's
//! action, a further decision inside a request such as a mount or a secret's release, the
//! filtering of a list, the periodic re-check of a live stream, the explain endpoint), is one call
//! of [`decide`] on a typed [`Target`]. It is also the only caller of [`CompiledSet::decide`]; the
//! workspace's clippy configuration refuses any other call.

use bulkhead_core::{tenancy, Action, Decision, Hidden, Principal, Scope, Target, Tenancy};

use crate::engine::{CompiledSet, Request};
use crate::refs::{PrincipalRef, ResourceRef};

/// A decision with what explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    pub decision: Decision,
    /// When allowed by the policies, the ids of the permits that allowed, sorted; empty
    /// otherwise (the forbids that denied are in the decision).
    pub permits: Vec<String>,
    /// Errors met while deciding: policies that failed to evaluate (skipped, as Cedar does), or
    /// a request that could not be asked at all (then the answer is a denial). Sorted.
    pub errors: Vec<String>,
}

impl Ruling {
    fn hidden(why: Hidden) -> Ruling {
        Ruling { decision: Decision::NotFound(why), permits: Vec::new(), errors: Vec::new() }
    }
}

/// Decides `action` of `principal` on `target`, in three steps, each ending the decision when it
/// refuses:
///
/// 1. the tenant boundary ([`tenancy`]): a target in another namespace than the principal's is
///    [`Hidden::Namespace`], from the principal and the name alone, before any policy is read;
/// 2. projects: to a key limited to projects, a sandbox or filesystem outside them, or the part of
///    the namespace outside every project, is [`Hidden::Target`], exactly as if it did not exist;
/// 3. `policies`, the principal's namespace's set (the built-ins alone for the platform admin):
///    [`Decision::Forbidden`] with the forbids that denied, or [`Decision::Allow`].
pub fn decide(policies: &CompiledSet, principal: &Principal, action: Action, target: &Target) -> Ruling {
    let namespace = match tenancy(principal, target.namespace_name()) {
        Tenancy::Foreign => return Ruling::hidden(Hidden::Namespace),
        Tenancy::Own(own) => own,
        Tenancy::Operator => target.namespace_name().unwrap_or_default(),
    };
    if !sees(principal, target) {
        return Ruling::hidden(Hidden::Target);
    }
    let principal = PrincipalRef::from(principal);
    let resource = ResourceRef::from(target);
    let target_role = match target {
        Target::Key { role, .. } => *role,
        _ => None,
    };
    let request = Request { principal: &principal, namespace, action: action.name(), resource: &resource, target_role };
    // The one call of the engine: everything else decides through this function.
    #[allow(clippy::disallowed_methods)]
    let d = policies.decide(&request);
    if d.allowed {
        Ruling { decision: Decision::Allow, permits: d.policies, errors: d.errors }
    } else {
        Ruling { decision: Decision::Forbidden { policies: d.policies }, permits: Vec::new(), errors: d.errors }
    }
}

/// Whether `principal` may see `target` at all: everything, but for a key limited to projects,
/// which sees only what is in them (and what is everyone's, such as a sandbox that mounts
/// nothing). A scope not yet looked up hides nothing: the lookup decides again.
fn sees(principal: &Principal, target: &Target) -> bool {
    let Principal::Key { projects: Some(projects), .. } = principal else { return true };
    let within = |project: Option<&str>| project.is_some_and(|p| projects.iter().any(|x| x == p));
    match target {
        Target::Sandbox { scope, .. } | Target::Filesystem { scope, .. } | Target::Task { scope, .. } => match scope {
            Scope::Unknown | Scope::Open => true,
            Scope::Namespace | Scope::Project(_) => within(scope.project()),
        },
        Target::Project { id, .. } => within(id.as_deref()),
        Target::Platform
        | Target::Namespace { .. }
        | Target::Secret { .. }
        | Target::Key { .. }
        | Target::Policy { .. }
        | Target::Image { .. }
        | Target::Host { .. }
        | Target::Agent { .. }
        | Target::ToolCall { .. } => true,
    }
}

impl From<&Principal> for PrincipalRef {
    fn from(p: &Principal) -> PrincipalRef {
        match p {
            Principal::Admin => PrincipalRef::Admin,
            Principal::Key { id, role, .. } => PrincipalRef::Key { id: id.clone(), role: *role },
            Principal::User { sub, role, email, groups, .. } => PrincipalRef::User {
                sub: sub.clone(),
                role: *role,
                email: email.clone().unwrap_or_default(),
                groups: groups.clone(),
            },
            Principal::Sandbox { id, creator, project, task, .. } => PrincipalRef::Sandbox {
                id: id.clone(),
                creator: creator.clone(),
                project: project.clone(),
                task: task.clone(),
            },
        }
    }
}

/// The one conversion of a target into the engine's resource: a project of a sandbox or
/// filesystem makes it a member of that project; what is being created in the namespace at large
/// (a key, or something outside every project) is the namespace.
impl From<&Target> for ResourceRef {
    fn from(t: &Target) -> ResourceRef {
        match t {
            Target::Platform => ResourceRef::Platform,
            Target::Namespace { namespace }
            | Target::Project { namespace, id: None }
            | Target::Key { namespace, id: None, .. } => ResourceRef::Namespace(namespace.clone()),
            Target::Sandbox { id, scope, .. } => {
                ResourceRef::Sandbox { id: id.clone(), project: scope.project().map(str::to_owned) }
            }
            Target::Filesystem { id, scope, .. } => {
                ResourceRef::Filesystem { id: id.clone(), project: scope.project().map(str::to_owned) }
            }
            Target::Project { id: Some(id), .. } => ResourceRef::Project(id.clone()),
            Target::Secret { name, .. } => ResourceRef::Secret(name.clone()),
            Target::Key { id: Some(id), .. } => ResourceRef::Key(id.clone()),
            Target::Policy { id, .. } => ResourceRef::Policy(id.clone()),
            Target::Image { name, .. } => ResourceRef::Image(name.clone()),
            Target::Host { host, port, protocol, .. } => {
                ResourceRef::Host { name: host.clone(), port: *port, protocol: protocol.clone() }
            }
            Target::Agent { name, .. } => ResourceRef::Agent(name.clone()),
            Target::Task { id, scope, .. } => {
                ResourceRef::Task { id: id.clone(), project: scope.project().map(str::to_owned) }
            }
            Target::ToolCall { task, kind, title, .. } => {
                ResourceRef::ToolCall { task: task.clone(), kind: kind.clone(), title: title.clone() }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // The decision function's own tests call it.
mod tests {
    use bulkhead_core::Role;

    use super::*;
    use crate::Engine;

    fn key(role: Role, projects: Option<Vec<&str>>) -> Principal {
        Principal::Key {
            id: "key_1".into(),
            namespace: "acme".into(),
            role,
            projects: projects.map(|l| l.into_iter().map(str::to_owned).collect()),
        }
    }

    fn sandbox_in(project: Option<&str>) -> Target {
        Target::Sandbox { namespace: "acme".into(), id: "sbx_1".into(), scope: Scope::of_sandbox(true, project) }
    }

    #[test]
    fn another_namespace_is_hidden_before_the_policies() {
        let set = Engine::shared().builtin();
        let d = decide(&set, &key(Role::Owner, None), Action::SandboxGet, &Target::sandbox("globex", "sbx_1"));
        assert_eq!(d.decision, Decision::NotFound(Hidden::Namespace));
        let d = decide(&set, &Principal::Admin, Action::SandboxGet, &Target::sandbox("globex", "sbx_1"));
        assert_eq!(d.decision, Decision::Allow);
    }

    #[test]
    fn a_key_limited_to_projects_sees_only_them() {
        let set = Engine::shared().builtin();
        let limited = key(Role::Developer, Some(vec!["prj_a"]));
        let get = |p: &Principal, t: &Target| decide(&set, p, Action::SandboxGet, t).decision;
        assert_eq!(get(&limited, &sandbox_in(Some("prj_a"))), Decision::Allow);
        assert_eq!(get(&limited, &sandbox_in(Some("prj_b"))), Decision::NotFound(Hidden::Target));
        assert_eq!(get(&limited, &sandbox_in(None)), Decision::NotFound(Hidden::Target));
        // A sandbox that mounts nothing is everyone's; one not looked up yet is decided on its id.
        let open = Target::Sandbox { namespace: "acme".into(), id: "sbx_1".into(), scope: Scope::Open };
        assert_eq!(get(&limited, &open), Decision::Allow);
        assert_eq!(get(&limited, &Target::sandbox("acme", "sbx_1")), Decision::Allow);
        assert_eq!(get(&key(Role::Viewer, None), &sandbox_in(Some("prj_b"))), Decision::Allow);
        let create = |id| decide(&set, &limited, Action::FilesystemCreate, &Target::project("acme", id)).decision;
        assert_eq!(create(Some("prj_a")), Decision::Allow);
        assert_eq!(create(Some("prj_b")), Decision::NotFound(Hidden::Target));
        assert_eq!(create(None), Decision::NotFound(Hidden::Target));
    }

    #[test]
    fn the_policies_decide_last_with_their_reasons() {
        let engine = Engine::shared();
        let forbid = r#"forbid (principal, action == Bulkhead::Action::"sandbox.exec", resource in Bulkhead::Project::"prj_b");"#;
        let set = engine.compile(&[("pol_1".into(), forbid.into())]).expect("valid");
        let dev = key(Role::Developer, None);
        let d = decide(&set, &dev, Action::SandboxExec, &sandbox_in(Some("prj_b")));
        assert_eq!(d.decision, Decision::Forbidden { policies: vec!["pol_1".into()] });
        let d = decide(&set, &dev, Action::SandboxExec, &sandbox_in(Some("prj_a")));
        assert_eq!((d.decision, d.permits), (Decision::Allow, vec!["builtin.developer".to_owned()]));
        let viewer = key(Role::Viewer, None);
        let d = decide(&set, &viewer, Action::SandboxExec, &sandbox_in(Some("prj_a")));
        assert_eq!(d.decision, Decision::Forbidden { policies: vec![] });
        // The role of the key concerned reaches the policies.
        let admin = key(Role::Admin, None);
        let revoke = |role| decide(&set, &admin, Action::KeyRevoke, &Target::key("acme", Some("key_2"), Some(role)));
        assert!(revoke(Role::Developer).decision.is_allowed());
        assert!(!revoke(Role::Owner).decision.is_allowed());
    }

    #[test]
    fn egress_is_a_sandbox_connecting_to_a_host_with_port_and_protocol() {
        let engine = Engine::shared();
        let sandbox = Principal::Sandbox {
            id: "sbx_1".into(),
            namespace: "acme".into(),
            creator: "key:k".into(),
            project: None,
            task: None,
        };
        let forbid_ssh = r#"forbid (principal, action == Bulkhead::Action::"network.connect", resource)
            when { context.protocol == "tcp" && context.port == 22 };"#;
        let forbid_host = r#"forbid (principal, action == Bulkhead::Action::"network.connect", resource == Bulkhead::Host::"evil.test");"#;
        let set = engine
            .compile(&[("pol_ssh".into(), forbid_ssh.into()), ("pol_evil".into(), forbid_host.into())])
            .expect("valid");
        let connect = |host: &str, port, protocol: &str| {
            decide(&set, &sandbox, Action::NetworkConnect, &Target::host("acme", host, port, protocol))
        };
        let d = connect("pypi.org", 443, "tcp");
        assert_eq!((d.decision, d.permits), (Decision::Allow, vec!["builtin.sandbox-egress".to_owned()]));
        assert_eq!(connect("pypi.org", 22, "tcp").decision, Decision::Forbidden { policies: vec!["pol_ssh".into()] });
        assert!(connect("pypi.org", 0, "dns").decision.is_allowed());
        assert_eq!(connect("evil.test", 0, "dns").decision, Decision::Forbidden { policies: vec!["pol_evil".into()] });
        // Keys and users never connect.
        let d = decide(
            &set,
            &key(Role::Owner, None),
            Action::NetworkConnect,
            &Target::host("acme", "pypi.org", 443, "tcp"),
        );
        assert_eq!(d.decision, Decision::Forbidden { policies: vec![] });
    }
}
