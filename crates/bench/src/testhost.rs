//! The bench's own test host for egress: a network namespace and a veth the bench makes, on a
//! free /26 of a documentation range (203.0.113.0/24 or 198.51.100.0/24; a /26 that overlaps
//! an address or route of this machine is skipped, and 192.0.2.0/24 is never used), with a
//! python3 server inside ([`SERVER_PY`]) that answers `GET /small` with three bytes and
//! `GET /bytes/N` with N MiB.
//!
//! Nothing leaves this machine: the namespace has no route but its own /26, and the host
//! reaches it over the bench's veth only. Dropping the [`TestHost`] kills the server, deletes
//! the namespace (and with it both ends of the veth) and frees the /26. Names carry the bench's
//! process id (`bhbench-<pid>`, `bhb<pid>h`), so a leftover of a bench that was killed is
//! removed by the next one.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// The server inside the namespace: one connection at a time (the bench's clients are
/// sequential), each one request, then closed.
const SERVER_PY: &str = r#"
import os, socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
chunk = os.urandom(1 << 20)
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((addr, port))
ls.listen(1024)
print("listening", flush=True)
while True:
    c, _ = ls.accept()
    try:
        c.settimeout(30)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = b""
        while b"\r\n\r\n" not in head:
            got = c.recv(4096)
            if not got:
                break
            head += got
        parts = head.split(b" ", 2)
        path = parts[1].decode() if len(parts) > 2 else ""
        if path == "/small":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        elif path.startswith("/bytes/"):
            n = int(path[len("/bytes/"):])
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (n << 20))
            for _ in range(n):
                c.sendall(chunk)
        else:
            c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()
"#;

/// The bench's test host; see the module's doc. Everything goes with it on drop.
pub struct TestHost {
    /// `bhbench-<pid>`.
    pub netns: String,
    /// The host side of the veth, `bhb<pid>h`.
    pub veth: String,
    /// The /26, such as `203.0.113.64/26`.
    pub cidr: String,
    /// The host side's address (`.1` of the /26).
    pub host: Ipv4Addr,
    /// The server's address (`.2`), port [`TestHost::PORT`].
    pub server: Ipv4Addr,
    /// An address of the /26 nothing answers on, for `--egress-dns`: a lookup sent there (none
    /// should be) stays on this machine.
    pub dns: Ipv4Addr,
    claim: PathBuf,
    made_netns: bool,
    process: Option<Child>,
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (network, prefix length) of `a.b.c.d/n` or `a.b.c.d` (a /32).
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let a: Ipv4Addr = a.parse().ok()?;
    (len <= 32).then_some((u32::from(a), len))
}

/// Whether two (network, prefix length) ranges share an address.
pub fn overlaps((a, alen): (u32, u32), (b, blen): (u32, u32)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

/// Every IPv4 prefix this machine holds or routes, in any table (default routes aside), as
/// (network, prefix length): what a test network must not overlap.
pub fn host_prefixes() -> anyhow::Result<Vec<(u32, u32)>> {
    let addrs = ip(&["-4", "-o", "addr", "show"])?;
    let routes = ip(&["-4", "-o", "route", "show", "table", "all"])?;
    let mut out: Vec<(u32, u32)> =
        addrs.lines().filter_map(|l| parse_cidr(l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?)).collect();
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "nat",
    ];
    for l in routes.lines() {
        let mut w = l.split_whitespace();
        let Some(mut dest) = w.next() else { continue };
        if TYPES.contains(&dest) {
            dest = w.next().unwrap_or("default");
        }
        if let Some(p) = parse_cidr(dest) {
            out.push(p);
        }
    }
    Ok(out)
}

fn alive(pid: &str) -> bool {
    pid.parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

/// Removes the namespaces and claims of benches that are gone (killed before they cleaned up).
fn remove_stale() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(pid) = name.strip_prefix("bhbench-") {
                if !alive(pid) {
                    let _ = ip(&["netns", "del", name]);
                }
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/run") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("bulkhead-bench-host-") {
                let pid = std::fs::read_to_string(e.path().join("pid")).unwrap_or_default();
                // A claim just made has no pid file yet: leave it.
                if !pid.trim().is_empty() && !alive(pid.trim()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Claims a free /26: its base address and the claim (`/run/bulkhead-bench-host-<base>`
/// holding this process's id). A /26 the tests' internet has claimed is skipped too.
fn claim() -> anyhow::Result<(Ipv4Addr, PathBuf)> {
    let used = host_prefixes()?;
    for net in ["203.0.113", "198.51.100"] {
        for q in (0..4u8).rev() {
            let base: Ipv4Addr = format!("{net}.{}", q * 64).parse()?;
            if used.iter().any(|p| overlaps(*p, (u32::from(base), 26)))
                || Path::new(&format!("/run/bulkhead-test-internet-{base}")).exists()
            {
                continue;
            }
            let claim = PathBuf::from(format!("/run/bulkhead-bench-host-{base}"));
            match std::fs::create_dir(&claim) {
                Ok(()) => {
                    std::fs::write(claim.join("pid"), std::process::id().to_string())?;
                    return Ok((base, claim));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {}", claim.display())),
            }
        }
    }
    bail!("no free documentation /26 (203.0.113.0/24, 198.51.100.0/24) for the bench's test host")
}

fn offset(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

impl TestHost {
    /// The server's port.
    pub const PORT: u16 = 80;

    /// Makes the namespace and the veth and starts the server; what it made is removed when
    /// a step fails.
    pub fn new() -> anyhow::Result<TestHost> {
        remove_stale();
        let (base, claim) = claim()?;
        let pid = std::process::id();
        let mut me = TestHost {
            netns: format!("bhbench-{pid}"),
            veth: format!("bhb{pid}h"),
            cidr: format!("{base}/26"),
            host: offset(base, 1),
            server: offset(base, 2),
            dns: offset(base, 3),
            claim,
            made_netns: false,
            process: None,
        };
        me.link().context("make the test host's namespace and veth")?;
        me.start().context("start the test host's server")?;
        Ok(me)
    }

    fn link(&mut self) -> anyhow::Result<()> {
        let peer = format!("{}p", &self.veth[..self.veth.len() - 1]);
        ip(&["netns", "add", &self.netns])?;
        self.made_netns = true;
        ip(&["link", "add", &self.veth, "type", "veth", "peer", "name", &peer, "netns", &self.netns])?;
        ip(&["addr", "add", &format!("{}/26", self.host), "dev", &self.veth])?;
        ip(&["link", "set", &self.veth, "up"])?;
        ip(&["-n", &self.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.netns, "addr", "add", &format!("{}/26", self.server), "dev", &peer])?;
        ip(&["-n", &self.netns, "link", "set", &peer, "up"])?;
        Ok(())
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "python3", "-c", SERVER_PY])
            .arg(self.server.to_string())
            .arg(Self::PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn ip netns exec python3")?;
        let stdout = child.stdout.take();
        self.process = Some(child);
        let mut line = String::new();
        if let Some(out) = stdout {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "listening" {
            bail!("the server exited before it listened");
        }
        Ok(())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if self.made_netns {
            // Deleting the namespace deletes the peer, and with it the host's end.
            if let Err(e) = ip(&["netns", "del", &self.netns]) {
                eprintln!("warning: the bench's test host stays: {e}");
            }
            let _ = ip(&["link", "del", &self.veth]);
        }
        let _ = std::fs::remove_dir_all(&self.claim);
    }
}
