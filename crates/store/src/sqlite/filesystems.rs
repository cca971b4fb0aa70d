//! Queries of the filesystems aggregate: projects, and filesystems admitted and resized in one
//! transaction with the namespace's disk quota.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{all, as_i64, insert_row, select, within, Columns, Constraints, SqliteStore};
use crate::{FilesystemRow, FilesystemStore, ProjectRow, Result, StoreError};

/// The bytes `used` as the disk quota counts them (a negative sum reads as none).
fn disk_used(row: &SqliteRow) -> Result<u64> {
    let used: i64 = row.try_get("used")?;
    Ok(u64::try_from(used).unwrap_or(0))
}

#[async_trait]
impl FilesystemStore for SqliteStore {
    async fn create_project(&self, p: &ProjectRow) -> Result<()> {
        let _w = self.write_lock.lock().await;
        insert_row(&self.pool, p, Constraints::default().taken(format!("project {}", p.name))).await
    }

    async fn get_project(&self, namespace: &str, id: &str) -> Result<Option<ProjectRow>> {
        self.get_in(namespace, id).await
    }

    async fn list_projects(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<ProjectRow>> {
        self.page(namespace, after, limit).await
    }

    async fn delete_project(&self, namespace: &str, id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM filesystems WHERE project_id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if used > 0 {
            return Err(StoreError::Conflict(format!("filesystems of project {id}")));
        }
        let r = sqlx::query("DELETE FROM projects WHERE namespace = ? AND id = ?")
            .bind(namespace)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    async fn admit_filesystem(&self, f: &FilesystemRow, disk_bytes: u64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let used = sqlx::query("SELECT COALESCE(SUM(size_bytes), 0) AS used FROM filesystems WHERE namespace = ?")
            .bind(&f.namespace)
            .fetch_one(&mut *tx)
            .await?;
        within("disk_bytes", disk_bytes, disk_used(&used)?, f.size_bytes)?;
        insert_row(&mut *tx, f, Constraints::default().taken(format!("filesystem {}", f.name))).await?;
        tx.commit().await
    }

    async fn get_filesystem(&self, namespace: &str, id: &str) -> Result<Option<FilesystemRow>> {
        self.get_in(namespace, id).await
    }

    async fn list_filesystems(&self, namespace: &str, after: Option<&str>, limit: u32) -> Result<Vec<FilesystemRow>> {
        self.page(namespace, after, limit).await
    }

    async fn all_filesystems(&self) -> Result<Vec<FilesystemRow>> {
        all(&self.pool, sqlx::query(&select::<FilesystemRow>("ORDER BY id"))).await
    }

    async fn resize_filesystem(
        &self,
        namespace: &str,
        id: &str,
        size_bytes: u64,
        disk_bytes: u64,
        now_ms: i64,
    ) -> Result<Option<FilesystemRow>> {
        let mut tx = self.write_tx().await?;
        let used =
            sqlx::query("SELECT COALESCE(SUM(size_bytes), 0) AS used FROM filesystems WHERE namespace = ? AND id != ?")
                .bind(namespace)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        within("disk_bytes", disk_bytes, disk_used(&used)?, size_bytes)?;
        let sql = format!(
            "UPDATE filesystems SET size_bytes = ?, updated_at_ms = ? WHERE namespace = ? AND id = ? RETURNING {}",
            FilesystemRow::COLUMNS
        );
        let update = sqlx::query(&sql).bind(as_i64(size_bytes)).bind(now_ms).bind(namespace).bind(id);
        let row = update.fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        row.as_ref().map(FilesystemRow::from_row).transpose()
    }

    async fn delete_filesystem(&self, namespace: &str, id: &str) -> Result<bool> {
        self.delete_in::<FilesystemRow>(namespace, id).await
    }
}
