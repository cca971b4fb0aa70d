//! Idempotency keys: the claim a create holds on its key while it runs, and the answer it
//! leaves for a retry to replay.

use async_trait::async_trait;

use crate::Result;

/// A stored answer to a create that carried an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentReply {
    /// SHA-256 (hex) of the request body the key was first used with.
    pub fingerprint: String,
    /// The HTTP status of the answer (never 0: 0 marks a claim in progress in the table).
    pub status: u16,
    /// The answer's JSON body.
    pub body: String,
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free (or its answer had expired): the caller holds it until it calls
    /// [`IdempotencyStore::finish_idempotent`] or [`IdempotencyStore::release_idempotent`].
    Claimed,
    /// Another request holds the key and has not answered yet; `fingerprint` is its body's.
    InProgress { fingerprint: String },
    /// The key answered before.
    Done(IdempotentReply),
}

/// Idempotency claims and answers.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` in `scope` for a request whose body has `fingerprint`, in one transaction,
    /// so that of any number of concurrent claims exactly one gets [`IdempotencyClaim::Claimed`].
    /// An answer stored before `expired_before_ms` no longer counts and is replaced.
    async fn claim_idempotent(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
        expired_before_ms: i64,
    ) -> Result<IdempotencyClaim>;
    /// Stores the answer of the create that holds the claim on `key`.
    async fn finish_idempotent(&self, scope: &str, key: &str, reply: &IdempotentReply) -> Result<()>;
    /// Gives up a claim that has no answer (the create failed): the key is free again.
    async fn release_idempotent(&self, scope: &str, key: &str) -> Result<()>;
    /// Gives up every claim without an answer that this store's node (or no node) holds:
    /// called at start, when the process that held them is gone (a lost peer's are released by
    /// [`crate::NodeStore::expire_nodes`]). Returns how many there were.
    async fn release_pending_idempotency(&self) -> Result<u64>;
}
