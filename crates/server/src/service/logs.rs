//! A namespace's exec output, kept by [`crate::logs::LogBook`] under the namespace's
//! incarnation: what a command printed is recorded, and read back a page at a time.

use bulkhead_api::LogStream;

use super::{ServiceError, ServiceResult};
use crate::logs::{Entry, Filter};
use crate::state::AppState;

/// Records what a command of `sandbox` printed on `stream` for request `request_id`.
pub fn record(state: &AppState, incarnation: &str, sandbox: &str, request_id: &str, stream: LogStream, data: &[u8]) {
    state.logs.record(incarnation, sandbox, request_id, stream, data);
}

/// At most `limit` retained records of the incarnation that match `filter`, oldest first, and
/// whether more follow.
pub async fn query(
    state: &AppState,
    incarnation: &str,
    filter: &Filter,
    limit: usize,
) -> ServiceResult<(Vec<Entry>, bool)> {
    state.logs.query(incarnation, filter, limit).await.map_err(|e| ServiceError::Internal(format!("reading logs: {e}")))
}
