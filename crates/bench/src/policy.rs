//! Authorization decisions per second: Bulkhead's policy engine (`Engine::compile`, then
//! `CompiledSet::decide`, which answers from an index and asks Cedar only for conditions),
//! against the baseline of Cedar alone evaluating the same request over the whole set, with
//! the entities the engine gives it (the principal with its role chain and namespace, the
//! resource in its namespace).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context as _};
use bulkhead_core::Role;
use bulkhead_policy::{CompiledSet, Engine, PrincipalRef, Request, ResourceRef};
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet, RestrictedExpression,
    Schema,
};
use serde::Serialize;

/// The namespace, principal and resource of the measured request: a developer key's
/// `sandbox.exec` of a sandbox no custom policy names.
const NAMESPACE: &str = "acme";
const KEY: &str = "key_bench";
const TARGET: &str = "sbx_target";

/// The policy figures of the bench.
#[derive(Debug, Serialize)]
pub struct PolicyBench {
    pub custom_policies: usize,
    pub decisions_per_s: f64,
    pub cedar_alone_per_s: f64,
    pub vs_cedar_alone: f64,
}

/// `sandbox.exec` decisions with 100 custom policies: the engine, then Cedar alone on the
/// same set (the baseline).
pub fn policy_bench() -> anyhow::Result<PolicyBench> {
    let n = 100;
    let decisions_per_s = engine_decisions_per_s(n, 200_000)?;
    let cedar_alone_per_s = cedar_alone_decisions_per_s(n, 2_000)?;
    Ok(PolicyBench {
        custom_policies: n,
        decisions_per_s,
        cedar_alone_per_s,
        vs_cedar_alone: decisions_per_s / cedar_alone_per_s,
    })
}

/// The shapes of the custom policies, `{i}` standing for the policy's number: forbids and
/// permits of exec on other sandboxes, of file writes on filesystems, and of exec to named users.
const SHAPES: [&str; 4] = [
    r#"forbid (principal, action == Bulkhead::Action::"sandbox.exec", resource == Bulkhead::Sandbox::"sbx_{i}");"#,
    r#"permit (principal == Bulkhead::Sandbox::"sbx_{i}", action == Bulkhead::Action::"sandbox.list", resource);"#,
    r#"forbid (principal, action in [Bulkhead::Action::"filesystem.file.write", Bulkhead::Action::"filesystem.mount_rw"], resource == Bulkhead::Filesystem::"fs_{i}") unless { principal in Bulkhead::Role::"owner" };"#,
    r#"permit (principal in Bulkhead::Role::"viewer", action == Bulkhead::Action::"sandbox.exec", resource == Bulkhead::Sandbox::"sbx_{i}") when { principal is Bulkhead::User && principal.email == "user{i}@example.com" };"#,
];

/// `n` custom policies, `pol_0` to `pol_{n-1}`, of the four [`SHAPES`] in turn. None of them
/// names the measured request's sandbox.
pub fn policies(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("pol_{i}"), SHAPES[i % SHAPES.len()].replace("{i}", &i.to_string()))).collect()
}

/// The principal and resource of a developer key's `sandbox.exec` of a sandbox.
struct Exec {
    principal: PrincipalRef,
    resource: ResourceRef,
}

impl Exec {
    fn of(sandbox: &str) -> Exec {
        Exec {
            principal: PrincipalRef::Key { id: KEY.to_owned(), role: Role::Developer },
            resource: ResourceRef::Sandbox { id: sandbox.to_owned(), project: None },
        }
    }

    fn request(&self) -> Request<'_> {
        Request {
            principal: &self.principal,
            namespace: NAMESPACE,
            action: "sandbox.exec",
            resource: &self.resource,
            target_role: None,
        }
    }
}

/// The engine's answer to `req`.
// The engine is asked directly, not through the server's decision function: what is measured
// is the engine itself, with no HTTP, principal lookup or audit record around it.
#[allow(clippy::disallowed_methods)]
#[inline]
fn decide(set: &CompiledSet, req: &Request<'_>) -> bool {
    set.decide(req).allowed
}

/// Whether the engine allows a developer key's `sandbox.exec` of `sandbox` in `set`.
pub fn engine_allows(set: &CompiledSet, sandbox: &str) -> bool {
    decide(set, &Exec::of(sandbox).request())
}

/// Decisions per second of the engine with `n` custom policies, over `iters` decisions.
pub fn engine_decisions_per_s(n: usize, iters: usize) -> anyhow::Result<f64> {
    let set = Engine::new().compile(&policies(n)).context("compile the bench's policies")?;
    let exec = Exec::of(TARGET);
    let req = exec.request();
    if !decide(&set, &req) {
        bail!("the engine refuses the bench's request");
    }
    let start = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(decide(&set, std::hint::black_box(&req)));
    }
    Ok(iters as f64 / start.elapsed().as_secs_f64())
}

/// The baseline: Cedar alone, the built-in and `custom` policies in one set, and the entities of
/// a developer key's request in the namespace.
pub struct CedarAlone {
    schema: Schema,
    policies: PolicySet,
    entities: Vec<Entity>,
    authorizer: Authorizer,
    principal: EntityUid,
    action: EntityUid,
}

fn uid(kind: &str, id: &str) -> anyhow::Result<EntityUid> {
    EntityUid::from_str(&format!(r#"Bulkhead::{kind}::"{id}""#)).with_context(|| format!("the entity {kind} {id}"))
}

impl CedarAlone {
    pub fn new(custom: &[(String, String)]) -> anyhow::Result<CedarAlone> {
        let (schema, _warnings) = Schema::from_cedarschema_str(bulkhead_policy::schema_text()).context("the schema")?;
        let mut policies = PolicySet::from_str(bulkhead_policy::builtin_text()).context("the built-in policies")?;
        for (id, text) in custom {
            let policy = Policy::parse(Some(PolicyId::new(id)), text).with_context(|| format!("policy {id}"))?;
            policies.add(policy).with_context(|| format!("policy {id}"))?;
        }
        // A key is a member of its role and of every role below it, and of its namespace.
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        let developer = roles.iter().position(|r| *r == Role::Developer.as_str()).context("the developer role")?;
        let mut entities = Vec::new();
        for (i, role) in roles.iter().enumerate().skip(developer) {
            let below = roles[i + 1..].iter().map(|r| uid("Role", r)).collect::<anyhow::Result<HashSet<_>>>()?;
            entities.push(Entity::new_no_attrs(uid("Role", role)?, below));
        }
        let namespace = || ("namespace".to_owned(), RestrictedExpression::new_string(NAMESPACE.to_owned()));
        let mut key_parents =
            roles[developer..].iter().map(|r| uid("Role", r)).collect::<anyhow::Result<HashSet<_>>>()?;
        key_parents.insert(uid("Namespace", NAMESPACE)?);
        let principal = uid("Key", KEY)?;
        entities.push(Entity::new(principal.clone(), HashMap::from([namespace()]), key_parents)?);
        Ok(CedarAlone {
            schema,
            policies,
            entities,
            authorizer: Authorizer::new(),
            principal,
            action: uid("Action", "sandbox.exec")?,
        })
    }

    /// Whether Cedar allows the key's `sandbox.exec` of `sandbox`; the entities are built for
    /// each decision, as the engine builds them for each request.
    pub fn allows(&self, sandbox: &str) -> anyhow::Result<bool> {
        let resource = uid("Sandbox", sandbox)?;
        let namespace = ("namespace".to_owned(), RestrictedExpression::new_string(NAMESPACE.to_owned()));
        let mut entities = self.entities.clone();
        entities.push(Entity::new(
            resource.clone(),
            HashMap::from([namespace]),
            HashSet::from([uid("Namespace", NAMESPACE)?]),
        )?);
        let entities = Entities::from_entities(entities, None)?;
        let request = cedar_policy::Request::new(
            self.principal.clone(),
            self.action.clone(),
            resource,
            Context::empty(),
            Some(&self.schema),
        )?;
        let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
        Ok(response.decision() == Decision::Allow)
    }
}

/// Decisions per second of Cedar alone with the built-in and `n` custom policies, over `iters`
/// decisions.
pub fn cedar_alone_decisions_per_s(n: usize, iters: usize) -> anyhow::Result<f64> {
    let cedar = CedarAlone::new(&policies(n))?;
    if !cedar.allows(TARGET)? {
        bail!("Cedar alone refuses the bench's request");
    }
    let start = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(cedar.allows(std::hint::black_box(TARGET))?);
    }
    Ok(iters as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policies are valid, the measured request is allowed and a named sandbox's exec is
    /// forbidden, and Cedar alone answers as the engine does.
    #[test]
    fn the_baseline_answers_as_the_engine() {
        let custom = policies(100);
        let set = Engine::new().compile(&custom).expect("valid");
        assert_eq!(set.len(), Engine::new().builtin().len() + 100);
        let cedar = CedarAlone::new(&custom).expect("the baseline builds");
        for (sandbox, allowed) in [(TARGET, true), ("sbx_0", false), ("sbx_3", true), ("sbx_4", false)] {
            assert_eq!(engine_allows(&set, sandbox), allowed, "engine on {sandbox}");
            assert_eq!(cedar.allows(sandbox).expect("decides"), allowed, "Cedar alone on {sandbox}");
        }
    }
}
