//! The store's behaviour ([`crate::conformance`]) on a real PostgreSQL, and what is
//! PostgreSQL's own: row-level security as a second lock, the serving role, and several stores
//! (as several servers would hold) on one database: audit chains that never fork, quotas that
//! hold across them.

use std::sync::Arc;

use bulkhead_core::Quotas;
use sqlx::{Connection, Row};

use super::testing::{TestPostgres, TestTls};
use super::{PgStore, Scope};
use crate::conformance::{event, key, ns, sandbox, RawSql};
use crate::prelude::*;
use crate::{ProjectRow, StoreError};

/// A PostgreSQL server and a database of the test's own; the store opened on it keeps 4 audit
/// records a chain.
async fn open() -> (TestPostgres, String, PgStore) {
    let pg = TestPostgres::start().await;
    let url = pg.database().await;
    let s = PgStore::open(&url).await.unwrap().with_audit_retention(4);
    (pg, url, s)
}

/// Each test of [`crate::conformance`], on a PostgreSQL store of its own.
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (_pg, _url, s) = open().await;
            crate::conformance::$name(&s).await;
            s.close().await;
        }
    )+};
}

conformance!(
    retention_prunes_behind_a_checkpoint_that_verifies,
    namespace_delete_cascades_keys_and_chain,
    a_claim_replaces_the_pool_sandboxs_share_of_the_quota_and_only_once,
    warm_pool_sizes_are_set_listed_and_removed_and_name_existing_images_only,
    admission_is_checked_against_active_sandboxes_and_slots_are_unique,
    idempotency_claims_are_exclusive_answered_released_and_expire,
    every_row_type_reads_back_what_it_wrote,
    nodes_hold_leases_and_a_lost_nodes_sandboxes_and_claims_end_once,
    images_are_private_first_then_public_and_busy_while_a_sandbox_lives,
    agents_versions_tasks_messages_and_state,
);

#[async_trait::async_trait]
impl RawSql for PgStore {
    async fn raw(&self, sql: &str) {
        let mut tx = self.scoped(Scope::Platform).await.unwrap();
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// The second lock: through the store's own pool and role, a query that forgot its
/// `WHERE namespace = ...` sees only the rows of the namespace its transaction is scoped to,
/// a transaction scoped to nothing sees no row of any table and can write none, and only the
/// explicit platform scope sees every namespace's rows.
#[tokio::test]
async fn a_query_that_forgot_its_namespace_sees_only_its_scope() {
    let (_pg, _url, s) = open().await;
    for n in ["acme", "globex"] {
        s.create_namespace(&ns(n)).await.unwrap();
        s.create_key(&key(n, "ci")).await.unwrap();
        s.admit_sandbox(&sandbox(n, 100), &Quotas::DEFAULT).await.unwrap();
        s.append_audit(n, event(1)).await.unwrap();
        s.claim_idempotent(&format!("ns:{n}:key:k:sandbox.create"), "k1", "f", 1, 0).await.unwrap();
    }
    s.init_admin_token_hash("h", 1).await.unwrap();
    let tables = [
        ("namespaces", "name"),
        ("api_keys", "namespace"),
        ("sandboxes", "namespace"),
        ("audit_records", "chain"),
        ("audit_heads", "chain"),
        ("idempotency", "namespace"),
    ];
    // Scoped to acme: only acme's rows, though no query says so.
    let mut tx = s.scoped(Scope::Namespace("acme")).await.unwrap();
    for (table, col) in tables {
        let seen: Vec<String> =
            sqlx::query_scalar(&format!("SELECT {col}::text FROM {table}")).fetch_all(&mut *tx).await.unwrap();
        assert_eq!(seen, ["acme"], "{table} scoped to acme");
    }
    let platform: Vec<String> =
        sqlx::query_scalar("SELECT admin_token_hash FROM platform").fetch_all(&mut *tx).await.unwrap();
    assert!(platform.is_empty(), "a namespace's scope does not see the platform's row");
    // Nor can it write another namespace's row, or move one of its own there.
    let e = sqlx::query(
        "INSERT INTO api_keys (id, namespace, name, role, token_hash, created_at_ms) \
                         VALUES ('key_x', 'globex', 'x', 'owner', 'hx', 1)",
    )
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("row-level security"), "{e}");
    drop(tx);
    let mut tx = s.scoped(Scope::Namespace("acme")).await.unwrap();
    let e = sqlx::query("UPDATE api_keys SET namespace = 'globex'").execute(&mut *tx).await.unwrap_err();
    assert!(e.to_string().contains("row-level security"), "{e}");
    drop(tx);
    let mut tx = s.scoped(Scope::Namespace("acme")).await.unwrap();
    let deleted = sqlx::query("DELETE FROM sandboxes WHERE namespace = 'globex'").execute(&mut *tx).await.unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    drop(tx);

    // A transaction that set no scope at all, on the same pool: nothing.
    let mut conn = s.pool.acquire().await.unwrap();
    for (table, _) in tables.iter().chain(&[("platform", ""), ("store_identity", "")]) {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&mut *conn).await.unwrap();
        assert_eq!(n, 0, "{table} with no scope");
    }
    let e = sqlx::query("DELETE FROM namespaces").execute(&mut *conn).await.unwrap();
    assert_eq!(e.rows_affected(), 0);
    // The role it serves through: not the URL's, no superuser, no BYPASSRLS, owns nothing; and
    // it cannot turn row-level security off.
    let row = sqlx::query(
        "SELECT current_user::text AS me, r.rolsuper, r.rolbypassrls, \
         (SELECT COUNT(*) FROM pg_class c WHERE c.relowner = r.oid) AS owned \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("me"), s.serving_role());
    assert!(!row.get::<bool, _>("rolsuper") && !row.get::<bool, _>("rolbypassrls"));
    assert_eq!(row.get::<i64, _>("owned"), 0);
    let e = sqlx::query("ALTER TABLE sandboxes DISABLE ROW LEVEL SECURITY").execute(&mut *conn).await.unwrap_err();
    assert!(e.to_string().contains("owner"), "{e}");
    drop(conn);

    // The platform's scope, set explicitly, sees both.
    let mut tx = s.scoped(Scope::Platform).await.unwrap();
    let seen: Vec<String> =
        sqlx::query_scalar("SELECT namespace FROM sandboxes ORDER BY namespace").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(seen, ["acme", "globex"]);
    drop(tx);
    // And the store's own methods still answer.
    assert_eq!(s.list_namespaces(None, 10, None).await.unwrap().len(), 2);
    assert_eq!(s.admin_token_hash().await.unwrap().as_deref(), Some("h"));
    s.close().await;
}

/// A store opened again on a database keeps its data, its serving role and its store id; a
/// second store on the same database (another server) sees the same.
#[tokio::test]
async fn reopen_keeps_data_and_pagination_works() {
    let (_pg, url, s) = open().await;
    for n in ["c", "a", "b"] {
        s.create_namespace(&ns(n)).await.unwrap();
    }
    s.init_admin_token_hash("h", 1).await.unwrap();
    assert!(matches!(s.init_admin_token_hash("h2", 1).await, Err(StoreError::Conflict(_))));
    let id = s.store_id().await.unwrap();
    s.close().await;
    let s = PgStore::open(&url).await.unwrap();
    assert_eq!(s.admin_token_hash().await.unwrap().as_deref(), Some("h"));
    assert_eq!(s.store_id().await.unwrap(), id);
    let page: Vec<_> = s.list_namespaces(None, 2, None).await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(page, ["a", "b"]);
    let page: Vec<_> = s.list_namespaces(Some("b"), 2, None).await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(page, ["c"]);
    let only: Vec<_> = s.list_namespaces(None, 10, Some("b")).await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(only, ["b"]);
    // Keys page in byte order, as SQLite's do, whatever the database's collation.
    for id in ["prj_B", "prj_a", "prj_-"] {
        let p = ProjectRow { id: id.into(), namespace: "a".into(), name: id.into(), created_at_ms: 1 };
        s.create_project(&p).await.unwrap();
    }
    let ids: Vec<_> = s.list_projects("a", None, 10).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["prj_-", "prj_B", "prj_a"]);
    s.close().await;
}

/// Two stores (two pools, as two servers would hold) appending to one chain at once: every
/// record gets its own sequence number, the chain links without a fork and verifies.
#[tokio::test]
async fn two_stores_appending_to_one_chain_never_fork_it() {
    let (_pg, url, first) = open().await;
    let first = Arc::new(first.with_audit_retention(1_000));
    let second = Arc::new(PgStore::open(&url).await.unwrap().with_audit_retention(1_000));
    first.create_namespace(&ns("acme")).await.unwrap();
    const EACH: i64 = 40;
    let mut tasks = Vec::new();
    for (n, store) in [first.clone(), second.clone(), first.clone(), second.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                seqs.push(store.append_audit("acme", event(i + 1000 * n as i64)).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=4 * EACH as u64).collect::<Vec<_>>(), "each append its own place in the chain");
    for s in [&first, &second] {
        let v = s.verify_audit("acme").await.unwrap();
        assert!(v.ok && v.records == 4 * EACH as u64, "{v:?}");
    }
    let records = second.list_audit("acme", &crate::AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "record {} links to {}", pair[1].seq, pair[0].seq);
    }
    first.close().await;
    second.close().await;
}

/// Admissions racing on two stores for one namespace's last places: no more sandboxes are
/// admitted than the quota allows, and every refusal names the quota.
#[tokio::test]
async fn a_quota_holds_across_two_stores_admitting_at_once() {
    let (_pg, url, first) = open().await;
    let first = Arc::new(first);
    let second = Arc::new(PgStore::open(&url).await.unwrap());
    first.create_namespace(&ns("acme")).await.unwrap();
    let quotas = Quotas { max_sandboxes: 5, cpu_millis: 100_000, ..Quotas::DEFAULT };
    let mut tasks = Vec::new();
    for n in 0..16 {
        let store = if n % 2 == 0 { first.clone() } else { second.clone() };
        tasks.push(tokio::spawn(async move { store.admit_sandbox(&sandbox("acme", 100), &quotas).await }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(StoreError::Quota(b)) => {
                assert_eq!(b.quota, "max_sandboxes");
                refused += 1;
            }
            Err(e) => panic!("an admission failed otherwise: {e}"),
        }
    }
    assert_eq!((admitted, refused), (5, 11));
    assert_eq!(first.namespace_use("acme").await.unwrap().sandboxes, 5);
    first.close().await;
    second.close().await;
}

/// The store's failures on PostgreSQL are named as on SQLite: a unique key taken is a conflict,
/// a missing parent not found, and the SQLSTATEs of a busy or full database are named.
#[tokio::test]
async fn failures_are_named() {
    let (_pg, _url, s) = open().await;
    s.create_namespace(&ns("acme")).await.unwrap();
    assert!(matches!(s.create_namespace(&ns("acme")).await, Err(StoreError::Conflict(_))));
    assert!(matches!(s.create_key(&key("nope", "ci")).await, Err(StoreError::NotFound(_))));
    let mut tx = s.scoped(Scope::Platform).await.unwrap();
    let e = sqlx::query("SELECT * FROM no_such_table").execute(&mut *tx).await.unwrap_err();
    assert!(matches!(StoreError::from(e), StoreError::Database(_)));
    drop(tx);
    let mut tx = s.scoped(Scope::Platform).await.unwrap();
    let e = sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '53100'; END $$")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(matches!(StoreError::from(e), StoreError::Full(_)));
    drop(tx);
    let mut tx = s.scoped(Scope::Platform).await.unwrap();
    let e = sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(matches!(StoreError::from(e), StoreError::Busy(_)));
    drop(tx);
    s.close().await;
}

/// PostgreSQL's text holds no NUL character, where SQLite's does: a lookup by a key with one
/// names no row (not found, not a database error), and an audit record with one is kept with
/// U+FFFD in its place, sealed as kept, so its chain verifies.
#[tokio::test]
async fn a_nul_character_names_no_row_and_is_kept_out_of_audit_records() {
    let (_pg, _url, s) = open().await;
    s.create_namespace(&ns("acme")).await.unwrap();
    assert!(matches!(s.get_namespace("a\0b").await, Err(StoreError::NotFound(_))));
    assert!(matches!(s.get_key("acme", "key_\0").await, Err(StoreError::NotFound(_))));
    let mut e = event(1);
    e.resource = "namespace:a\0b".into();
    let record = s.append_audit("acme", e).await.unwrap();
    assert_eq!(record.event.resource, "namespace:a\u{fffd}b");
    let listed = s.list_audit("acme", &crate::AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed, [record]);
    assert!(s.verify_audit("acme").await.unwrap().ok);
    s.close().await;
}

/// TLS to the database, as the URL's `sslmode` and `sslrootcert` ask: `verify-full` with the CA
/// that signed the server's certificate opens, and every connection of the store is encrypted;
/// `require` encrypts without verifying; `verify-ca` checks the CA. A wrong CA,
/// a name the certificate does not carry under `verify-full`, or a server without TLS under
/// `require` is an error at open that says so, never a store that quietly runs in the clear.
#[tokio::test]
async fn tls_is_verified_as_the_url_asks() {
    let tls = TestTls::new(&["127.0.0.1"]);
    let pg = TestPostgres::start_tls(&tls).await;
    let url = pg.database().await;
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca).unwrap();
    let wrong = files.path().join("wrong-ca.pem");
    std::fs::write(&wrong, TestTls::new(&["127.0.0.1"]).ca).unwrap();
    let with = |url: &str, query: String| format!("{url}?{query}");
    // The same server by a name its certificate does not carry.
    let by_name = url.replace("@127.0.0.1:", "@localhost:");

    let s = PgStore::open(&with(&url, format!("sslmode=verify-full&sslrootcert={}", ca.display()))).await.unwrap();
    s.create_namespace(&ns("acme")).await.unwrap();
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let mut admin = sqlx::PgConnection::connect(&pg.admin_url()).await.unwrap();
    let (all, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(&database)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(all >= 1 && encrypted == all, "{encrypted} of the store's {all} connections encrypted");
    s.close().await;

    for ok in
        [with(&url, "sslmode=require".into()), with(&url, format!("sslmode=verify-ca&sslrootcert={}", ca.display()))]
    {
        let s = PgStore::open(&ok).await.unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(s.get_namespace("acme").await.unwrap().map(|n| n.name).as_deref(), Some("acme"));
        s.close().await;
    }

    let refused = |e: StoreError| match e {
        StoreError::Database(e) => e.to_string(),
        e => panic!("not the database's error: {e}"),
    };
    for mode in ["verify-ca", "verify-full"] {
        let e = PgStore::open(&with(&url, format!("sslmode={mode}&sslrootcert={}", wrong.display())))
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode} with a CA that signed nothing of the server opened"));
        let why = refused(e);
        assert!(why.contains("invalid peer certificate: UnknownIssuer"), "{mode}, wrong CA: {why}");
    }
    let e = PgStore::open(&with(&by_name, format!("sslmode=verify-full&sslrootcert={}", ca.display())))
        .await
        .err()
        .expect("verify-full by a name the certificate does not carry opened");
    let why = refused(e);
    assert!(why.contains("not valid for name"), "verify-full, another name: {why}");
    admin.close().await.unwrap();
    drop(pg);

    // A server without TLS: `require` will not fall back to the clear.
    let plain = TestPostgres::start().await;
    let url = plain.database().await;
    let e = PgStore::open(&with(&url, "sslmode=require".into())).await.err().expect("require on a server without TLS");
    assert!(refused(e).contains("does not support TLS"));
}
