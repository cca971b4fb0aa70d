//! The egress gateway on the real kernel, proven from inside a sandbox of `bulkhead serve
//! --network isolated`: the sandbox's DNS goes to its gateway's resolver, which answers only
//! names the decider allows (resolving them upstream, at `--egress-dns`), and every TCP
//! connection goes through the gateway's forwarder, which judges it by its TLS server name or
//! HTTP `Host` (checked against what the name really resolves to) and forwards it.
//!
//! The decider is the server's hidden `--egress-test-allow` (until the server's egress policies
//! land): `allowed.test` and `other.test` are allowed, everything else is denied.
//!
//! The test's "internet" is a network namespace and veth the test makes, with a documentation
//! /24 that no address or route of the host uses (never the host's own 192.0.2.0/24 here): `.2`
//! and `.3` inside, and one python3 process there that is the upstream DNS server (on `.2`:
//! `allowed.test` and `denied.test` are `.2`, `other.test` is `.3`), an HTTP server on port
//! 8080 and a bare TCP listener on port 8443 of both addresses; it prints every query, request
//! and connection, so each assertion is also seen from the server's side. Nothing leaves the
//! machine; everything is removed at the end (Drop guards).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use bulkhead_api::{CreateSandbox, ExecRequest};
use bulkhead_client::Client;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const NS: &str = "acme";

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A server with `--network isolated` and `extra`, killed and purged (its networks too) at
/// the end.
struct Server {
    _dir: tempfile::TempDir,
    child: Child,
    state: PathBuf,
    prefix: String,
    client: Client,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
        let tag = random_hex(6);
        let (state, prefix) = (PathBuf::from(format!("/run/bulkhead-test-{tag}")), format!("bulkhead-test-{tag}"));
        let mut args = vec!["--network", "isolated"];
        args.extend_from_slice(extra);
        let started = bulkhead_bench::server::Serve {
            bulkhead: Path::new(BIN),
            data_dir: &dir.path().join("data"),
            state_dir: &state,
            cgroup_prefix: &prefix,
            host_registry: Some(&dir.path().join("registry")),
            extra: &args,
        }
        .spawn()
        .unwrap();
        let client = Client::new(&started.url, started.first_token);
        Server { _dir: dir, child: started.child, state, prefix, client }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = bulkhead_runtime::oci::purge(&self.state, Path::new("/sys/fs/cgroup"), &self.prefix);
    }
}

/// The test's internet (see the module's doc).
struct Internet {
    netns: String,
    veth: String,
    process: Option<Child>,
    /// `.2` and `.3` of the range.
    a: String,
    b: String,
    /// What the process printed: `DNS <name> <type>`, `HTTP <addr> <host>`, `TCP <addr>`.
    seen: Arc<Mutex<Vec<String>>>,
}

const INTERNET: &str = r#"
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
A, B = sys.argv[1], sys.argv[2]
NAMES = {"allowed.test": A, "denied.test": A, "other.test": B}
lock = threading.Lock()
def out(*a):
    with lock:
        print(*a, flush=True)
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((A, 53))
    while True:
        q, peer = s.recvfrom(4096)
        try:
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode())
                i += 1 + q[i]
            qtype, end = int.from_bytes(q[i + 1:i + 3], "big"), i + 5
        except Exception:
            continue
        name = ".".join(labels).lower()
        out("DNS", name, qtype)
        ip = NAMES.get(name)
        flags = 0x8180 if ip else 0x8183
        an = 1 if ip and qtype == 1 else 0
        r = q[:2] + flags.to_bytes(2, "big") + b"\x00\x01" + an.to_bytes(2, "big") + b"\x00\x00\x00\x00" + q[12:end]
        if an:
            r += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ip)
        s.sendto(r, peer)
class Http(BaseHTTPRequestHandler):
    def do_GET(self):
        me = self.server.server_address[0]
        out("HTTP", me, self.headers.get("Host"))
        body = ("hello from " + me).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
def tcp(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8443))
    s.listen(16)
    while True:
        c, _ = s.accept()
        out("TCP", addr)
        c.close()
for addr in (A, B):
    threading.Thread(target=ThreadingHTTPServer((addr, 8080), Http).serve_forever, daemon=True).start()
    threading.Thread(target=tcp, args=(addr,), daemon=True).start()
threading.Thread(target=dns, daemon=True).start()
out("READY")
threading.Event().wait()
"#;

impl Internet {
    fn new() -> Internet {
        let out = |args: &[&str]| String::from_utf8(Command::new("ip").args(args).output().unwrap().stdout).unwrap();
        let used = out(&["-4", "-o", "addr", "show"]) + &out(&["-4", "route", "show", "table", "all"]);
        // Never 192.0.2.0/24: that is this kind of host's own network.
        let net = ["198.51.100", "203.0.113"]
            .into_iter()
            .find(|n| !used.contains(&format!("{n}.")))
            .expect("both free documentation ranges are in use on this host");
        let prefix = format!("bh{}", random_hex(2));
        let mut me = Internet {
            netns: format!("{prefix}-internet"),
            veth: format!("{prefix}inet0"),
            process: None,
            a: format!("{net}.2"),
            b: format!("{net}.3"),
            seen: Default::default(),
        };
        let peer = format!("{prefix}inet1");
        run(&["ip", "netns", "add", &me.netns]);
        run(&["ip", "link", "add", &me.veth, "type", "veth", "peer", "name", &peer, "netns", &me.netns]);
        run(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &me.veth]);
        run(&["ip", "link", "set", &me.veth, "up"]);
        for args in [
            vec!["addr", "add", &format!("{}/24", me.a), "dev", &peer],
            vec!["addr", "add", &format!("{}/24", me.b), "dev", &peer],
            vec!["link", "set", &peer, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut cmd = vec!["ip", "-n", &me.netns];
            cmd.extend(args.iter().map(|s| -> &str { s }));
            run(&cmd);
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &me.netns, "/usr/bin/python3", "-c", INTERNET, &me.a, &me.b])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        me.process = Some(child);
        assert_eq!(lines.next().unwrap().unwrap(), "READY");
        let seen = me.seen.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                seen.lock().unwrap().push(l);
            }
        });
        me
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        if let Some(mut c) = self.process.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.veth]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).stderr(Stdio::null()).status();
    }
}

/// Probes from inside the sandbox, one line each: `<label>: <result>`.
const PROBES: &str = r#"
import socket, ssl, sys, urllib.request
A, B = sys.argv[1], sys.argv[2]
def resolve(name):
    try:
        return socket.gethostbyname(name)
    except Exception as e:
        return "ERR " + type(e).__name__
def http(addr, host):
    try:
        s = socket.create_connection((addr, 8080), timeout=10)
        s.sendall(("GET / HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n").encode())
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        if not data:
            return "EMPTY"
        return data.split(b"\r\n")[0].decode() + " " + data.split(b"\r\n\r\n", 1)[-1].decode()
    except Exception as e:
        return "ERR " + type(e).__name__
def tls(addr, name):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        s = socket.create_connection((addr, 8443), timeout=10)
        ctx.wrap_socket(s, server_hostname=name)
        return "OK"
    except Exception as e:
        return "ERR " + type(e).__name__
print("resolve allowed:", resolve("allowed.test"))
print("resolve denied:", resolve("denied.test"))
try:
    print("get allowed:", urllib.request.urlopen("http://allowed.test:8080/", timeout=10).read().decode())
except Exception as e:
    print("get allowed: ERR", e)
print("host denied:", http(A, "denied.test"))
print("host allowed elsewhere:", http(B, "allowed.test"))
print("host other:", http(B, "other.test"))
print("sni allowed elsewhere:", tls(B, "allowed.test"))
print("sni other:", tls(B, "other.test"))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn allowed_names_resolve_and_connect_denied_and_spoofed_ones_do_not() {
    let internet = Internet::new();
    let dns = format!("{}:53", internet.a);
    let server = Server::start(&[
        "--egress-dns",
        &dns,
        "--egress-test-allow",
        "allowed.test",
        "--egress-test-allow",
        "other.test",
    ]);
    let c = &server.client;
    let quotas = bulkhead_api::Quotas {
        cpu_millis: 4000,
        memory_bytes: 4 << 30,
        disk_bytes: 1 << 30,
        max_sandboxes: 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 3600,
    };
    c.create_namespace(&bulkhead_api::CreateNamespace { name: NS.into(), isolation: None, quotas }).await.unwrap();
    let id = c.create_sandbox(NS, &CreateSandbox { cpu_millis: Some(500), ..Default::default() }).await.unwrap().id;
    let req = ExecRequest {
        cmd: vec!["python3".into(), "-c".into(), PROBES.into(), internet.a.clone(), internet.b.clone()],
        timeout_seconds: Some(120),
        ..Default::default()
    };
    let r = c.exec(NS, &id, &req).await.unwrap();
    assert_eq!(r.exit_code, 0, "{}{}", r.stdout, r.stderr);
    let result = |label: &str| -> String {
        let head = format!("{label}: ");
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&head))
            .unwrap_or_else(|| panic!("{label}? {}", r.stdout))
            .to_owned()
    };
    let (a, b) = (&internet.a, &internet.b);
    // The internet prints before it answers; its reader thread may still be a line behind.
    let last = format!("HTTP {b} other.test");
    for _ in 0..200 {
        if internet.seen().contains(&last) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let seen = internet.seen();

    // An allowed name answers through the gateway (from upstream), and its HTTP works.
    assert_eq!(result("resolve allowed"), *a, "{}", r.stdout);
    assert_eq!(result("get allowed"), format!("hello from {a}"));
    assert!(seen.iter().any(|l| l == "DNS allowed.test 1"), "{seen:?}");
    assert!(seen.contains(&format!("HTTP {a} allowed.test:8080")), "{seen:?}");
    // The sandbox's /etc/resolv.conf names its gateway: its queries went there, not upstream
    // directly (the upstream saw the gateway's queries only, which is what the line above
    // shows; the sandbox could not reach it anyway).

    // A denied name gets no answer, and is never asked upstream.
    assert!(result("resolve denied").starts_with("ERR"), "{}", r.stdout);
    assert!(!seen.iter().any(|l| l.contains("denied.test")), "a denied name reached upstream: {seen:?}");
    // ... and a connection naming it is refused before any byte reaches the server.
    let host_denied = result("host denied");
    assert!(host_denied.starts_with("ERR") || host_denied == "EMPTY", "{host_denied}");

    // An allowed name aimed at an address it does not resolve to is refused (HTTP Host and TLS
    // server name alike), while the name of that address (allowed too) gets through.
    let spoofed = result("host allowed elsewhere");
    assert!(spoofed.starts_with("ERR") || spoofed == "EMPTY", "{spoofed}");
    assert_eq!(result("host other"), format!("HTTP/1.0 200 OK hello from {b}"));
    assert!(!seen.iter().any(|l| l.starts_with(&format!("HTTP {b} allowed.test"))), "{seen:?}");
    assert!(seen.contains(&format!("HTTP {b} other.test")), "{seen:?}");
    assert!(result("sni allowed elsewhere").starts_with("ERR"));
    assert!(result("sni other").starts_with("ERR"), "the listener is not TLS: the handshake fails after connecting");
    let tcp_b = seen.iter().filter(|l| **l == format!("TCP {b}")).count();
    assert_eq!(tcp_b, 1, "only the TLS connection naming other.test reached {b}:8443: {seen:?}");
    // Nothing but the allowed requests reached the HTTP servers.
    let http: Vec<&String> = seen.iter().filter(|l| l.starts_with("HTTP")).collect();
    assert_eq!(http.len(), 2, "{http:?}");
}
