//! Out-of-process harness: the real `bulkhead serve` binary on a temporary data dir with its
//! own runtime state dir and cgroup prefix, driven by the real CLI. Dropping a `Server` kills it
//! and removes every host resource of its sandboxes and filesystems.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// A running server; killed on drop if the test did not stop it, and every host resource of
/// its sandboxes removed.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_prefix: String,
    /// The admin token, when this start printed one (the first start on a data dir).
    pub first_token: Option<String>,
}

/// A fresh runtime state dir and cgroup prefix for one test server.
pub fn runtime_names() -> (PathBuf, String) {
    let mut bytes = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (PathBuf::from(format!("/run/bulkhead-test-{tag}")), format!("bulkhead-test-{tag}"))
}

/// The arguments to `serve` that choose the store of a test server on `data_dir`: none (the
/// SQLite file in the data dir), or, when the suite runs on PostgreSQL (`BULKHEAD_TEST_STORE`),
/// `--store` and the data dir's own database there (the same on a restart).
pub fn store_args(data_dir: &Path) -> Vec<String> {
    match bulkhead_store::postgres::testing::suite_server() {
        Some(admin) => vec!["--store".to_owned(), bulkhead_store::postgres::testing::suite_database(&admin, data_dir)],
        None => vec![],
    }
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, runtime_names())
    }

    /// Starts on `data_dir` with the given runtime state dir and cgroup prefix (to restart a
    /// server on the same host state).
    pub fn start_with(data_dir: &Path, names: (PathBuf, String)) -> Server {
        // A host registry of the test's own, inside its temporary data dir.
        let registry = data_dir.join("host-registry");
        Server::spawn(data_dir, names, &registry, &[]).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts on `data_dir` with its own runtime names and `extra` arguments to `serve`, and a
    /// host registry inside `data_dir`.
    pub fn start_with_args(data_dir: &Path, names: (PathBuf, String), extra: &[&str]) -> Server {
        let registry = data_dir.join("host-registry");
        Server::spawn(data_dir, names, &registry, extra).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts on `data_dir` with the given runtime names, host registry and `extra` arguments;
    /// `Err` with what the server wrote on stderr when it exits before listening.
    pub fn spawn(
        data_dir: &Path,
        (state_dir, cgroup_prefix): (PathBuf, String),
        registry: &Path,
        extra: &[&str],
    ) -> Result<Server, String> {
        // Nothing is purged on a failed start: the prefix may be another server's (the caller
        // cleans up).
        // A server not started for its network has loopback-only sandboxes (the network tests
        // name `--network isolated` and give `--egress-dns` into their own internet).
        // Every test server has the default image, unless the test chooses its root itself.
        let image_args = if ["--root", "--default-image", "--public-layers"].iter().any(|a| extra.contains(a)) {
            vec![]
        } else {
            super::images::default_image_args()
        };
        let store_args = if extra.contains(&"--store") { vec![] } else { store_args(data_dir) };
        let mut args: Vec<&str> = extra
            .iter()
            .copied()
            .chain(image_args.iter().map(String::as_str))
            .chain(store_args.iter().map(String::as_str))
            .collect();
        if !args.contains(&"--network") {
            args.extend(["--network", "loopback-only"]);
        }
        let started = bulkhead_bench::server::Serve {
            bulkhead: Path::new(BIN),
            data_dir,
            state_dir: &state_dir,
            cgroup_prefix: &cgroup_prefix,
            host_registry: Some(registry),
            extra: &args,
        }
        .spawn()
        .map_err(|e| e.to_string())?;
        let (child, url, first_token) = (started.child, started.url, started.first_token);
        Ok(Server { child: Some(child), url, data_dir: data_dir.to_owned(), state_dir, cgroup_prefix, first_token })
    }

    /// Runs the CLI against this server with `stdin`; `token` `None` means "fall back to the
    /// admin token file".
    pub fn run(&self, token: Option<&str>, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("BULKHEAD_URL", &self.url)
            .env("BULKHEAD_DATA_DIR", &self.data_dir)
            .env_remove("BULKHEAD_TOKEN")
            .env_remove("BULKHEAD_NAMESPACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            c.env("BULKHEAD_TOKEN", t);
        }
        let mut child = c.spawn().expect("run bulkhead");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for bulkhead");
        writer.join().unwrap();
        out
    }

    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        self.run(token, args, b"")
    }

    pub fn ok(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(out.status.success(), "bulkhead {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, token: Option<&str>, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(token, &all)).expect("--json prints JSON")
    }

    /// Fails with exactly one line on stderr; returns it.
    pub fn fails(&self, token: Option<&str>, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(!out.status.success(), "bulkhead {args:?} should have failed");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one line on error, got {err:?}");
        err
    }

    /// `bulkhead doctor` for this server's state dir and cgroup prefix, with `extra` arguments.
    pub fn doctor(&self, token: Option<&str>, extra: &[&str]) -> Output {
        let state = self.state_dir.display().to_string();
        let mut args = vec!["doctor", "--state-dir", &state, "--cgroup-prefix", &self.cgroup_prefix];
        let store = store_args(&self.data_dir);
        args.extend(store.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.cli(token, &args)
    }

    /// The server's process id, for reading its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("the server runs")
    }

    /// Waits for the server's process, killed by the test, and forgets it; what it left on the
    /// host stays until this is dropped.
    pub fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the server must exit cleanly.
    pub fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "server exited with {status} on SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = bulkhead_runtime::oci::purge(&self.state_dir, Path::new("/sys/fs/cgroup"), &self.cgroup_prefix);
    }
}

/// Bytes as text, for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The namespace of [`developer_with_sandbox`].
pub const NS: &str = "acme";

/// A server with namespace [`NS`], a developer's client of it and one running sandbox.
pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub server: Server,
    pub token: String,
    pub client: bulkhead_client::Client,
    pub sandbox: String,
}

/// Starts a [`Setup`]: the real server on a temporary data dir, namespace [`NS`] (2 cpus,
/// 2 GiB), a developer key and a sandbox of the defaults.
pub async fn developer_with_sandbox() -> Setup {
    let dir = super::tempdir();
    let server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", NS, "--cpu", "2", "--memory", "2GiB"]);
    let key = server.json(None, &["key", "create", "--ns", NS, "dev", "--role", "developer"]);
    let token = key["token"].as_str().unwrap().to_owned();
    let client = bulkhead_client::Client::new(&server.url, Some(token.clone()));
    let sandbox = client.create_sandbox(NS, &bulkhead_api::CreateSandbox::default()).await.expect("create").id;
    Setup { _dir: dir, server, token, client, sandbox }
}
