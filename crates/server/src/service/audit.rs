//! Reading and verifying the audit chains. Records are written by the audit middleware
//! (`crate::audit`) alone.

use bulkhead_core::audit::{AuditRecord, Verification};

use super::records::AuditQuery;
use super::ServiceResult;
use crate::state::AppState;

/// The records of `chain` that `query` selects, oldest first.
pub async fn list(state: &AppState, chain: &str, query: &AuditQuery) -> ServiceResult<Vec<AuditRecord>> {
    Ok(state.store.list_audit(chain, query).await?)
}

/// Verifies `chain` from its checkpoint to its head.
pub async fn verify(state: &AppState, chain: &str) -> ServiceResult<Verification> {
    Ok(state.store.verify_audit(chain).await?)
}
