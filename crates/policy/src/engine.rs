//! The engine: the schema and the built-in policies, parsed once; a namespace's compiled set; and
//! decisions.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use bulkhead_core::Role;
use cedar_policy::{
    Authorizer, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};
use miette::Diagnostic;

use crate::bounds::{self, Exceeded};
use crate::decide::{AppliesTo, Index, Kind};
use crate::refs::{PrincipalRef, ResourceRef};
use crate::{ACTIONS, BUILTIN, SCHEMA};

/// Prefix of the ids of the built-in policies; custom policies may not use it.
const BUILTIN_PREFIX: &str = "builtin.";

/// Why a custom policy is refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is too large or nests too deeply to be given to Cedar (see [`crate::bounds`]).
    #[error("the policy is refused before parsing")]
    Bounds(#[from] Exceeded),
    /// The custom policies of a namespace together are too large (see [`crate::bounds`]).
    #[error("the namespace's policies together are refused")]
    SetBounds(#[source] Exceeded),
    /// Cedar's parse errors, with their positions.
    #[error("the policy does not parse: {0}")]
    Syntax(String),
    #[error("expected exactly one policy statement, found {0}")]
    Count(usize),
    #[error("templates (policies with ?principal or ?resource) are not supported; name the entities instead")]
    Template,
    #[error(
        "the policy mentions Bulkhead::Admin; the platform operator is decided by the built-in policies alone \
         and is not a namespace's to restrict"
    )]
    MentionsAdmin,
    /// Cedar's validation errors against Bulkhead's schema.
    #[error("the policy does not match Bulkhead's schema: {0}")]
    Invalid(String),
    #[error("policy id {0:?} is reserved for the built-in policies")]
    ReservedId(String),
    #[error("policy id {0:?} is given twice")]
    DuplicateId(String),
    /// One of the custom policies given to [`Engine::compile`] is refused.
    #[error("custom policy {id} is refused")]
    Custom {
        id: String,
        #[source]
        source: Box<PolicyError>,
    },
}

/// One authorization question, inside `namespace`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub principal: &'a PrincipalRef,
    pub namespace: &'a str,
    /// One of [`ACTIONS`](crate::ACTIONS); any other name is denied, with an error.
    pub action: &'a str,
    pub resource: &'a ResourceRef,
    /// For `key.create` and `key.revoke`: the role of the key concerned, as `context.target_role`.
    /// Ignored for other actions.
    pub target_role: Option<Role>,
}

/// The answer, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that decided, sorted: the permits that allowed, or the forbids that
    /// denied. Empty when nothing permitted (the default deny).
    pub policies: Vec<String>,
    /// Errors met while deciding: policies that failed to evaluate (they are skipped, as Cedar
    /// does), or a request that could not be asked at all (then the answer is deny). Sorted.
    pub errors: Vec<String>,
}

/// Bulkhead's authorization engine. Build one per process; clones share it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A namespace's policy set, ready to decide: the built-in policies and its custom ones.
#[derive(Clone)]
pub struct CompiledSet {
    pub(crate) inner: Arc<Inner>,
    pub(crate) index: Arc<Index>,
}

pub(crate) struct Inner {
    pub(crate) schema: Schema,
    validator: Validator,
    builtin: Vec<Policy>,
    pub(crate) builtin_index: Arc<Index>,
    pub(crate) authorizer: Authorizer,
    /// Entity type names by [`Kind`].
    types: Vec<EntityTypeName>,
    /// Position of each action in [`ACTIONS`].
    pub(crate) actions: HashMap<&'static str, usize>,
    /// By position in [`ACTIONS`].
    pub(crate) action_uids: Vec<EntityUid>,
    pub(crate) applies: Vec<AppliesTo>,
    /// The role entities in [`Role::ALL`]'s order, each with all roles below it as parents.
    pub(crate) roles: Vec<Entity>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("builtin", &self.inner.builtin.len()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CompiledSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSet").field("policies", &self.len()).finish_non_exhaustive()
    }
}

fn type_name(name: &str) -> EntityTypeName {
    EntityTypeName::from_str(name).expect("the entity type names of Bulkhead's schema are valid Cedar names")
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// Parses the schema and the built-in policies. They are part of the crate and checked by its
    /// tests, so a failure here is a bug and panics.
    /// The process's engine, built once (parsing the schema and the built-in policies is the
    /// expensive part); clones share it.
    pub fn shared() -> Self {
        static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
        ENGINE.get_or_init(Engine::new).clone()
    }

    pub fn new() -> Self {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).expect("Bulkhead's schema is valid (checked by the tests)");
        let parsed = PolicySet::from_str(BUILTIN).expect("the built-in policies parse (checked by the tests)");
        let builtin: Vec<Policy> = parsed
            .policies()
            .map(|p| {
                let id = p.annotation("id").expect("every built-in policy has an @id (checked by the tests)");
                p.new_id(PolicyId::new(id))
            })
            .collect();
        let validator = Validator::new(schema.clone());
        let types: Vec<EntityTypeName> = Kind::ALL.iter().map(|k| type_name(k.cedar())).collect();

        let action_type = type_name("Bulkhead::Action");
        let actions: HashMap<&'static str, usize> = ACTIONS.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let action_uids: Vec<EntityUid> =
            ACTIONS.iter().map(|a| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a))).collect();
        let applies = action_uids
            .iter()
            .map(|a| AppliesTo {
                principals: schema.principals_for_action(a).map(kind_bits).unwrap_or(0),
                resources: schema.resources_for_action(a).map(kind_bits).unwrap_or(0),
            })
            .collect();

        let role_type = type_name("Bulkhead::Role");
        let role_uids: Vec<EntityUid> = Role::ALL
            .iter()
            .map(|r| EntityUid::from_type_name_and_id(role_type.clone(), EntityId::new(r.as_str())))
            .collect();
        let roles = (0..role_uids.len())
            .map(|i| Entity::new_no_attrs(role_uids[i].clone(), role_uids[i + 1..].iter().cloned().collect()))
            .collect();
        let builtin_index = Arc::new(Index::build(&builtin, &actions));

        Engine {
            inner: Arc::new(Inner {
                schema,
                validator,
                builtin,
                builtin_index,
                authorizer: Authorizer::new(),
                types,
                actions,
                action_uids,
                applies,
                roles,
            }),
        }
    }

    /// The built-in policies alone: the set of a namespace without custom policies.
    pub fn builtin(&self) -> CompiledSet {
        CompiledSet { inner: self.inner.clone(), index: self.inner.builtin_index.clone() }
    }

    /// Checks one custom policy: within the bounds of [`crate::bounds`] (size and nesting,
    /// checked before Cedar parses it), exactly one static policy (no template), not mentioning
    /// `Bulkhead::Admin`, and valid against the schema in strict mode. The error names the bound
    /// passed, or carries Cedar's messages.
    ///
    /// Call it, [`Engine::compile`] and [`CompiledSet::decide`] on a thread with at least
    /// [`bounds::STACK_SIZE`] bytes of stack: the bounds are chosen for it.
    pub fn check_policy(&self, text: &str) -> Result<(), PolicyError> {
        self.inner.parse_custom("submitted", text).map(|_| ())
    }

    /// A namespace's set: the built-in policies and `custom`, given as `(id, text)` pairs with ids
    /// like `pol_...`. Every custom policy is checked as by [`Engine::check_policy`], and all of
    /// them together must be within [`bounds::MAX_SET_BYTES`] and [`bounds::MAX_SET_TOKENS`],
    /// checked before any is parsed. Compile once per change of the namespace's policies and keep
    /// the result.
    pub fn compile(&self, custom: &[(String, String)]) -> Result<CompiledSet, PolicyError> {
        let mut measures = Vec::with_capacity(custom.len());
        for (id, text) in custom {
            let measured = bounds::measure(text)
                .map_err(|e| PolicyError::Custom { id: id.clone(), source: Box::new(PolicyError::Bounds(e)) })?;
            measures.push(measured);
        }
        bounds::check_set(measures).map_err(PolicyError::SetBounds)?;
        let mut ids: HashSet<&str> = HashSet::with_capacity(custom.len());
        let mut policies = Vec::with_capacity(custom.len());
        for (id, text) in custom {
            let checked = if id.starts_with(BUILTIN_PREFIX) {
                Err(PolicyError::ReservedId(id.clone()))
            } else if !ids.insert(id) {
                Err(PolicyError::DuplicateId(id.clone()))
            } else {
                self.inner.parse_custom(id, text)
            };
            policies.push(checked.map_err(|e| PolicyError::Custom { id: id.clone(), source: Box::new(e) })?);
        }
        let index = Index::build(self.inner.builtin.iter().chain(&policies), &self.inner.actions);
        Ok(CompiledSet { inner: self.inner.clone(), index: Arc::new(index) })
    }
}

impl Inner {
    pub(crate) fn type_of(&self, kind: Kind) -> EntityTypeName {
        self.types[kind as usize].clone()
    }

    fn parse_custom(&self, id: &str, text: &str) -> Result<Policy, PolicyError> {
        // Before anything recursive sees the text (Cedar's parser first).
        bounds::measure(text)?;
        let parsed = PolicySet::from_str(text)
            .map_err(|errs| PolicyError::Syntax(render_all(text, errs.iter().map(|e| e as &dyn Diagnostic))))?;
        if parsed.num_of_templates() > 0 {
            return Err(PolicyError::Template);
        }
        let mut policies = parsed.policies();
        let policy = match (policies.next(), policies.next()) {
            (Some(policy), None) => policy.new_id(PolicyId::new(id)),
            _ => return Err(PolicyError::Count(parsed.policies().count())),
        };
        // The JSON form names every entity type the policy mentions, in its scope and in its
        // conditions, whatever the spacing of the text.
        let json = policy.to_json().map_err(|e| PolicyError::Syntax(e.to_string()))?;
        if mentions(&json, "Bulkhead::Admin") {
            return Err(PolicyError::MentionsAdmin);
        }
        let single = PolicySet::from_policies([policy.clone()]).map_err(|_| PolicyError::DuplicateId(id.to_owned()))?;
        let result = self.validator.validate(&single, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors = result.validation_errors().map(|e| e as &dyn Diagnostic);
            return Err(PolicyError::Invalid(render_all(text, errors)));
        }
        Ok(policy)
    }
}

fn kind_bits<'a>(types: impl Iterator<Item = &'a EntityTypeName>) -> u16 {
    types.filter_map(Kind::of).fold(0, |bits, k| bits | k.bit())
}

pub(crate) fn role_index(role: Role) -> usize {
    match role {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Developer => 2,
        Role::Viewer => 3,
    }
}

/// True when some string in `value` is exactly `needle`.
fn mentions(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == needle,
        serde_json::Value::Array(items) => items.iter().any(|v| mentions(v, needle)),
        serde_json::Value::Object(map) => map.values().any(|v| mentions(v, needle)),
        _ => false,
    }
}

/// Cedar's errors, each with its position in `text` and its help, joined by "; ".
fn render_all<'a>(text: &str, errors: impl Iterator<Item = &'a dyn Diagnostic>) -> String {
    errors.map(|e| render(text, e)).collect::<Vec<_>>().join("; ")
}

fn render(text: &str, e: &dyn Diagnostic) -> String {
    let mut out = e.to_string();
    if let Some(offset) = e.labels().and_then(|mut labels| labels.next()).map(|l| l.offset()) {
        let before = &text.as_bytes()[..offset.min(text.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        out.push_str(&format!(" (at line {line}, column {column})"));
    }
    if let Some(help) = e.help() {
        out.push_str(&format!("; help: {help}"));
    }
    out
}

impl CompiledSet {
    /// Decides one request. The platform admin is decided by the built-in policies alone.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.try_decide(req).unwrap_or_else(|error| Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
        })
    }

    /// Number of policies in the set, built-in ones included.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Always false: the built-in policies are always there.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
