//! `--network isolated` on the real kernel: each sandbox has a network namespace, a veth and a
//! /30 of its own, and from inside it nothing is reachable but its own gateway's ports. Each
//! test fails if a sandbox gets through to another sandbox (of its namespace or another), to
//! the host (its other addresses, other sandboxes' gateways, other ports, its loopback) or to a
//! test "internet": a network namespace the test makes, reached through a veth it makes, with
//! an address of a documentation range (198.51.100.0/24, 203.0.113.0/24 or 192.0.2.0/24: the
//! first that no address or route of the host uses; hosts do use them). Every probe has a positive control
//! (the same listener reached from where it must be), so a failure to connect means the fence
//! and not a broken test. No packet is sent to an address outside this machine, and every test
//! removes what it made (its servers, their networks, its own namespace and veth).
//!
//! The sandboxes' tools are the host's `/usr`: `python3` and `ip`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bulkhead_api::{CreateSandbox, ExecRequest};
use bulkhead_client::Client;

mod common;

use common::host::Host;
use common::internet::Internet;
use common::Listener;
const NS: &str = "acme";
const OTHER_NS: &str = "globex";

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

async fn namespace(c: &Client, name: &str) {
    let quotas = common::roomy_quotas();
    c.create_namespace(&bulkhead_api::CreateNamespace {
        name: name.into(),
        isolation: None,
        placement: None,
        egress: None,
        quotas,
    })
    .await
    .unwrap();
}

async fn sandbox(c: &Client, ns: &str) -> String {
    c.create_sandbox(ns, &CreateSandbox { cpu_millis: Some(500), ..Default::default() }).await.unwrap().id
}

/// Runs `script` with `sh -c` in the sandbox; (exit code, stdout, stderr).
async fn sh(c: &Client, ns: &str, id: &str, script: &str) -> (i32, String, String) {
    let req = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout_seconds: Some(60),
        ..Default::default()
    };
    let r = c.exec(ns, id, &req).await.unwrap();
    (r.exit_code, r.stdout, r.stderr)
}

/// A sandbox's view of its network: its address and its gateway.
#[derive(Debug, Clone, Copy)]
struct View {
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
}

async fn view(c: &Client, ns: &str, id: &str) -> View {
    let (code, out, err) = sh(c, ns, id, "ip -4 -o addr show dev eth0; ip -4 route show default").await;
    assert_eq!(code, 0, "{err}");
    let addr = out.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap();
    let gateway = out.split_whitespace().skip_while(|w| *w != "via").nth(1).unwrap();
    View { addr: addr.split('/').next().unwrap().parse().unwrap(), gateway: gateway.parse().unwrap() }
}

/// Tries a TCP connection to each target from inside the sandbox (3 s each); whether each got
/// through: connected and then neither reset nor closed (the egress gateway's forwarder
/// accepts every redirected connection and resets those it denies) within 3 s.
async fn probe(c: &Client, ns: &str, id: &str, targets: &[SocketAddr]) -> HashMap<SocketAddr, bool> {
    let script = format!(
        "python3 -c '{}' {}",
        "import socket, sys\n\
         for t in sys.argv[1:]:\n\
         \x20   h, p = t.rsplit(\":\", 1)\n\
         \x20   s = socket.socket()\n\
         \x20   s.settimeout(3)\n\
         \x20   try:\n\
         \x20       s.connect((h, int(p)))\n\
         \x20       try:\n\
         \x20           assert s.recv(1)\n\
         \x20       except socket.timeout:\n\
         \x20           pass\n\
         \x20       print(t, \"CONNECTED\")\n\
         \x20   except Exception as e:\n\
         \x20       print(t, \"FAILED\", type(e).__name__)\n\
         \x20   s.close()\n",
        targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ")
    );
    let (code, out, err) = sh(c, ns, id, &script).await;
    assert_eq!(code, 0, "{out} {err}");
    let got: HashMap<SocketAddr, bool> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()? == "CONNECTED"))
        })
        .collect();
    assert_eq!(got.len(), targets.len(), "{out}");
    got
}

/// `net.ipv4.ip_forward` on while the test runs (so that the fence, not a host that forwards
/// nothing, is what stops a sandbox's packets to other networks), put back at the end.
struct Forwarding(String);

impl Forwarding {
    fn on() -> Forwarding {
        let path = "/proc/sys/net/ipv4/ip_forward";
        let before = std::fs::read_to_string(path).unwrap().trim().to_owned();
        std::fs::write(path, "1").unwrap();
        Forwarding(before)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.0);
    }
}

/// The host's own addresses other than loopback.
fn host_addresses() -> Vec<Ipv4Addr> {
    let out =
        String::from_utf8(Command::new("ip").args(["-4", "-o", "addr", "show"]).output().unwrap().stdout).unwrap();
    out.lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next()?.parse().ok())
        .filter(|a: &Ipv4Addr| !a.is_loopback())
        .collect()
}

/// Starts, in the sandbox, a listener on port 8080 that prints each peer and ends when a
/// connection sends `stop`; returns the task whose output is those peers.
fn listen_in(c: &Client, ns: &str, id: &str) -> tokio::task::JoinHandle<String> {
    let (c, ns, id) = (c.clone(), ns.to_owned(), id.to_owned());
    tokio::spawn(async move {
        let script = "import socket\n\
                      s = socket.socket()\n\
                      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind((\"0.0.0.0\", 8080))\n\
                      s.listen(16)\n\
                      s.settimeout(50)\n\
                      while True:\n\
                      \x20   c, a = s.accept()\n\
                      \x20   print(a[0], flush=True)\n\
                      \x20   c.settimeout(5)\n\
                      \x20   if c.recv(16) == b\"stop\":\n\
                      \x20       break\n";
        let req = ExecRequest {
            cmd: vec!["python3".into(), "-c".into(), script.into()],
            timeout_seconds: Some(60),
            ..Default::default()
        };
        let r = c.exec(&ns, &id, &req).await.unwrap();
        format!("{}{}", r.stdout, r.stderr)
    })
}

/// Connects from the host to the sandbox's listener (the positive control: the host reaches
/// it) and stops it; its peers.
async fn stop_listener(addr: Ipv4Addr, task: tokio::task::JoinHandle<String>) -> String {
    let target = SocketAddr::from((addr, 8080));
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            connected = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut s = connected.unwrap_or_else(|| panic!("the host cannot reach the listener at {target}"));
    s.write_all(b"stop").unwrap();
    tokio::time::timeout(Duration::from_secs(30), task).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_reaches_only_its_own_gateway_ports() {
    let _forwarding = Forwarding::on();
    let internet = Internet::new();
    let mut host = Host::new();
    let c = host.serve(&[]);
    namespace(&c, NS).await;
    namespace(&c, OTHER_NS).await;
    let a = sandbox(&c, NS).await;
    let b = sandbox(&c, NS).await;
    let other = sandbox(&c, OTHER_NS).await;
    let (va, vb, vo) = (view(&c, NS, &a).await, view(&c, NS, &b).await, view(&c, OTHER_NS, &other).await);
    let addrs = [va.addr, vb.addr, vo.addr, va.gateway, vb.gateway, vo.gateway];
    for (i, x) in addrs.iter().enumerate() {
        assert!(!addrs[i + 1..].contains(x), "{addrs:?}: an address is used twice");
    }
    // Listeners in B and in the other namespace's sandbox.
    let in_b = listen_in(&c, NS, &b);
    let in_other = listen_in(&c, OTHER_NS, &other);
    // On the host: A's own gateway on a gateway port and on another port, B's gateway, the
    // internet veth's host address (on a gateway port too), and the host's loopback.
    // Every gateway port is the gateway's own now: the positive control is its API relay.
    let gw_port = bulkhead_runtime::gateway::API_PORT;
    let own_gateway_api = SocketAddr::from((va.gateway, gw_port));
    let own_other_port = Listener::bind(SocketAddr::from((va.gateway, 0)));
    let b_gateway = Listener::bind(SocketAddr::from((vb.gateway, 0)));
    let host_addr = Listener::bind(SocketAddr::from((internet.host, gw_port)));
    let loopback = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    // Every address of the host, on another port (the gateway's own address among them).
    let anywhere = Listener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    // Positive control from the host: the internet's listener answers.
    let internet_addr = SocketAddr::from((internet.addr("allowed.test"), 9000));
    drop(
        TcpStream::connect_timeout(&internet_addr, Duration::from_secs(3)).expect("the host reaches the test internet"),
    );
    internet.wait_connections(|c| c.iter().any(|c| c.port == 9000 && c.peer == internet.host));
    let mut must_fail = vec![
        SocketAddr::from((vb.addr, 8080)),
        SocketAddr::from((vo.addr, 8080)),
        own_other_port.addr,
        b_gateway.addr,
        host_addr.addr,
        loopback.addr,
        internet_addr,
    ];
    for a in host_addresses() {
        must_fail.push(SocketAddr::from((a, anywhere.addr.port())));
    }
    must_fail.push(SocketAddr::from((vb.gateway, gw_port)));
    let mut targets = vec![own_gateway_api];
    targets.extend_from_slice(&must_fail);
    // Let the listeners in the sandboxes bind first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = probe(&c, NS, &a, &targets).await;
    assert!(got[&own_gateway_api], "A cannot reach its own gateway's port {gw_port}: {got:?}");
    for t in must_fail {
        assert!(!got[&t], "A got through to {t}: {got:?}");
    }
    for l in [&own_other_port, &b_gateway, &host_addr, &loopback, &anywhere] {
        assert!(l.peers().is_empty(), "{} accepted {:?}", l.addr, l.peers());
    }
    let b_peers = stop_listener(vb.addr, in_b).await;
    let other_peers = stop_listener(vo.addr, in_other).await;
    assert!(!b_peers.contains(&va.addr.to_string()), "B's listener saw A: {b_peers}");
    assert!(!other_peers.contains(&va.addr.to_string()), "the other tenant's listener saw A: {other_peers}");
    let seen = internet.connections();
    assert!(seen.iter().all(|c| c.peer != va.addr), "the test internet saw A: {seen:?}");
    drop(internet);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_has_lo_and_eth0_only_and_its_network_goes_with_it() {
    let mut host = Host::new();
    let c = host.serve(&[]);
    namespace(&c, NS).await;
    let a = sandbox(&c, NS).await;
    let (code, out, err) = sh(&c, NS, &a, "ip -o link show | cut -d: -f2 | tr -d ' '; ip -o addr show").await;
    assert_eq!(code, 0, "{err}");
    let links: Vec<&str> = out.lines().take_while(|l| !l.contains(' ')).collect();
    assert_eq!(links.iter().map(|l| l.split('@').next().unwrap()).collect::<Vec<_>>(), ["lo", "eth0"], "{out}");
    let v = view(&c, NS, &a).await;
    let cidr: bulkhead_runtime::net::Cidr = bulkhead_runtime::net::DEFAULT_SANDBOX_CIDR.parse().unwrap();
    assert!(cidr.slot_of(v.addr).is_some(), "{v:?} is outside {cidr}");
    assert!(out.contains(&format!("inet {}/30", v.addr)), "{out}");
    assert!(!out.contains("inet6"), "IPv6 is off: {out}");
    // The sandbox's root cannot change its network: the namespace is the host's.
    let (code, _, err) =
        sh(&c, NS, &a, "ip addr add 100.64.0.9/30 dev eth0 || ip link set eth0 down || ip link add x type dummy").await;
    assert_ne!(code, 0, "a sandbox changed its network");
    assert!(err.contains("Operation not permitted"), "{err}");
    // On the host: the sandbox's netns, its veth holding the gateway, and the server's table.
    let body = a.strip_prefix("sbx_").unwrap();
    let prefix = std::fs::read_to_string(host.state_dir().join("net_prefix")).unwrap();
    let netns = Path::new("/run/netns").join(format!("{prefix}-{body}"));
    let veth = format!("{prefix}{}", &body[..9]);
    assert!(netns.exists());
    let shown = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &veth]).output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("inet {}/30", v.gateway)));
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(String::from_utf8_lossy(&tables.stdout).contains(&format!("inet {prefix}_sandboxes")));
    // Deleted: nothing of its network is left, and its address is free again.
    c.delete_sandbox(NS, &a).await.unwrap();
    assert!(!netns.exists(), "{} is left", netns.display());
    assert!(!Path::new("/sys/class/net").join(&veth).exists(), "{veth} is left");
    let addrs = Command::new("ip").args(["-4", "-o", "addr", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&addrs.stdout).contains(&format!(" {}/30", v.gateway)));
    // A server gone with a sandbox running: the purge removes its network and the table.
    let b = sandbox(&c, NS).await;
    let body = b.strip_prefix("sbx_").unwrap().to_owned();
    let netns = Path::new("/run/netns").join(format!("{prefix}-{body}"));
    assert!(netns.exists());
    drop(host);
    assert!(!netns.exists(), "{} is left after the purge", netns.display());
    let tables = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&prefix), "the table is left after the purge");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_fails_leaves_no_network() {
    let mut host = Host::new();
    // An OCI runtime that answers --version and fails everything else.
    let fake = host.dir.path().join("failing-runtime");
    std::fs::write(&fake, "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let class = format!("container={}", fake.display());
    let c = host.serve(&["--runtime-class", &class]);
    namespace(&c, NS).await;
    let refused = c.create_sandbox(NS, &CreateSandbox { cpu_millis: Some(500), ..Default::default() }).await;
    assert!(refused.is_err(), "{refused:?}");
    let prefix = std::fs::read_to_string(host.state_dir().join("net_prefix")).unwrap();
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .chain(
            std::fs::read_dir("/sys/class/net")
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        )
        // The server's spare networks, made ahead of creates, are not the create's.
        .filter(|n| n.strip_prefix(&prefix).is_some_and(|rest| !bulkhead_runtime::net::is_spare(rest)))
        .collect();
    assert!(left.is_empty(), "a failed create left {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_removes_networks_no_sandbox_holds_and_keeps_those_of_running_ones() {
    let mut host = Host::new();
    let c = host.serve(&[]);
    namespace(&c, NS).await;
    let kept = sandbox(&c, NS).await;
    let v = view(&c, NS, &kept).await;
    let prefix = std::fs::read_to_string(host.state_dir().join("net_prefix")).unwrap();
    // What a crash between making a sandbox's network and writing its bundle leaves: a
    // network namespace of this server's prefix that names no sandbox.
    let orphan = format!("{prefix}-{}", random_hex(16));
    run(&["ip", "netns", "add", &orphan]);
    let orphan = Path::new("/run/netns").join(orphan);
    let c = host.restart("isolated");
    assert!(!orphan.exists(), "{} outlived the restart", orphan.display());
    // The running sandbox was adopted with its network: same address, still fenced, still
    // reaching its gateway.
    let again = view(&c, NS, &kept).await;
    assert_eq!((again.addr, again.gateway), (v.addr, v.gateway));
    let gw = SocketAddr::from((v.gateway, bulkhead_runtime::gateway::API_PORT));
    let other = Listener::bind(SocketAddr::from((v.gateway, 0)));
    let got = probe(&c, NS, &kept, &[gw, other.addr]).await;
    assert!(got[&gw] && !got[&other.addr] && other.peers().is_empty(), "{got:?}");
    // Restarted loopback-only, the server still removes the networks of the isolated
    // sandboxes it adopted.
    let c = host.restart("loopback-only");
    let netns = Path::new("/run/netns").join(format!("{prefix}-{}", kept.strip_prefix("sbx_").unwrap()));
    assert!(netns.exists());
    c.delete_sandbox(NS, &kept).await.unwrap();
    assert!(!netns.exists(), "{} outlived its sandbox", netns.display());
}

/// `$BULKHEAD_URL` inside a sandbox with a network of its own is the API at its gateway: the
/// workload token works from inside, and nothing else of the host is opened by it. After a
/// restart the adopted sandbox still reaches the API.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_at_bulkhead_url_from_inside_and_its_workload_token_works() {
    let mut host = Host::new();
    let c = host.serve(&[]);
    namespace(&c, NS).await;
    let a = sandbox(&c, NS).await;
    let v = view(&c, NS, &a).await;
    let script = format!(
        "echo \"$BULKHEAD_URL\"; python3 - <<'PY'\n\
import os, urllib.request\n\
url = os.environ['BULKHEAD_URL']\n\
print(urllib.request.urlopen(url + '/healthz', timeout=10).status)\n\
token = open('/run/bulkhead/token').read().strip()\n\
req = urllib.request.Request(url + '/v1/namespaces/{NS}/sandboxes/{a}', headers={{'Authorization': 'Bearer ' + token}})\n\
print(urllib.request.urlopen(req, timeout=10).read().decode())\n\
PY"
    );
    let (code, out, err) = sh(&c, NS, &a, &script).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("http://{}:15002", v.gateway).as_str()), "{out}");
    assert_eq!(lines.next(), Some("200"), "{out}");
    assert!(lines.next().is_some_and(|l| l.contains(&a) && l.contains("running")), "{out}");
    // The relay listens on that gateway address only.
    let listening = Command::new("ss").args(["-Htln", "sport = :15002"]).output().unwrap();
    let listening = String::from_utf8_lossy(&listening.stdout).to_string();
    assert!(listening.contains(&format!("{}:15002", v.gateway)) && !listening.contains("0.0.0.0:15002"), "{listening}");
    // A restart adopts the sandbox and its relay again.
    let c = host.restart("isolated");
    let (code, out, err) = sh(&c, NS, &a, "python3 -c \"import os,urllib.request;print(urllib.request.urlopen(os.environ['BULKHEAD_URL']+'/healthz',timeout=10).status)\"").await;
    assert_eq!((code, out.trim()), (0, "200"), "{err}");
}

/// A sandbox that opens and holds connection after connection to `$BULKHEAD_URL` gets at most
/// `MAX_API_CONNECTIONS` of them relayed (the rest are reset at once), so it cannot take the
/// server's descriptors from everyone else; the API answers again once it lets go, and another
/// sandbox stays served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_holding_connections_to_the_api_gets_a_bounded_number_relayed() {
    let mut host = Host::new();
    let c = host.serve(&[]);
    namespace(&c, NS).await;
    let a = sandbox(&c, NS).await;
    let b = sandbox(&c, NS).await;
    let max = bulkhead_runtime::gateway::MAX_API_CONNECTIONS;
    let script = r#"python3 - <<'PY'
import os, socket, time, urllib.parse, urllib.request
u = urllib.parse.urlparse(os.environ['BULKHEAD_URL'])
held = []
reset = relayed = 0
for _ in range(MAX + 40):
    try:
        held.append(socket.create_connection((u.hostname, u.port), timeout=10))
    except ConnectionResetError:
        # Reset by the relay before connect() returned here.
        reset += 1
time.sleep(1)
for s in held:
    s.settimeout(1)
    try:
        s.recv(1)
        reset += 1
    except socket.timeout:
        relayed += 1
    except OSError:
        reset += 1
print(relayed, reset)
for s in held:
    s.close()
time.sleep(1)
print(urllib.request.urlopen(os.environ['BULKHEAD_URL'] + '/healthz', timeout=10).status)
PY"#
    .replace("MAX", &max.to_string());
    let task = {
        let c = c.clone();
        let a = a.clone();
        tokio::spawn(async move { sh(&c, NS, &a, &script).await })
    };
    // While A holds its connections, B still reaches the API.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let probe = "python3 -c \"import os,urllib.request;print(urllib.request.urlopen(os.environ['BULKHEAD_URL']+'/healthz',timeout=10).status)\"";
    let (code, out, err) = sh(&c, NS, &b, probe).await;
    assert_eq!((code, out.trim()), (0, "200"), "{err}");
    let (code, out, err) = task.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    let counts: Vec<usize> = lines.next().unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
    assert!(counts[0] <= max, "at most {max} relayed at once: {out}");
    assert_eq!(counts[0] + counts[1], max + 40, "{out}");
    assert!(counts[1] >= 40, "the rest are reset: {out}");
    assert_eq!(lines.next(), Some("200"), "the API answers again once it lets go: {out}");
}
