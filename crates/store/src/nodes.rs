//! The nodes aggregate: the `bulkhead serve` processes that share one store, their leases, the
//! key API tokens are hashed with (one per store, so every node hashes alike), and what each
//! node's caches are told when another node changes a row they cache.
//!
//! A node is one server's host side: its data dir, state dir and cgroup prefix, and the
//! sandboxes it runs there. It registers at start with the URL its peers reach it at, renews
//! a lease while it runs, and leaves on a clean stop. A node whose lease lapses is declared lost
//! by the first peer that sees it ([`NodeStore::expire_nodes`]): its active sandboxes end
//! `failed` (they cannot be reached), and the idempotency claims of its requests in flight are
//! released so that a retry runs again.

use async_trait::async_trait;

use crate::Result;

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// `node_` and 32 hex digits, kept in the node's data dir.
    pub id: String,
    /// Where peers forward requests for the node's sandboxes (`http://host:port`).
    pub url: String,
    pub started_at_ms: i64,
    /// The lease: the node is live until then (ms since the epoch) unless renewed.
    pub lease_until_ms: i64,
    /// When a peer declared it lost; `None` while it is not.
    pub lost_at_ms: Option<i64>,
}

impl NodeRow {
    /// Whether requests may be forwarded to it at `now_ms`: not lost, lease not lapsed.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.lost_at_ms.is_none() && self.lease_until_ms > now_ms
    }
}

/// A change another node made to rows that nodes cache (see the PostgreSQL store's migration
/// 17: `<kind>:<namespace>[:<id>]` on channel `bulkhead_changes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An API key was revoked or changed.
    Key { namespace: String, id: String },
    /// A namespace's quotas, egress, placement or existence changed.
    Namespace { namespace: String },
    /// A namespace's custom policies changed.
    Policies { namespace: String },
    /// A namespace's identity (OpenID Connect) settings changed.
    Identity { namespace: String },
    /// A sandbox's workload token changed (it ended).
    Sandbox { namespace: String, id: String },
    /// Changes may have been missed (the listening connection was lost and made again):
    /// everything cached must be forgotten.
    Lost,
}

impl Change {
    /// Parses a notification's payload; `None` for one this version does not know.
    pub fn parse(payload: &str) -> Option<Change> {
        let (kind, rest) = payload.split_once(':')?;
        let pair = || rest.split_once(':').map(|(ns, id)| (ns.to_owned(), id.to_owned()));
        Some(match kind {
            "key" => pair().map(|(namespace, id)| Change::Key { namespace, id })?,
            "sandbox" => pair().map(|(namespace, id)| Change::Sandbox { namespace, id })?,
            "namespace" => Change::Namespace { namespace: rest.to_owned() },
            "policies" => Change::Policies { namespace: rest.to_owned() },
            "identity" => Change::Identity { namespace: rest.to_owned() },
            _ => return None,
        })
    }
}

/// A stream of [`Change`]s, ending when the store is closed.
pub type Changes = tokio::sync::mpsc::Receiver<Change>;

/// Nodes of one store.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Registers node `id` reachable at `url` (again, after a restart: its lost mark cleared),
    /// live until `lease_until_ms`; rows from before nodes existed (sandboxes, filesystems and
    /// idempotency claims of no node) become its own.
    async fn register_node(&self, id: &str, url: &str, now_ms: i64, lease_until_ms: i64) -> Result<()>;

    /// Extends node `id`'s lease to `lease_until_ms`. `false` when the node is no longer
    /// registered or was declared lost: its sandboxes have been ended by a peer.
    async fn renew_node(&self, id: &str, lease_until_ms: i64) -> Result<bool>;

    /// Every registered node.
    async fn nodes(&self) -> Result<Vec<NodeRow>>;

    /// Declares lost every node other than `me` whose lease lapsed before `now_ms` and that no
    /// peer declared lost yet, each by exactly one caller (of any process): its active
    /// sandboxes end `failed` with `reason` at `now_ms`, and its pending idempotency claims are
    /// released. Returns the nodes this call declared lost with the ids of their sandboxes.
    async fn expire_nodes(&self, me: &str, now_ms: i64, reason: &str) -> Result<Vec<(String, Vec<String>)>>;

    /// Removes node `id` (a clean stop that leaves no sandbox behind).
    async fn remove_node(&self, id: &str) -> Result<()>;

    /// The store's token key sealed under the master key: the stored one, or `sealed` when
    /// there was none (stored then, by the first caller of any process to get there).
    async fn token_key(&self, sealed: &str, now_ms: i64) -> Result<String>;

    /// Changes other processes make to cached rows, when the store can tell (PostgreSQL's
    /// `LISTEN`); `None` for a store only one process opens (SQLite).
    async fn changes(&self) -> Result<Option<Changes>>;
}
