//! Queries of the images aggregate: a namespace's own images and the public ones, a delete
//! checked against live sandboxes in one transaction.

use async_trait::async_trait;
use sqlx::Row;

use super::{all, insert_row, one, select, Constraints, SqliteStore};
use crate::{ImageDeletion, ImageRow, ImageStore, Result};

#[async_trait]
impl ImageStore for SqliteStore {
    async fn insert_image(&self, image: &ImageRow) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let names = Constraints::default()
            .taken(format!("image {}", image.name))
            .missing(format!("namespace {}", image.namespace.as_deref().unwrap_or("")));
        insert_row(&self.pool, image, names).await
    }

    async fn find_image(&self, namespace: Option<&str>, name_or_id: &str) -> Result<Option<ImageRow>> {
        // The namespace's own image before a public one of the same name.
        let sql = select::<ImageRow>(
            "WHERE (namespace = ? OR namespace IS NULL) AND (name = ? OR id = ?) \
             ORDER BY namespace IS NULL LIMIT 1",
        );
        // With no namespace, `namespace = NULL` matches nothing: public images only.
        one(&self.pool, sqlx::query(&sql).bind(namespace).bind(name_or_id).bind(name_or_id)).await
    }

    async fn list_images(&self, namespace: Option<&str>, after: Option<&str>, limit: u32) -> Result<Vec<ImageRow>> {
        let sql = select::<ImageRow>("WHERE (namespace = ? OR namespace IS NULL) AND id > ? ORDER BY id LIMIT ?");
        let q = sqlx::query(&sql).bind(namespace).bind(after.unwrap_or("")).bind(i64::from(limit));
        all(&self.pool, q).await
    }

    async fn delete_image(&self, id: &str) -> Result<ImageDeletion> {
        let mut tx = self.write_tx().await?;
        let user = sqlx::query(
            "SELECT id FROM sandboxes WHERE image_id = ? AND status IN ('creating', 'running') ORDER BY id LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = user {
            return Ok(ImageDeletion::InUse(row.try_get("id")?));
        }
        let r = sqlx::query("DELETE FROM images WHERE id = ?").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(if r.rows_affected() > 0 { ImageDeletion::Deleted } else { ImageDeletion::NotFound })
    }

    async fn image_layers(&self, namespace: Option<&str>) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT value AS layer FROM images, json_each(images.layers) \
                   WHERE images.namespace IS ? ORDER BY layer";
        let rows = sqlx::query(sql).bind(namespace).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("layer")?)).collect()
    }
}
