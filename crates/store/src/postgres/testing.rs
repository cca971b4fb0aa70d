//! A real PostgreSQL server for tests, started from the PostgreSQL binaries on the machine
//! (`/usr/lib/postgresql/<version>/bin`, or `BULKHEAD_TEST_PG_BIN`): `initdb` into a temporary
//! directory the test owns, the server on a free loopback port with its unix socket in that
//! directory, stopped and removed on drop. Run as root, both run as the `postgres` user (which
//! PostgreSQL requires). Each [`TestPostgres::database`] is a new database owned by a new role
//! that is no superuser and may create roles, as a platform's own database would be.
//!
//! A whole test suite can run on one PostgreSQL server instead (`scripts/with-postgres`):
//! `BULKHEAD_TEST_STORE` is then its superuser's URL, and the test harnesses give every test
//! server a database of its own on it ([`suite_database`]).

use std::hash::{Hash, Hasher};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

/// A PostgreSQL server of the test's own.
pub struct TestPostgres {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    databases: AtomicU32,
}

/// The directory of the PostgreSQL binaries: `BULKHEAD_TEST_PG_BIN`, or the newest of
/// `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("BULKHEAD_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten().filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin")))).collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The uid and gid of `user`, from `/etc/passwd`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user)).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// Whether this process runs as root (the owner of `/proc/self`).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A command of PostgreSQL's binaries, run as `postgres` when this process is root.
fn pg_command(program: &str, ids: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(pg_bin().join(program));
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

impl TestPostgres {
    /// Initializes a cluster in a new temporary directory and starts its server, waiting until
    /// it accepts connections. Panics (the test's failure) when it cannot.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`TestPostgres::start`] with TLS on (`ssl=on`), serving `tls`'s certificate and key;
    /// connections may still come without TLS (as `sslmode=disable` asks).
    pub async fn start_tls(tls: &TestTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<&TestTls>) -> Self {
        let dir = tempfile::Builder::new().prefix("bulkhead-test-pg-").tempdir().expect("temporary dir for PostgreSQL");
        let ids = if is_root() {
            Some(user_ids("postgres").expect("a postgres user to run PostgreSQL as (apt-get install postgresql-15)"))
        } else {
            None
        };
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the PostgreSQL dir");
        }
        let data = dir.path().join("data");
        let out = pg_command("initdb", ids)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut settings = Vec::new();
        if let Some(tls) = tls {
            // The key readable by its owner alone (PostgreSQL refuses it otherwise), which is
            // the user the server runs as.
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert, &tls.cert).expect("write the server's certificate");
            std::fs::write(&key, &tls.key).expect("write the server's key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the server's key");
            if let Some((uid, gid)) = ids {
                for f in [&cert, &key] {
                    std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown the server's certificate");
                }
            }
            settings.push("ssl=on".to_owned());
            settings.push(format!("ssl_cert_file={}", cert.display()));
            settings.push(format!("ssl_key_file={}", key.display()));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let mut child = start_server(&data, dir.path(), port, ids, &settings);
            match wait_ready(&mut child, port).await {
                Ok(()) => return Self { child, port, dir, databases: AtomicU32::new(0) },
                Err(e) if attempt < 5 => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("PostgreSQL on port {port} did not start ({e}); again on another port");
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default();
                    panic!("PostgreSQL did not start: {e}\n{log}");
                }
            }
        }
    }

    /// The server's loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the server's `postgres` database as its superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new database owned by a new role (no superuser; `CREATEROLE`, so that the store can
    /// make its serving role); the URL to it as that role.
    pub async fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("bulkhead_{n}");
        let mut admin = PgConnection::connect(&self.admin_url()).await.expect("connect to the test PostgreSQL");
        admin
            .execute(format!("CREATE ROLE {name} LOGIN CREATEROLE NOSUPERUSER").as_str())
            .await
            .expect("create the database's role");
        admin.execute(format!("CREATE DATABASE {name} OWNER {name}").as_str()).await.expect("create a database");
        admin.close().await.ok();
        format!("postgres://{name}@127.0.0.1:{}/{name}", self.port)
    }
}

/// A certificate authority of a test's own and a server certificate it signed, PEM: what a
/// PostgreSQL server with TLS serves ([`TestPostgres::start_tls`]) and what a client verifies
/// it with (`sslrootcert`).
pub struct TestTls {
    /// The CA's certificate.
    pub ca: String,
    /// The server's certificate, signed by the CA.
    pub cert: String,
    /// The server's private key (PKCS #8).
    pub key: String,
}

impl TestTls {
    /// A new CA, and a server certificate it signs for `names` (DNS names, or IP addresses such
    /// as `127.0.0.1`, as the subject alternative names a client checks under
    /// `sslmode=verify-full`). Panics when rcgen cannot make them.
    pub fn new(names: &[&str]) -> Self {
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = rcgen::KeyPair::generate_for(alg).expect("a CA key");
        let mut ca = rcgen::CertificateParams::default();
        // A name of its own: another test CA is another issuer, not a forgery of this one.
        static CAS: AtomicU32 = AtomicU32::new(0);
        let name = format!("Bulkhead test CA {}.{}", std::process::id(), CAS.fetch_add(1, Ordering::SeqCst));
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("sign the CA");
        let key = rcgen::KeyPair::generate_for(alg).expect("a server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf = rcgen::CertificateParams::new(names).expect("server certificate names");
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "bulkhead test PostgreSQL");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("sign the server's certificate");
        Self { ca: ca_cert.pem(), cert: cert.pem(), key: key.serialize_pem() }
    }
}

fn start_server(data: &Path, socket_dir: &Path, port: u16, ids: Option<(u32, u32)>, settings: &[String]) -> Child {
    let log = std::fs::File::create(socket_dir.join("postgres.log")).expect("PostgreSQL's log file");
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(socket_dir.join("postgres.log"), Some(uid), Some(gid)).ok();
    }
    let err = log.try_clone().expect("PostgreSQL's log file");
    pg_command("postgres", ids)
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
        .arg(format!("unix_socket_directories={}", socket_dir.display()))
        .args(["-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=16MB"])
        .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("start postgres")
}

/// Waits until the server at `port` answers a query, or it exits; the wait is bounded only to
/// fail a test whose server never comes up.
async fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited: {status}"));
        }
        if let Ok(mut conn) = PgConnection::connect(&url).await {
            if conn.execute("SELECT 1").await.is_ok() {
                conn.close().await.ok();
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("no answer in 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT): the postmaster stops its backends and exits.
        let pid = self.child.id();
        let _ = Command::new("kill").args(["-QUIT", &pid.to_string()]).status();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// The superuser URL of the PostgreSQL server the whole suite runs on (`BULKHEAD_TEST_STORE`),
/// when it runs on one; test servers then keep their state there, not in SQLite.
pub fn suite_server() -> Option<String> {
    std::env::var("BULKHEAD_TEST_STORE").ok().filter(|u| !u.is_empty())
}

/// The database on the suite's server (`admin_url`, a superuser's) of the test server whose data
/// dir is `data_dir`: made (with a role of its own that owns it, no superuser, `CREATEROLE`)
/// while the data dir does not exist yet, so that a new data dir means a new store as it does
/// with SQLite; the same one when a test starts a server on that data dir again. Its URL, as
/// its role. Synchronous (`psql`), so that a harness may call it anywhere. Panics when it
/// cannot.
pub fn suite_database(admin_url: &str, data_dir: &Path) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    let name = format!("bulkhead_{:016x}", h.finish());
    let psql = |sql: &str| -> String {
        let psql = pg_bin().join("psql");
        let psql = if psql.exists() { psql } else { PathBuf::from("psql") };
        let out = Command::new(psql)
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let exists = !psql(&format!("SELECT 1 FROM pg_database WHERE datname = '{name}'")).is_empty();
    if exists && !data_dir.exists() {
        psql(&format!("DROP DATABASE {name} WITH (FORCE)"));
    }
    if !exists || !data_dir.exists() {
        psql(&format!(
            "DO $$ BEGIN CREATE ROLE {name} LOGIN CREATEROLE NOSUPERUSER; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ));
        psql(&format!("CREATE DATABASE {name} OWNER {name}"));
    }
    // postgres://user@host:port/db: the same server, the new role and database.
    let server = admin_url
        .split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.rsplit_once('@').map_or(Some(rest), |(_, host)| Some(host)))
        .and_then(|host| host.split('/').next())
        .expect("BULKHEAD_TEST_STORE is postgres://user@host:port/database");
    format!("postgres://{name}@{server}/{name}")
}
