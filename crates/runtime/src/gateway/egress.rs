//! The egress gateway of the sandboxes of one server: for each networked sandbox, a DNS
//! resolver on its gateway address port 53 (UDP and TCP, see [`super::dns`]) and the TCP
//! forwarder on port [`FORWARD_PORT`] that the nftables `nat` chain redirects every other TCP
//! connection of the sandbox to (see [`super::forward`]). Both ask the server's
//! [`EgressDecider`]; until one is set, everything is denied.
//!
//! Bounds, whatever a sandbox does: DNS queries per second ([`DNS_QUERIES_PER_SECOND`], the
//! excess refused and counted as denials, which bounds a tunnel over DNS), the names it
//! remembers ([`NAME_MEMORY`] addresses), connections in flight ([`MAX_CONNECTIONS`]), warnings
//! in the server's log ([`WARNINGS_PER_MINUTE`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::task::JoinHandle;

use crate::egress::{ConnectRequest, EgressCounters, EgressDecider, EgressStats, Verdict};
use crate::net::Cidr;
use crate::{Result, RuntimeError};

/// The gateway port of the TCP forwarder (one of [`crate::net::GATEWAY_TCP_PORTS`]).
pub const FORWARD_PORT: u16 = 15001;
/// The gateway port of the DNS resolver, UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// DNS queries a sandbox may make per second on average (bursts of twice that).
pub const DNS_QUERIES_PER_SECOND: f64 = 50.0;
/// How many answered addresses a sandbox's gateway remembers the name of.
pub const NAME_MEMORY: usize = 4096;
/// Connections (forwarded, or DNS over TCP) a sandbox may have in flight; more are reset.
pub const MAX_CONNECTIONS: usize = 256;
/// Warnings about one sandbox's egress the server logs per minute; the rest are counted and
/// summed up in the next one.
pub const WARNINGS_PER_MINUTE: u32 = 5;
/// How long an answered name is remembered for its address at least, and at most.
const MEMORY_MIN: Duration = Duration::from_secs(60);
const MEMORY_MAX: Duration = Duration::from_secs(super::dns::MAX_TTL as u64);

/// What the gateway needs to know of the server.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The upstream resolver (`--egress-dns`); `None` for the host's (`/etc/resolv.conf`).
    pub upstream_dns: Option<SocketAddr>,
    /// The sandbox CIDR: never a destination.
    pub sandbox_cidr: Cidr,
    /// Who terminates TLS for brokered hosts (see [`crate::broker`]).
    pub broker: Arc<crate::broker::Broker>,
}

/// State shared by every sandbox's gateway.
pub(super) struct Shared {
    decider: RwLock<Option<Arc<dyn EgressDecider>>>,
    resolver: std::result::Result<TokioResolver, String>,
    cidr: Cidr,
    /// The bandwidth buckets of the namespaces, shared by all their connections.
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    /// Terminates TLS for brokered hosts and adds their header.
    pub(super) broker: Arc<crate::broker::Broker>,
}

impl Shared {
    /// Asks the decider; denies when there is none.
    pub(super) async fn decide(&self, request: &ConnectRequest) -> Verdict {
        let decider = self.decider.read().unwrap_or_else(|e| e.into_inner()).clone();
        match decider {
            Some(d) => d.decide(request).await,
            None => Verdict::Deny { reason: "no egress decider is set".into(), policies: vec!["ceiling".into()] },
        }
    }

    /// The upstream resolver, or why there is none.
    pub(super) fn resolver(&self) -> std::result::Result<&TokioResolver, &str> {
        self.resolver.as_ref().map_err(String::as_str)
    }

    /// Why `ip` may never be reached from a sandbox, whatever a policy says (before any
    /// decider is asked); `None` when it may be asked about.
    pub(super) fn never_reachable(&self, ip: IpAddr) -> Option<&'static str> {
        let IpAddr::V4(a) = ip else { return Some("IPv6 is off in sandboxes") };
        if a.is_loopback() {
            Some("a loopback address")
        } else if a.is_link_local() {
            Some("a link-local address")
        } else if a.is_unspecified() || a.octets()[0] == 0 {
            Some("an unspecified address")
        } else if a.is_broadcast() || a.is_multicast() {
            Some("a broadcast or multicast address")
        } else if self.cidr.slot_of(a).is_some() {
            Some("a sandbox network address")
        } else if is_host_address(a) {
            Some("an address of the host")
        } else {
            None
        }
    }

    /// The bandwidth bucket of `namespace`.
    pub(super) fn bucket(&self, namespace: &str) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.entry(namespace.to_owned()).or_default().clone()
    }
}

/// Whether `a` is one of the host's own IPv4 addresses (when the host's addresses cannot be
/// read, every address is taken for one: deny rather than risk it).
fn is_host_address(a: Ipv4Addr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocates into `list`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return true;
    }
    let mut found = false;
    let mut p = list;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, not freed until below.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points to a sockaddr of the list; an AF_INET one is a
            // sockaddr_in.
            unsafe {
                if i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    if u32::from_be(sin.sin_addr.s_addr) == u32::from(a) {
                        found = true;
                        break;
                    }
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The burst a namespace's bandwidth bucket allows, as a fraction of one second's worth: over
/// any period of a second or more, the namespace moves at most the cap + 10 %.
pub const BANDWIDTH_BURST: f64 = 0.1;

/// A token bucket of bytes per second, shared by the connections of one namespace. A
/// connection takes what it is about to forward and sleeps off any debt.
#[derive(Default)]
pub(super) struct Bucket {
    /// Tokens (bytes) available, and when they were counted.
    state: Mutex<Option<(f64, Instant)>>,
}

impl Bucket {
    /// Waits until `bytes` may go at `rate` bytes per second (bursts of [`BANDWIDTH_BURST`] of
    /// a second's worth, and a new bucket holds that much).
    pub(super) async fn take(&self, bytes: usize, rate: u64) {
        let rate = rate.max(1) as f64;
        let burst = rate * BANDWIDTH_BURST;
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (tokens, last) = state.unwrap_or((burst, now));
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst) - bytes as f64;
            *state = Some((tokens, now));
            (tokens < 0.0).then(|| Duration::from_secs_f64(-tokens / rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One sandbox's gateway state.
pub(super) struct Sandbox {
    pub(super) namespace: String,
    pub(super) id: String,
    pub(super) counters: Arc<EgressCounters>,
    /// Which name the resolver answered each address with, until when.
    names: Mutex<HashMap<Ipv4Addr, (String, Instant)>>,
    /// DNS query tokens and when they were counted.
    dns_rate: Mutex<(f64, Instant)>,
    /// Warnings logged in the current minute (its start), and those left out.
    warnings: Mutex<(Instant, u32, u64)>,
}

impl Sandbox {
    fn new(namespace: &str, id: &str) -> Sandbox {
        let now = Instant::now();
        Sandbox {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            counters: Default::default(),
            names: Default::default(),
            dns_rate: Mutex::new((2.0 * DNS_QUERIES_PER_SECOND, now)),
            warnings: Mutex::new((now, 0, 0)),
        }
    }

    /// Remembers that the resolver answered `name` with `addr`, for `ttl` (bounded).
    pub(super) fn remember(&self, addr: Ipv4Addr, name: &str, ttl: Duration) {
        let now = Instant::now();
        let until = now + ttl.clamp(MEMORY_MIN, MEMORY_MAX);
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= NAME_MEMORY && !names.contains_key(&addr) {
            names.retain(|_, (_, t)| *t > now);
            if names.len() >= NAME_MEMORY {
                // Still full: forget the entry closest to its end.
                if let Some(oldest) = names.iter().min_by_key(|(_, (_, t))| *t).map(|(a, _)| *a) {
                    names.remove(&oldest);
                }
            }
        }
        names.insert(addr, (name.to_owned(), until));
    }

    /// The name the resolver last answered with `addr`, while remembered.
    pub(super) fn name_of(&self, addr: Ipv4Addr) -> Option<String> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.get(&addr).filter(|(_, t)| *t > Instant::now()).map(|(n, _)| n.clone())
    }

    /// Whether one more DNS query is within the sandbox's rate.
    pub(super) fn dns_query_allowed(&self) -> bool {
        let mut rate = self.dns_rate.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let tokens = (rate.0 + now.duration_since(rate.1).as_secs_f64() * DNS_QUERIES_PER_SECOND)
            .min(2.0 * DNS_QUERIES_PER_SECOND);
        let allowed = tokens >= 1.0;
        *rate = (if allowed { tokens - 1.0 } else { tokens }, now);
        allowed
    }

    /// Counts a denial and logs it, within [`WARNINGS_PER_MINUTE`].
    pub(super) fn denied(&self, destination: &str, reason: &str) {
        self.counters.denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let left_out = {
            let mut w = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if now.duration_since(w.0) >= Duration::from_secs(60) {
                *w = (now, 0, w.2);
            }
            if w.1 >= WARNINGS_PER_MINUTE {
                w.2 += 1;
                return;
            }
            w.1 += 1;
            std::mem::take(&mut w.2)
        };
        tracing::info!(
            namespace = %self.namespace,
            sandbox = %self.id,
            destination,
            reason,
            earlier_denials_not_logged = left_out,
            "egress denied"
        );
    }

    /// A request for this sandbox.
    pub(super) fn request(
        &self,
        protocol: crate::egress::Protocol,
        name: Option<String>,
        addr: Option<IpAddr>,
        port: Option<u16>,
    ) -> ConnectRequest {
        ConnectRequest { namespace: self.namespace.clone(), sandbox: self.id.clone(), name, addr, port, protocol }
    }
}

struct Running {
    sandbox: Arc<Sandbox>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The accept loops own their connections (join sets): aborting them ends those too.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The egress gateways of a server's sandboxes.
pub struct EgressGateway {
    shared: Arc<Shared>,
    running: Mutex<HashMap<String, Running>>,
}

impl EgressGateway {
    /// The gateway with `config`; the upstream resolver is set up here (a host without a
    /// readable `/etc/resolv.conf` and no `--egress-dns` answers every allowed query with
    /// SERVFAIL, and says so at start).
    pub fn new(config: &EgressConfig) -> EgressGateway {
        let resolver = match config.upstream_dns {
            Some(upstream) => {
                let group = NameServerConfigGroup::from_ips_clear(&[upstream.ip()], upstream.port(), true);
                Ok(TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
                .build())
            }
            None => TokioResolver::builder_tokio().map(|b| b.build()).map_err(|e| e.to_string()),
        };
        if let Err(e) = &resolver {
            tracing::warn!(error = %e, "the egress gateway has no upstream resolver: give --egress-dns");
        }
        EgressGateway {
            shared: Arc::new(Shared {
                decider: RwLock::new(None),
                resolver,
                cidr: config.sandbox_cidr,
                buckets: Default::default(),
                broker: config.broker.clone(),
            }),
            running: Default::default(),
        }
    }

    /// Sets who decides (see [`crate::Runtime::set_egress_decider`]); the last one set wins.
    pub fn set_decider(&self, decider: Arc<dyn EgressDecider>) {
        *self.shared.decider.write().unwrap_or_else(|e| e.into_inner()) = Some(decider);
    }

    /// Starts sandbox `id`'s DNS resolver and forwarder on its `gateway` address (once; a
    /// second call keeps the first).
    pub fn start(&self, namespace: &str, id: &str, gateway: Ipv4Addr) -> Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(id) {
            return Ok(());
        }
        let tcp = |port: u16| -> Result<tokio::net::TcpListener> {
            let l = std::net::TcpListener::bind((gateway, port))
                .map_err(RuntimeError::io(format!("listen on the sandbox's gateway {gateway}:{port}")))?;
            l.set_nonblocking(true).map_err(RuntimeError::io("make a gateway listener non-blocking"))?;
            tokio::net::TcpListener::from_std(l).map_err(RuntimeError::io("register a gateway listener"))
        };
        let udp = std::net::UdpSocket::bind((gateway, DNS_PORT))
            .map_err(RuntimeError::io(format!("listen on the sandbox's gateway {gateway}:{DNS_PORT}/udp")))?;
        udp.set_nonblocking(true).map_err(RuntimeError::io("make the gateway DNS socket non-blocking"))?;
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(RuntimeError::io("register the gateway DNS socket"))?;
        let dns_tcp = tcp(DNS_PORT)?;
        let forward = tcp(FORWARD_PORT)?;
        let sandbox = Arc::new(Sandbox::new(namespace, id));
        let tasks = vec![
            tokio::spawn(super::dns::serve_udp(self.shared.clone(), sandbox.clone(), udp)),
            tokio::spawn(super::dns::serve_tcp(self.shared.clone(), sandbox.clone(), dns_tcp)),
            tokio::spawn(super::forward::serve(self.shared.clone(), sandbox.clone(), forward)),
        ];
        running.insert(id.to_owned(), Running { sandbox, tasks });
        Ok(())
    }

    /// Stops sandbox `id`'s gateway and every connection it forwards.
    pub fn stop(&self, id: &str) {
        let gone = self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        drop(gone);
    }

    /// What sandbox `id`'s gateway forwarded since it started (zero when it has none).
    pub fn stats(&self, id: &str) -> EgressStats {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(id).map(|r| r.sandbox.counters.snapshot()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn shared() -> Shared {
        Shared {
            decider: RwLock::new(None),
            resolver: Err("none".into()),
            cidr: "100.64.0.0/10".parse().unwrap(),
            buckets: Default::default(),
            broker: Arc::new(crate::broker::Broker::new(None).unwrap()),
        }
    }

    #[test]
    fn some_addresses_are_never_reachable() {
        let s = shared();
        for never in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "100.64.3.1",
            "::1",
            "2001:db8::1",
        ] {
            assert!(s.never_reachable(never.parse().unwrap()).is_some(), "{never}");
        }
        assert!(s.never_reachable("203.0.113.9".parse().unwrap()).is_none());
        // The host's own addresses (every host has one that is not loopback here: eth0's, or a
        // test's; take the first found).
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: as in is_host_address.
        assert_eq!(unsafe { libc::getifaddrs(&mut list) }, 0);
        let mut own = None;
        let mut p = list;
        while !p.is_null() {
            // SAFETY: as in is_host_address.
            let ifa = unsafe { &*p };
            // SAFETY: as in is_host_address.
            unsafe {
                if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                    let a = Ipv4Addr::from(u32::from_be((*(ifa.ifa_addr as *const libc::sockaddr_in)).sin_addr.s_addr));
                    if !a.is_loopback() && s.cidr.slot_of(a).is_none() {
                        own = Some(a);
                    }
                }
            }
            p = ifa.ifa_next;
        }
        // SAFETY: as in is_host_address.
        unsafe { libc::freeifaddrs(list) };
        if let Some(own) = own {
            assert_eq!(s.never_reachable(IpAddr::V4(own)), Some("an address of the host"));
        }
    }

    #[tokio::test]
    async fn without_a_decider_everything_is_denied() {
        let s = shared();
        let sbx = Sandbox::new("acme", "sbx_1");
        let r = sbx.request(crate::egress::Protocol::Dns, Some("pypi.org".into()), None, None);
        assert!(matches!(s.decide(&r).await, Verdict::Deny { .. }));
    }

    #[test]
    fn the_name_memory_is_bounded_and_forgets() {
        let sbx = Sandbox::new("acme", "sbx_1");
        for i in 0..(NAME_MEMORY as u32 + 10) {
            sbx.remember(Ipv4Addr::from(0x0a00_0000 + i), &format!("n{i}.test"), Duration::from_secs(1));
        }
        assert_eq!(sbx.names.lock().unwrap().len(), NAME_MEMORY);
        let last = Ipv4Addr::from(0x0a00_0000 + NAME_MEMORY as u32 + 9);
        assert_eq!(sbx.name_of(last).as_deref(), Some(format!("n{}.test", NAME_MEMORY + 9).as_str()));
        assert_eq!(sbx.name_of(Ipv4Addr::new(9, 9, 9, 9)), None);
    }

    #[test]
    fn dns_queries_and_warnings_are_rate_bounded() {
        let sbx = Sandbox::new("acme", "sbx_1");
        let allowed = (0..1000).filter(|_| sbx.dns_query_allowed()).count();
        // The burst, plus what refilled while the loop ran (well under a second's worth).
        assert!(allowed >= 2 * DNS_QUERIES_PER_SECOND as usize && allowed < 1000, "{allowed}");
        for _ in 0..100 {
            sbx.denied("x.test", "test");
        }
        assert_eq!(sbx.counters.snapshot().denied, 100);
        let w = sbx.warnings.lock().unwrap();
        assert_eq!((w.1, w.2), (WARNINGS_PER_MINUTE, 100 - u64::from(WARNINGS_PER_MINUTE)));
    }
}
