//! A real OIDC provider for tests: `testsupport/oidc-provider/provider.mjs` (oauth2-mock-server) run under
//! node, with real discovery, a real JWKS and real signatures, on loopback ports.
//!
//! Use from any crate's tests with
//! `#[path = "../../oidc/tests/support/provider.rs"] mod oidc_provider;` (from `crates/<name>/tests/`).
//! `TestProvider::start()` installs the npm dependencies on first use, starts the provider and waits for it;
//! dropping the value stops it, and the provider also exits by itself when the test process dies (it
//! watches its stdin). Needs `node` (20.19 or newer) and `npm` on PATH; without them it panics saying so.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running loopback OIDC provider. Dropping it stops the provider.
pub struct TestProvider {
    child: Child,
    /// Held open: the provider exits when this pipe closes.
    _stdin: ChildStdin,
    issuer: String,
    control: String,
}

impl TestProvider {
    /// Starts a provider with one RS256 signing key.
    pub fn start() -> TestProvider {
        let dir = provider_dir();
        ensure_node_modules(&dir);
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` for the test OIDC provider (is node installed?): {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        // The reader stays alive with the child and drains its stdout, so the provider never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            for _ in lines {}
        });
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait();
                panic!("test OIDC provider did not start: {other:?}, exit {status:?} (its stderr is above)");
            }
        };
        let ready: Value = serde_json::from_str(&line).expect("provider ready line is JSON");
        let issuer = ready["issuer"].as_str().expect("ready line has issuer").to_owned();
        let control = ready["control"].as_str().expect("ready line has control").to_owned();
        TestProvider { child, _stdin: stdin, issuer, control }
    }

    /// The issuer URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The control API's base URL.
    pub fn control(&self) -> &str {
        &self.control
    }

    /// A token signed by key `kid` (default: the newest key) with these claims over the defaults
    /// (`iss` = this issuer, `aud` = "bulkhead", `sub` = "user-1", `iat`, `nbf` = now - 10 s,
    /// `exp` = now + 1 h). A claim set to `null` is removed.
    pub fn mint(&self, claims: Value, kid: Option<&str>) -> String {
        let mut request = json!({ "claims": claims });
        if let Some(kid) = kid {
            request["kid"] = json!(kid);
        }
        self.mint_with(request)
    }

    /// `POST /mint` with a full request: `{"claims", "kid", "expires_in", "header"}` (see provider.mjs).
    pub fn mint_with(&self, request: Value) -> String {
        let response = self.call("POST", "/mint", Some(&request));
        response["token"].as_str().expect("mint returns a token").to_owned()
    }

    /// Adds a signing key (`"RS256"` or `"ES256"`) to the JWKS, making it the default for [`Self::mint`];
    /// with `drop_old` every other key leaves the JWKS (it can still mint). Returns the new kid.
    pub fn rotate(&self, alg: &str, drop_old: bool) -> String {
        let response = self.call("POST", "/rotate", Some(&json!({ "alg": alg, "drop_old": drop_old })));
        response["kid"].as_str().expect("rotate returns a kid").to_owned()
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Value {
        self.call("GET", "/jwks", None)
    }

    /// `{"discovery_requests": n, "jwks_requests": n}` as the provider counted them.
    pub fn stats(&self) -> Value {
        self.call("GET", "/stats", None)
    }

    /// Sets the user the authorization endpoint signs in without a form: `claims` go into its ID
    /// tokens over the defaults (`sub` = "user-1", `aud` = the client id, `nonce` = the request's).
    /// `tamper` makes one part go wrong: `"refuse"` (the browser comes back with
    /// `error=access_denied`), `"nonce"` (another nonce in the ID token), `"challenge"` (the code is
    /// bound to another challenge, so the client's right verifier is refused).
    pub fn login(&self, claims: Value, tamper: Option<&str>) {
        self.call("POST", "/login", Some(&json!({ "claims": claims, "tamper": tamper })));
    }

    /// `{"authorize_requests": n, "token_requests": n, "token_grants": n, "token_refusals": ["why", ...]}`
    /// of the authorization code flow, as the provider counted them.
    pub fn login_stats(&self) -> Value {
        self.call("GET", "/login-stats", None)
    }

    /// The query parameters of every authorization request so far, in order.
    pub fn authorize_requests(&self) -> Vec<Value> {
        self.call("GET", "/authorize-requests", None).as_array().expect("a list").clone()
    }

    /// A tiny HTTP/1.1 client for the control API (one request per connection, `Connection: close`).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let authority = self.control.strip_prefix("http://").expect("control URL is http");
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(authority).expect("connect to the provider's control API");
        stream.set_read_timeout(Some(CONTROL_TIMEOUT)).expect("set read timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send control request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read control response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response has a header");
        let status = head.split(' ').nth(1).unwrap_or("");
        assert_eq!(status, "200", "{method} {path} failed: {head}\n{body}");
        serde_json::from_str(body).expect("control response is JSON")
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `testsupport/oidc-provider` at the workspace root (every crate lives at `crates/<name>`).
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testsupport/oidc-provider")
}

/// Runs `npm install` once when `node_modules` is missing. It installs into a scratch directory and
/// renames the result into place, so concurrent test processes never see a half-installed tree.
fn ensure_node_modules(dir: &Path) {
    static ONCE: Mutex<()> = Mutex::new(());
    let _once = ONCE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let target = dir.join("node_modules");
    if target.join("oauth2-mock-server").is_dir() {
        return;
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let scratch = dir.join(format!(".install-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&scratch).expect("create npm scratch directory");
    for file in ["package.json", "package-lock.json"] {
        fs::copy(dir.join(file), scratch.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(&scratch)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `npm` to install the test OIDC provider (is node installed?): {e}"));
    assert!(status.success(), "npm install for the test OIDC provider failed: {status}");
    // Loses harmlessly to another process that got there first.
    let _ = fs::rename(scratch.join("node_modules"), &target);
    let _ = fs::remove_dir_all(&scratch);
    assert!(target.join("oauth2-mock-server").is_dir(), "npm install left no oauth2-mock-server in {target:?}");
}
