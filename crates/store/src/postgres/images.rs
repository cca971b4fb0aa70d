//! Queries of the images aggregate: a namespace's own images and the public ones, a delete
//! checked against live sandboxes in one `SERIALIZABLE` transaction. A namespace's scope sees
//! its own images and the public ones (the `public_read` policy); only the platform's writes
//! public ones.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{
    as_i64, as_u64, insert_row, names, select, serializable, Columns, Constraints, PgStore, Query, Scope, Table,
};
use crate::{ImageDeletion, ImageRow, ImageStore, Result, StoreError};

impl Columns for ImageRow {
    const COLUMNS: &'static str =
        "id, namespace, name, digest, config, layers, size_bytes, source, created_at_ms, status";

    fn from_row(row: &PgRow) -> Result<Self> {
        let layers: String = row.try_get("layers")?;
        Ok(ImageRow {
            id: row.try_get("id")?,
            namespace: row.try_get("namespace")?,
            name: row.try_get("name")?,
            digest: row.try_get("digest")?,
            config: row.try_get("config")?,
            layers: names(&layers, "image layers")?,
            size_bytes: as_u64(row, "size_bytes")?,
            source: row.try_get("source")?,
            created_at_ms: row.try_get("created_at_ms")?,
            status: row.try_get("status")?,
        })
    }

    fn bind_all<'q>(&'q self, q: Query<'q>) -> Result<Query<'q>> {
        let layers = serde_json::to_string(&self.layers).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(q.bind(&self.id)
            .bind(self.namespace.as_deref())
            .bind(&self.name)
            .bind(&self.digest)
            .bind(&self.config)
            .bind(layers)
            .bind(as_i64(self.size_bytes))
            .bind(&self.source)
            .bind(self.created_at_ms)
            .bind(&self.status))
    }
}

impl Table for ImageRow {
    const TABLE: &'static str = "images";
    const KEY: &'static str = "id";
}

#[async_trait]
impl ImageStore for PgStore {
    async fn insert_image(&self, image: &ImageRow) -> Result<()> {
        let names = Constraints::default()
            .taken(format!("image {}", image.name))
            .missing(format!("namespace {}", image.namespace.as_deref().unwrap_or("")));
        let scope = image.namespace.as_deref().map_or(Scope::Platform, Scope::Namespace);
        let mut tx = self.scoped(scope).await?;
        insert_row(&mut tx, image, names).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_image(&self, namespace: Option<&str>, name_or_id: &str) -> Result<Option<ImageRow>> {
        // The namespace's own image before a public one of the same name.
        let sql = select::<ImageRow>(
            "WHERE (namespace = ? OR namespace IS NULL) AND (name = ? OR id = ?) \
             ORDER BY namespace IS NULL LIMIT 1",
        );
        // With no namespace, `namespace = NULL` matches nothing: public images only.
        let q = sqlx::query(&sql).bind(namespace).bind(name_or_id).bind(name_or_id);
        self.read_one(namespace.map_or(Scope::Platform, Scope::Namespace), q).await
    }

    async fn list_images(&self, namespace: Option<&str>, after: Option<&str>, limit: u32) -> Result<Vec<ImageRow>> {
        let sql = select::<ImageRow>("WHERE (namespace = ? OR namespace IS NULL) AND id > ? ORDER BY id LIMIT ?");
        let q = sqlx::query(&sql).bind(namespace).bind(after.unwrap_or("")).bind(i64::from(limit));
        self.read_all(namespace.map_or(Scope::Platform, Scope::Namespace), q).await
    }

    async fn delete_image(&self, id: &str) -> Result<ImageDeletion> {
        // Serializable against an admission that checks the image is still there.
        serializable!(self, Scope::Platform, |tx| {
            let user = sqlx::query(
                "SELECT id FROM sandboxes WHERE image_id = $1 AND status IN ('creating', 'running') \
                 ORDER BY id LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = user {
                return Ok(ImageDeletion::InUse(row.try_get("id")?));
            }
            let r = sqlx::query("DELETE FROM images WHERE id = $1").bind(id).execute(&mut *tx).await?;
            Ok::<_, StoreError>(if r.rows_affected() > 0 { ImageDeletion::Deleted } else { ImageDeletion::NotFound })
        })
    }

    async fn image_layers(&self, namespace: Option<&str>) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT layer FROM images, json_array_elements_text(images.layers::json) AS layer \
                   WHERE images.namespace IS NOT DISTINCT FROM $1 ORDER BY layer";
        let mut tx = self.scoped(namespace.map_or(Scope::Platform, Scope::Namespace)).await?;
        let rows = sqlx::query(sql).bind(namespace).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("layer")?)).collect()
    }
}
