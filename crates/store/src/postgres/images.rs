//! Queries of the images aggregate: a namespace's own images and the public ones, a delete
//! checked against live sandboxes in one `SERIALIZABLE` transaction. A namespace's scope sees
//! its own images and the public ones (the `public_read` policy); only the platform's writes
//! public ones.

use async_trait::async_trait;
use sqlx::Row;

use super::{insert_row, select, serializable, Constraints, PgStore, Scope};
use crate::{ImageDeletion, ImageRow, ImageStore, Result, StoreError};

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
