//! Bulkhead's authorization engine, in Cedar.
//!
//! Every API request is one action (its stable name, from [`ACTIONS`], which is
//! `bulkhead_core::Action::ALL`'s) asked by one principal about one resource inside one namespace. A namespace's policy set is the built-in policies,
//! which express the roles of PRODUCT.md ([`builtin_text`]), followed by the namespace's own
//! custom policies, each validated against Bulkhead's schema ([`schema_text`]) before it is
//! accepted. `forbid` always wins, as in Cedar.
//!
//! Use: one [`Engine`] for the process; [`Engine::check_policy`] when a tenant submits a policy;
//! [`Engine::compile`] once per change of a namespace's policies; [`decide`] per decision, which
//! draws the tenant boundary and the projects of a limited key before it asks the compiled set. A decision builds its entities from the request alone (principal and its role chain,
//! resource, namespace) and needs no store. It takes well under a microsecond when the policies in
//! scope have no `when`/`unless` (decided natively from an index by action and resource), and
//! tens of microseconds when Cedar must evaluate a condition; the answer is Cedar's either way
//! (see `decide.rs`).
//!
//! **Invariant:** [`decide`] is the one decision function, and the only caller of
//! [`CompiledSet::decide`] (the workspace's `clippy.toml` refuses any other). The engine decides
//! within one namespace; whether the principal belongs to the namespace at all is decided by
//! [`decide`] before the engine is asked.
//!
//! **Invariant:** the platform admin is decided by the built-in policies alone, never by a
//! namespace's custom policies, and custom policies may not mention it.

mod authorize;
pub mod bounds;
mod decide;
mod engine;
mod refs;

use bulkhead_core::Action;

pub use authorize::{decide, Ruling};
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

/// Every action of the API, by its stable name: `Bulkhead::Action::"<name>"` in Cedar. The names
/// of [`Action::ALL`], in its order.
pub const ACTIONS: [&str; Action::ALL.len()] = {
    let mut names = [""; Action::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Action::ALL[i].name();
        i += 1;
    }
    names
};

/// The actions whose context carries `target_role`, the role of the key concerned.
pub(crate) const KEY_ROLE_ACTIONS: &[&str] = &["key.create", "key.revoke"];

/// The action whose context carries `port` and `protocol`: a sandbox's egress.
pub(crate) const CONNECT_ACTION: &str = Action::NetworkConnect.name();

/// The action whose context carries `kind` and `title`: a tool call of a task's agent.
pub(crate) const TOOL_CALL_ACTION: &str = Action::TaskToolCall.name();

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The schema declares exactly the actions of `Action::ALL`: an action added to one and not
    /// the other fails here, not in production.
    #[test]
    fn the_schema_declares_exactly_every_action() {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).expect("the schema parses");
        let declared: BTreeSet<String> = schema
            .actions()
            .inspect(|a| assert_eq!(a.type_name().to_string(), "Bulkhead::Action"))
            .map(|a| a.id().unescaped().to_owned())
            .collect();
        let ours: BTreeSet<String> = Action::ALL.iter().map(|a| a.name().to_owned()).collect();
        assert_eq!(declared, ours);
        assert_eq!(ACTIONS.len(), Action::ALL.len());
    }
}
