//! End to end on a PostgreSQL store: the real `bulkhead serve --store postgres://...` on a real
//! PostgreSQL server of the test's own, driven by the real CLI: a namespace, a key, a sandbox,
//! a command in it, its delete; the state is in the database (not in the data dir) and
//! outlives the server, and the database's rows are locked by row-level security. TLS to the
//! database, verified as the URL's `sslmode` and `sslrootcert` ask.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bulkhead_store::postgres::testing::{TestPostgres, TestTls};
use common::process::{runtime_names, Server};
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn a_server_on_postgres_serves_a_sandbox_and_keeps_its_state_there() {
    let pg = TestPostgres::start().await;
    let url = pg.database().await;
    let dir = common::tempdir();
    let data = dir.path().join("data");
    let names = runtime_names();
    let mut server = Server::start_with_args(&data, names.clone(), &["--store", &url]);
    let admin = server.first_token.clone().expect("first start on the store prints the admin token");

    server.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    let dev = server.json(None, &["key", "create", "--ns", "acme", "ci", "--role", "developer"]);
    let dev_token = dev["token"].as_str().unwrap().to_owned();
    let dev = Some(dev_token.as_str());
    let sbx = server.json(dev, &["sandbox", "create", "--ns", "acme"]);
    let sbx = sbx["id"].as_str().unwrap().to_owned();
    let out = server.ok(dev, &["exec", "--ns", "acme", &sbx, "--", "sh", "-c", "echo hello from $((6 * 7))"]);
    assert_eq!(out.trim(), "hello from 42");
    // Another namespace's key sees nothing of acme's.
    server.ok(None, &["namespace", "create", "globex", "--cpu", "1", "--memory", "1GiB"]);
    let other = server.json(None, &["key", "create", "--ns", "globex", "ci", "--role", "owner"]);
    let other = other["token"].as_str().unwrap().to_owned();
    server.fails(Some(&other), &["sandbox", "get", "--ns", "acme", &sbx]);

    // The state is the database's: no SQLite file in the data dir, and the rows are there (read
    // as the database's owner, which row-level security holds to a scope too: none set, none
    // seen; the platform's scope, every row).
    assert!(!data.join("bulkhead.db").exists(), "no SQLite store beside a PostgreSQL one");
    let mut owner = PgConnection::connect(&url).await.unwrap();
    let unscoped: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sandboxes").fetch_one(&mut owner).await.unwrap();
    assert_eq!(unscoped, 0, "no scope, no rows, even for the tables' owner");
    sqlx::query("SET bulkhead.scope = 'platform'").execute(&mut owner).await.unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM sandboxes").fetch_all(&mut owner).await.unwrap();
    assert_eq!(ids, std::slice::from_ref(&sbx));
    let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE chain = 'acme'")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert!(records >= 3, "the namespace's audit chain is in the database ({records} records)");

    server.ok(dev, &["sandbox", "delete", "--ns", "acme", &sbx]);
    let status: String = sqlx::query_scalar("SELECT status FROM sandboxes WHERE id = $1")
        .bind(&sbx)
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert_eq!(status, "deleted");
    owner.close().await.unwrap();

    // A restart on the same store: no new admin token, the old one and the key still work, the
    // audit chain still verifies.
    server.stop();
    let server = Server::start_with_args(&data, names, &["--store", &url]);
    assert!(server.first_token.is_none(), "the admin token is made once per store");
    assert_eq!(server.json(Some(&admin), &["namespace", "get", "acme"])["name"], "acme");
    let list = server.ok(dev, &["sandbox", "list", "--ns", "acme"]);
    assert!(!list.contains(&sbx) || list.contains("deleted"), "{list}");
    let verify = server.json(None, &["audit", "--ns", "acme", "--verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
    drop(server);
    drop(pg);
}

/// A `--store` that is not a PostgreSQL URL is refused before anything starts.
#[test]
fn a_store_url_of_another_kind_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["serve", "--store", "mysql://db/bulkhead"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store") && err.contains("postgres://"), "{err}");
}

/// TLS to the store: `serve --store` with `sslmode=verify-full` and the CA that signed the
/// database's certificate serves, over encrypted connections only, and `doctor --store` reads
/// it; with a CA that signed nothing of the database's, the server stops at start saying why
/// (no hang, no fall back to the clear), and so does `doctor --store`.
#[tokio::test]
async fn a_store_over_tls_is_verified_and_a_wrong_ca_stops_the_server_at_start() {
    let tls = TestTls::new(&["127.0.0.1"]);
    let pg = TestPostgres::start_tls(&tls).await;
    let url = pg.database().await;
    let dir = common::tempdir();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca).unwrap();
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, TestTls::new(&["127.0.0.1"]).ca).unwrap();
    let good = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let wrong = format!("{url}?sslmode=verify-full&sslrootcert={}", wrong_ca.display());
    let data = dir.path().join("data");
    let registry = data.join("host-registry");
    let names = runtime_names();

    let mut server = Server::start_with_args(&data, names.clone(), &["--store", &good]);
    server.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let mut admin = PgConnection::connect(&pg.admin_url()).await.unwrap();
    let (all, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1",
    )
    .bind(&database)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(all >= 1 && encrypted == all, "{encrypted} of the server's {all} connections to its store encrypted");
    admin.close().await.unwrap();

    // Doctor, with no server answering, reads the store: over TLS with the right CA; with the
    // wrong one, it fails and says why.
    let state = server.state_dir.display().to_string();
    let registry_arg = registry.display().to_string();
    let doctor = |store: &str| {
        server.cli(
            None,
            &[
                "doctor",
                "--state-dir",
                &state,
                "--cgroup-prefix",
                &server.cgroup_prefix,
                "--host-registry",
                &registry_arg,
                "--url",
                "http://127.0.0.1:1",
                "--store",
                store,
            ],
        )
    };
    // (Its verdict on the host is not this test's: the host may hold other servers' leftovers.)
    let out = doctor(&good);
    let (verdict, err) = (common::process::text(&out.stdout), common::process::text(&out.stderr));
    assert!(
        err.contains("read from the store (PostgreSQL)") && !err.contains("error:") && !verdict.is_empty(),
        "doctor --store over TLS: {verdict}{err}"
    );
    let out = doctor(&wrong);
    let err = common::process::text(&out.stderr);
    assert!(!out.status.success() && err.contains("invalid peer certificate"), "doctor --store, wrong CA: {err}");

    server.stop();
    let err = match Server::spawn(&data, names, &registry, &["--store", &wrong]) {
        Ok(_) => panic!("a server started on a store whose certificate its CA did not sign"),
        Err(e) => e,
    };
    assert!(err.contains("invalid peer certificate"), "{err}");
    drop(server);
    drop(pg);
}
