// The engine's own tests ask it directly, below the decision function.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::decide::View;

// The role table of PRODUCT.md, written out independently of builtin.cedar.
const EVERYONE: &[&str] = &[
    "namespace.get",
    "namespace.list",
    "audit.read",
    "audit.verify",
    "usage.read",
    "metrics.read",
    "logs.read",
    "sandbox.list",
    "sandbox.get",
    "project.list",
    "filesystem.list",
    "filesystem.get",
    "secret.list",
    "image.list",
    "image.get",
    "agent.list",
    "agent.get",
    "task.list",
    "pool.list",
];
const DEVELOPER: &[&str] = &[
    "sandbox.create",
    "sandbox.delete",
    "sandbox.exec",
    "sandbox.file.read",
    "sandbox.file.write",
    "project.create",
    "project.delete",
    "filesystem.create",
    "filesystem.resize",
    "filesystem.delete",
    "filesystem.archive.read",
    "filesystem.archive.write",
    "filesystem.file.read",
    "filesystem.file.write",
    "filesystem.file.delete",
    "filesystem.mount_rw",
    "filesystem.mount_ro",
    "image.create",
    "image.delete",
    "agent.create",
    "agent.delete",
    "agent.version.create",
    "agent.deploy",
    "task.create",
    "task.get",
    "task.event",
    "task.cancel",
    "task.state.read",
    "task.state.write",
];
const ADMIN: &[&str] = &[
    "key.list",
    "key.get",
    "identity.get",
    "policy.list",
    "authz.explain",
    "secret.create",
    "secret.delete",
    "pool.set",
];
/// Admin and up, except on owner keys, which need an owner.
const KEYS: &[&str] = &["key.create", "key.revoke"];
const OWNER: &[&str] = &["identity.set", "policy.create", "policy.delete"];
const NOBODY: &[&str] = &[
    "namespace.create",
    "namespace.update",
    "namespace.delete",
    "platform.audit.read",
    "platform.audit.verify",
    "platform.metrics.read",
    "platform.image.create",
    "platform.image.list",
    "platform.image.delete",
    "platform.pool.set",
    "secret.read",
    // Only sandboxes connect (builtin.sandbox-egress).
    "network.connect",
    // Only a task's own agent makes its tool calls (builtin.task-tool-calls).
    "task.tool_call",
];

/// The lowest role that may do `action` on a key of `target` role; `None`: no role may.
fn needed(action: &str, target: Option<Role>) -> Option<Role> {
    if EVERYONE.contains(&action) {
        Some(Role::Viewer)
    } else if DEVELOPER.contains(&action) {
        Some(Role::Developer)
    } else if ADMIN.contains(&action) {
        Some(Role::Admin)
    } else if KEYS.contains(&action) {
        Some(if target == Some(Role::Owner) { Role::Owner } else { Role::Admin })
    } else if OWNER.contains(&action) {
        Some(Role::Owner)
    } else {
        assert!(NOBODY.contains(&action), "{action} is missing from the test's table");
        None
    }
}

/// Rank: higher may more.
fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => 0,
        Role::Developer => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}

/// A resource of the type the schema declares for `action`.
fn resource_for(action: &str) -> ResourceRef {
    match action {
        "sandbox.get" | "sandbox.delete" | "sandbox.exec" | "sandbox.file.read" | "sandbox.file.write" => {
            ResourceRef::Sandbox { id: "sbx_1".into(), project: None }
        }
        "project.delete" => ResourceRef::Project("prj_1".into()),
        "filesystem.create" | "filesystem.list" => ResourceRef::Namespace("acme".into()),
        a if a.starts_with("filesystem.") => {
            ResourceRef::Filesystem { id: "fs_1".into(), project: Some("prj_1".into()) }
        }
        "key.get" | "key.revoke" => ResourceRef::Key("key_2".into()),
        "policy.delete" => ResourceRef::Policy("pol_1".into()),
        "secret.delete" | "secret.read" => ResourceRef::Secret("db-password".into()),
        "image.get" | "image.delete" | "pool.set" => ResourceRef::Image("python".into()),
        "network.connect" => ResourceRef::Host { name: "pypi.org".into(), port: 443, protocol: "tcp".into() },
        "agent.get" | "agent.delete" | "agent.version.create" | "agent.deploy" | "task.create" => {
            ResourceRef::Agent("coder".into())
        }
        "task.tool_call" => {
            ResourceRef::ToolCall { task: "tsk_1".into(), kind: "edit".into(), title: "Edit a.py".into() }
        }
        a if a.starts_with("task.") && a != "task.list" => ResourceRef::Task { id: "tsk_1".into(), project: None },
        a if a.starts_with("platform.") => ResourceRef::Platform,
        _ => ResourceRef::Namespace("acme".into()),
    }
}

fn ask(
    set: &CompiledSet,
    principal: &PrincipalRef,
    action: &str,
    resource: &ResourceRef,
    target: Option<Role>,
) -> Decision {
    set.decide(&Request { principal, namespace: "acme", action, resource, target_role: target })
}

fn key(role: Role) -> PrincipalRef {
    PrincipalRef::Key { id: "key_1".into(), role }
}

fn user(role: Role) -> PrincipalRef {
    PrincipalRef::User { sub: "alice".into(), role, email: "alice@example.com".into(), groups: vec!["eng".into()] }
}

fn sandbox(id: &str) -> PrincipalRef {
    PrincipalRef::Sandbox { id: id.into(), creator: "key:key_1".into(), project: None, task: None }
}

fn custom(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(id, text)| (id.to_string(), text.to_string())).collect()
}

/// A new engine's set of the built-in policies and these custom `(id, text)` ones.
fn compiled(pairs: &[(&str, &str)]) -> CompiledSet {
    Engine::new().compile(&custom(pairs)).expect("valid")
}

#[test]
fn engines_are_shared_across_threads() {
    fn shared<T: Send + Sync + Clone + std::fmt::Debug>() {}
    shared::<Engine>();
    shared::<CompiledSet>();
}

#[test]
fn schema_and_builtins_are_valid() {
    let engine = Engine::new();
    let result = engine.inner.validator.validate(&engine.inner.builtin_index.policy_set(), ValidationMode::Strict);
    let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let warnings: Vec<String> = result.validation_warnings().map(|e| e.to_string()).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    // Every action of the crate is in the schema, and no other.
    let in_schema: HashSet<String> = engine.inner.schema.actions().map(|a| a.id().unescaped().to_owned()).collect();
    let ours: HashSet<String> = ACTIONS.iter().map(|a| a.to_string()).collect();
    assert_eq!(in_schema, ours);
    assert_eq!(ACTIONS.len(), ours.len(), "no action is listed twice");
    let ids: Vec<String> = engine.inner.builtin.iter().map(|p| p.id().to_string()).collect();
    for id in [
        "builtin.viewer",
        "builtin.developer",
        "builtin.admin",
        "builtin.owner",
        "builtin.admin-keys",
        "builtin.platform-admin",
        "builtin.sandbox-secrets",
        "builtin.sandbox-self",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    assert_eq!(engine.builtin().len(), ids.len());
}

#[test]
fn builtins_reproduce_the_role_table() {
    let set = Engine::new().builtin();
    let mut checked = 0;
    for role in Role::ALL {
        for principal in [key(role), user(role)] {
            for action in ACTIONS.iter() {
                let targets: Vec<Option<Role>> = if KEYS.contains(action) {
                    std::iter::once(None).chain(Role::ALL.into_iter().map(Some)).collect()
                } else {
                    vec![None]
                };
                for target in targets {
                    let expected = needed(action, target).is_some_and(|n| rank(role) >= rank(n));
                    let d = ask(&set, &principal, action, &resource_for(action), target);
                    assert!(d.errors.is_empty(), "{principal:?} {action}: {:?}", d.errors);
                    assert_eq!(d.allowed, expected, "{principal:?} {action} target {target:?}: {d:?}");
                    if d.allowed {
                        assert!(
                            !d.policies.is_empty() && d.policies.iter().all(|p| p.starts_with("builtin.")),
                            "{d:?}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 8 * ACTIONS.len());
}

#[test]
fn reasons_name_the_builtin_policies() {
    let set = Engine::new().builtin();
    let d = ask(&set, &key(Role::Owner), "sandbox.exec", &resource_for("sandbox.exec"), None);
    assert_eq!(d.policies, ["builtin.developer"]);
    let d = ask(&set, &key(Role::Admin), "key.create", &resource_for("key.create"), Some(Role::Admin));
    assert_eq!(d.policies, ["builtin.admin-keys"]);
    let d = ask(&set, &key(Role::Owner), "key.create", &resource_for("key.create"), Some(Role::Owner));
    assert_eq!(d.policies, ["builtin.owner"]);
    let d = ask(&set, &key(Role::Owner), "key.create", &resource_for("key.create"), Some(Role::Viewer));
    assert_eq!(d.policies, ["builtin.admin-keys", "builtin.owner"]);
    // Default deny names nothing; a built-in forbid names itself.
    let d = ask(&set, &key(Role::Viewer), "sandbox.exec", &resource_for("sandbox.exec"), None);
    assert_eq!((d.allowed, d.policies.len()), (false, 0));
    let d = ask(&set, &key(Role::Owner), "namespace.delete", &resource_for("namespace.delete"), None);
    assert_eq!(d.policies, ["builtin.operator-only"]);
    let d = ask(&set, &user(Role::Owner), "secret.read", &resource_for("secret.read"), None);
    assert_eq!(d.policies, ["builtin.secret-values"]);
}

#[test]
fn sandbox_principals_get_only_their_secrets_and_themselves() {
    let set = Engine::new().builtin();
    let me = sandbox("sbx_1");
    for action in ACTIONS.iter() {
        let d = ask(&set, &me, action, &resource_for(action), None);
        assert!(d.errors.is_empty(), "{action}: {:?}", d.errors);
        // resource_for gives sandbox.get the sandbox sbx_1: itself.
        let expected = matches!(*action, "secret.read" | "sandbox.get" | "network.connect");
        assert_eq!(d.allowed, expected, "sandbox {action}: {d:?}");
    }
    let d = ask(&set, &me, "sandbox.get", &ResourceRef::Sandbox { id: "sbx_1".into(), project: None }, None);
    assert_eq!(d.policies, ["builtin.sandbox-self"]);
    let d = ask(&set, &me, "sandbox.get", &ResourceRef::Sandbox { id: "sbx_2".into(), project: None }, None);
    assert!(!d.allowed);
    let d = ask(&set, &me, "secret.read", &ResourceRef::Secret("other".into()), None);
    assert_eq!(d.policies, ["builtin.sandbox-secrets"]);
}

#[test]
fn a_tasks_agent_reaches_its_own_task_alone_and_owners_narrow_its_tool_calls() {
    let engine = Engine::new();
    let agent = PrincipalRef::Sandbox {
        id: "sbx_1".into(),
        creator: "key:key_1".into(),
        project: None,
        task: Some("tsk_1".into()),
    };
    let own = ResourceRef::Task { id: "tsk_1".into(), project: None };
    let other = ResourceRef::Task { id: "tsk_2".into(), project: None };
    let call =
        |task: &str, kind: &str| ResourceRef::ToolCall { task: task.into(), kind: kind.into(), title: "t".into() };
    let set = engine.builtin();
    for action in ["task.get", "task.state.read", "task.state.write"] {
        let d = ask(&set, &agent, action, &own, None);
        assert!(d.allowed && d.errors.is_empty(), "{action}: {d:?}");
        assert_eq!(d.policies, ["builtin.task-self"]);
        assert!(!ask(&set, &agent, action, &other, None).allowed, "{action} on another task");
        assert!(!ask(&set, &sandbox("sbx_1"), action, &own, None).allowed, "{action} by a sandbox of no task");
    }
    for action in ["task.event", "task.cancel"] {
        assert!(!ask(&set, &agent, action, &own, None).allowed, "{action}");
    }
    assert!(ask(&set, &agent, "task.tool_call", &call("tsk_1", "edit"), None).allowed);
    assert!(!ask(&set, &agent, "task.tool_call", &call("tsk_2", "edit"), None).allowed);
    let narrowed = engine
        .compile(&custom(&[(
            "pol_no_edits",
            r#"forbid (principal, action == Bulkhead::Action::"task.tool_call", resource) when { context.kind == "edit" };"#,
        )]))
        .expect("a forbid on the tool call's kind is valid");
    let d = ask(&narrowed, &agent, "task.tool_call", &call("tsk_1", "edit"), None);
    assert!(!d.allowed && d.errors.is_empty(), "{d:?}");
    assert_eq!(d.policies, ["pol_no_edits"]);
    assert!(ask(&narrowed, &agent, "task.tool_call", &call("tsk_1", "read"), None).allowed);
}

#[test]
fn the_platform_admin_may_do_everything_whatever_the_namespace_says() {
    let engine = Engine::new();
    let locked = engine
        .compile(&custom(&[("pol_all", "forbid (principal, action, resource);")]))
        .expect("a forbid-all is a valid policy");
    for set in [engine.builtin(), locked.clone()] {
        for action in ACTIONS.iter() {
            let d = ask(&set, &PrincipalRef::Admin, action, &resource_for(action), Some(Role::Owner));
            assert!(d.allowed && d.errors.is_empty(), "admin {action}: {d:?}");
            assert_eq!(d.policies, ["builtin.platform-admin"]);
        }
    }
    // The same set does lock out the namespace's own owner.
    let d = ask(&locked, &key(Role::Owner), "namespace.get", &resource_for("namespace.get"), None);
    assert_eq!((d.allowed, d.policies), (false, vec!["pol_all".to_owned()]));
}

#[test]
fn a_custom_forbid_wins_over_the_owner_role() {
    let set = compiled(&[(
        "pol_noexec",
        r#"forbid(principal, action == Bulkhead::Action::"sandbox.exec", resource == Bulkhead::Sandbox::"sbx_1");"#,
    )]);
    let owner = key(Role::Owner);
    let d = ask(&set, &owner, "sandbox.exec", &ResourceRef::Sandbox { id: "sbx_1".into(), project: None }, None);
    assert!(!d.allowed);
    assert_eq!(d.policies, ["pol_noexec"]);
    let d = ask(&set, &owner, "sandbox.exec", &ResourceRef::Sandbox { id: "sbx_2".into(), project: None }, None);
    assert!(d.allowed);
    assert_eq!(d.policies, ["builtin.developer"]);
}

/// A sandbox that mounts a project's filesystem is in that project: a policy on the project
/// holds for the sandbox's routes as for the filesystem's.
#[test]
fn a_policy_on_a_project_holds_for_the_sandboxes_that_mount_it() {
    let set = compiled(&[(
        "pol_prj",
        r#"forbid(principal, action in [Bulkhead::Action::"sandbox.exec", Bulkhead::Action::"filesystem.file.read"], resource in Bulkhead::Project::"prj_b");"#,
    )]);
    let dev = key(Role::Developer);
    let in_b = ResourceRef::Sandbox { id: "sbx_1".into(), project: Some("prj_b".into()) };
    let in_a = ResourceRef::Sandbox { id: "sbx_2".into(), project: Some("prj_a".into()) };
    let d = ask(&set, &dev, "sandbox.exec", &in_b, None);
    assert_eq!((d.allowed, d.policies), (false, vec!["pol_prj".to_owned()]));
    assert!(ask(&set, &dev, "sandbox.exec", &in_a, None).allowed);
    let fs = ResourceRef::Filesystem { id: "fs_1".into(), project: Some("prj_b".into()) };
    assert!(!ask(&set, &dev, "filesystem.file.read", &fs, None).allowed);
}

#[test]
fn custom_policies_can_use_roles_attributes_and_projects() {
    let set = compiled(&[
        (
            "pol_list",
            r#"permit(principal is Bulkhead::Sandbox, action == Bulkhead::Action::"sandbox.list", resource);"#,
        ),
        (
            "pol_ro",
            r#"forbid(principal, action == Bulkhead::Action::"filesystem.mount_rw", resource in Bulkhead::Project::"prj_prod")
                   unless { principal in Bulkhead::Role::"admin" };"#,
        ),
        (
            "pol_eng",
            r#"permit(principal is Bulkhead::User, action == Bulkhead::Action::"sandbox.exec", resource)
                   when { principal.groups.contains("oncall") };"#,
        ),
        (
            "pol_creator",
            r#"permit(principal is Bulkhead::Sandbox, action == Bulkhead::Action::"sandbox.exec", resource)
                   when { principal has creator && principal.creator == "user:alice" };"#,
        ),
    ]);
    let d = ask(&set, &sandbox("sbx_9"), "sandbox.list", &ResourceRef::Namespace("acme".into()), None);
    assert_eq!((d.allowed, d.policies), (true, vec!["pol_list".to_owned()]));

    let prod = ResourceRef::Filesystem { id: "fs_1".into(), project: Some("prj_prod".into()) };
    let dev = ResourceRef::Filesystem { id: "fs_2".into(), project: Some("prj_dev".into()) };
    assert!(!ask(&set, &key(Role::Developer), "filesystem.mount_rw", &prod, None).allowed);
    assert!(ask(&set, &key(Role::Developer), "filesystem.mount_rw", &dev, None).allowed);
    assert!(ask(&set, &key(Role::Admin), "filesystem.mount_rw", &prod, None).allowed);

    let sbx = ResourceRef::Sandbox { id: "sbx_1".into(), project: None };
    let oncall = PrincipalRef::User {
        sub: "bob".into(),
        role: Role::Viewer,
        email: String::new(),
        groups: vec!["oncall".into()],
    };
    assert!(ask(&set, &oncall, "sandbox.exec", &sbx, None).allowed);
    assert!(!ask(&set, &user(Role::Viewer), "sandbox.exec", &sbx, None).allowed);

    let child = PrincipalRef::Sandbox { id: "sbx_7".into(), creator: "user:alice".into(), project: None, task: None };
    assert!(ask(&set, &child, "sandbox.exec", &sbx, None).allowed);
    assert!(!ask(&set, &sandbox("sbx_7"), "sandbox.exec", &sbx, None).allowed);
}

#[test]
fn custom_permits_cannot_lift_the_builtin_forbids() {
    let set = compiled(&[
        ("pol_a", r#"permit(principal, action == Bulkhead::Action::"secret.read", resource);"#),
        ("pol_b", r#"permit(principal, action == Bulkhead::Action::"platform.audit.read", resource);"#),
    ]);
    let d = ask(&set, &key(Role::Owner), "secret.read", &resource_for("secret.read"), None);
    assert_eq!((d.allowed, d.policies), (false, vec!["builtin.secret-values".to_owned()]));
    let d = ask(&set, &sandbox("sbx_1"), "platform.audit.read", &ResourceRef::Platform, None);
    assert_eq!((d.allowed, d.policies), (false, vec!["builtin.operator-only".to_owned()]));
}

#[test]
fn sandbox_secret_reads_can_be_narrowed() {
    let set = compiled(&[(
        "pol_secret",
        r#"forbid(principal, action == Bulkhead::Action::"secret.read", resource == Bulkhead::Secret::"prod-db")
               unless { principal == Bulkhead::Sandbox::"sbx_deploy" };"#,
    )]);
    let secret = ResourceRef::Secret("prod-db".into());
    assert!(!ask(&set, &sandbox("sbx_1"), "secret.read", &secret, None).allowed);
    assert!(ask(&set, &sandbox("sbx_deploy"), "secret.read", &secret, None).allowed);
    assert!(ask(&set, &sandbox("sbx_1"), "secret.read", &ResourceRef::Secret("other".into()), None).allowed);
}

#[test]
fn bad_requests_are_denied_with_an_error() {
    let set = Engine::new().builtin();
    let d = ask(&set, &PrincipalRef::Admin, "sandbox.launch", &ResourceRef::Namespace("acme".into()), None);
    assert!(!d.allowed);
    assert!(d.errors[0].contains("unknown action"), "{d:?}");
    // A resource of the wrong type for the action.
    let d = ask(&set, &key(Role::Owner), "sandbox.exec", &ResourceRef::Namespace("acme".into()), None);
    assert!(!d.allowed);
    assert!(d.errors[0].contains("does not match the schema"), "{d:?}");
}

fn refused(text: &str) -> String {
    chain(&Engine::new().check_policy(text).expect_err(text))
}

/// The error and its sources, as the server prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

#[test]
fn check_policy_refuses_what_the_schema_does_not_know() {
    let ok = r#"permit(principal == Bulkhead::User::"alice", action == Bulkhead::Action::"sandbox.exec", resource == Bulkhead::Sandbox::"sbx_123");"#;
    Engine::new().check_policy(ok).expect("valid");

    let err = refused(r#"permit(principal, action == Bulkhead::Action::"sandbox.launch", resource);"#);
    assert!(err.contains("does not match Bulkhead's schema") && err.contains("sandbox.launch"), "{err}");

    let err = refused(r#"permit(principal, action, resource == Bulkhead::Bucket::"b");"#);
    assert!(err.contains("Bulkhead::Bucket"), "{err}");

    let err = refused(
        r#"permit(principal is Bulkhead::Key, action == Bulkhead::Action::"sandbox.exec", resource) when { principal.email == "x" };"#,
    );
    assert!(err.contains("email"), "{err}");

    // creator is optional: using it without `has` is a type error in strict mode.
    let err = refused(
        r#"permit(principal is Bulkhead::Sandbox, action == Bulkhead::Action::"sandbox.exec", resource) when { principal.creator == "x" };"#,
    );
    assert!(err.contains("creator"), "{err}");
}

#[test]
fn check_policy_refuses_bad_shapes() {
    let err = refused("permit(principal, action, resource");
    assert!(err.starts_with("the policy does not parse:") && err.contains("line 1"), "{err}");
    let err = refused("allow(principal, action, resource);");
    assert!(err.starts_with("the policy does not parse:"), "{err}");

    let err = refused(r#"permit(principal == ?principal, action == Bulkhead::Action::"sandbox.exec", resource);"#);
    assert!(err.contains("templates"), "{err}");

    let two = "permit(principal, action, resource);\nforbid(principal, action, resource);";
    assert_eq!(refused(two), "expected exactly one policy statement, found 2");
    assert_eq!(refused("  // nothing\n"), "expected exactly one policy statement, found 0");

    for text in [
        r#"permit(principal == Bulkhead::Admin::"admin", action, resource);"#,
        r#"forbid(principal is Bulkhead::Admin, action, resource);"#,
        r#"forbid(principal, action, resource) when { principal is   Bulkhead :: Admin };"#,
        r#"forbid(principal, action, resource) unless { principal == Bulkhead::Admin::"admin" };"#,
    ] {
        assert!(refused(text).contains("mentions Bulkhead::Admin"), "{text}");
    }

    let big =
        format!("permit(principal, action, resource) when {{ \"{}\" == \"\" }};", "x".repeat(crate::MAX_POLICY_BYTES));
    assert!(refused(&big).contains("over the limit of 16384"), "{}", refused(&big));
}

#[test]
fn compile_names_the_refused_policy() {
    let engine = Engine::new();
    let good = "permit(principal, action, resource);";
    let err = engine.compile(&custom(&[("pol_a", good), ("pol_b", "nonsense")])).expect_err("refused");
    let PolicyError::Custom { id, source } = &err else { panic!("{err:?}") };
    assert_eq!(id, "pol_b");
    assert!(matches!(**source, PolicyError::Syntax(_)));

    let err = engine.compile(&custom(&[("pol_a", good), ("pol_a", good)])).expect_err("refused");
    assert!(matches!(err, PolicyError::Custom { source, .. } if matches!(*source, PolicyError::DuplicateId(_))));
    let err = engine.compile(&custom(&[("builtin.viewer", good)])).expect_err("refused");
    assert!(matches!(err, PolicyError::Custom { source, .. } if matches!(*source, PolicyError::ReservedId(_))));

    let set = engine.compile(&custom(&[("pol_a", good)])).expect("valid");
    assert_eq!(set.len(), engine.builtin().len() + 1);
}

#[test]
fn the_mixed_policies_are_valid() {
    let set = Engine::new().compile(&mixed_policies(100)).expect("valid");
    assert_eq!(set.len(), Engine::new().builtin().len() + 100);
    let dev = key(Role::Developer);
    assert!(
        !ask(&set, &dev, "sandbox.exec", &ResourceRef::Sandbox { id: "sbx_0".into(), project: None }, None).allowed
    );
    assert!(
        ask(&set, &dev, "sandbox.exec", &ResourceRef::Sandbox { id: "sbx_target".into(), project: None }, None).allowed
    );
}

/// The fast path (native scopes, Cedar only for conditions) answers exactly as Cedar does with
/// the whole set, over every action and a spread of principals, resources and custom policies.
#[test]
fn the_fast_path_equals_cedar_alone() {
    let engine = Engine::new();
    let sets = [
        engine.builtin(),
        engine.compile(&mixed_policies(12)).expect("valid"),
        engine
            .compile(&custom(&[
                ("pol_all", r#"forbid(principal in Bulkhead::Role::"viewer", action, resource in Bulkhead::Project::"prj_a") unless { principal in Bulkhead::Role::"owner" };"#),
                ("pol_ns", r#"permit(principal is Bulkhead::Sandbox in Bulkhead::Namespace::"acme", action, resource in Bulkhead::Namespace::"acme");"#),
                ("pol_other_ns", r#"forbid(principal, action, resource in Bulkhead::Namespace::"other");"#),
                ("pol_is", r#"forbid(principal is Bulkhead::User, action == Bulkhead::Action::"sandbox.exec", resource is Bulkhead::Sandbox);"#),
                ("pol_grp", r#"permit(principal is Bulkhead::User, action in [Bulkhead::Action::"sandbox.exec", Bulkhead::Action::"key.create"], resource) when { principal.groups.contains("oncall") && principal.email like "*@example.com" };"#),
                ("pol_self", r#"permit(principal, action == Bulkhead::Action::"sandbox.delete", resource) when { resource == principal };"#),
                ("pol_creator", r#"forbid(principal is Bulkhead::Sandbox, action, resource) when { principal has creator && principal.creator == "key:key_2" && resource is Bulkhead::Secret };"#),
                ("pol_err", r#"forbid(principal, action == Bulkhead::Action::"filesystem.get", resource) when { 9223372036854775807 + 1 == 0 };"#),
                ("pol_err2", r#"permit(principal, action == Bulkhead::Action::"sandbox.exec", resource) when { 9223372036854775807 + 1 == 0 };"#),
                ("pol_role", r#"permit(principal, action == Bulkhead::Action::"key.revoke", resource) when { Bulkhead::Role::"owner" in Bulkhead::Role::"admin" && context has target_role && context.target_role == "owner" && principal in Bulkhead::Role::"admin" };"#),
                ("pol_key", r#"forbid(principal == Bulkhead::Key::"key_1", action in [Bulkhead::Action::"key.get", Bulkhead::Action::"key.revoke"], resource == Bulkhead::Key::"key_1");"#),
                ("pol_rattr", r#"permit(principal is Bulkhead::Key, action == Bulkhead::Action::"logs.read", resource is Bulkhead::Sandbox) when { resource.namespace == principal.namespace };"#),
            ]))
            .expect("valid"),
    ];
    let mut principals = vec![PrincipalRef::Admin];
    for role in Role::ALL {
        principals.push(PrincipalRef::Key { id: "key_1".into(), role });
        principals.push(PrincipalRef::User {
            sub: "bob".into(),
            role,
            email: "bob@example.com".into(),
            groups: if role == Role::Viewer { vec!["oncall".into()] } else { vec![] },
        });
    }
    principals.push(PrincipalRef::Sandbox {
        id: "sbx_1".into(),
        creator: "key:key_2".into(),
        project: None,
        task: None,
    });
    principals.push(PrincipalRef::Sandbox {
        id: "sbx_2".into(),
        creator: "user:bob".into(),
        project: None,
        task: None,
    });
    principals.push(PrincipalRef::Sandbox {
        id: "sbx_3".into(),
        creator: "key:key_1".into(),
        project: Some("prj_a".into()),
        task: None,
    });
    let resources = [
        ResourceRef::Platform,
        ResourceRef::Namespace("acme".into()),
        ResourceRef::Namespace("other".into()),
        ResourceRef::Sandbox { id: "sbx_1".into(), project: None },
        ResourceRef::Sandbox { id: "sbx_3".into(), project: Some("prj_a".into()) },
        ResourceRef::Sandbox { id: "sbx_4".into(), project: Some("prj_b".into()) },
        ResourceRef::Filesystem { id: "fs_1".into(), project: Some("prj_a".into()) },
        ResourceRef::Filesystem { id: "fs_2".into(), project: None },
        ResourceRef::Project("prj_a".into()),
        ResourceRef::Secret("s1".into()),
        ResourceRef::Key("key_1".into()),
        ResourceRef::Key("key_2".into()),
        ResourceRef::Policy("pol_1".into()),
        ResourceRef::Image("python".into()),
    ];
    let mut compared = 0;
    let mut with_errors = 0;
    for set in &sets {
        for action in ACTIONS.iter() {
            let position = engine.inner.actions[action];
            let applies = engine.inner.applies[position];
            let targets: &[Option<Role>] =
                if KEYS.contains(action) { &[None, Some(Role::Owner), Some(Role::Admin)] } else { &[None] };
            for resource in &resources {
                // Every resource of a valid type, and the namespace and platform always (often
                // invalid: both sides must refuse them).
                let kind = View::resource(resource, "acme").kind();
                if applies.resources & kind.bit() == 0
                    && !matches!(resource, ResourceRef::Namespace(n) if n == "acme")
                    && !matches!(resource, ResourceRef::Platform)
                {
                    continue;
                }
                for principal in &principals {
                    for &target_role in targets {
                        let req = Request { principal, namespace: "acme", action, resource, target_role };
                        let fast = set.decide(&req);
                        let slow = set.decide_with_cedar_only(&req);
                        assert_eq!(fast.allowed, slow.allowed, "{req:?}\nfast {fast:?}\nslow {slow:?}");
                        assert_eq!(fast.policies, slow.policies, "{req:?}");
                        assert_eq!(fast.errors.is_empty(), slow.errors.is_empty(), "{req:?}\n{fast:?}\n{slow:?}");
                        if !slow.errors.iter().any(|e| e.contains("does not match the schema")) {
                            assert_eq!(fast.errors, slow.errors, "{req:?}");
                        }
                        with_errors += usize::from(!fast.errors.is_empty());
                        compared += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 3000 && with_errors > 10, "{compared} compared, {with_errors} with errors");
}

/// `n` custom policies, a mix of four shapes: forbids and permits of exec on other sandboxes, of file writes on
/// filesystems, and of exec to named users.
fn mixed_policies(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = match i % 4 {
                0 => format!(
                    r#"forbid (principal, action == Bulkhead::Action::"sandbox.exec", resource == Bulkhead::Sandbox::"sbx_{i}");"#
                ),
                1 => format!(
                    r#"permit (principal == Bulkhead::Sandbox::"sbx_{i}", action == Bulkhead::Action::"sandbox.list", resource);"#
                ),
                2 => format!(
                    r#"forbid (principal, action in [Bulkhead::Action::"filesystem.file.write", Bulkhead::Action::"filesystem.mount_rw"], resource == Bulkhead::Filesystem::"fs_{i}") unless {{ principal in Bulkhead::Role::"owner" }};"#
                ),
                _ => format!(
                    r#"permit (principal in Bulkhead::Role::"viewer", action == Bulkhead::Action::"sandbox.exec", resource == Bulkhead::Sandbox::"sbx_{i}") when {{ principal is Bulkhead::User && principal.email == "user{i}@example.com" }};"#
                ),
            };
            (format!("pol_{i}"), text)
        })
        .collect()
}
