//! The images aggregate: OCI images a namespace imported (private) or the platform admin
//! published (public), as the store keeps them. The layers themselves live in the runtime's
//! layer stores; a row names them by digest.

use async_trait::async_trait;

use crate::Result;

/// An image as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// `img_…`.
    pub id: String,
    /// The namespace it belongs to; `None` for a public image.
    pub namespace: Option<String>,
    /// `[a-z0-9-]{1,63}`, unique within its namespace (and among public images).
    pub name: String,
    /// The digest of its manifest, `sha256:<hex>`.
    pub digest: String,
    /// Its run configuration as JSON (`{"env", "working_dir", "user", "entrypoint", "cmd"}`),
    /// kept as the server wrote it.
    pub config: String,
    /// Its layers' blob digests, bottom first.
    pub layers: Vec<String>,
    /// The layers' unpacked size in bytes.
    pub size_bytes: u64,
    /// Where it came from: `archive`, or a registry reference.
    pub source: String,
    pub created_at_ms: i64,
    /// `ready`: only whole images are ever recorded.
    pub status: String,
}

/// What [`ImageStore::delete_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageDeletion {
    Deleted,
    /// No such image.
    NotFound,
    /// A sandbox that has not ended (this one) uses it; nothing was deleted.
    InUse(String),
}

/// Images of every namespace, and the public ones.
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// Records an image; a name its namespace (or the public images) already has is
    /// [`crate::StoreError::Conflict`], a namespace that does not exist
    /// [`crate::StoreError::NotFound`].
    async fn insert_image(&self, image: &ImageRow) -> Result<()>;
    /// The image `name_or_id` (a name, or an `img_…` id) as namespace `namespace` sees it: its
    /// own first, then a public one. With `namespace` `None`, public images only.
    async fn find_image(&self, namespace: Option<&str>, name_or_id: &str) -> Result<Option<ImageRow>>;
    /// A page of the images `namespace` sees (its own and the public ones; with `None` the
    /// public ones only), in id order after `after`, at most `limit`.
    async fn list_images(&self, namespace: Option<&str>, after: Option<&str>, limit: u32) -> Result<Vec<ImageRow>>;
    /// Deletes image `id` unless a sandbox that has not ended uses it, checked in the same
    /// transaction as the delete (a sandbox admitted with it meanwhile cannot slip between).
    async fn delete_image(&self, id: &str) -> Result<ImageDeletion>;
    /// Every layer digest the recorded images of one layer store name: namespace `namespace`'s
    /// private images, or with `None` the public ones. What a collection of that store keeps.
    async fn image_layers(&self, namespace: Option<&str>) -> Result<Vec<String>>;
}
