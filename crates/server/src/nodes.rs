//! This server as a node of its store (see [`bulkhead_store::NodeStore`]): its id, the URL its
//! peers reach it at, its lease, and what it last read of its peers. Several servers on one
//! PostgreSQL store are replicas: any of them answers any request, and a request for a sandbox
//! another node runs is forwarded there ([`crate::forward`]).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use bulkhead_store::NodeRow;

/// The file in the data dir that keeps the node's id.
pub const NODE_ID_FILE: &str = "node.id";

/// How long a lease lasts unless `serve --node-lease` says otherwise: a node that stops
/// renewing is declared lost by its peers this long after its last renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The request header a forwarded request carries: the id of the node that forwarded it. A
/// node never forwards a request that carries it (two nodes that disagree on where a sandbox
/// runs answer `unavailable` rather than pass it back and forth).
pub const FORWARDED_HEADER: &str = "bulkhead-forwarded-by";

/// This server's node.
#[derive(Debug)]
pub struct Node {
    /// `node_` and 32 hex digits.
    pub id: String,
    /// Whether other processes may share the store (PostgreSQL): then leases are kept, peers
    /// watched, and requests forwarded.
    pub shared: bool,
    /// How long a renewal holds.
    pub lease: Duration,
    url: RwLock<String>,
    peers: RwLock<HashMap<String, NodeRow>>,
    /// The node of each sandbox looked up lately (a sandbox never moves): by sandbox id.
    homes: RwLock<HashMap<String, String>>,
    /// What renews the lease while the server starts (an image import, reconciliation), until
    /// the lease loop of the serving server takes over.
    starting: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Sandbox homes remembered at most; past it the map is cleared rather than grown.
const HOMES_MAX: usize = 100_000;

impl Node {
    pub fn new(id: String, url: String, shared: bool, lease: Duration) -> Node {
        Node {
            id,
            shared,
            lease,
            url: RwLock::new(url),
            peers: RwLock::default(),
            homes: RwLock::default(),
            starting: std::sync::Mutex::default(),
        }
    }

    /// The URL peers reach this node at.
    pub fn url(&self) -> String {
        self.url.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_url(&self, url: String) {
        *self.url.write().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// The lease's length in ms.
    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether a sandbox of node `node` is this server's to serve (`''`: a row from before
    /// nodes, which the first node to start adopted).
    pub fn is_mine(&self, node: &str) -> bool {
        node == self.id || node.is_empty()
    }

    /// What was last read of node `id`.
    pub fn peer(&self, id: &str) -> Option<NodeRow> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Keeps `renewer` running until [`Node::started`].
    pub fn renew_while_starting(&self, renewer: tokio::task::JoinHandle<()>) {
        *self.starting.lock().unwrap_or_else(|e| e.into_inner()) = Some(renewer);
    }

    /// The server serves: the renewer of its start stops.
    pub fn started(&self) {
        if let Some(r) = self.starting.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
    }

    /// The node of sandbox `id`, when remembered.
    pub fn home(&self, id: &str) -> Option<String> {
        self.homes.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Remembers that sandbox `id` runs on node `node`.
    pub fn remember_home(&self, id: &str, node: &str) {
        let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
        if homes.len() >= HOMES_MAX {
            homes.clear();
        }
        homes.insert(id.to_owned(), node.to_owned());
    }

    /// Replaces what is known of the peers.
    pub fn set_peers(&self, rows: Vec<NodeRow>) {
        let map = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = map;
    }
}
