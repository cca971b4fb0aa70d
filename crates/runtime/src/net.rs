//! A network per sandbox (`--network isolated`): each sandbox gets a network namespace of its
//! own, made and owned by the host (so the sandbox's root, in its user namespace, has no
//! capability over it), joined by the OCI spec instead of a new empty one; one veth pair into
//! it (tenants never share an L2 segment); addresses from the server's `--sandbox-cidr`; and
//! nftables rules so that a packet from a sandbox reaches nothing but the gateway ports on its
//! own host-side address.
//!
//! Names (what `bulkhead doctor` and `scripts/leak-check` know), with the owner's `net_prefix`
//! from the host registry (`bh` and four hex digits):
//! - network namespace `<net_prefix>-<the 32 hex digits of the sandbox id>` under `/run/netns`;
//! - host side of the veth `<net_prefix><first 9 hex digits>` (15 bytes, the kernel's limit);
//!   the sandbox side is made inside the namespace as `eth0` and never has a name on the host;
//! - one nftables table per server, `inet <net_prefix>_sandboxes`;
//! - spare networks made ahead of creates (see [`Network`]): namespace `<net_prefix>-pool-`
//!   and 8 hex digits, host side of the veth `<net_prefix>p` and the same 8 hex digits
//!   ([`is_spare`]); a create renames one to its sandbox's names.
//!
//! Addresses: a /30 per sandbox, drawn at random among the /30s of the CIDR that no address of
//! the host's network namespace falls in, under a host-wide lock ([`ADDRESS_LOCK`]) so that
//! servers sharing a CIDR (every test server uses the default) never pick the same one. The
//! host side holds the first address (the sandbox's gateway), the sandbox the second, with a
//! default route through the gateway. The host's own addresses are the record: an address is
//! freed when its veth goes, and a server restarted with sandboxes still running finds their
//! addresses held.
//!
//! IPv6 is off inside the namespace and on the host side of every veth (no link-local
//! address); the rules are `inet`, so they would hold for IPv6 too.
//!
//! Rules (table `inet <net_prefix>_sandboxes`, replaced whole, atomically, at start):
//! - `forward`: anything in from or out to a sandbox veth is rejected: no sandbox reaches
//!   another, or any other network, through the host;
//! - `input`: from a sandbox veth, only packets to an address of that very veth (the sandbox's
//!   own gateway: `fib daddr . iif type local`) on [`GATEWAY_TCP_PORTS`] / [`GATEWAY_UDP_PORTS`]
//!   are accepted, and packets of a flow already accepted (conntrack `established`/`related`:
//!   replies to the host's own connections into the sandbox); everything else (the host's
//!   other addresses, other sandboxes' gateways, other ports) is rejected.
//!
//! Rejected, not dropped: a connection a sandbox may not make fails at once instead of hanging
//! until its timeout.
//!
//! Links and addresses go through netlink (`rtnetlink`); rules through `nft -j -f -` with JSON
//! built by `serde_json`; the namespace is made by a thread of its own that `unshare`s a new
//! network namespace and bind-mounts it, as `ip netns add` does, without forking the server.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::{json, Value};

use crate::{Result, RuntimeError};

/// Where named network namespaces live (as `ip netns` has them).
pub const NETNS_DIR: &str = "/run/netns";
/// The host-wide lock held while an address is chosen and assigned.
pub const ADDRESS_LOCK: &str = "/run/bulkhead-net.lock";
/// The default `--sandbox-cidr`: the shared address space of RFC 6598, never routed on the
/// internet and seldom used on a host's own networks.
pub const DEFAULT_SANDBOX_CIDR: &str = "100.64.0.0/10";
/// TCP ports of the sandbox's gateway address that a sandbox may reach: DNS and the egress
/// forwarder (to come), and the API ([`crate::gateway::API_PORT`]).
pub const GATEWAY_TCP_PORTS: &[u16] = &[53, 15001, 15002];
/// UDP ports of the gateway address that a sandbox may reach: DNS.
pub const GATEWAY_UDP_PORTS: &[u16] = &[53];
/// The suffix of the server's nftables table name after its net prefix.
pub const TABLE_SUFFIX: &str = "_sandboxes";
/// The nftables family of the table.
pub const TABLE_FAMILY: &str = "inet";

/// What network a sandbox has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A new empty network namespace per sandbox: loopback only (the old world).
    LoopbackOnly,
    /// A network namespace, a veth and an address per sandbox, fenced by nftables, whose only
    /// way out is the egress gateway (the default: PRODUCT.md, *Network egress*).
    #[default]
    Isolated,
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "loopback-only" => Ok(Self::LoopbackOnly),
            "isolated" => Ok(Self::Isolated),
            _ => Err(format!("{s:?} is not a network mode: isolated or loopback-only")),
        }
    }
}

/// An IPv4 prefix such as `100.64.0.0/10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    /// How many /30s it holds.
    pub fn slots(&self) -> u32 {
        1u32 << (30 - u32::from(self.len))
    }

    /// The `n`th /30 (of [`Self::slots`]).
    pub fn slot(&self, n: u32) -> SlotAddrs {
        let base = u32::from(self.addr) + (n << 2);
        SlotAddrs { gateway: Ipv4Addr::from(base + 1), sandbox: Ipv4Addr::from(base + 2) }
    }

    /// Which /30 `a` falls in, if it is in the prefix.
    pub fn slot_of(&self, a: Ipv4Addr) -> Option<u32> {
        let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
        (u32::from(a) & mask == u32::from(self.addr)).then(|| (u32::from(a) - u32::from(self.addr)) >> 2)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 prefix such as {DEFAULT_SANDBOX_CIDR} (a /30 at the smallest)");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        if !(1..=30).contains(&len) {
            return Err(bad());
        }
        if u32::from(addr) & !(u32::MAX << (32 - u32::from(len))) != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The two addresses of a sandbox's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    /// On the host side of the veth: the sandbox's default gateway.
    pub gateway: Ipv4Addr,
    /// The sandbox's `eth0`.
    pub sandbox: Ipv4Addr,
}

/// The network settings of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The owner's prefix of host-global names, from the host registry.
    pub net_prefix: String,
    /// Where sandbox addresses come from.
    pub cidr: Cidr,
}

/// The host-global names of one sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The network namespace's name under [`NETNS_DIR`].
    pub netns: String,
    /// The host side of the veth.
    pub veth: String,
}

impl Names {
    /// The names for sandbox `id` (`sbx_` and 32 hex digits); none for another shape.
    pub fn of(net_prefix: &str, id: &str) -> Option<Names> {
        let body = id.strip_prefix("sbx_")?;
        let ok = body.len() == 32 && body.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Names { netns: format!("{net_prefix}-{body}"), veth: format!("{net_prefix}{}", &body[..9]) })
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
}

/// The server's nftables table name.
pub fn table_name(net_prefix: &str) -> String {
    format!("{net_prefix}{TABLE_SUFFIX}")
}

/// The sandbox ids whose network namespaces of `net_prefix` are on the host.
pub fn sandboxes_on_host(net_prefix: &str) -> Vec<String> {
    let head = format!("{net_prefix}-");
    fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let id = format!("sbx_{}", name.strip_prefix(&head)?);
            Names::of(net_prefix, &id).map(|_| id)
        })
        .collect()
}

/// The `nft -j` batch that replaces the server's table with its rules, in one transaction.
pub fn ruleset(net_prefix: &str) -> Value {
    let table = table_name(net_prefix);
    let veths = format!("{net_prefix}*");
    let t = json!({"family": TABLE_FAMILY, "name": table});
    let chain = |name: &str, hook: Option<&str>| {
        let mut c = json!({"family": TABLE_FAMILY, "table": table, "name": name});
        if let Some(hook) = hook {
            c["type"] = json!("filter");
            c["hook"] = json!(hook);
            c["prio"] = json!(-10);
            c["policy"] = json!("accept");
        }
        json!({"add": {"chain": c}})
    };
    let rule = |chain: &str, expr: Vec<Value>| json!({"add": {"rule": {"family": TABLE_FAMILY, "table": table, "chain": chain, "expr": expr}}});
    let iface = |key: &str| json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": veths}});
    let reject = json!({"reject": {"type": "icmpx", "expr": "admin-prohibited"}});
    let to_gateway = |proto: &str, ports: &[u16]| {
        rule(
            "sandbox_in",
            vec![
                json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr", "iif"]}}, "right": "local"}}),
                json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}}),
                json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": {"set": ports}}}),
                json!({"accept": null}),
            ],
        )
    };
    let redirect = |proto: &str, dport: Option<u16>, to: u16| {
        let mut expr = vec![
            iface("iifname"),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}}),
        ];
        if let Some(dport) = dport {
            expr.push(json!({"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": dport}}));
        }
        expr.push(json!({"redirect": {"port": to}}));
        rule("prerouting", expr)
    };
    json!({"nftables": [
        {"add": {"table": t}},
        {"delete": {"table": t}},
        {"add": {"table": t}},
        chain("forward", Some("forward")),
        chain("input", Some("input")),
        chain("sandbox_in", None),
        rule("forward", vec![iface("iifname"), reject.clone()]),
        rule("forward", vec![iface("oifname"), reject.clone()]),
        rule("input", vec![iface("iifname"), json!({"jump": {"target": "sandbox_in"}})]),
        // Replies within a flow the host or the gateway accepted.
        rule("sandbox_in", vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ]),
        to_gateway("tcp", GATEWAY_TCP_PORTS),
        to_gateway("udp", GATEWAY_UDP_PORTS),
        rule("sandbox_in", vec![reject]),
        // The egress gateway (see `crate::gateway`): DNS to any server goes to the gateway's
        // resolver, and every TCP connection but those to the own gateway's API goes to its
        // forwarder (which reads the original destination with SO_ORIGINAL_DST). `redirect`
        // sends to the primary address of the veth it came in on: the sandbox's own gateway.
        {"add": {"chain": {"family": TABLE_FAMILY, "table": table, "name": "prerouting",
            "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
        rule("prerouting", vec![
            iface("iifname"),
            json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr", "iif"]}}, "right": "local"}}),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": crate::gateway::API_PORT}}),
            json!({"accept": null}),
        ]),
        redirect("udp", Some(crate::gateway::egress::DNS_PORT), crate::gateway::egress::DNS_PORT),
        redirect("tcp", Some(crate::gateway::egress::DNS_PORT), crate::gateway::egress::DNS_PORT),
        redirect("tcp", None, crate::gateway::egress::FORWARD_PORT),
    ]})
}

/// Runs `nft -j -f -` with `batch` on its stdin.
fn nft(batch: &Value) -> Result<()> {
    use std::io::Write;
    let what = "apply the sandbox network's nftables rules";
    let mut child = std::process::Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            RuntimeError::Unavailable(format!(
                "--network isolated needs nftables: install it (Debian/Ubuntu: apt-get install nftables): {e}"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(batch.to_string().as_bytes()).map_err(RuntimeError::io(what))?;
    }
    let out = child.wait_with_output().map_err(RuntimeError::io(what))?;
    if !out.status.success() {
        return Err(RuntimeError::Io {
            what: what.into(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        });
    }
    Ok(())
}

/// Removes the server's table; none is fine.
fn delete_table(net_prefix: &str) -> Result<()> {
    let t = json!({"family": TABLE_FAMILY, "name": table_name(net_prefix)});
    nft(&json!({"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}))
}

fn netlink_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RuntimeError {
    let what = what.into();
    move |e| {
        let source = match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        };
        RuntimeError::Io { what, source }
    }
}

/// Whether a netlink error says the object is not there.
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if [libc::ENODEV, libc::ENOENT].contains(&-m.raw_code()))
}

/// A netlink connection in this thread's network namespace, its connection task spawned on the
/// current tokio runtime.
fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(RuntimeError::io("open a netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Makes `/run/netns` a shared mount point of its own, as `ip netns add` does, so that a
/// namespace's bind mount there, and its removal, reach every mount namespace made from the
/// host's.
fn prepare_netns_dir() -> std::io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let dir = c"/run/netns";
    // SAFETY: mount takes NUL-terminated strings that outlive the call and null pointers where
    // allowed; it touches no other memory.
    unsafe {
        let shared = libc::MS_SHARED | libc::MS_REC;
        if libc::mount(c"none".as_ptr(), dir.as_ptr(), std::ptr::null(), shared, std::ptr::null()) == 0 {
            return Ok(());
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(std::io::Error::last_os_error());
        }
        // Not a mount point yet: bind it on itself, then share it.
        let bind = libc::MS_BIND | libc::MS_REC;
        if libc::mount(dir.as_ptr(), dir.as_ptr(), c"none".as_ptr(), bind, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(c"none".as_ptr(), dir.as_ptr(), std::ptr::null(), shared, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the network namespace at `path` (a new file) on a thread of its own: `unshare`, bind
/// mount of the thread's namespace, IPv6 off in it, and a netlink connection inside it (a
/// socket stays in the namespace it was made in), returned for the caller to configure it.
fn make_netns(path: &Path) -> Result<Handle> {
    let what = format!("make the network namespace {}", path.display());
    prepare_netns_dir().map_err(RuntimeError::io(format!("prepare {NETNS_DIR}")))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(RuntimeError::io(what.clone()))?;
    let runtime = tokio::runtime::Handle::current();
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("bad path {}", path.display())))?;
    let made = std::thread::spawn(move || -> std::io::Result<Handle> {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread, which ends after this closure;
        // mount reads NUL-terminated strings that outlive the call.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let own = c"/proc/thread-self/ns/net";
            if libc::mount(own.as_ptr(), target.as_ptr(), c"none".as_ptr(), libc::MS_BIND, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Net sysctls are those of the writer's namespace: this thread's, now.
        for key in ["all", "default"] {
            let file = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
            if Path::new(&file).exists() {
                fs::write(&file, "1")?;
            }
        }
        let _entered = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        runtime.spawn(conn);
        Ok(handle)
    })
    .join()
    .map_err(|_| RuntimeError::Protocol(format!("{what}: its thread panicked")))?;
    made.map_err(RuntimeError::io(what))
}

/// Unmounts and removes the namespace file at `path`; none is fine.
fn remove_netns(path: &Path) -> Result<()> {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return Ok(()) };
    // SAFETY: umount2 reads a NUL-terminated string that outlives the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // Not mounted (half made) or not there: only the file, if any, is left.
        if ![Some(libc::EINVAL), Some(libc::ENOENT)].contains(&e.raw_os_error()) {
            return Err(RuntimeError::io(format!("unmount {}", path.display()))(e));
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("remove {}", path.display()))(e)),
    }
}

/// The index of link `name` in the namespace of `handle`; none when there is no such link.
async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(netlink_err(format!("look up link {name}"))(e)),
    }
}

/// An exclusive `flock` on [`ADDRESS_LOCK`], held until dropped.
struct AddressLock {
    _file: fs::File,
}

impl AddressLock {
    async fn take() -> Result<AddressLock> {
        tokio::task::spawn_blocking(|| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(ADDRESS_LOCK)?;
            loop {
                // SAFETY: `f` owns an open descriptor for the whole call.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Ok(AddressLock { _file: f });
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        })
        .await
        .map_err(|e| RuntimeError::Protocol(e.to_string()))?
        .map_err(RuntimeError::io(format!("lock {ADDRESS_LOCK}")))
    }
}

/// The /30s of `cidr` that an IPv4 address of the host's namespace falls in.
async fn slots_in_use(handle: &Handle, cidr: &Cidr) -> Result<HashSet<u32>> {
    let mut out = HashSet::new();
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(netlink_err("list the host's addresses"))? {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(v4)) | AddressAttribute::Local(IpAddr::V4(v4)) = attr {
                // A prefix wider than /30 covers several slots: take every one it covers.
                let len = a.header.prefix_len.clamp(cidr.len, 30);
                let span = 1u32 << (30 - u32::from(len));
                let first = u32::from(*v4) & (u32::MAX << (32 - u32::from(len)));
                if let Some(s) = cidr.slot_of(Ipv4Addr::from(first)) {
                    out.extend(s..s.saturating_add(span).min(cidr.slots()));
                }
            }
        }
    }
    Ok(out)
}

/// A /30 of `cidr` not in `used`, drawn at random: a random start, then the next free one.
fn pick_slot(cidr: &Cidr, used: &HashSet<u32>) -> Option<u32> {
    let n = cidr.slots();
    let start = getrandom::u32().unwrap_or(0) % n;
    (0..n).map(|i| (start + i) % n).find(|s| !used.contains(s))
}

/// What a sandbox's network is, once made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNet {
    pub names: Names,
    pub addrs: SlotAddrs,
}

impl Shared {
    fn new(config: NetConfig, host: Handle) -> Shared {
        Shared {
            config,
            host,
            spares: std::sync::Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            seq: std::sync::atomic::AtomicU32::new(getrandom::u32().unwrap_or(0)),
        }
    }

    /// Makes a spare under the next spare names; on failure, removes what it made.
    async fn make_spare(&self) -> Result<Spare> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let names = spare_names(&self.config.net_prefix, seq);
        match self.build(&names).await {
            Ok((index, addrs)) => Ok(Spare { names, index, addrs }),
            Err(e) => {
                self.discard(&names).await;
                Err(e)
            }
        }
    }

    /// Makes the namespace and veth of `names`, the gateway address on the host side (left
    /// down) and the inside (lo and eth0 up, the sandbox's address, the default route).
    async fn build(&self, names: &Names) -> Result<(u32, SlotAddrs)> {
        let path = names.netns_path();
        let inside = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || make_netns(&path))
                .await
                .map_err(|e| RuntimeError::Protocol(e.to_string()))??
        };
        let ns_file = fs::File::open(&path).map_err(RuntimeError::io(format!("open {}", path.display())))?;
        let peer =
            LinkMessageBuilder::<LinkUnspec>::new().name("eth0".to_owned()).setns_by_fd(ns_file.as_raw_fd()).build();
        let veth = LinkVeth::new(&names.veth, "eth0").set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
        self.host.link().add(veth).execute().await.map_err(netlink_err(format!("add veth {}", names.veth)))?;
        drop(ns_file);
        let index = link_index(&self.host, &names.veth)
            .await?
            .ok_or_else(|| RuntimeError::Protocol(format!("veth {} vanished", names.veth)))?;
        // No IPv6 on the host side either: no link-local address a sandbox could talk to.
        let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", names.veth);
        if Path::new(&v6).exists() {
            fs::write(&v6, "1").map_err(RuntimeError::io(format!("write {v6}")))?;
        }
        let addrs = {
            let _lock = AddressLock::take().await?;
            let used = slots_in_use(&self.host, &self.config.cidr).await?;
            let slot = pick_slot(&self.config.cidr, &used).ok_or_else(|| {
                RuntimeError::Busy(format!("no address is free in the sandbox CIDR {}", self.config.cidr))
            })?;
            let addrs = self.config.cidr.slot(slot);
            self.host
                .address()
                .add(index, IpAddr::V4(addrs.gateway), 30)
                .execute()
                .await
                .map_err(netlink_err(format!("add {} to {}", addrs.gateway, names.veth)))?;
            addrs
        };
        // Inside: lo and eth0 up, the sandbox's address, the default route via the gateway
        // (eth0 is up, so the route is accepted while the host side is still down).
        let lo = link_index(&inside, "lo").await?.ok_or_else(|| RuntimeError::Protocol("no lo".into()))?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(netlink_err("set lo up"))?;
        let eth0 = link_index(&inside, "eth0").await?.ok_or_else(|| RuntimeError::Protocol("no eth0".into()))?;
        inside
            .address()
            .add(eth0, IpAddr::V4(addrs.sandbox), 30)
            .execute()
            .await
            .map_err(netlink_err(format!("add {} to eth0", addrs.sandbox)))?;
        inside
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(netlink_err("set eth0 up"))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(addrs.gateway).output_interface(eth0).build();
        inside.route().add(route).execute().await.map_err(netlink_err("add the default route"))?;
        Ok((index, addrs))
    }

    /// Gives `spare` the sandbox's `names`: its namespace bound under the sandbox's name (the
    /// spare name unmounted), then its host side renamed and set up in one message.
    async fn claim(&self, spare: &Spare, names: &Names) -> Result<()> {
        rebind_netns(&spare.names.netns_path(), &names.netns_path())?;
        remove_netns(&spare.names.netns_path())?;
        self.host
            .link()
            .set(LinkUnspec::new_with_index(spare.index).name(names.veth.clone()).up().build())
            .execute()
            .await
            .map_err(netlink_err(format!("rename {} to {} and set it up", spare.names.veth, names.veth)))
    }

    /// Removes whatever there is of the network named `names` (a spare's).
    async fn discard(&self, names: &Names) {
        let removed = async {
            if let Some(index) = link_index(&self.host, &names.veth).await? {
                match self.host.link().del(index).execute().await {
                    Ok(()) => {}
                    Err(e) if is_gone(&e) => {}
                    Err(e) => return Err(netlink_err(format!("delete veth {}", names.veth))(e)),
                }
            }
            remove_netns(&names.netns_path())
        };
        if let Err(e) = removed.await {
            tracing::warn!(veth = %names.veth, error = %e, "removing a spare network failed");
        }
    }

    /// Removes every spare network of this server's prefix on the host.
    async fn remove_spares(&self) {
        for names in spares_on_host(&self.config.net_prefix) {
            self.discard(&names).await;
        }
    }
}

/// The spare networks of `net_prefix` on the host, by their namespaces and veths.
fn spares_on_host(net_prefix: &str) -> Vec<Names> {
    let names_in = |dir: &str| -> Vec<String> {
        fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
    };
    let mut seqs: Vec<u32> = names_in(NETNS_DIR)
        .into_iter()
        .chain(names_in("/sys/class/net"))
        .filter_map(|n| {
            let rest = n.strip_prefix(net_prefix)?;
            if !is_spare(rest) {
                return None;
            }
            u32::from_str_radix(&rest[rest.len() - 8..], 16).ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.into_iter().map(|s| spare_names(net_prefix, s)).collect()
}

/// Keeps [`SPARES`] spares made.
async fn refill(shared: std::sync::Arc<Shared>) {
    loop {
        while shared.spares.lock().unwrap_or_else(|e| e.into_inner()).len() < SPARES {
            match shared.make_spare().await {
                Ok(spare) => shared.spares.lock().unwrap_or_else(|e| e.into_inner()).push(spare),
                Err(e) => {
                    // Creates make their own meanwhile; try again later.
                    tracing::warn!(error = %e, "making a spare sandbox network failed");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        }
        shared.wake.notified().await;
    }
}

/// Bind-mounts the network namespace at `from` on a new file `to`, as a second name for it.
fn rebind_netns(from: &Path, to: &Path) -> Result<()> {
    let what = format!("bind {} as {}", from.display(), to.display());
    fs::OpenOptions::new().write(true).create_new(true).mode(0o000).open(to).map_err(RuntimeError::io(what.clone()))?;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| RuntimeError::Invalid(format!("bad path {}", p.display())))
    };
    let (src, dst) = (c(from)?, c(to)?);
    // SAFETY: mount reads NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), c"none".as_ptr(), libc::MS_BIND, std::ptr::null()) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = fs::remove_file(to);
        return Err(RuntimeError::io(what)(e));
    }
    Ok(())
}

/// How many networks a server keeps made ahead of its creates (see [`Network`]).
pub const SPARES: usize = 2;

/// Whether `rest`, a network object's name after its owner's net prefix, names a spare network
/// (see [`Network`]): a namespace `-pool-` and 8 hex digits, or a veth `p` and 8 hex digits.
/// Spares live as long as their server, like its table.
pub fn is_spare(rest: &str) -> bool {
    let hex8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    rest.strip_prefix("-pool-").is_some_and(hex8) || rest.strip_prefix('p').is_some_and(hex8)
}

/// The names of spare network `seq` of `net_prefix`.
fn spare_names(net_prefix: &str, seq: u32) -> Names {
    Names { netns: format!("{net_prefix}-pool-{seq:08x}"), veth: format!("{net_prefix}p{seq:08x}") }
}

/// A network made ahead of its sandbox: a namespace with `eth0` configured, and the host side
/// of the veth, down, holding the gateway address.
struct Spare {
    names: Names,
    /// The host side's link index.
    index: u32,
    addrs: SlotAddrs,
}

/// What the refill task and the creates share.
struct Shared {
    config: NetConfig,
    /// Netlink in the host's network namespace.
    host: Handle,
    spares: std::sync::Mutex<Vec<Spare>>,
    /// Wakes the refill task when a spare is taken.
    wake: tokio::sync::Notify,
    /// The next spare's number.
    seq: std::sync::atomic::AtomicU32,
}

/// The sandbox networks of one server.
///
/// A create's network comes ready-made: the server keeps [`SPARES`] networks made ahead (a
/// background task makes one whenever one is taken), each with its namespace, its veth, its /30
/// and the inside configured, and its host side down, named as spares (see [`is_spare`]). A
/// create takes one and gives it the sandbox's names: the namespace is bind-mounted under the
/// sandbox's name (and its spare name unmounted), and the host side is renamed and set up in
/// one netlink message. With no spare left (a burst of creates), the create makes its own the
/// same way. Spares are fenced by the same rules as any sandbox veth (their names start with
/// the net prefix), removed by [`Self::shutdown`], by [`purge`], and by the next start of the
/// same owner after a crash; `bulkhead doctor` and the leak check see them as the owner's.
pub struct Network {
    shared: std::sync::Arc<Shared>,
    /// The refill task (none for [`Self::existing`]).
    refill: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(task) = &self.refill {
            task.abort();
        }
    }
}

impl Network {
    /// Checks the tools, opens netlink, installs the server's rules (replacing what a previous
    /// run left), removes the spares a previous run left and starts making spares. Call inside
    /// a tokio runtime.
    pub fn new(config: NetConfig) -> Result<Network> {
        crate::hostreg::check_net_prefix(&config.net_prefix).map_err(RuntimeError::Invalid)?;
        let host = connect()?;
        nft(&ruleset(&config.net_prefix))?;
        // Spares a previous run left (killed before its shutdown): their veths go with their
        // namespaces. Done before any create can make a spare of its own.
        for names in spares_on_host(&config.net_prefix) {
            remove_netns(&names.netns_path())?;
        }
        let shared = std::sync::Arc::new(Shared::new(config, host));
        let refill = tokio::spawn(refill(shared.clone()));
        Ok(Network { shared, refill: Some(refill) })
    }

    /// The networks of `net_prefix` already on the host, to list and remove them only: no rules
    /// are installed and no spares are made.
    pub fn existing(net_prefix: &str) -> Result<Network> {
        crate::hostreg::check_net_prefix(net_prefix).map_err(RuntimeError::Invalid)?;
        let cidr = Cidr { addr: Ipv4Addr::UNSPECIFIED, len: 30 };
        let config = NetConfig { net_prefix: net_prefix.to_owned(), cidr };
        Ok(Network { shared: std::sync::Arc::new(Shared::new(config, connect()?)), refill: None })
    }

    pub fn config(&self) -> &NetConfig {
        &self.shared.config
    }

    fn names(&self, id: &str) -> Result<Names> {
        Names::of(&self.shared.config.net_prefix, id)
            .ok_or_else(|| RuntimeError::Invalid(format!("{id} is not a sandbox id (sbx_ and 32 hex digits)")))
    }

    /// Makes sandbox `id`'s network (from a spare when there is one); on any failure, removes
    /// what it made.
    pub async fn setup(&self, id: &str) -> Result<SandboxNet> {
        let names = self.names(id)?;
        let taken = self.shared.spares.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let spare = match taken {
            Some(spare) => {
                self.shared.wake.notify_one();
                spare
            }
            None => self.shared.make_spare().await?,
        };
        match self.shared.claim(&spare, &names).await {
            Ok(()) => Ok(SandboxNet { names, addrs: spare.addrs }),
            Err(e) => {
                self.shared.discard(&spare.names).await;
                if let Err(cleanup) = self.teardown(id).await {
                    tracing::warn!(sandbox = id, error = %cleanup, "cleanup of a half-made sandbox network failed");
                }
                Err(e)
            }
        }
    }

    /// Stops making spares and removes them (the server is shutting down).
    pub async fn shutdown(&self) {
        if let Some(task) = &self.refill {
            task.abort();
        }
        self.shared.spares.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.shared.remove_spares().await;
    }

    /// Removes sandbox `id`'s network, whatever of it there is (its address goes with its veth).
    pub async fn teardown(&self, id: &str) -> Result<()> {
        let names = self.names(id)?;
        if let Some(index) = link_index(&self.shared.host, &names.veth).await? {
            match self.shared.host.link().del(index).execute().await {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(netlink_err(format!("delete veth {}", names.veth))(e)),
            }
        }
        remove_netns(&names.netns_path())
    }

    /// The sandbox ids whose networks of this server are on the host.
    /// The gateway address of sandbox `id` (the IPv4 address of its veth's host side), when
    /// its network exists.
    pub async fn gateway_of(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        let names = self.names(id)?;
        let Some(index) = link_index(&self.shared.host, &names.veth).await? else {
            return Ok(None);
        };
        let mut addrs = self.shared.host.address().get().set_link_index_filter(index).execute();
        while let Some(a) = addrs.try_next().await.map_err(netlink_err("list the veth's addresses"))? {
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(v4)) | AddressAttribute::Address(IpAddr::V4(v4)) = attr {
                    return Ok(Some(*v4));
                }
            }
        }
        Ok(None)
    }

    pub fn on_host(&self) -> Vec<String> {
        sandboxes_on_host(&self.shared.config.net_prefix)
    }
}

/// Removes every network object of `net_prefix` from the host, synchronously: its network
/// namespaces (their veths go with them), any veth left, and its table. For `oci::purge`.
pub fn purge(net_prefix: &str) -> Result<()> {
    if crate::hostreg::check_net_prefix(net_prefix).is_err() {
        return Err(RuntimeError::Invalid(format!("{net_prefix:?} is not a net prefix")));
    }
    let prefix = net_prefix.to_owned();
    let worker = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(RuntimeError::io("start a runtime for the network purge"))?;
        rt.block_on(async {
            let host = connect()?;
            for id in sandboxes_on_host(&prefix) {
                if let Some(names) = Names::of(&prefix, &id) {
                    remove_netns(&names.netns_path())?;
                }
            }
            for names in spares_on_host(&prefix) {
                remove_netns(&names.netns_path())?;
            }
            let veths: Vec<String> = fs::read_dir("/sys/class/net")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            for v in veths {
                if let Some(index) = link_index(&host, &v).await? {
                    match host.link().del(index).execute().await {
                        Ok(()) => {}
                        Err(e) if is_gone(&e) => {}
                        Err(e) => return Err(netlink_err(format!("delete veth {v}"))(e)),
                    }
                }
            }
            Ok(())
        })?;
        delete_table(&prefix)
    });
    worker.join().map_err(|_| RuntimeError::Protocol("the network purge panicked".into()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cidrs_parse_and_split_into_slots() {
        let c: Cidr = DEFAULT_SANDBOX_CIDR.parse().unwrap();
        assert_eq!(c.slots(), 1 << 20);
        assert_eq!(
            c.slot(0),
            SlotAddrs { gateway: "100.64.0.1".parse().unwrap(), sandbox: "100.64.0.2".parse().unwrap() }
        );
        assert_eq!(c.slot(c.slots() - 1).sandbox, "100.127.255.254".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.slot_of("100.64.0.6".parse().unwrap()), Some(1));
        assert_eq!(c.slot_of("100.128.0.1".parse().unwrap()), None);
        assert_eq!(c.to_string(), DEFAULT_SANDBOX_CIDR);
        for bad in ["100.64.0.0", "100.64.0.1/10", "10.0.0.0/31", "10.0.0.0/0", "x/8", "::/64"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let small: Cidr = "192.168.7.0/30".parse().unwrap();
        assert_eq!(small.slots(), 1);
        assert_eq!(pick_slot(&small, &HashSet::new()), Some(0));
        assert_eq!(pick_slot(&small, &HashSet::from([0])), None);
        let mid: Cidr = "10.1.0.0/28".parse().unwrap();
        for _ in 0..32 {
            assert_eq!(pick_slot(&mid, &HashSet::from([0, 1, 3])), Some(2));
        }
    }

    #[test]
    fn names_follow_the_convention() {
        let id = "sbx_0123456789abcdef0123456789abcdef";
        let n = Names::of("bh12ab", id).unwrap();
        assert_eq!(n.netns, "bh12ab-0123456789abcdef0123456789abcdef");
        assert_eq!(n.veth, "bh12ab012345678");
        assert!(n.veth.len() <= 15);
        assert_eq!(n.netns_path(), Path::new("/run/netns/bh12ab-0123456789abcdef0123456789abcdef"));
        for bad in ["sbx_0123", "sbx_0123456789ABCDEF0123456789abcdef", "key_0123456789abcdef0123456789abcdef"] {
            assert!(Names::of("bh12ab", bad).is_none(), "{bad}");
        }
        // Spares: names no sandbox id can have, of the owner's prefix, within the kernel's limit.
        let spare = spare_names("bh12ab", 0x2a);
        assert_eq!(spare.netns, "bh12ab-pool-0000002a");
        assert_eq!(spare.veth, "bh12abp0000002a");
        assert!(spare.veth.len() <= 15);
        assert!(is_spare("-pool-0000002a") && is_spare("p0000002a"));
        for not in
            ["-0123456789abcdef0123456789abcdef", "012345678", "_sandboxes", "-pool-2a", "p0000002A", "q0000002a"]
        {
            assert!(!is_spare(not), "{not}");
        }
        assert_eq!(crate::host::net_prefix_of(&spare.veth), Some(("bh12ab", "p0000002a")));
        // The host tools read them as the owner's names.
        assert_eq!(crate::host::net_prefix_of(&n.veth), Some(("bh12ab", "012345678")));
        assert_eq!(crate::host::net_prefix_of(&table_name("bh12ab")), Some(("bh12ab", "_sandboxes")));
    }

    #[test]
    fn the_ruleset_fences_sandbox_veths() {
        let r = ruleset("bh12ab");
        let cmds = r["nftables"].as_array().unwrap();
        // Replaced whole: add, delete, add the table first.
        assert_eq!(cmds[0]["add"]["table"]["name"], "bh12ab_sandboxes");
        assert!(cmds[1]["delete"]["table"].is_object());
        let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
        let forward: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == "forward").collect();
        assert_eq!(forward.len(), 2);
        for r in &forward {
            assert_eq!(r["expr"][0]["match"]["right"], "bh12ab*");
            assert!(r["expr"][1]["reject"].is_object());
        }
        let last = rules.iter().rfind(|r| r["chain"] == "sandbox_in").unwrap();
        assert!(last["expr"][0]["reject"].is_object(), "sandbox_in ends with a reject");
        let text = r.to_string();
        assert!(text.contains("\"daddr\",\"iif\""));
        // The nat chain: the own API passes, DNS goes to :53, every other TCP to the forwarder.
        let nat =
            cmds.iter().find_map(|c| c["add"]["chain"].as_object().filter(|c| c["name"] == "prerouting")).unwrap();
        assert_eq!((&nat["type"], &nat["hook"]), (&json!("nat"), &json!("prerouting")));
        let pre: Vec<&&Value> = rules.iter().filter(|r| r["chain"] == "prerouting").collect();
        assert_eq!(pre.len(), 4);
        assert!(pre[0]["expr"].as_array().unwrap().iter().any(|e| e["match"]["right"] == 15002));
        assert!(pre[0]["expr"].as_array().unwrap().last().unwrap()["accept"].is_null());
        let to = |r: &Value| r["expr"].as_array().unwrap().last().unwrap()["redirect"]["port"].clone();
        assert_eq!([to(pre[1]), to(pre[2]), to(pre[3])], [json!(53), json!(53), json!(15001)]);
        for r in &pre {
            assert_eq!(r["expr"][0]["match"]["right"], "bh12ab*", "only from sandbox veths");
        }
    }
}
