//! The services under the HTTP handlers: namespaces (and their keys), projects, sandboxes (and
//! their background processes),
//! filesystems (and their files and archives), images, secrets, policies, audit reads, logs, metering and
//! the aggregated audit of denied egress;
//! [`records`] names the rows and runtime types they take and answer. They take validated domain
//! values (ids, rows a handler loaded and authorized, resolved secrets), act on the store and the
//! runtime through their traits, and answer [`ServiceError`]. Handlers parse, authorize, call a service and convert its answer.
//!
//! **Invariant:** nothing here knows HTTP: no axum, no `ApiError`, no status codes, no headers;
//! [`crate::error`] maps [`ServiceError`] to the API's status and code once. Nothing here decides
//! who may do what: the handler authorized every call before it was made.

pub mod agents;
pub mod audit;
pub mod egress;
pub mod egress_audit;
pub mod egress_broker;
pub mod filesystems;
pub mod image_build;
pub mod image_pull;
pub mod images;
pub mod listing;
pub mod logs;
pub mod metering;
pub mod namespaces;
pub mod nodes;
pub mod placement;
pub mod policies;
pub mod pools;
pub mod processes;
pub mod projects;
pub mod pull_proxy;
pub mod records;
pub mod sandboxes;
pub mod secrets;
pub mod tasks;

use std::future::Future;
use std::time::Duration;

use bulkhead_core::FieldError;
use bulkhead_runtime::files::FileError;
use bulkhead_runtime::hostreg::RegistryError;
use bulkhead_runtime::RuntimeError;
use bulkhead_store::{QuotaBreach, StoreError};

use crate::state::AppState;

/// Runs `pass` on the server's `state` every `interval` until the process ends, or until
/// nothing else holds the state any more. A failed pass is logged (as a `what`
/// pass) and the next one runs at its time; ticks missed while a pass runs are not made up.
fn spawn_every<T, F, Fut>(state: &AppState, interval: Duration, what: &'static str, mut pass: F)
where
    F: FnMut(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = ServiceResult<T>> + Send,
{
    // Only a weak hold between passes: a server whose state is dropped (an in-process server
    // at its end) stops its loops instead of keeping the state, its pool and its files alive.
    let weak = std::sync::Arc::downgrade(&state.0);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = pass(AppState(inner)).await {
                tracing::warn!(error = %e, "{what} pass failed");
            }
        }
    });
}

/// Why a service refused or failed. Messages are the ones the API shows (for every variant but
/// `Internal`, whose message goes to the log only).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such resource, or one the caller may not know of; the message names it.
    #[error("{0}")]
    NotFound(String),
    /// A value the caller sent is refused; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The resource's state does not allow the operation (it is mounted, not running, taken).
    #[error("{0}")]
    Conflict(String),
    /// A namespace quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Larger than a bound of the operation.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Anything the caller cannot fix.
    #[error("{0}")]
    Internal(String),
}

/// What a service answers.
pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<FieldError> for ServiceError {
    fn from(e: FieldError) -> Self {
        ServiceError::Invalid(e.to_string())
    }
}

impl ServiceError {
    /// The refusal of a quota breach the store reported.
    pub fn quota(b: &QuotaBreach) -> Self {
        ServiceError::QuotaExceeded(format!(
            "quota {} exceeded: limit {}, in use {}, requested {}",
            b.quota, b.limit, b.used, b.requested
        ))
    }

    /// Whether this is a quota refusal (which metering counts).
    pub fn is_quota(&self) -> bool {
        matches!(self, ServiceError::QuotaExceeded(_))
    }
}
