//! A local OCI distribution registry for the tests: Debian's `docker-registry` (distribution
//! v2, package `docker-registry`) serving plain HTTP on a free loopback port from a temporary
//! directory, optionally behind htpasswd basic auth (bcrypt, `htpasswd -Bbn` of
//! `apache2-utils`). Images go in with `skopeo copy` from an OCI layout directory. Dropping a
//! [`Registry`] kills it and removes its storage.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry on `127.0.0.1:port`; killed and its storage removed on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The (user, password) it requires, if any.
    pub auth: Option<(String, String)>,
}

/// A port no one listens on now (the registry is started on it; a lost race is retried).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port").local_addr().expect("its address").port()
}

/// The status code of `GET /v2/` on `127.0.0.1:port`, when something answers HTTP there.
fn v2_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.x NNN"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Registry {
    /// Starts a registry; with `auth` it answers only requests with that user and password
    /// (HTTP basic auth). Waits until `/v2/` answers (200, or 401 with auth). Panics when the
    /// registry cannot start (binaries missing: `scripts/image-deps` installs them).
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry (scripts/image-deps)"
        );
        let dir = tempfile::Builder::new().prefix("bulkhead-test-registry-").tempdir().expect("a temporary dir");
        let auth_yaml = match auth {
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd (apache2-utils; scripts/image-deps)");
                ok("htpasswd", &out);
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                format!("auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n", file.display())
            }
            None => String::new(),
        };
        let mut last_log = String::new();
        for _ in 0..10 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: bulkhead-test\n\
                     {auth_yaml}",
                    dir.path().join("storage").display()
                ),
            )
            .expect("write the registry's config");
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).expect("create the registry's log");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup the log"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(60);
            // Its log says when it has bound the port (the answer is then its own, not that of
            // a process that took the port first).
            let listening = format!("listening on 127.0.0.1:{port}");
            loop {
                let bound = std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains(&listening));
                if let Some(status) = v2_status(port).filter(|_| bound) {
                    let registry =
                        Registry { child, dir, port, auth: auth.map(|(u, p)| (u.to_string(), p.to_string())) };
                    let want = if auth.is_some() { 401 } else { 200 };
                    assert_eq!(status, want, "GET /v2/ of the test registry");
                    return registry;
                }
                if child.try_wait().expect("wait for the registry").is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("the test registry did not start:\n{last_log}");
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An image reference of this registry: `127.0.0.1:<port>/<reference>`.
    pub fn source(&self, reference: &str) -> String {
        format!("{}/{reference}", self.host())
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Pushes the OCI layout directory `layout_dir` (its only image) as `reference`
    /// (`repo:tag`) with the registry's own credentials; returns the manifest digest
    /// (`sha256:<hex>`). Panics when the push fails.
    pub fn push(&self, layout_dir: &Path, reference: &str) -> String {
        let creds = self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        self.push_as(layout_dir, reference, creds).unwrap_or_else(|e| panic!("push {reference}: {e}"))
    }

    /// Pushes the OCI layout tar `layout_tar` (its only image; e.g. the default image) as
    /// `reference` with the registry's own credentials; returns the manifest digest.
    pub fn push_archive(&self, layout_tar: &Path, reference: &str) -> String {
        let creds = self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        self.push_from(&format!("oci-archive:{}", layout_tar.display()), reference, creds)
            .unwrap_or_else(|e| panic!("push {reference}: {e}"))
    }

    /// Pushes with `creds` (user, password) or none; `Err` with skopeo's output when the push
    /// fails (wrong or missing credentials).
    pub fn push_as(&self, layout_dir: &Path, reference: &str, creds: Option<(&str, &str)>) -> Result<String, String> {
        self.push_from(&format!("oci:{}", layout_dir.display()), reference, creds)
    }

    /// Copies skopeo's `source` (`oci:DIR`, `oci-archive:TAR`, `docker-archive:TAR`, …) to
    /// `reference` here with `creds`; the pushed manifest's digest, or skopeo's output.
    pub fn push_from(&self, source: &str, reference: &str, creds: Option<(&str, &str)>) -> Result<String, String> {
        let work = tempfile::Builder::new().prefix("bulkhead-test-push-").tempdir().expect("a temporary dir");
        let digest_file = work.path().join("digest");
        let mut cmd = Command::new("skopeo");
        // The host's signature policy and credentials play no part.
        cmd.arg("--insecure-policy")
            .arg("copy")
            .arg("--quiet")
            .arg("--dest-tls-verify=false")
            .arg("--dest-authfile")
            .arg(work.path().join("auth.json"))
            .arg("--digestfile")
            .arg(&digest_file);
        if let Some((user, password)) = creds {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        } else {
            cmd.arg("--dest-no-creds");
        }
        cmd.arg(source)
            .arg(format!("docker://{}", self.source(reference)))
            .env("HOME", work.path())
            .env("XDG_RUNTIME_DIR", work.path())
            .env("REGISTRY_AUTH_FILE", work.path().join("auth.json"))
            .stdin(Stdio::null());
        let out = cmd.output().expect("run skopeo (scripts/image-deps installs it)");
        if !out.status.success() {
            return Err(format!(
                "{}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let digest = std::fs::read_to_string(&digest_file).expect("skopeo wrote the digest");
        Ok(digest.trim().to_string())
    }

    /// `skopeo inspect` of `reference` in this registry, with its credentials: the image's
    /// JSON description.
    pub fn inspect(&self, reference: &str) -> serde_json::Value {
        let work = tempfile::Builder::new().prefix("bulkhead-test-inspect-").tempdir().expect("a temporary dir");
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false"]).arg("--authfile").arg(work.path().join("auth.json"));
        match &self.auth {
            Some((user, password)) => cmd.arg("--creds").arg(format!("{user}:{password}")),
            None => cmd.arg("--no-creds"),
        };
        let out = cmd
            .arg(format!("docker://{}", self.source(reference)))
            .env("HOME", work.path())
            .env("XDG_RUNTIME_DIR", work.path())
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        ok("skopeo inspect", &out);
        serde_json::from_slice(&out.stdout).expect("skopeo inspect prints JSON")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The TempDir removes the storage after this.
    }
}
