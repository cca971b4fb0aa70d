//! OCI images on the host: import (an OCI image layout or a `docker save` archive, see the OCI
//! image spec's `image-layout.md` and `manifest.md`), verification of every blob by digest, and
//! a content-addressed store of unpacked layers ([`LayerStore`]).
//!
//! A layer is unpacked once, under the archive rules of [`crate::archive`] (no path escapes, no
//! devices, no setuid or setgid unless [`UnpackOptions::allow_setuid`]), with the OCI whiteouts
//! turned into overlayfs's (a `.wh.<name>` entry becomes a 0:0 character device `<name>`, a
//! `.wh..wh..opq` entry sets `trusted.overlay.opaque=y` on its directory). Files keep the ids
//! the layer gives them: the store's root is mode 0700 and only ever reaches a sandbox through
//! an idmapped mount onto its namespace's host id range (see [`crate::rootfs`]).
//!
//! A layer directory appears only whole: it is unpacked into a temporary directory beside it
//! and renamed into place once its blob's digest is verified, so an interrupted import leaves
//! nothing usable and the next import starts over.

pub mod registry;
pub mod snapshot;
use std::path::{Path, PathBuf};

/// An OCI digest, `sha256:<64 lowercase hex>` (the only algorithm accepted).
pub type Digest = String;

/// What an image's config says about running it (OCI image spec `config.md`, `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` entries, in the image's order.
    #[serde(default)]
    pub env: Vec<String>,
    /// The default working directory (absolute); `None` when the image sets none.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The default user: a name, `uid`, `uid:gid` or `name:group`; `None` is root.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// An image in a [`LayerStore`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredImage {
    /// The digest of its manifest: the image's identity.
    pub digest: Digest,
    pub config: ImageConfig,
    /// Its layers' blob digests, bottom first; each is a directory of the store.
    pub layers: Vec<Digest>,
    /// The layers' unpacked size in bytes.
    pub size_bytes: u64,
}

/// Limits and permissions of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Keep setuid and setgid bits (public images the platform admin publishes); otherwise an
    /// entry that has one is refused.
    pub allow_setuid: bool,
    /// The most bytes the image may take unpacked (all its new layers together).
    pub max_bytes: u64,
    /// The most entries it may have (all its layers together).
    pub max_entries: u64,
}

/// Where an import reads the image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// A tar of an OCI image layout or a `docker save` archive (plain, gzip or zstd).
    Archive(PathBuf),
    /// An OCI image layout directory (what a registry pull writes).
    LayoutDir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The input is not a valid image: the message names what and where (a field of the
    /// manifest, a layer's entry). An API answers `invalid_request`.
    #[error("{0}")]
    Invalid(String),
    /// A blob's content does not match its digest; nothing of it was kept.
    #[error("blob {expected} does not match its digest (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// The image is larger than [`UnpackOptions`] allow. An API answers `payload_too_large`.
    #[error("{0}")]
    TooLarge(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// A content-addressed store of unpacked layers under one directory (one per namespace for
/// private images, one for public images): `<root>/layers/<hex>/` per layer.
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// Opens (creating, mode 0700) a store at `root`, removing what an interrupted import left.
    pub fn open(root: &Path) -> Result<LayerStore, ImageError> {
        let _ = root;
        todo!("image store")
    }

    /// Imports an image: reads its index (choosing the `linux/amd64` manifest of a multi-platform
    /// index), manifest and config, verifies every blob against its digest, and unpacks each
    /// layer the store does not hold yet. Blocking: call from a blocking thread.
    pub fn import(&self, source: &ImportSource, options: &UnpackOptions) -> Result<StoredImage, ImageError> {
        let _ = (source, options);
        todo!("image import")
    }

    /// The directory of an unpacked layer; `digest` as in [`StoredImage::layers`].
    pub fn layer_path(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest.trim_start_matches("sha256:"))
    }

    /// Whether the store holds layer `digest` whole.
    pub fn has_layer(&self, digest: &str) -> bool {
        self.layer_path(digest).is_dir()
    }

    /// The digests of every layer the store holds.
    pub fn layers(&self) -> Result<Vec<Digest>, ImageError> {
        todo!("image store")
    }

    /// Removes the layers not in `keep` (the layers of every image still recorded); returns
    /// how many went.
    pub fn collect(&self, keep: &std::collections::HashSet<Digest>) -> Result<usize, ImageError> {
        let _ = keep;
        todo!("image store")
    }
}
