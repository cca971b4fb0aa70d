//! Out-of-process servers for tests that need the host's view of them: real `bulkhead serve`
//! processes on temporary dirs, each with a runtime state dir and cgroup prefix of its own,
//! killed and purged (sandboxes, cgroups, networks) when the `Host` is dropped, even during a
//! panic.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;

use bulkhead_client::Client;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Host names of one test server: a state dir `/run/bulkhead-test-<tag>` and a cgroup prefix
/// `bulkhead-test-<tag>` of its own.
pub fn names() -> (PathBuf, String) {
    names_of(&random_hex(6))
}

fn names_of(tag: &str) -> (PathBuf, String) {
    (PathBuf::from(format!("/run/bulkhead-test-{tag}")), format!("bulkhead-test-{tag}"))
}

/// The servers a test started; everything of theirs removed at its end, even after a panic
/// (`oci::purge` removes their networks too).
pub struct Host {
    pub dir: tempfile::TempDir,
    pub children: Vec<Child>,
    /// (state dir, cgroup prefix) of every server started, purged on drop.
    pub purge: Vec<(PathBuf, String)>,
    /// The newest server's tag, admin token and extra arguments (for `restart`).
    last: Option<(String, String, Vec<String>)>,
}

impl Default for Host {
    fn default() -> Host {
        Host::new()
    }
}

impl Host {
    pub fn new() -> Host {
        Host {
            dir: tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap(),
            children: vec![],
            purge: vec![],
            last: None,
        }
    }

    /// A path in the host's temporary dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `bulkhead serve` on `data` with the given runtime names, host registry and
    /// `extra` arguments; (URL, admin token of a first start), or `Err` with its stderr when it
    /// exits before listening.
    pub fn serve_on(
        &mut self,
        data: &Path,
        (state, prefix): &(PathBuf, String),
        registry: &Path,
        extra: &[&str],
    ) -> Result<(String, Option<String>), String> {
        // A server not started for its network has loopback-only sandboxes (the network tests
        // name `--network isolated` and give `--egress-dns` into their own internet).
        // Every test server has the default image, unless the test chooses its root itself.
        let image_args = if ["--root", "--default-image", "--public-layers"].iter().any(|a| extra.contains(a)) {
            vec![]
        } else {
            super::images::default_image_args()
        };
        let store_args = if extra.contains(&"--store") { vec![] } else { super::process::store_args(data) };
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
            data_dir: data,
            state_dir: state,
            cgroup_prefix: prefix,
            host_registry: Some(registry),
            extra: &args,
        }
        .spawn()
        .map_err(|e| e.to_string())?;
        self.children.push(started.child);
        if !self.purge.iter().any(|(s, _)| s == state) {
            self.purge.push((state.clone(), prefix.clone()));
        }
        Ok((started.url, started.first_token))
    }

    /// Starts a new server with `--network isolated` and `extra`; its admin client.
    pub fn serve(&mut self, extra: &[&str]) -> Client {
        self.start(&random_hex(6), "isolated", extra)
    }

    /// `kill -9` of the newest server.
    pub fn crash(&mut self) {
        let mut child = self.children.pop().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// `kill -9` of the newest server, and a start of it again on the same dirs with
    /// `--network NETWORK` and the extra arguments of its last start.
    pub fn restart(&mut self, network: &str) -> Client {
        self.crash();
        let (tag, _, extra) = self.last.clone().unwrap();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.start(&tag, network, &extra)
    }

    fn start(&mut self, tag: &str, network: &str, extra: &[&str]) -> Client {
        let names = names_of(tag);
        let mut args = vec!["--network", network];
        args.extend_from_slice(extra);
        let data = self.path(&format!("data-{tag}"));
        let registry = self.path(&format!("registry-{tag}"));
        let (url, token) =
            self.serve_on(&data, &names, &registry, &args).unwrap_or_else(|e| panic!("server did not start: {e}"));
        let token = match token {
            Some(t) => t,
            None => self.last.clone().unwrap().1,
        };
        self.last = Some((tag.to_owned(), token.clone(), extra.iter().map(|s| s.to_string()).collect()));
        Client::new(&url, Some(token))
    }

    /// The admin token of the newest server.
    pub fn admin_token(&self) -> String {
        self.last.clone().unwrap().1
    }

    /// The state dir of the newest server.
    pub fn state_dir(&self) -> &Path {
        &self.purge.last().unwrap().0
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (state, prefix) in &self.purge {
            let _ = bulkhead_runtime::oci::purge(state, Path::new("/sys/fs/cgroup"), prefix);
        }
    }
}
