//! Bulkhead's authorization engine, in Cedar.
//!
//! Every API request is one action (its stable name, from [`ACTIONS`]) asked by one principal
//! about one resource inside one namespace. A namespace's policy set is the built-in policies,
//! which express the roles of PRODUCT.md ([`builtin_text`]), followed by the namespace's own
//! custom policies, each validated against Bulkhead's schema ([`schema_text`]) before it is
//! accepted. `forbid` always wins, as in Cedar.
//!
//! Use: one [`Engine`] for the process; [`Engine::check_policy`] when a tenant submits a policy;
//! [`Engine::compile`] once per change of a namespace's policies; [`CompiledSet::decide`] per
//! request. A decision builds its entities from the request alone (principal and its role chain,
//! resource, namespace) and needs no store. It takes well under a microsecond when the policies in
//! scope have no `when`/`unless` (decided natively from an index by action and resource), and
//! tens of microseconds when Cedar must evaluate a condition; the answer is Cedar's either way
//! (see `decide.rs`).
//!
//! **Invariant:** the engine decides within one namespace. Whether the principal belongs to the
//! namespace at all is decided by the server before the engine is asked.
//!
//! **Invariant:** the platform admin is decided by the built-in policies alone, never by a
//! namespace's custom policies, and custom policies may not mention it.

pub mod bounds;
mod decide;
mod engine;
mod refs;

pub use bounds::{MAX_POLICY_BYTES, STACK_SIZE};
pub use engine::{CompiledSet, Decision, Engine, PolicyError, Request};
pub use refs::{parse_action, parse_principal, parse_resource, PrincipalName, PrincipalRef, RefError, ResourceRef};

/// Bulkhead's Cedar schema, in Cedar's schema syntax. The server serves it so that tenants can
/// validate their policies offline.
pub fn schema_text() -> &'static str {
    SCHEMA
}

/// The built-in policies every namespace starts with, in Cedar's policy syntax.
pub fn builtin_text() -> &'static str {
    BUILTIN
}

const SCHEMA: &str = include_str!("bulkhead.cedarschema");
const BUILTIN: &str = include_str!("builtin.cedar");

/// Every action of the API, by its stable name: `Bulkhead::Action::"<name>"` in Cedar.
pub const ACTIONS: &[&str] = &[
    "namespace.get",
    "namespace.list",
    "namespace.create",
    "namespace.update",
    "namespace.delete",
    "key.create",
    "key.list",
    "key.get",
    "key.revoke",
    "audit.read",
    "audit.verify",
    "platform.audit.read",
    "platform.audit.verify",
    "sandbox.create",
    "sandbox.list",
    "sandbox.get",
    "sandbox.delete",
    "sandbox.exec",
    "sandbox.file.read",
    "sandbox.file.write",
    "project.create",
    "project.list",
    "project.delete",
    "filesystem.create",
    "filesystem.list",
    "filesystem.get",
    "filesystem.resize",
    "filesystem.delete",
    "filesystem.archive.read",
    "filesystem.archive.write",
    "filesystem.file.read",
    "filesystem.file.write",
    "filesystem.file.delete",
    "filesystem.mount_rw",
    "filesystem.mount_ro",
    "usage.read",
    "metrics.read",
    "platform.metrics.read",
    "logs.read",
    "identity.get",
    "identity.set",
    "policy.create",
    "policy.list",
    "policy.delete",
    "authz.explain",
    "secret.create",
    "secret.list",
    "secret.delete",
    "secret.read",
];

/// The actions whose context carries `target_role`, the role of the key concerned.
pub(crate) const KEY_ROLE_ACTIONS: &[&str] = &["key.create", "key.revoke"];
