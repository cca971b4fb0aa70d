//! Issue 14's egress tests, from inside sandboxes, against the tests' own internet
//! (`common::internet`: dnsmasq, HTTP/HTTPS with a test CA, a package index, a git repository,
//! each counting what it saw). Every server under test runs `--network isolated` with
//! `--egress-dns` into that internet and `--egress-ca-file` its CA. The API is PRODUCT.md's
//! *Network egress*: a namespace's ceiling (`PATCH /v1/namespaces/{ns}` `{"egress": ...}`), a
//! sandbox's `egress.allow` and `egress.credentials`, `network.connect` in Cedar and
//! `authz/explain`, `egress_bytes` in usage.
//!
//! Each "must not get through" check fails the test if the sandbox reaches the target, and is
//! paired with a positive control (the same sandbox reaching an allowed name) so a failure means
//! the fence, not a broken setup. Nothing is sent outside this machine: every address a test
//! names is the test internet's, the host's, or a sandbox's. No timed assertion: the bandwidth
//! cap is asserted from below only (never faster than the cap + 10 %).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use bulkhead_api::ExecRequest;
use bulkhead_client::Client;
use common::host::Host;
use common::internet::{Internet, GIT_README, PACKAGE, WHEEL_VALUE};
use common::Listener;
use serde_json::{json, Value};

const NS: &str = "acme";
const OTHER_NS: &str = "globex";

/// The server under test, its admin client and raw JSON access to its API.
struct World {
    internet: Internet,
    host: Host,
    c: Client,
    http: reqwest::Client,
}

impl World {
    /// A server on `internet` with namespaces `acme` and `globex`.
    async fn new() -> World {
        let internet = Internet::new();
        let mut host = Host::new();
        let args = internet.serve_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = host.serve(&args);
        let w = World { internet, host, c, http: reqwest::Client::new() };
        for ns in [NS, OTHER_NS] {
            let quotas = common::roomy_quotas();
            w.c.create_namespace(&bulkhead_api::CreateNamespace {
                name: ns.into(),
                isolation: None,
                placement: None,
                egress: None,
                quotas,
            })
            .await
            .unwrap();
        }
        w
    }

    /// `method path` with `body` as the admin; (status, JSON body).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.c.base())).bearer_auth(self.host.admin_token());
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sets namespace `ns`'s ceiling; asserts it was taken.
    async fn ceiling(&self, ns: &str, egress: Value) {
        let (s, b) =
            self.call(reqwest::Method::PATCH, &format!("/v1/namespaces/{ns}"), Some(json!({"egress": egress}))).await;
        assert_eq!(s, 200, "{b}");
    }

    /// Creates a sandbox of `ns` with `egress`; (status, body).
    async fn try_sandbox(&self, ns: &str, egress: Value) -> (u16, Value) {
        let body = json!({"cpu_millis": 500, "egress": egress});
        self.call(reqwest::Method::POST, &format!("/v1/namespaces/{ns}/sandboxes"), Some(body)).await
    }

    async fn sandbox(&self, ns: &str, egress: Value) -> String {
        let (s, b) = self.try_sandbox(ns, egress).await;
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().unwrap().to_owned()
    }

    /// Runs `script` with `sh -c` in the sandbox, the test CA at `/tmp/test-ca.pem`;
    /// (exit code, stdout, stderr).
    async fn sh(&self, ns: &str, id: &str, script: &str) -> (i32, String, String) {
        let ca = std::fs::read_to_string(self.internet.ca_pem()).unwrap();
        let script = format!("cat > /tmp/test-ca.pem <<'PEM'\n{ca}PEM\n{script}");
        let req = ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), script],
            timeout_seconds: Some(120),
            ..Default::default()
        };
        let r = self.c.exec(ns, id, &req).await.unwrap();
        (r.exit_code, r.stdout, r.stderr)
    }

    /// `curl` in the sandbox (trusting the test CA); its exit code and stdout.
    async fn curl(&self, ns: &str, id: &str, args: &str) -> (i32, String) {
        let (code, out, err) =
            self.sh(ns, id, &format!("curl -sS --max-time 10 --cacert /tmp/test-ca.pem {args}")).await;
        (code, format!("{out}{err}"))
    }

    /// The egress counters of namespace `ns` as its Prometheus series show them
    /// (`GET /v1/namespaces/{ns}/metrics`: `bulkhead_egress_bytes_total` by direction,
    /// `bulkhead_egress_connections_total`, `bulkhead_egress_denied_total`), as
    /// `{"bytes_in", "bytes_out", "connections", "denied"}`. The API meters egress per namespace
    /// (PRODUCT.md: usage and Prometheus series); each test that reads these has one sandbox in
    /// the namespace that makes traffic, so they are that sandbox's.
    async fn egress_stats(&self, ns: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/v1/namespaces/{ns}/metrics", self.c.base()))
            .bearer_auth(self.host.admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.unwrap();
        let series = |name: &str, labels: &str| -> u64 {
            let prefix = format!("{name}{{namespace=\"{ns}\"{labels}}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
        };
        json!({
            "bytes_out": series("bulkhead_egress_bytes_total", ",direction=\"out\""),
            "bytes_in": series("bulkhead_egress_bytes_total", ",direction=\"in\""),
            "connections": series("bulkhead_egress_connections_total", ""),
            "denied": series("bulkhead_egress_denied_total", ""),
        })
    }

    /// Whether a connection (or a DNS query) of a sandbox reached the internet at `name`.
    fn reached(&self, name: &str) -> bool {
        !self.internet.connections_to(name).is_empty()
            || self.internet.requests().iter().any(|r| r.local == self.internet.addr(name))
    }
}

/// Resolves `name` in the sandbox (through its gateway) and asserts the test internet's address
/// for it came back.
async fn resolve(w: &World, ns: &str, id: &str, name: &str) {
    let (code, out, err) = w.sh(ns, id, &format!("getent ahostsv4 {name}")).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&w.internet.addr(name).to_string()), "{out}");
}

/// Tries a TCP connection to each `host:port` from inside the sandbox (5 s each); the ones
/// that connected.
async fn connected(w: &World, ns: &str, id: &str, targets: &[String]) -> Vec<String> {
    let script = format!(
        "python3 -c '{}' {}",
        "import socket, sys\n\
         for t in sys.argv[1:]:\n\
         \x20   h, p = t.rsplit(\":\", 1)\n\
         \x20   try:\n\
         \x20       s = socket.create_connection((h, int(p)), timeout=5)\n\
         \x20       s.sendall(b\"GET / HTTP/1.0\\r\\nHost: \" + h.encode() + b\"\\r\\n\\r\\n\")\n\
         \x20       got = s.recv(16)\n\
         \x20       print(t, \"CONNECTED\" if got else \"CLOSED\")\n\
         \x20   except Exception as e:\n\
         \x20       print(t, \"FAILED\", type(e).__name__)\n",
        targets.join(" ")
    );
    let (code, out, err) = w.sh(ns, id, &script).await;
    assert_eq!(code, 0, "{out}{err}");
    out.lines().filter(|l| l.ends_with("CONNECTED")).map(|l| l.split(' ').next().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_name_works_with_curl_pip_and_git_over_https() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test", "pypi.test:443", "git.test:443"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test", "pypi.test:443", "git.test:443"]})).await;
    let (code, out) = w.curl(NS, &a, "-f http://allowed.test/simple/").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(PACKAGE), "{out}");
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null -w '%{http_code}' https://allowed.test/simple/").await;
    assert_eq!((code, out.trim()), (0, "200"), "{out}");
    let (code, out, err) = w
        .sh(
            NS,
            &a,
            &format!(
                "python3 -m pip install -q --no-cache-dir --disable-pip-version-check --index-url https://pypi.test/simple/ \
                 --cert /tmp/test-ca.pem --target /tmp/site {PACKAGE} && \
                 PYTHONPATH=/tmp/site python3 -c 'import bulkhead_probe; print(bulkhead_probe.VALUE)'"
            ),
        )
        .await;
    assert_eq!((code, out.trim()), (0, WHEEL_VALUE), "{err}");
    let (code, out, err) = w
        .sh(NS, &a, "HOME=/tmp git -c http.sslCAInfo=/tmp/test-ca.pem clone -q https://git.test/repo.git /tmp/repo && cat /tmp/repo/README")
        .await;
    assert_eq!((code, out.trim()), (0, GIT_README), "{err}");
    // The servers saw the sandbox's requests under their names, through TLS they terminated
    // themselves (the gateway did not decrypt).
    let reqs = w.internet.wait_requests(|rs| {
        ["allowed.test", "pypi.test", "git.test"]
            .iter()
            .all(|name| rs.iter().any(|r| r.host.as_deref() == Some(*name) && r.status == Some(200)))
    });
    for name in ["allowed.test", "pypi.test", "git.test"] {
        assert!(reqs.iter().any(|r| r.host.as_deref() == Some(name) && r.status == Some(200)), "{name}: {reqs:?}");
    }
    assert!(reqs.iter().any(|r| r.sni.as_deref() == Some("pypi.test")), "{reqs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_name_gets_no_answer_and_no_connection() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test", "denied.test"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test"]})).await;
    // Positive control.
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null http://allowed.test/").await;
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = w.sh(NS, &a, "getent ahostsv4 denied.test; echo rc=$?").await;
    assert_eq!(code, 0);
    assert!(!out.contains(&w.internet.addr("denied.test").to_string()), "the sandbox resolved denied.test: {out}");
    let (code, out) = w.curl(NS, &a, "http://denied.test/").await;
    assert_ne!(code, 0, "{out}");
    assert!(!w.reached("denied.test"), "denied.test was reached");
    assert!(
        !w.internet.dns_queries().iter().any(|(_, n)| n == "denied.test"),
        "the gateway asked upstream for a denied name: {:?}",
        w.internet.dns_queries()
    );
    assert!(w.egress_stats(NS).await["denied"].as_u64().unwrap_or(0) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_host_by_ip_literal_is_refused() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test", "denied.test"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test"]})).await;
    let allowed = w.internet.addr("allowed.test");
    let denied = w.internet.addr("denied.test");
    // The control by address: the sandbox resolves allowed.test through its gateway first, so
    // the gateway knows that address as the allowed name's (its DNS memory); a domain entry
    // does not open an address the sandbox never resolved.
    resolve(&w, NS, &a, "allowed.test").await;
    let got = connected(
        &w,
        NS,
        &a,
        &[format!("{allowed}:80"), format!("{denied}:80"), format!("{denied}:443"), format!("{denied}:9000")],
    )
    .await;
    // By address, an allowed name's address is the name's (the gateway's DNS memory or the Host).
    assert!(got.contains(&format!("{allowed}:80")), "{got:?}");
    assert!(!got.iter().any(|t| t.starts_with(&denied.to_string())), "{got:?}");
    assert!(!w.reached("denied.test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_server_name_aimed_at_a_denied_address_is_refused() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test", "denied.test"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test"]})).await;
    let denied = w.internet.addr("denied.test");
    // TLS with SNI allowed.test to denied.test's address; HTTP with Host allowed.test likewise.
    let (code, out) = w.curl(NS, &a, &format!("--resolve allowed.test:443:{denied} https://allowed.test/")).await;
    assert_ne!(code, 0, "{out}");
    let (code, out) = w.curl(NS, &a, &format!("--resolve allowed.test:80:{denied} http://allowed.test/")).await;
    assert_ne!(code, 0, "{out}");
    assert!(!w.reached("denied.test"), "a spoofed name reached denied.test: {:?}", w.internet.connections());
    // The same with the right address works (control).
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null https://allowed.test/").await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn link_local_and_metadata_addresses_are_never_reachable() {
    let w = World::new().await;
    // Even a ceiling and an allow that name link-local do not open it.
    w.ceiling(NS, json!({"allow": ["allowed.test", "169.254.0.0/16"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test", "169.254.0.0/16"]})).await;
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null http://allowed.test/").await;
    assert_eq!(code, 0, "{out}");
    // The metadata address: the gateway refuses it before connecting anywhere.
    let got = connected(&w, NS, &a, &["169.254.169.254:80".into()]).await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_loopback_and_its_addresses_are_never_reachable() {
    let w = World::new().await;
    // The ceiling names the whole test network (the host's side of its veth is in it) and
    // loopback: still never reachable.
    w.ceiling(NS, json!({"allow": [w.internet.cidr.clone(), "127.0.0.0/8"]})).await;
    let a = w.sandbox(NS, json!({"allow": [w.internet.cidr.clone(), "127.0.0.0/8"]})).await;
    let loopback = Listener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let anywhere = Listener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let veth_side = Listener::bind(SocketAddr::from((w.internet.host, 0)));
    let mut targets =
        vec![loopback.addr.to_string(), veth_side.addr.to_string(), format!("{}:80", w.internet.addr("allowed.test"))];
    for addr in host_addresses() {
        targets.push(format!("{addr}:{}", anywhere.addr.port()));
    }
    let got = connected(&w, NS, &a, &targets).await;
    assert_eq!(got, vec![format!("{}:80", w.internet.addr("allowed.test"))], "control, and nothing else");
    for l in [&loopback, &anywhere, &veth_side] {
        assert!(l.peers().is_empty(), "{} accepted {:?}", l.addr, l.peers());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_sandboxes_of_any_tenant_are_never_reachable() {
    let w = World::new().await;
    let cidr = bulkhead_runtime::net::DEFAULT_SANDBOX_CIDR;
    for ns in [NS, OTHER_NS] {
        w.ceiling(ns, json!({"allow": ["allowed.test", cidr]})).await;
    }
    let a = w.sandbox(NS, json!({"allow": ["allowed.test", cidr]})).await;
    let b = w.sandbox(NS, json!({"allow": [cidr]})).await;
    let o = w.sandbox(OTHER_NS, json!({"allow": [cidr]})).await;
    let addr = |ns: &'static str, id: String| {
        let w = &w;
        async move {
            let (_, out, _) = w.sh(ns, &id, "ip -4 -o addr show dev eth0").await;
            out.split_whitespace().skip_while(|x| *x != "inet").nth(1).unwrap().split('/').next().unwrap().to_owned()
        }
    };
    let (vb, vo) = (addr(NS, b.clone()).await, addr(OTHER_NS, o.clone()).await);
    let listen = "nohup python3 -c 'import socket\ns=socket.socket()\ns.bind((\"0.0.0.0\",8080))\ns.listen(8)\nwhile True:\n c,a=s.accept()\n c.sendall(b\"x\")\n c.close()' >/dev/null 2>&1 &";
    w.sh(NS, &b, listen).await;
    w.sh(OTHER_NS, &o, listen).await;
    // The control goes by address, as known to the gateway from the sandbox's own lookup.
    resolve(&w, NS, &a, "allowed.test").await;
    let got = connected(
        &w,
        NS,
        &a,
        &[format!("{vb}:8080"), format!("{vo}:8080"), format!("{}:80", w.internet.addr("allowed.test"))],
    )
    .await;
    assert_eq!(got, vec![format!("{}:80", w.internet.addr("allowed.test"))], "control, and no sandbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_queries_for_denied_names_are_bounded_and_audited() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test"]})).await;
    // A tunnel: 3000 queries for distinct names under a denied domain.
    // (A raw string: a `\` line continuation would eat the Python's indentation.)
    let script = r#"python3 - <<'PY'
import random, socket, struct
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.01)
for i in range(3000):
    label = ('%x' % random.getrandbits(120)).encode()
    q = struct.pack('>HHHHHH', i, 0x0100, 1, 0, 0, 0)
    for part in (label, b'exfil', b'denied', b'test'):
        q += bytes([len(part)]) + part
    q += b'\x00\x00\x01\x00\x01'
    s.sendto(q, (ns, 53))
    try:
        s.recv(512)
    except Exception:
        pass
print('sent')
PY"#;
    let (code, out, err) = w.sh(NS, &a, script).await;
    assert_eq!((code, out.trim()), (0, "sent"), "{err}");
    assert!(
        !w.internet.dns_queries().iter().any(|(_, n)| n.ends_with("denied.test")),
        "a denied name's query went upstream"
    );
    // Counted as denials, and audited in a bounded number of aggregated records.
    let denied = w.egress_stats(NS).await["denied"].as_u64().unwrap_or(0);
    assert!(denied >= 1, "denials are counted: {denied}");
    // The denial audit is flushed once per interval (10 s): wait for the first flush.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let records = loop {
        let (s, audit) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/audit?limit=1000"), None).await;
        assert_eq!(s, 200, "{audit}");
        let records: Vec<Value> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "network.connect" && r["principal"] == format!("sandbox:{a}"))
            .cloned()
            .collect();
        if !records.is_empty() {
            break records;
        }
        assert!(std::time::Instant::now() < deadline, "no audit record of the denied queries within 60 s: {audit}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(records.len() <= 100, "{} audit records for one sandbox's denied queries", records.len());
    assert!(records.iter().all(|r| r["decision"] == "deny"), "{records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_sockets_are_refused() {
    let w = World::new().await;
    let a = w.sandbox(NS, json!({})).await;
    let (code, out, err) = w
        .sh(
            NS,
            &a,
            "python3 -c '\nimport socket\nfor fam, kind, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP), (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_PACKET, socket.SOCK_RAW, 0)):\n    try:\n        socket.socket(fam, kind, proto)\n        print(\"OPENED\", fam, proto)\n    except OSError as e:\n        print(\"REFUSED\", e.errno)\n'",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("OPENED"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_brokered_header_reaches_the_server_and_never_the_sandbox() {
    let w = World::new().await;
    let value = format!("sk-test-{}", std::process::id());
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/secrets"),
            Some(json!({"name": "llm-key", "value": value})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    w.ceiling(NS, json!({"allow": ["broker.test"]})).await;
    let egress = json!({"allow": ["broker.test"], "credentials": [{"host": "broker.test", "secret": "llm-key", "header": "Authorization", "format": "Bearer {secret}"}]});
    let a = w.sandbox(NS, egress).await;
    // With the sandbox's own CA bundle (the namespace CA is in it): no --cacert.
    let (code, out, err) =
        w.sh(NS, &a, "curl -sS -f --max-time 10 -o /dev/null -w '%{http_code}' https://broker.test/hello").await;
    assert_eq!((code, out.trim()), (0, "200"), "{err}");
    let reqs = w.internet.wait_requests(|rs| rs.iter().any(|r| r.path == "/hello"));
    let r = reqs.iter().find(|r| r.path == "/hello").expect("the request reached the server");
    assert!(
        r.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("authorization") && *v == format!("Bearer {value}")),
        "{r:?}"
    );
    // Nowhere inside: env, /proc, any file. The pattern is a regular expression that matches
    // the value but is not its text (`sk-tes[t]-…`), so the command lines of this very script
    // and its grep, which hold the pattern, do not match it. Every file: all of `/` but the
    // kernel's own trees (/proc, whose environ and cmdline files are searched, and /sys), and
    // devices, which grep skips (reading some never ends).
    let pattern = value.replacen("sk-test-", "sk-tes[t]-", 1);
    let (code, out, err) = w
        .sh(
            NS,
            &a,
            &format!(
                "p='{pattern}'; env | grep -c -- \"$p\"; \
                 {{ grep -sl -- \"$p\" /proc/[0-9]*/environ /proc/[0-9]*/cmdline; \
                 for d in /* /.[!.]*; do case \"$d\" in /proc|/sys) ;; *) grep -rsl -D skip -- \"$p\" \"$d\";; esac; done; }} \
                 2>/dev/null | grep -v '^/proc/self/' | head; echo end"
            ),
        )
        .await;
    assert!(out.trim_start().starts_with('0'), "env holds the value: {out}{err} {code}");
    assert_eq!(out.lines().filter(|l| !l.is_empty()).skip(1).collect::<Vec<_>>(), vec!["end"], "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_are_metered_within_5_percent_of_what_the_server_counted() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["bulk.test"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["bulk.test"]})).await;
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null https://bulk.test/bytes/4194304").await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null --data-binary @/usr/bin/python3 https://bulk.test/upload").await;
    assert_eq!(code, 0, "{out}");
    let conns =
        w.internet.wait_connections(|c| c.iter().filter(|c| c.sni.as_deref() == Some("bulk.test")).count() >= 2);
    let (srv_out, srv_in): (u64, u64) = conns
        .iter()
        .filter(|c| c.sni.as_deref() == Some("bulk.test"))
        .fold((0, 0), |(o, i), c| (o + c.bytes_out, i + c.bytes_in));
    let stats = w.egress_stats(NS).await;
    let (bytes_in, bytes_out) = (stats["bytes_in"].as_u64().unwrap(), stats["bytes_out"].as_u64().unwrap());
    let within = |metered: u64, counted: u64| (metered as f64 - counted as f64).abs() <= counted as f64 * 0.05;
    assert!(within(bytes_in, srv_out), "metered in {bytes_in}, the server sent {srv_out}");
    assert!(within(bytes_out, srv_in), "metered out {bytes_out}, the server received {srv_in}");
    assert!(stats["connections"].as_u64().unwrap() >= 2, "{stats}");
    // In usage too, both directions together, once metering sampled the sandbox (every 10 s).
    let counted = srv_out + srv_in;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let total = loop {
        let (s, usage) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{NS}/usage"), None).await;
        assert_eq!(s, 200, "{usage}");
        let total = usage["totals"]["egress_bytes"].as_u64().unwrap();
        if within(total, counted) || total > counted || std::time::Instant::now() >= deadline {
            break total;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(within(total, srv_out + srv_in) || total > srv_out + srv_in, "usage {total}, counted {}", srv_out + srv_in);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bandwidth_cap_holds_for_the_namespace_sum() {
    let w = World::new().await;
    let cap: u64 = 1 << 20; // 1 MiB/s
    w.ceiling(NS, json!({"allow": ["bulk.test"], "max_bandwidth_bytes_per_second": cap})).await;
    let a = w.sandbox(NS, json!({"allow": ["bulk.test"]})).await;
    let b = w.sandbox(NS, json!({"allow": ["bulk.test"]})).await;
    // Two downloads in each sandbox at once, 2 MiB each: 8 MiB at most 1.1 MiB/s takes at
    // least 8 / 1.1 s. Asserted from below only.
    let n: u64 = 2 << 20;
    let script = format!(
        "for i in 1 2; do curl -sS -f --max-time 100 --cacert /tmp/test-ca.pem -o /dev/null https://bulk.test/bytes/{n} & done; wait"
    );
    let started = std::time::Instant::now();
    let (ra, rb) = tokio::join!(w.sh(NS, &a, &script), w.sh(NS, &b, &script));
    let took = started.elapsed().as_secs_f64();
    assert_eq!((ra.0, rb.0), (0, 0), "{ra:?} {rb:?}");
    let floor = (4 * n) as f64 / (cap as f64 * 1.1);
    assert!(took >= floor, "8 MiB in {took:.2} s: faster than the cap + 10 % ({floor:.2} s)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forbid_added_while_a_sandbox_runs_holds_for_its_next_connection() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test"]})).await;
    let a = w.sandbox(NS, json!({"allow": ["allowed.test"]})).await;
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null https://allowed.test/").await;
    assert_eq!(code, 0, "{out}");
    let policy = "forbid(principal, action == Bulkhead::Action::\"network.connect\", resource == Bulkhead::Host::\"allowed.test\");";
    let (s, b) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{NS}/policies"),
            Some(json!({"name": "no-allowed", "policy": policy})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let before = w.internet.connections_to("allowed.test").len();
    let (code, out) = w.curl(NS, &a, "-o /dev/null https://allowed.test/").await;
    assert_ne!(code, 0, "the forbid did not hold: {out}");
    assert_eq!(
        w.internet.connections_to("allowed.test").len(),
        before,
        "a connection reached allowed.test after the forbid"
    );
    // And explain says so.
    let body = json!({"principal": format!("sandbox:{a}"), "action": "network.connect", "resource": "host:allowed.test",
        "context": {"port": 443, "protocol": "tcp"}});
    let (s, e) = w.call(reqwest::Method::POST, &format!("/v1/namespaces/{NS}/authz/explain"), Some(body)).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["decision"], "deny", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_refuses_entries_beyond_the_ceiling_and_malformed_ones() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test", "*.wild.test"]})).await;
    let (s, b) = w.try_sandbox(NS, json!({"allow": ["denied.test"]})).await;
    assert_eq!(s, 403, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("denied.test"), "{b}");
    let (s, b) = w.try_sandbox(NS, json!({"allow": ["allowed.test:99999"]})).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("allowed.test:99999"), "{b}");
    // Within the ceiling: a subdomain under its wildcard works, a sibling does not.
    let a = w.sandbox(NS, json!({"allow": ["a.wild.test"]})).await;
    let (code, out) = w.curl(NS, &a, "-f -o /dev/null https://a.wild.test/").await;
    assert_eq!(code, 0, "{out}");
    // No egress asked: nothing reachable, yet $BULKHEAD_URL works.
    let n = w.sandbox(NS, json!({})).await;
    let (code, out) = w.curl(NS, &n, "-o /dev/null https://allowed.test/").await;
    assert_ne!(code, 0, "{out}");
    let (code, out, err) = w.sh(NS, &n, "curl -sS -f --max-time 10 \"$BULKHEAD_URL/healthz\"").await;
    assert_eq!(code, 0, "{out}{err}");
}

/// The host's own addresses other than loopback.
fn host_addresses() -> Vec<Ipv4Addr> {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next()?.parse().ok())
        .filter(|a: &Ipv4Addr| !a.is_loopback())
        .collect()
}

/// Waits until namespace `ns`'s pool of the default image has a ready sandbox.
async fn pool_ready(w: &World, ns: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (s, b) = w.call(reqwest::Method::GET, &format!("/v1/namespaces/{ns}/pools"), None).await;
        assert_eq!(s, 200, "{b}");
        if b["items"][0]["ready"].as_u64() == Some(1) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the pool never filled: {b}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Whether sandbox `id`'s init started before `before` (seconds since the host booted): the
/// sandbox was a warm pool's.
async fn from_the_pool(w: &World, ns: &str, id: &str, before: f64) -> bool {
    let (code, out, err) =
        w.sh(ns, id, "s=$(cat /proc/1/stat); s=${s##*) }; set -- $s; echo \"${20} $(getconf CLK_TCK)\"").await;
    assert_eq!(code, 0, "{err}");
    let mut it = out.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    it.next().unwrap() / it.next().unwrap() < before
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_sandbox_gets_its_claimants_egress_and_nothing_before() {
    let w = World::new().await;
    w.ceiling(NS, json!({"allow": ["allowed.test"]})).await;
    let (s, b) =
        w.call(reqwest::Method::PUT, &format!("/v1/namespaces/{NS}/pools/default"), Some(json!({"size": 1}))).await;
    assert_eq!(s, 200, "{b}");
    // A claim without egress reaches nothing.
    pool_ready(&w, NS).await;
    let before = uptime();
    let quiet = w.sandbox(NS, json!({"allow": []})).await;
    assert!(from_the_pool(&w, NS, &quiet, before).await, "the first create was not a claim");
    let (code, out) = w.curl(NS, &quiet, "-f http://allowed.test/simple/").await;
    assert_ne!(code, 0, "a claim that asked for no egress got through: {out}");
    assert!(!w.reached("allowed.test"), "the sandbox without egress reached the internet");
    // A claim with egress reaches what it asked for, through the gateway it had from its start,
    // and the API at $BULKHEAD_URL with its own workload token.
    pool_ready(&w, NS).await;
    let before = uptime();
    let open = w.sandbox(NS, json!({"allow": ["allowed.test"]})).await;
    assert!(from_the_pool(&w, NS, &open, before).await, "the second create was not a claim");
    let (code, out) = w.curl(NS, &open, "-f http://allowed.test/simple/").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(PACKAGE), "{out}");
    let (code, out, err) = w
        .sh(
            NS,
            &open,
            "curl -sS -o /dev/null -w '%{http_code}' -H \"Authorization: Bearer $(cat /run/bulkhead/token)\" \
             \"$BULKHEAD_URL/v1/namespaces/acme/sandboxes/$(hostname)\"",
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");
    let (s, b) = w.call(reqwest::Method::DELETE, &format!("/v1/namespaces/{NS}/pools/default"), None).await;
    assert_eq!(s, 204, "{b}");
}
