//! The store's behaviour across aggregates ([`crate::conformance`], on SQLite), what is SQLite's
//! own (reopening, the write lock, the failures it names) and the shared query shapes each
//! relies on.

use super::rows::Column;
use super::{insert, select, within, Columns, Constraints, SqliteStore};
use crate::conformance::{event, key, ns, RawSql};
use crate::prelude::*;
use crate::{NamespaceRow, ProjectRow, SandboxRow, StoreError, UsageDelta};

/// Each test of [`crate::conformance`], on a SQLite store of its own.
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            let s = SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap().with_audit_retention(4);
            crate::conformance::$name(&s).await;
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
impl RawSql for SqliteStore {
    async fn raw(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.unwrap();
    }
}

#[tokio::test]
async fn reopen_keeps_data_and_pagination_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let s = SqliteStore::open(&path).await.unwrap();
        for n in ["c", "a", "b"] {
            s.create_namespace(&ns(n)).await.unwrap();
        }
        s.init_admin_token_hash("h", 1).await.unwrap();
        assert!(matches!(s.init_admin_token_hash("h2", 1).await, Err(StoreError::Conflict(_))));
    }
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.admin_token_hash().await.unwrap().as_deref(), Some("h"));
    let page: Vec<_> = s.list_namespaces(None, 2, None).await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(page, ["a", "b"]);
    let page: Vec<_> = s.list_namespaces(Some("b"), 2, None).await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(page, ["c"]);
    let only: Vec<_> = s.list_namespaces(None, 10, Some("b")).await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(only, ["b"]);
}

#[test]
fn statements_are_built_from_a_row_types_columns() {
    assert_eq!(ProjectRow::COLUMNS, "id, namespace, name, created_at_ms");
    assert_eq!(insert::<ProjectRow>(), "INSERT INTO projects (id, namespace, name, created_at_ms) VALUES (?, ?, ?, ?)");
    assert_eq!(
        select::<ProjectRow>("WHERE id = ?"),
        "SELECT id, namespace, name, created_at_ms FROM projects WHERE id = ?"
    );
    // One placeholder a column, however the column list is wrapped.
    let sandbox = insert::<SandboxRow>();
    assert_eq!(sandbox.matches('?').count(), 29);
    assert_eq!(sandbox.matches('?').count(), SandboxRow::COLUMNS.split(',').count());
    assert!(!NamespaceRow::COLUMNS.contains("  "), "{}", NamespaceRow::COLUMNS);
}

#[test]
fn within_allows_up_to_the_limit_and_names_the_breach() {
    within("cpu_millis", 1000, 600, 400).unwrap();
    match within("cpu_millis", 1000, 600, 401) {
        Err(StoreError::Quota(b)) => {
            assert_eq!((b.quota, b.limit, b.used, b.requested), ("cpu_millis", 1000, 600, 401))
        }
        other => panic!("{other:?}"),
    }
    // A sum past u64::MAX is past any limit, not wrapped below it.
    assert!(matches!(within("disk_bytes", u64::MAX - 1, u64::MAX, 1), Err(StoreError::Quota(_))));
}

#[tokio::test]
async fn columns_refuse_values_the_store_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    let row =
        sqlx::query("SELECT -1 AS n, 70000 AS status, 'x' AS t, '[1]' AS names").fetch_one(&s.pool).await.unwrap();
    assert!(matches!(u64::read(&row, "n"), Err(StoreError::Corrupt(m)) if m == "n is negative"));
    assert!(matches!(u16::read(&row, "status"), Err(StoreError::Corrupt(m)) if m == "status out of range"));
    assert_eq!(String::read(&row, "t").unwrap(), "x");
    assert!(matches!(String::read(&row, "missing"), Err(StoreError::Database(_))));
    assert!(
        matches!(crate::rows::names("[1]", "key projects"), Err(StoreError::Corrupt(m)) if m.starts_with("key projects: "))
    );
    assert_eq!(crate::rows::names(r#"["a","b"]"#, "x").unwrap(), ["a", "b"]);
}

#[tokio::test]
async fn constraint_failures_are_named_only_when_the_write_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    s.create_namespace(&ns("acme")).await.unwrap();
    let project = |namespace: &str| {
        sqlx::query("INSERT INTO projects (id, namespace, name, created_at_ms) VALUES ('p', ?, 'web', 1)")
            .bind(namespace.to_owned())
    };
    let named = || Constraints::default().taken("project web".into()).missing("namespace nope".into());
    // A parent that is missing.
    let r = project("nope").execute(&s.pool).await;
    assert!(matches!(named().check(r), Err(StoreError::NotFound(m)) if m == "namespace nope"));
    let r = project("nope").execute(&s.pool).await;
    assert!(matches!(Constraints::default().taken("x".into()).check(r), Err(StoreError::Database(_))));
    // A unique key that is taken.
    named().check(project("acme").execute(&s.pool).await).unwrap();
    let r = project("acme").execute(&s.pool).await;
    assert!(matches!(named().check(r), Err(StoreError::Conflict(m)) if m == "project web"));
    let r = project("acme").execute(&s.pool).await;
    assert!(matches!(Constraints::default().missing("x".into()).check(r), Err(StoreError::Database(_))));
}

#[tokio::test]
async fn namespace_rows_are_got_paged_and_deleted_by_key_within_their_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    for n in ["acme", "globex"] {
        s.create_namespace(&ns(n)).await.unwrap();
    }
    let project = |namespace: &str, id: &str| ProjectRow {
        id: id.into(),
        namespace: namespace.into(),
        name: format!("{namespace}-{id}"),
        created_at_ms: 1,
    };
    for id in ["prj_c", "prj_a", "prj_b"] {
        s.create_project(&project("acme", id)).await.unwrap();
    }
    s.create_project(&project("globex", "prj_0")).await.unwrap();
    let ids = |rows: Vec<ProjectRow>| rows.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids(s.page("acme", None, 2).await.unwrap()), ["prj_a", "prj_b"]);
    assert_eq!(ids(s.page("acme", Some("prj_b"), 2).await.unwrap()), ["prj_c"]);
    assert_eq!(ids(s.page("globex", None, 10).await.unwrap()), ["prj_0"]);
    assert_eq!(s.get_in::<ProjectRow>("acme", "prj_a").await.unwrap(), Some(project("acme", "prj_a")));
    assert_eq!(s.get_in::<ProjectRow>("globex", "prj_a").await.unwrap(), None);
    assert!(!s.delete_in::<ProjectRow>("globex", "prj_a").await.unwrap());
    assert!(s.delete_in::<ProjectRow>("acme", "prj_a").await.unwrap());
    assert!(!s.delete_in::<ProjectRow>("acme", "prj_a").await.unwrap());
}

#[tokio::test]
async fn a_write_transaction_dropped_uncommitted_rolls_back_and_lets_the_lock_go() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
    {
        let mut tx = s.write_tx().await.unwrap();
        sqlx::query("INSERT INTO platform (id, admin_token_hash, created_at_ms) VALUES (1, 'h', 1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert!(s.write_lock.try_lock().is_err(), "the transaction holds the write lock");
    }
    assert_eq!(s.admin_token_hash().await.unwrap(), None);
    let mut tx = s.write_tx().await.unwrap();
    sqlx::query("INSERT INTO platform (id, admin_token_hash, created_at_ms) VALUES (1, 'h', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(s.admin_token_hash().await.unwrap().as_deref(), Some("h"));
}

/// Writers cancelled at any await (a client gone mid-request) never leave SQLite's write lock
/// held behind the store's own: every other writer still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_cancelled_midway_leave_no_lock_behind() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap());
    s.create_namespace(&ns("acme")).await.unwrap();
    let end = Instant::now() + Duration::from_secs(6);
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    let cut = Duration::from_micros((i * 7919 + t * 104_729) % 3000);
                    let began = Instant::now();
                    let r = match (t % 4, i % 3) {
                        (0, _) => tokio::time::timeout(cut, s.append_audit("acme", event(i as i64)))
                            .await
                            .map(|r| r.map(drop)),
                        (1, _) => tokio::time::timeout(cut, s.create_key(&key("acme", &format!("k{t}-{i}")))).await,
                        (2, 0) => Ok(s.verify_audit("acme").await.map(drop)),
                        (2, _) => Ok(s.append_audit("acme", event(i as i64)).await.map(drop)),
                        _ => {
                            tokio::time::timeout(
                                cut,
                                s.add_usage("acme", 0, &UsageDelta { exec_count: 1, ..Default::default() }),
                            )
                            .await
                        }
                    };
                    if let Ok(Err(e)) = r {
                        errors.push(format!("task kind {} op {}: after {:?}: {e}", t % 4, i % 3, began.elapsed()));
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    assert!(s.verify_audit("acme").await.unwrap().ok);
}

/// A full disk, a database locked past the busy timeout and an IO error are named, each from
/// SQLite's own failure; anything else stays a database error.
#[tokio::test]
async fn full_busy_and_io_failures_are_named() {
    use sqlx::{ConnectOptions, Connection};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let s = SqliteStore::open(&path).await.unwrap();
    s.create_namespace(&ns("acme")).await.unwrap();

    // Full: SQLite refuses to grow the file past its page limit with SQLITE_FULL, as on a full disk.
    let mut small = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut small).await.unwrap();
    sqlx::query(&format!("PRAGMA max_page_count = {pages}")).execute(&mut small).await.unwrap();
    let big = vec![7u8; 1 << 20];
    let e = sqlx::query("INSERT INTO namespace_data_keys (namespace, wrapped) VALUES ('acme', ?)")
        .bind(&big)
        .execute(&mut small)
        .await
        .unwrap_err();
    assert!(matches!(StoreError::from(e), StoreError::Full(_)));

    // Busy: another connection holds the write lock past this one's busy timeout.
    let mut holder = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    let tx = holder.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let mut impatient = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(std::time::Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    let e = sqlx::query("DELETE FROM idempotency").execute(&mut impatient).await.unwrap_err();
    assert!(matches!(StoreError::from(e), StoreError::Busy(_)));
    tx.rollback().await.unwrap();

    // IO: a failed read or write of the store's files (a failed fsync is one), and a full disk
    // seen by the kernel.
    let e = sqlx::Error::Io(std::io::Error::from_raw_os_error(5));
    assert!(matches!(StoreError::from(e), StoreError::Io(_)));
    let e = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
    assert!(matches!(StoreError::from(e), StoreError::Full(_)));
    assert!(matches!(StoreError::from(sqlx::Error::PoolTimedOut), StoreError::Busy(_)));
    // A plain SQL error is nothing of these.
    let e = sqlx::query("SELECT * FROM no_such_table").execute(&mut impatient).await.unwrap_err();
    assert!(matches!(StoreError::from(e), StoreError::Database(_)));
}

/// A read-only open beside a live store reads what it committed and can write nothing; a
/// missing database is an error, not a new file.
#[tokio::test]
async fn a_read_only_open_reads_beside_a_live_store_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let live = SqliteStore::open(&path).await.unwrap();
    live.create_namespace(&ns("acme")).await.unwrap();
    let reader = SqliteStore::open_read_only(&path).await.unwrap();
    assert_eq!(reader.store_id().await.unwrap(), live.store_id().await.unwrap());
    assert!(reader.get_namespace("acme").await.unwrap().is_some());
    assert!(reader.create_namespace(&ns("other")).await.is_err(), "a read-only store writes nothing");
    assert!(live.get_namespace("other").await.unwrap().is_none());
    let missing = dir.path().join("missing.sqlite");
    assert!(SqliteStore::open_read_only(&missing).await.is_err());
    assert!(!missing.exists());
}
