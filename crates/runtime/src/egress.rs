//! What the egress gateway asks of the server, and what it reports back.
//!
//! The gateway (DNS on each sandbox's gateway address, and the TCP forwarder that every
//! connection of a sandbox is redirected to) never decides by itself whether a destination is
//! allowed: it finds out what the sandbox really reaches (the name in a DNS query, a TLS
//! ClientHello's server name, an HTTP request's `Host`, or the bare address), checks that a name
//! really resolves to the address, and asks an [`EgressDecider`]. The server implements the
//! decider with its policies (the namespace's ceiling, the sandbox's `egress.allow`, and the
//! Cedar action `network.connect`), so a new `forbid` holds for the next connection.
//!
//! The gateway counts what it forwards per sandbox ([`EgressCounters`]); the server reads them
//! into the usage ledger and Prometheus through [`crate::SandboxStats`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

/// How a sandbox tries to reach a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A DNS query for a name (the gateway's resolver); `port` is `None`.
    Dns,
    /// A TCP connection.
    Tcp,
}

impl Protocol {
    /// The name policies see as `context.protocol`: `dns` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Dns => "dns",
            Protocol::Tcp => "tcp",
        }
    }
}

/// One attempt of a sandbox to reach a destination, as the gateway found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub namespace: String,
    pub sandbox: String,
    /// The destination's DNS name, lower-case with no trailing dot, when the gateway knows it:
    /// the name queried (DNS), the TLS server name, the HTTP `Host`, or the name the gateway's
    /// own resolver answered to this sandbox for `addr`. When set with `addr`, the gateway has
    /// checked that the name resolves to `addr`.
    pub name: Option<String>,
    /// The address the connection really reaches; `None` for a DNS query.
    pub addr: Option<IpAddr>,
    /// The destination port; `None` for a DNS query (any port of the name).
    pub port: Option<u16>,
    pub protocol: Protocol,
}

/// A header the gateway adds to every request of a brokered host (see PRODUCT.md, *Brokered
/// credentials*). The value never enters the sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokeredHeader {
    /// The header's name, such as `Authorization`.
    pub name: String,
    /// The header's value, the secret already placed in its format (`Bearer sk-…`).
    pub value: String,
}

impl std::fmt::Debug for BrokeredHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is a credential.
        write!(f, "BrokeredHeader({}: <{} bytes>)", self.name, self.value.len())
    }
}

/// A namespace's certificate authority, PEM: the gateway signs a certificate for a brokered
/// host with it, and the sandbox trusts its certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct NamespaceCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NamespaceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamespaceCa(<sealed>)")
    }
}

/// The server's answer to a [`ConnectRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        /// The namespace's bandwidth cap in bytes per second, shared by every connection of
        /// every sandbox of the namespace; `None` for no cap.
        max_bandwidth_bytes_per_second: Option<u64>,
        /// For a brokered host: the header to add, and the namespace's CA to terminate TLS with.
        broker: Option<(BrokeredHeader, NamespaceCa)>,
    },
    Deny {
        /// Why, for the sandbox's log and the aggregated audit record.
        reason: String,
        /// The ids of the policies that denied, or the rule (`ceiling`, `allow`,
        /// `always-denied`) when no policy did.
        policies: Vec<String>,
    },
}

/// Decides the sandboxes' egress; the server implements it (see the module's doc).
#[async_trait]
pub trait EgressDecider: Send + Sync + 'static {
    /// Decides one attempt. Called once per DNS query and once per connection; it must not
    /// block for long (the decision is on the connection's path). A denial is also the
    /// decider's to count and audit (aggregated).
    async fn decide(&self, request: &ConnectRequest) -> Verdict;
}

/// What the gateway forwarded for one sandbox since it started. Bytes are payload bytes of
/// the forwarded TCP streams (what the sandbox sent = `bytes_out`, what it received =
/// `bytes_in`), DNS answers not included.
#[derive(Debug, Default)]
pub struct EgressCounters {
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Connections allowed and forwarded.
    pub connections: AtomicU64,
    /// Connections and DNS queries denied.
    pub denied: AtomicU64,
}

impl EgressCounters {
    /// A consistent-enough copy (each counter read once).
    pub fn snapshot(&self) -> EgressStats {
        EgressStats {
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`EgressCounters`], part of [`crate::SandboxStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressStats {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub connections: u64,
    pub denied: u64,
}
