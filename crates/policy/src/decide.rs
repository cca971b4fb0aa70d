//! Deciding a request fast, with exactly Cedar's answer.
//!
//! Cedar evaluates every policy of a set, and building the entity store of a request (it computes a
//! transitive closure) costs more than evaluating a few policies. Most policies, built-in or
//! custom, are scope alone (`permit(principal in Role::"developer", action in [...], resource)`,
//! `forbid(principal, action == ..., resource == Sandbox::"sbx_1")`), and a scope is decided by
//! comparing entity ids with the principal's and resource's ancestors, which the engine builds
//! itself. So a compiled set is indexed by action, and a request:
//!
//! 1. keeps only the policies whose scope matches (a policy whose scope does not match is false in
//!    Cedar too, and never errs: the scope is evaluated first and `&&` short-circuits);
//! 2. decides the scope-only ones natively (satisfied, no error possible);
//! 3. hands the rest (with `when`/`unless`) to Cedar, with the same entities, and merges: the
//!    decision is deny if any forbid is satisfied, else allow if any permit is, else deny; the
//!    reasons are the satisfied permits or forbids; the errors are Cedar's.
//!
//! This is Cedar's own semantics, so the answer is the one Cedar gives for the whole set; a
//! differential test checks it.

use std::collections::{HashMap, HashSet};

use bulkhead_core::Role;
use cedar_policy::{
    ActionConstraint, Context, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicySet,
    PrincipalConstraint, ResourceConstraint, RestrictedExpression,
};

use crate::engine::{role_index, CompiledSet, Decision, Inner, Request};
use crate::refs::{PrincipalRef, ResourceRef};
use crate::{CONNECT_ACTION, KEY_ROLE_ACTIONS, TOOL_CALL_ACTION};

/// The entity types of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Admin,
    Key,
    User,
    Sandbox,
    Role,
    Platform,
    Namespace,
    Project,
    Filesystem,
    Secret,
    Policy,
    Host,
    Image,
    Agent,
    Task,
}

impl Kind {
    pub(crate) const ALL: [Kind; 15] = [
        Kind::Admin,
        Kind::Key,
        Kind::User,
        Kind::Sandbox,
        Kind::Role,
        Kind::Platform,
        Kind::Namespace,
        Kind::Project,
        Kind::Filesystem,
        Kind::Secret,
        Kind::Policy,
        Kind::Host,
        Kind::Image,
        Kind::Agent,
        Kind::Task,
    ];

    pub(crate) fn cedar(self) -> &'static str {
        match self {
            Kind::Admin => "Bulkhead::Admin",
            Kind::Key => "Bulkhead::Key",
            Kind::User => "Bulkhead::User",
            Kind::Sandbox => "Bulkhead::Sandbox",
            Kind::Role => "Bulkhead::Role",
            Kind::Platform => "Bulkhead::Platform",
            Kind::Namespace => "Bulkhead::Namespace",
            Kind::Project => "Bulkhead::Project",
            Kind::Filesystem => "Bulkhead::Filesystem",
            Kind::Secret => "Bulkhead::Secret",
            Kind::Policy => "Bulkhead::Policy",
            Kind::Host => "Bulkhead::Host",
            Kind::Image => "Bulkhead::Image",
            Kind::Agent => "Bulkhead::Agent",
            Kind::Task => "Bulkhead::Task",
        }
    }

    pub(crate) fn of(name: &EntityTypeName) -> Option<Kind> {
        let name = name.to_string();
        Kind::ALL.into_iter().find(|k| k.cedar() == name)
    }

    pub(crate) fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// An entity of a policy's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Uid {
    kind: Kind,
    id: String,
}

impl Uid {
    fn of(uid: &EntityUid) -> Option<Uid> {
        Some(Uid { kind: Kind::of(uid.type_name())?, id: uid.id().unescaped().to_owned() })
    }
}

/// A principal or resource scope constraint.
#[derive(Debug, Clone)]
enum Scope {
    Any,
    Eq(Uid),
    In(Uid),
    Is(Kind),
    IsIn(Kind, Uid),
}

impl Scope {
    fn principal(c: PrincipalConstraint) -> Option<Scope> {
        Some(match c {
            PrincipalConstraint::Any => Scope::Any,
            PrincipalConstraint::Eq(u) => Scope::Eq(Uid::of(&u)?),
            PrincipalConstraint::In(u) => Scope::In(Uid::of(&u)?),
            PrincipalConstraint::Is(t) => Scope::Is(Kind::of(&t)?),
            PrincipalConstraint::IsIn(t, u) => Scope::IsIn(Kind::of(&t)?, Uid::of(&u)?),
        })
    }

    fn resource(c: ResourceConstraint) -> Option<Scope> {
        Some(match c {
            ResourceConstraint::Any => Scope::Any,
            ResourceConstraint::Eq(u) => Scope::Eq(Uid::of(&u)?),
            ResourceConstraint::In(u) => Scope::In(Uid::of(&u)?),
            ResourceConstraint::Is(t) => Scope::Is(Kind::of(&t)?),
            ResourceConstraint::IsIn(t, u) => Scope::IsIn(Kind::of(&t)?, Uid::of(&u)?),
        })
    }

    /// Cedar's scope semantics: `in` holds for the entity itself and its ancestors.
    fn matches(&self, v: &View<'_>) -> bool {
        match self {
            Scope::Any => true,
            Scope::Eq(u) => v.is(u),
            Scope::In(u) => v.within(u),
            Scope::Is(k) => v.kind == *k,
            Scope::IsIn(k, u) => v.kind == *k && v.within(u),
        }
    }
}

/// A policy of a compiled set, with its scope in native form.
struct Entry {
    id: String,
    forbid: bool,
    /// `None`: a scope the index does not understand; Cedar decides it.
    principal: Option<Scope>,
    resource: Option<Scope>,
    /// Cedar must evaluate it: it has a `when`/`unless`, or a scope the index does not understand.
    cedar: bool,
    policy: Policy,
}

/// The entries of one action: those naming one resource (`resource == ...`), by the resource's id,
/// and the others. A request looks at the others and at those naming its resource, so a namespace
/// with a thousand policies on single sandboxes costs no more than one with a few.
#[derive(Default, Clone)]
struct Candidates {
    general: Vec<u32>,
    by_resource: HashMap<String, Vec<u32>>,
}

/// A policy set indexed by action.
pub(crate) struct Index {
    entries: Vec<Entry>,
    /// For each action of [`crate::ACTIONS`], by position, the entries whose action scope holds.
    by_action: Vec<Candidates>,
}

impl Index {
    pub(crate) fn build<'a>(
        policies: impl IntoIterator<Item = &'a Policy>,
        actions: &HashMap<&'static str, usize>,
    ) -> Index {
        let mut by_action: Vec<Candidates> = vec![Candidates::default(); actions.len()];
        let mut entries = Vec::new();
        for policy in policies {
            let index = u32::try_from(entries.len()).expect("fewer than 2^32 policies in a set");
            let position = |uid: &EntityUid| {
                // An action of another type, or unknown, never equals the request's action, and
                // actions have no hierarchy: such a constraint element matches nothing.
                (uid.type_name().to_string() == "Bulkhead::Action").then(|| actions.get(uid.id().unescaped())).flatten()
            };
            let mut positions: Vec<usize> = match policy.action_constraint() {
                ActionConstraint::Any => (0..actions.len()).collect(),
                ActionConstraint::Eq(uid) => position(&uid).into_iter().copied().collect(),
                ActionConstraint::In(uids) => uids.iter().filter_map(position).copied().collect(),
            };
            positions.sort_unstable();
            positions.dedup();
            let principal = Scope::principal(policy.principal_constraint());
            let resource = Scope::resource(policy.resource_constraint());
            for p in positions {
                match &resource {
                    Some(Scope::Eq(uid)) => by_action[p].by_resource.entry(uid.id.clone()).or_default().push(index),
                    _ => by_action[p].general.push(index),
                }
            }
            entries.push(Entry {
                id: policy.id().to_string(),
                forbid: policy.effect() == Effect::Forbid,
                cedar: policy.has_non_scope_constraint() || principal.is_none() || resource.is_none(),
                principal,
                resource,
                policy: policy.clone(),
            });
        }
        Index { entries, by_action }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The indexed policies as one Cedar set, for comparing the fast path with Cedar alone.
    #[cfg(test)]
    pub(crate) fn policy_set(&self) -> PolicySet {
        PolicySet::from_policies(self.entries.iter().map(|e| e.policy.clone())).expect("ids are unique")
    }
}

/// A principal or resource as the scope sees it: its type, id and ancestors (transitively
/// closed). The Cedar entities of the request are built from the same views.
pub(crate) struct View<'a> {
    kind: Kind,
    id: &'a str,
    ancestors: Vec<(Kind, &'a str)>,
}

impl<'a> View<'a> {
    fn is(&self, u: &Uid) -> bool {
        self.kind == u.kind && self.id == u.id
    }

    fn within(&self, u: &Uid) -> bool {
        self.is(u) || self.ancestors.iter().any(|(k, id)| *k == u.kind && *id == u.id)
    }

    #[cfg(test)]
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    fn same(&self, other: &View<'_>) -> bool {
        self.kind == other.kind && self.id == other.id
    }

    pub(crate) fn principal(p: &'a PrincipalRef, ns: &'a str) -> View<'a> {
        let with_role = |kind, id, role: Role| {
            let mut ancestors: Vec<(Kind, &str)> =
                Role::ALL[role_index(role)..].iter().map(|r| (Kind::Role, r.as_str())).collect();
            ancestors.push((Kind::Namespace, ns));
            View { kind, id, ancestors }
        };
        match p {
            PrincipalRef::Admin => View { kind: Kind::Admin, id: "admin", ancestors: Vec::new() },
            PrincipalRef::Key { id, role } => with_role(Kind::Key, id, *role),
            PrincipalRef::User { sub, role, .. } => with_role(Kind::User, sub, *role),
            PrincipalRef::Sandbox { id, project, .. } => {
                let mut ancestors = vec![(Kind::Namespace, ns)];
                if let Some(project) = project {
                    ancestors.push((Kind::Project, project.as_str()));
                }
                View { kind: Kind::Sandbox, id, ancestors }
            }
        }
    }

    pub(crate) fn resource(r: &'a ResourceRef, ns: &'a str) -> View<'a> {
        let in_ns = |kind, id| View { kind, id, ancestors: vec![(Kind::Namespace, ns)] };
        match r {
            ResourceRef::Platform => View { kind: Kind::Platform, id: "platform", ancestors: Vec::new() },
            ResourceRef::Namespace(name) => View { kind: Kind::Namespace, id: name, ancestors: Vec::new() },
            ResourceRef::Sandbox { id, project } | ResourceRef::Filesystem { id, project } => {
                let kind = if matches!(r, ResourceRef::Sandbox { .. }) { Kind::Sandbox } else { Kind::Filesystem };
                let mut v = in_ns(kind, id);
                if let Some(project) = project {
                    v.ancestors.push((Kind::Project, project));
                }
                v
            }
            ResourceRef::Project(id) => in_ns(Kind::Project, id),
            ResourceRef::Secret(name) => in_ns(Kind::Secret, name),
            ResourceRef::Key(id) => in_ns(Kind::Key, id),
            ResourceRef::Policy(id) => in_ns(Kind::Policy, id),
            ResourceRef::Image(name) => in_ns(Kind::Image, name),
            ResourceRef::Host { name, .. } => in_ns(Kind::Host, name),
            ResourceRef::Agent(name) => in_ns(Kind::Agent, name),
            ResourceRef::Task { id, project } => {
                let mut v = in_ns(Kind::Task, id);
                if let Some(project) = project {
                    v.ancestors.push((Kind::Project, project));
                }
                v
            }
            ResourceRef::ToolCall { task, .. } => in_ns(Kind::Task, task),
        }
    }
}

/// The principal and resource types an action applies to, as bit sets of [`Kind::bit`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AppliesTo {
    pub(crate) principals: u16,
    pub(crate) resources: u16,
}

impl CompiledSet {
    pub(crate) fn try_decide(&self, req: &Request<'_>) -> Result<Decision, String> {
        let inner = &*self.inner;
        let &position = inner.actions.get(req.action).ok_or_else(|| format!("unknown action {:?}", req.action))?;
        let p = View::principal(req.principal, req.namespace);
        let r = View::resource(req.resource, req.namespace);
        check_types(inner.applies[position], &p, &r, req.action)?;

        let index = match req.principal {
            PrincipalRef::Admin => &*inner.builtin_index,
            _ => &*self.index,
        };
        let mut permits: Vec<&str> = Vec::new();
        let mut forbids: Vec<&str> = Vec::new();
        let mut for_cedar: Vec<&Entry> = Vec::new();
        let candidates = &index.by_action[position];
        let named = candidates.by_resource.get(r.id).map(Vec::as_slice).unwrap_or_default();
        for &i in candidates.general.iter().chain(named) {
            let e = &index.entries[i as usize];
            if !e.principal.as_ref().is_none_or(|s| s.matches(&p)) || !e.resource.as_ref().is_none_or(|s| s.matches(&r))
            {
                continue;
            }
            if e.cedar {
                for_cedar.push(e);
            } else if e.forbid {
                forbids.push(&e.id);
            } else {
                permits.push(&e.id);
            }
        }

        let (errors, cedar_reasons, cedar_denied) = if for_cedar.is_empty() {
            (Vec::new(), Vec::new(), false)
        } else {
            let set =
                PolicySet::from_policies(for_cedar.iter().map(|e| e.policy.clone())).map_err(|e| e.to_string())?;
            let entities = Entities::from_entities(inner.entities(req, &p, &r)?, None).map_err(|e| e.to_string())?;
            let request = inner.request(req, &p, &r, position, false)?;
            let response = inner.authorizer.is_authorized(&request, &set, &entities);
            let mut errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
            errors.sort_unstable();
            let reasons: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
            (errors, reasons, response.decision() == cedar_policy::Decision::Deny)
        };
        // Cedar's reasons are the satisfied forbids when it denies (none: no permit held either),
        // the satisfied permits when it allows.
        if cedar_denied {
            forbids.extend(cedar_reasons.iter().map(String::as_str));
        } else {
            permits.extend(cedar_reasons.iter().map(String::as_str));
        }
        let allowed = forbids.is_empty() && !permits.is_empty();
        let mut policies: Vec<String> =
            if allowed { permits } else { forbids }.into_iter().map(str::to_owned).collect();
        policies.sort_unstable();
        Ok(Decision { allowed, policies, errors })
    }

    /// The same question asked of Cedar alone, with the whole set: what the fast path must equal.
    #[cfg(test)]
    pub(crate) fn decide_with_cedar_only(&self, req: &Request<'_>) -> Decision {
        let run = || -> Result<Decision, String> {
            let inner = &*self.inner;
            let &position = inner.actions.get(req.action).ok_or_else(|| format!("unknown action {:?}", req.action))?;
            let p = View::principal(req.principal, req.namespace);
            let r = View::resource(req.resource, req.namespace);
            let mut entities = inner.entities(req, &p, &r)?;
            let ns = EntityUid::from_type_name_and_id(inner.type_of(Kind::Namespace), EntityId::new(req.namespace));
            if !entities.iter().any(|e| e.uid() == ns) {
                entities.push(Entity::new_no_attrs(ns, HashSet::new()));
            }
            let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
            let request = inner.request(req, &p, &r, position, true)?;
            let set = match req.principal {
                PrincipalRef::Admin => inner.builtin_index.policy_set(),
                _ => self.index.policy_set(),
            };
            let response = inner.authorizer.is_authorized(&request, &set, &entities);
            let mut policies: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
            policies.sort_unstable();
            let mut errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
            errors.sort_unstable();
            Ok(Decision { allowed: response.decision() == cedar_policy::Decision::Allow, policies, errors })
        };
        run().unwrap_or_else(|error| Decision { allowed: false, policies: Vec::new(), errors: vec![error] })
    }
}

/// The schema's check of a request's types, done natively: a resource of the wrong type for the
/// action (which the custom policies were not validated for) is an error, not a silent default.
fn check_types(applies: AppliesTo, p: &View<'_>, r: &View<'_>, action: &str) -> Result<(), String> {
    for (what, v, allowed) in [("principal", p, applies.principals), ("resource", r, applies.resources)] {
        if allowed & v.kind.bit() == 0 {
            return Err(format!(
                "the request does not match the schema: {what} type `{}` is not valid for `Bulkhead::Action::\"{action}\"`",
                v.kind.cedar()
            ));
        }
    }
    Ok(())
}

impl Inner {
    fn uid_of(&self, kind: Kind, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.type_of(kind), EntityId::new(id))
    }

    /// The Cedar entities of a request: the principal with its ancestors and attributes, the role
    /// entities above it, and the resource. The namespace, the platform and the admin have no
    /// attributes and no parents, so they are left out: an absent entity behaves the same.
    fn entities(&self, req: &Request<'_>, p: &View<'_>, r: &View<'_>) -> Result<Vec<Entity>, String> {
        let ns = |ns: &str| ("namespace".to_owned(), RestrictedExpression::new_string(ns.to_owned()));
        let parents = |v: &View<'_>| v.ancestors.iter().map(|(k, id)| self.uid_of(*k, id)).collect::<HashSet<_>>();
        let mut out = Vec::with_capacity(7);
        let attrs = match req.principal {
            PrincipalRef::Admin => None,
            PrincipalRef::Key { role, .. } => {
                out.extend(self.roles[role_index(*role)..].iter().cloned());
                Some(HashMap::from([ns(req.namespace)]))
            }
            PrincipalRef::User { role, email, groups, .. } => {
                out.extend(self.roles[role_index(*role)..].iter().cloned());
                Some(HashMap::from([
                    ns(req.namespace),
                    ("email".to_owned(), RestrictedExpression::new_string(email.clone())),
                    (
                        "groups".to_owned(),
                        RestrictedExpression::new_set(
                            groups.iter().map(|g| RestrictedExpression::new_string(g.clone())),
                        ),
                    ),
                ]))
            }
            PrincipalRef::Sandbox { creator, task, .. } => {
                let mut attrs = HashMap::from([
                    ns(req.namespace),
                    ("creator".to_owned(), RestrictedExpression::new_string(creator.clone())),
                ]);
                if let Some(task) = task {
                    attrs
                        .insert("task".to_owned(), RestrictedExpression::new_entity_uid(self.uid_of(Kind::Task, task)));
                }
                Some(attrs)
            }
        };
        if let Some(attrs) = attrs {
            out.push(Entity::new(self.uid_of(p.kind, p.id), attrs, parents(p)).map_err(|e| e.to_string())?);
        }
        if !r.same(p) {
            let entity = match r.kind {
                Kind::Platform | Kind::Namespace => None,
                Kind::Sandbox | Kind::Key => Some(
                    Entity::new(self.uid_of(r.kind, r.id), HashMap::from([ns(req.namespace)]), parents(r))
                        .map_err(|e| e.to_string())?,
                ),
                _ => Some(Entity::new_no_attrs(self.uid_of(r.kind, r.id), parents(r))),
            };
            out.extend(entity);
        }
        Ok(out)
    }

    fn request(
        &self,
        req: &Request<'_>,
        p: &View<'_>,
        r: &View<'_>,
        position: usize,
        check: bool,
    ) -> Result<cedar_policy::Request, String> {
        let context = match (req.target_role, req.resource) {
            (Some(role), _) if KEY_ROLE_ACTIONS.contains(&req.action) => Context::from_pairs([(
                "target_role".to_owned(),
                RestrictedExpression::new_string(role.as_str().to_owned()),
            )])
            .map_err(|e| e.to_string())?,
            (_, ResourceRef::Host { port, protocol, .. }) if req.action == CONNECT_ACTION => Context::from_pairs([
                ("port".to_owned(), RestrictedExpression::new_long(i64::from(*port))),
                ("protocol".to_owned(), RestrictedExpression::new_string(protocol.clone())),
            ])
            .map_err(|e| e.to_string())?,
            (_, ResourceRef::ToolCall { kind, title, .. }) if req.action == TOOL_CALL_ACTION => Context::from_pairs([
                ("kind".to_owned(), RestrictedExpression::new_string(kind.clone())),
                ("title".to_owned(), RestrictedExpression::new_string(title.clone())),
            ])
            .map_err(|e| e.to_string())?,
            _ => Context::empty(),
        };
        let schema = check.then_some(&self.schema);
        cedar_policy::Request::new(
            self.uid_of(p.kind, p.id),
            self.action_uids[position].clone(),
            self.uid_of(r.kind, r.id),
            context,
            schema,
        )
        .map_err(|e| format!("the request does not match the schema: {e}"))
    }
}
