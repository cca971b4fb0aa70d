//! The usage aggregate: each namespace's metering ledger, in time buckets.

use async_trait::async_trait;

use crate::{MeterMark, Result, SandboxRow};

/// Usage added to one bucket of a namespace's ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub cpu_ns: u64,
    pub memory_byte_ms: u64,
    pub sandbox_ms: u64,
    /// Taken as a maximum, not a sum.
    pub memory_peak_bytes: u64,
    pub exec_count: u64,
    pub quota_rejections: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    /// Payload bytes the sandboxes sent through the egress gateway.
    pub egress_bytes_out: u64,
    /// Payload bytes the sandboxes received through the egress gateway.
    pub egress_bytes_in: u64,
    /// Connections the gateway allowed and forwarded.
    pub egress_connections: u64,
    /// Connections and DNS queries the gateway denied.
    pub egress_denied: u64,
}

/// One bucket of a namespace's usage ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageBucket {
    pub bucket_ms: i64,
    pub usage: UsageDelta,
}

/// The usage ledgers.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds `delta` to the namespace's ledger bucket starting at `bucket_ms`.
    async fn add_usage(&self, namespace: &str, bucket_ms: i64, delta: &UsageDelta) -> Result<()>;
    /// Adds a metering sample of a sandbox to its namespace's ledger and records where metering
    /// stands, in one transaction.
    async fn meter_sandbox(
        &self,
        sandbox: &SandboxRow,
        bucket_ms: i64,
        delta: &UsageDelta,
        mark: MeterMark,
        at_ms: i64,
    ) -> Result<()>;
    /// Ledger buckets of a namespace in `[from_ms, to_ms)`, oldest first.
    async fn usage(&self, namespace: &str, from_ms: i64, to_ms: i64) -> Result<Vec<UsageBucket>>;
}
