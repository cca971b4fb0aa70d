//! The audit aggregate: one hash chain of records per namespace (and one for the platform),
//! its head, and the checkpoint that retention leaves behind.

use async_trait::async_trait;
use bulkhead_core::audit::{AuditEvent, AuditRecord, Checkpoint, Verification};

use crate::Result;

/// Which audit records to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only records with a larger sequence number (the pagination cursor).
    pub after_seq: u64,
    pub limit: u32,
}

/// Audit chains.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends `event` to `chain` atomically with the chain head, and returns the sealed record.
    /// When the chain then keeps more records than the store's retention allows, the oldest
    /// are pruned in the same transaction and the chain's checkpoint moves past them.
    async fn append_audit(&self, chain: &str, event: AuditEvent) -> Result<AuditRecord>;
    async fn list_audit(&self, chain: &str, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// The chain head: last sequence number and hash.
    async fn audit_head(&self, chain: &str) -> Result<Option<(u64, String)>>;
    /// Where the chain begins after pruning; `None` while nothing was pruned.
    async fn audit_checkpoint(&self, chain: &str) -> Result<Option<Checkpoint>>;
    /// Verifies the chain as it stands at one moment (checkpoint, records and head read from
    /// one snapshot, so appends and pruning meanwhile do not disturb it).
    async fn verify_audit(&self, chain: &str) -> Result<Verification>;
}
