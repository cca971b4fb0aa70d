//! The tests' own internet: a network namespace and a veth made by the test, on a free /26 of a
//! documentation range (198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24: hosts do use them, this
//! one's own network may be one of them, so a /26 that overlaps any address or route of the host
//! is skipped), with, inside:
//! - `dnsmasq` (Debian's dnsmasq-base) on `.2:53` answering the test names of [`NAMES`] with
//!   addresses of the /26 (a name and its subdomains, so `a.wild.test` is `wild.test`'s
//!   address), NXDOMAIN for any other name under `.test`, nothing upstream;
//! - web servers (`internet_server.py`: python3 `http.server` + `ssl`) on every address: HTTP on
//!   :80, HTTPS on :443 with a certificate for every test name from a CA the test makes with the
//!   `openssl` CLI ([`Internet::ca_pem`]), and a plain TCP sink on :9000 that says `hello`;
//! - a PEP 503 package index at `https://pypi.test/simple/` with one wheel the test builds
//!   (`bulkhead-probe` 1.0, module `bulkhead_probe`, `VALUE = "from the test index"`);
//! - an OpenAI-compatible chat model at `https://model.test/v1/chat/completions` (on every
//!   name, in fact) that follows a script: what the agent tests' example agent talks to;
//! - a git repository at `https://git.test/repo.git` (dumb HTTP, after `git update-server-info`)
//!   whose `README` holds [`GIT_README`].
//!
//! The servers count what they saw: every connection (local address, SNI, TCP payload bytes in
//! and out as the kernel counted them) and every request (Host, method, path, status, headers),
//! and dnsmasq every query ([`Internet::connections`], [`Internet::requests`],
//! [`Internet::dns_queries`]).
//!
//! Nothing leaves this machine: the addresses are on the test's own veth. Dropping the
//! `Internet` kills dnsmasq and the servers, deletes the veth and the namespace, frees the slot
//! and removes the files (CA, index, repository). Names carry `bh` and four hex digits (netns
//! and veth) or `bulkhead-test-` (the slot claim under `/run`), so the leak check sees leftovers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The test names and the offset of each one's address in the internet's /26.
pub const NAMES: &[(&str, u8)] = &[
    ("allowed.test", 10),
    ("denied.test", 11),
    ("other.test", 12),
    ("pypi.test", 13),
    ("git.test", 14),
    ("broker.test", 15),
    ("wild.test", 16),
    ("bulk.test", 17),
    ("model.test", 18),
];

/// The first line of the test repository's `README`.
pub const GIT_README: &str = "served by the test internet";
/// What `bulkhead_probe.VALUE` holds in the index's wheel.
pub const WHEEL_VALUE: &str = "from the test index";
/// The package the index serves.
pub const PACKAGE: &str = "bulkhead-probe";

/// Environment variables that would make a client trust, use or fetch something other than
/// what the test names; removed from [`Internet::command`].
pub const HOST_ENV_OVERRIDES: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "PIP_CERT",
    "PIP_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "NODE_EXTRA_CA_CERTS",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

const SERVER_PY: &str = include_str!("internet_server.py");

/// One TCP connection as a test server saw it, recorded when it ended.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `http`, `https` or `tcp`.
    pub server: String,
    /// The address it was made to (which test name's).
    pub local: Ipv4Addr,
    pub port: u16,
    pub peer: Ipv4Addr,
    /// The server name of the TLS ClientHello, if any.
    pub sni: Option<String>,
    /// TCP payload bytes received and sent (acknowledged), TLS records included.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests: u64,
    pub tls_error: Option<String>,
}

/// One HTTP request as a test server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub server: String,
    pub local: Ipv4Addr,
    pub sni: Option<String>,
    pub host: Option<String>,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    /// Header names as sent, with their values.
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<Value>>,
    changed: Condvar,
}

/// The test's internet; see the module's doc. Everything goes with it on drop.
pub struct Internet {
    /// The network namespace inside, `bh<4 hex>-internet`.
    pub netns: String,
    /// The host side of the veth, `bh<4 hex>inet0`.
    pub veth: String,
    /// The /26 in CIDR form.
    pub cidr: String,
    /// The host side's address (`.1` of the /26).
    pub host: Ipv4Addr,
    /// dnsmasq's address (`.2`); port 53, UDP and TCP.
    pub dns: Ipv4Addr,
    base: Ipv4Addr,
    dir: Option<tempfile::TempDir>,
    slot: PathBuf,
    servers: Option<Child>,
    dnsmasq: Option<Child>,
    log: Arc<Log>,
    dns_log: Arc<Mutex<Vec<String>>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Claims a free /26 (a dir `/run/bulkhead-test-internet-<net>.<base>` holding this process's
/// id; a claim whose process is gone is taken over); its base address and the claim.
fn claim_slot() -> (Ipv4Addr, PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let used = bulkhead_bench::testhost::host_prefixes().expect("read the host's addresses and routes");
        for net in ["198.51.100", "203.0.113", "192.0.2"] {
            for q in 0..4u8 {
                let base: Ipv4Addr = format!("{net}.{}", q * 64).parse().unwrap();
                if used.iter().any(|p| bulkhead_bench::testhost::overlaps(*p, (u32::from(base), 26))) {
                    continue;
                }
                let claim = PathBuf::from(format!("/run/bulkhead-test-internet-{base}"));
                match std::fs::create_dir(&claim) {
                    Ok(()) => {
                        std::fs::write(claim.join("pid"), std::process::id().to_string()).unwrap();
                        return (base, claim);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        // A claim of a process that is gone is stale (a dir just made has no pid
                        // file yet: leave it).
                        let pid = std::fs::read_to_string(claim.join("pid")).unwrap_or_default();
                        if let Ok(pid) = pid.trim().parse::<u32>() {
                            if !Path::new(&format!("/proc/{pid}")).exists() {
                                let _ = std::fs::remove_dir_all(&claim);
                            }
                        }
                    }
                    Err(e) => panic!("{}: {e}", claim.display()),
                }
            }
        }
        assert!(Instant::now() < deadline, "no free documentation /26 for a test internet within 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn offset(base: Ipv4Addr, n: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + u32::from(n))
}

impl Internet {
    /// Makes the internet and starts its servers; panics (after removing what it made) when a
    /// part does not come up. Needs root, `ip`, `openssl`, `dnsmasq`, `git` and Debian's python3.
    pub fn new() -> Internet {
        let (base, slot) = claim_slot();
        let prefix = format!("bh{}", random_hex(2));
        let dir = tempfile::Builder::new().prefix("bulkhead-test-internet-").tempdir().unwrap();
        let mut me = Internet {
            netns: format!("{prefix}-internet"),
            veth: format!("{prefix}inet0"),
            cidr: format!("{base}/26"),
            host: offset(base, 1),
            dns: offset(base, 2),
            base,
            dir: Some(dir),
            slot,
            servers: None,
            dnsmasq: None,
            log: Arc::new(Log::default()),
            dns_log: Arc::new(Mutex::new(Vec::new())),
        };
        me.link();
        me.make_ca();
        me.make_index();
        me.make_git();
        me.start_dnsmasq();
        me.start_servers();
        me
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// The web servers' document root.
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// The test CA's certificate (PEM): the trust anchor for the HTTPS servers.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    /// A `resolv.conf` naming dnsmasq only.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir().join("resolv.conf")
    }

    /// `--egress-dns` for a server under test: dnsmasq's `ADDR:53`.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((self.dns, 53))
    }

    /// The address of test name `name` (or of a subdomain of one); panics for another name.
    pub fn addr(&self, name: &str) -> Ipv4Addr {
        let n = NAMES
            .iter()
            .find(|(n, _)| name == *n || name.ends_with(&format!(".{n}")))
            .unwrap_or_else(|| panic!("{name} is not a test name"))
            .1;
        offset(self.base, n)
    }

    /// An address of the /26 that no name has and nothing listens on.
    pub fn unused_addr(&self) -> Ipv4Addr {
        offset(self.base, 60)
    }

    /// `serve` arguments pointing a server under test at this internet: `--egress-dns` and
    /// `--egress-ca-file`.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--egress-dns".into(),
            self.dns_addr().to_string(),
            "--egress-ca-file".into(),
            self.ca_pem().display().to_string(),
        ]
    }

    fn link(&mut self) {
        let peer = format!("{}1", &self.veth[..self.veth.len() - 1]);
        ip(&["netns", "add", &self.netns]);
        ip(&["link", "add", &self.veth, "type", "veth", "peer", "name", &peer, "netns", &self.netns]);
        ip(&["addr", "add", &format!("{}/26", self.host), "dev", &self.veth]);
        ip(&["link", "set", &self.veth, "up"]);
        let inside = |args: &[&str]| {
            let mut cmd = vec!["-n", &self.netns];
            cmd.extend_from_slice(args);
            ip(&cmd);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{}/26", self.dns), "dev", &peer]);
        for (_, n) in NAMES {
            inside(&["addr", "add", &format!("{}/26", offset(self.base, *n)), "dev", &peer]);
        }
        inside(&["link", "set", &peer, "up"]);
        // Replies to anyone go back through the host (and stop there: nothing routes beyond).
        inside(&["route", "add", "default", "via", &self.host.to_string()]);
    }

    fn openssl(&self, args: &[&str]) {
        run(Command::new("openssl").args(args).current_dir(self.dir()));
    }

    fn make_ca(&self) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Bulkhead test internet CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let mut sans: Vec<String> = Vec::new();
        for (n, _) in NAMES {
            sans.push(format!("DNS:{n}"));
            sans.push(format!("DNS:*.{n}"));
        }
        std::fs::write(
            self.dir().join("leaf.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
                 subjectAltName={}\n",
                sans.join(",")
            ),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=allowed.test",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ]);
        std::fs::write(self.resolv_conf(), format!("nameserver {}\n", self.dns)).unwrap();
    }

    /// The wheel and the PEP 503 pages.
    fn make_index(&self) {
        let root = self.root();
        std::fs::create_dir_all(root.join("packages")).unwrap();
        let script = format!(
            r#"import base64, hashlib, os, sys, zipfile
root = sys.argv[1]
name = "bulkhead_probe-1.0-py3-none-any.whl"
files = {{
    "bulkhead_probe/__init__.py": 'VALUE = "{WHEEL_VALUE}"\n',
    "bulkhead_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n",
    "bulkhead_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: bulkhead-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}}
record = []
for path, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
record.append("bulkhead_probe-1.0.dist-info/RECORD,,")
files["bulkhead_probe-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
wheel = os.path.join(root, "packages", name)
with zipfile.ZipFile(wheel, "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
sha = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
os.makedirs(os.path.join(root, "simple", "{PACKAGE}"), exist_ok=True)
with open(os.path.join(root, "simple", "index.html"), "w") as f:
    f.write('<!DOCTYPE html><html><body><a href="{PACKAGE}/">{PACKAGE}</a></body></html>\n')
with open(os.path.join(root, "simple", "{PACKAGE}", "index.html"), "w") as f:
    f.write(f'<!DOCTYPE html><html><body><a href="../../packages/{{name}}#sha256={{sha}}">{{name}}</a></body></html>\n')
"#
        );
        run(Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&root));
    }

    /// A repository with one commit, as a bare repository ready for dumb HTTP.
    fn make_git(&self) {
        let work = self.dir().join("git-work");
        let git = |args: &[&str]| {
            run(Command::new("git")
                .args(["-c", "user.name=Bulkhead tests", "-c", "user.email=tests@bulkhead.test"])
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", self.dir()));
        };
        git(&["init", "-q", "-b", "main", work.to_str().unwrap()]);
        std::fs::write(work.join("README"), format!("{GIT_README}\n")).unwrap();
        git(&["-C", work.to_str().unwrap(), "add", "README"]);
        git(&["-C", work.to_str().unwrap(), "commit", "-q", "-m", "the test repository"]);
        let bare = self.root().join("repo.git");
        git(&["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()]);
        git(&["-C", bare.to_str().unwrap(), "update-server-info"]);
    }

    fn start_dnsmasq(&mut self) {
        let mut args: Vec<String> = [
            "netns",
            "exec",
            &self.netns,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--user=root",
            "--group=root",
            "--pid-file",
            "--port=53",
            "--log-queries",
            "--log-facility=-",
            "--local=/test/",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={}", self.dns));
        for (n, o) in NAMES {
            args.push(format!("--address=/{n}/{}", offset(self.base, *o)));
        }
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq (Debian's dnsmasq-base)");
        let stderr = child.stderr.take().unwrap();
        self.dnsmasq = Some(child);
        let log = self.dns_log.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if l.contains("started, version") {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                log.lock().unwrap().push(l);
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("dnsmasq did not start: {:?}", self.dns_log.lock().unwrap());
        }
        // Bound once it answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.resolve("allowed.test").is_err() {
            assert!(Instant::now() < deadline, "dnsmasq does not answer: {:?}", self.dns_log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_servers(&mut self) {
        let script = self.dir().join("internet_server.py");
        std::fs::write(&script, SERVER_PY).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "/usr/bin/python3", "-u"])
            .arg(&script)
            .arg(self.root())
            .arg(self.dir().join("leaf.pem"))
            .arg(self.dir().join("leaf.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.servers = Some(child);
        let log = self.log.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|_| Value::String(l));
                log.lines.lock().unwrap().push(v);
                log.changed.notify_all();
            }
        });
        self.wait_log(Duration::from_secs(30), |lines| lines.iter().any(|v| v["kind"] == "ready"));
    }

    /// Waits until `done` holds for the servers' log lines; panics after `within`.
    fn wait_log(&self, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if done(&lines) {
                return lines.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the test internet's log after {within:?}: {:?}", *lines);
            lines = self.log.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Every connection that ended so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.log.lines.lock().unwrap().iter().filter_map(connection).collect()
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lines.lock().unwrap().iter().filter_map(request).collect()
    }

    /// The requests recorded, once `done` holds for them (a server's record of a request can
    /// reach this log a moment after the client saw its answer); panics after 60 s.
    pub fn wait_requests(&self, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        let lines =
            self.wait_log(Duration::from_secs(60), |lines| done(&lines.iter().filter_map(request).collect::<Vec<_>>()));
        lines.iter().filter_map(request).collect()
    }

    /// The connections that ended, once `done` holds for them (servers record a connection
    /// when it ends, a moment after the client saw its answer); panics after 60 s.
    pub fn wait_connections(&self, done: impl Fn(&[Connection]) -> bool) -> Vec<Connection> {
        let lines = self
            .wait_log(Duration::from_secs(60), |lines| done(&lines.iter().filter_map(connection).collect::<Vec<_>>()));
        lines.iter().filter_map(connection).collect()
    }

    /// The connections made to `name`'s address.
    pub fn connections_to(&self, name: &str) -> Vec<Connection> {
        let a = self.addr(name);
        self.connections().into_iter().filter(|c| c.local == a).collect()
    }

    /// (query type, name) of each query dnsmasq received, such as `("A", "allowed.test")`.
    pub fn dns_queries(&self) -> Vec<(String, String)> {
        self.dns_log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("query[")? + "query[".len()..];
                let (kind, rest) = rest.split_once("] ")?;
                Some((kind.to_owned(), rest.split_whitespace().next()?.to_owned()))
            })
            .collect()
    }

    /// Asks dnsmasq for `name`'s A records over UDP from the host: the addresses, or the
    /// response code when it is not NOERROR.
    pub fn resolve(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
        use hickory_proto::rr::{Name, RData, RecordType};
        let mut m = Message::new();
        let id = u16::from_str_radix(&random_hex(2), 16).unwrap();
        m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).map_err(|e| e.to_string())?, RecordType::A));
        let s = UdpSocket::bind((self.host, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(&m.to_vec().unwrap(), self.dns_addr()).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
        if reply.response_code() != ResponseCode::NoError {
            return Err(reply.response_code().to_string());
        }
        Ok(reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// `program` run on the host (through the veth) with dnsmasq as its only resolver: a mount
    /// namespace of its own with [`Internet::resolv_conf`] over `/etc/resolv.conf`. Add the
    /// program's arguments to the returned command.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ])
        .arg(self.resolv_conf())
        .arg(program);
        // Only what the test names is trusted or used: this host's environment points CA
        // bundles, pip's configuration and proxies elsewhere.
        for v in HOST_ENV_OVERRIDES {
            c.env_remove(v);
        }
        c.env("PIP_CONFIG_FILE", "/dev/null");
        c
    }

    /// The process ids of dnsmasq and the servers (for a test that checks they are gone).
    pub fn pids(&self) -> Vec<u32> {
        [&self.dnsmasq, &self.servers].iter().filter_map(|c| c.as_ref().map(|c| c.id())).collect()
    }
}

fn connection(v: &Value) -> Option<Connection> {
    (v["kind"] == "connection").then_some(())?;
    Some(Connection {
        server: v["server"].as_str()?.to_owned(),
        local: v["local"].as_str()?.parse().ok()?,
        port: u16::try_from(v["port"].as_u64()?).ok()?,
        peer: v["peer"].as_str()?.parse().ok()?,
        sni: v["sni"].as_str().map(str::to_owned),
        bytes_in: v["bytes_in"].as_u64().unwrap_or(0),
        bytes_out: v["bytes_out"].as_u64().unwrap_or(0),
        requests: v["requests"].as_u64().unwrap_or(0),
        tls_error: v["tls_error"].as_str().map(str::to_owned),
    })
}

fn request(v: &Value) -> Option<Request> {
    (v["kind"] == "request").then_some(())?;
    Some(Request {
        server: v["server"].as_str()?.to_owned(),
        local: v["local"].as_str()?.parse().ok()?,
        sni: v["sni"].as_str().map(str::to_owned),
        host: v["host"].as_str().map(str::to_owned),
        method: v["method"].as_str()?.to_owned(),
        path: v["path"].as_str()?.to_owned(),
        status: v["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
        headers: v["headers"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default(),
    })
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in [self.servers.take(), self.dnsmasq.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.veth]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).stderr(Stdio::null()).status();
        drop(self.dir.take());
        let _ = std::fs::remove_dir_all(&self.slot);
    }
}
