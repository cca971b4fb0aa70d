//! A test server's database, opened behind the server's back to tamper with it or look at it:
//! the SQLite file in its data dir, or, when the suite runs on PostgreSQL
//! (`BULKHEAD_TEST_STORE`), the data dir's database there, as its owner in the platform's
//! scope (row-level security holds the owner too). Statements are plain SQL both databases
//! read the same way; values read come back as text (`CAST(x AS TEXT)` in the query).

use std::path::Path;

use bulkhead_store::postgres::testing::{suite_database, suite_server};
use sqlx::{ConnectOptions, Connection, Executor, Row};

/// Runs `sql` on the database of the server whose data dir is `data_dir`; rows it changed.
pub async fn exec(data_dir: &Path, sql: &str) -> u64 {
    match suite_server() {
        Some(admin) => {
            let mut conn = sqlx::PgConnection::connect(&suite_database(&admin, data_dir)).await.unwrap();
            conn.execute("SET bulkhead.scope = 'platform'").await.unwrap();
            let n = sqlx::query(sql).execute(&mut conn).await.unwrap().rows_affected();
            conn.close().await.unwrap();
            n
        }
        None => {
            let db = data_dir.join("bulkhead.db");
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await.unwrap();
            let n = sqlx::query(sql).execute(&mut conn).await.unwrap().rows_affected();
            conn.close().await.unwrap();
            n
        }
    }
}

/// The rows `sql` reads, every column as text (the query casts them).
pub async fn rows(data_dir: &Path, sql: &str) -> Vec<Vec<String>> {
    match suite_server() {
        Some(admin) => {
            let mut conn = sqlx::PgConnection::connect(&suite_database(&admin, data_dir)).await.unwrap();
            conn.execute("SET bulkhead.scope = 'platform'").await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            rows.iter().map(|r| (0..r.len()).map(|i| r.get::<String, _>(i)).collect()).collect()
        }
        None => {
            let db = data_dir.join("bulkhead.db");
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            rows.iter().map(|r| (0..r.len()).map(|i| r.get::<String, _>(i)).collect()).collect()
        }
    }
}

/// [`exec`] from synchronous code (a runtime of its own, on a thread of its own).
pub fn exec_blocking(data_dir: &Path, sql: &str) -> u64 {
    let (dir, sql) = (data_dir.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(exec(&dir, &sql))
    })
    .join()
    .unwrap()
}
