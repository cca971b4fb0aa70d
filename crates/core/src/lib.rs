//! Bulkhead's domain core: what a namespace, a key, a quota and a role are, who may do what
//! (`authz`), and how the tamper-evident audit chain is hashed and verified (`audit`).
//!
//! **Invariant:** this crate does no IO. It knows nothing of HTTP, SQL, files or the kernel; the
//! server and the store call into it, never the other way round.

pub mod audit;
pub mod authz;
pub mod egress;
pub mod ids;
pub mod outbound;
pub mod placement;
pub mod quota;
pub mod sealed;
pub mod token;
pub mod validate;

pub use authz::{tenancy, Action, Decision, Hidden, Principal, Role, Scope, Target, Tenancy};
pub use quota::{QuotaPatch, Quotas};
pub use validate::FieldError;
