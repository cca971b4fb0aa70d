//! OCI images on the host: import (an OCI image layout or a `docker save` archive, see the OCI
//! image spec's `image-layout.md` and `manifest.md`), verification of every blob by digest, and
//! a content-addressed store of unpacked layers ([`LayerStore`]).
//!
//! A layer is unpacked once, under the archive rules of [`crate::archive`] (no path escapes, no
//! devices, no setuid or setgid files unless [`UnpackOptions::allow_setuid`]; a setgid directory,
//! which grants nothing, is kept), with the OCI whiteouts
//! turned into overlayfs's (a `.wh.<name>` entry becomes a 0:0 character device `<name>`, a
//! `.wh..wh..opq` entry sets `trusted.overlay.opaque=y` on its directory). Files keep the ids
//! the layer gives them: the store's root is mode 0700 and only ever reaches a sandbox through
//! an idmapped mount onto its namespace's host id range (see [`crate::rootfs`]).
//!
//! A layer directory appears only whole: it is unpacked into a temporary directory beside it
//! and renamed into place once its uncompressed content matched the config's `diff_id` (its
//! blob's digest was verified before it was read), so an interrupted import leaves nothing
//! usable and the next import starts over. The image's new layers appear together, after all
//! of them are unpacked.
//!
//! Files: `layout.rs` reads and verifies the index, manifest and config; `layer.rs` unpacks one
//! layer.

use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::archive::{self, ArchiveError};
use crate::confined::{self, Owner, Root};

mod layer;
mod layout;
pub mod registry;
pub mod snapshot;
#[cfg(test)]
mod tests;

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
///
/// Imports stage their work in `.tmp-<random>` directories (an archive's content in `<root>`,
/// layers being unpacked in `<root>/layers`), which [`LayerStore::open`] removes. Imports may run
/// at once, of the same layers too: the first one whole wins, the others drop their copy.
/// [`LayerStore::collect`] must not run while an import whose image is not recorded yet does.
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
}

/// The prefix of a staging directory's name.
const TEMP_PREFIX: &str = ".tmp-";

/// A staging directory, removed (with what it holds) when dropped unless kept. It is locked
/// (`flock(2)`) while it lives, so that [`LayerStore::open`] in another process that shares the
/// store (test servers share the public one) removes only what no one is using.
struct TempTree {
    path: PathBuf,
    armed: bool,
    /// The directory, locked; closing it unlocks.
    _lock: std::fs::File,
}

/// Opens the directory at `path` and takes its lock, or `None` when someone holds it.
fn lock_dir(path: &Path, wait: bool) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        // SAFETY: flock on a valid fd with plain integers.
        if unsafe { libc::flock(dir.as_raw_fd(), op) } == 0 {
            return Ok(Some(dir));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(None),
            _ => return Err(e),
        }
    }
}

impl TempTree {
    /// Makes a fresh `.tmp-<random>` directory (mode 0700) in `parent`, locked.
    fn new(parent: &Path) -> Result<TempTree, ImageError> {
        for _ in 0..16 {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes)
                .map_err(|e| io_error("make a temporary name", io::Error::other(e.to_string())))?;
            let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let path = parent.join(format!("{TEMP_PREFIX}{name}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(format!("create {}", path.display()), e)),
            }
            // A store opened meanwhile may have taken it for a leftover: then it is gone, or
            // another directory is at its name.
            let lock = match lock_dir(&path, true) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(format!("lock {}", path.display()), e)),
            };
            let held = lock.metadata().map_err(|e| io_error(format!("stat {}", path.display()), e))?;
            match std::fs::symlink_metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(TempTree { path, armed: true, _lock: lock })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(format!("stat {}", path.display()), e)),
            }
        }
        Err(io_error("make a temporary directory", io::ErrorKind::AlreadyExists.into()))
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = confined::remove_tree(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an image staging directory");
            }
        }
    }
}

fn io_error(what: impl Into<String>, source: io::Error) -> ImageError {
    ImageError::Io { what: what.into(), source }
}

/// Whether `name` is a layer directory's name: 64 lowercase hex digits.
fn is_layer_name(name: &[u8]) -> bool {
    name.len() == 64 && name.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The bytes of the regular files under `dir` (each inode once), never following a symlink.
fn tree_size(dir: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    let mut inodes = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error(format!("read {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(format!("read {}", dir.display()), e))?;
            let meta = entry.metadata().map_err(|e| io_error(format!("stat {}", entry.path().display()), e))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() && (meta.nlink() == 1 || inodes.insert((meta.dev(), meta.ino()))) {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// An archive's error as an image's.
fn archive_error(e: ArchiveError) -> ImageError {
    match e {
        ArchiveError::TooLarge { .. } => ImageError::TooLarge(format!("image archive: {e}")),
        ArchiveError::Hostile { .. } | ArchiveError::Corrupt(_) => ImageError::Invalid(format!("image archive: {e}")),
        ArchiveError::NoSpace => io_error("unpack the image archive", io::Error::from_raw_os_error(libc::ENOSPC)),
        ArchiveError::Write { entry, source } => {
            io_error(format!("unpack the image archive: entry {entry:?}"), source.into())
        }
    }
}

impl LayerStore {
    /// Opens (creating, mode 0700) a store at `root`, removing what an interrupted import left.
    pub fn open(root: &Path) -> Result<LayerStore, ImageError> {
        let layers = root.join("layers");
        for dir in [root, &layers] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error(format!("create {}", dir.display()), e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_error(format!("chmod {}", dir.display()), e))?;
        }
        for dir in [root, &layers] {
            let entries = std::fs::read_dir(dir).map_err(|e| io_error(format!("read {}", dir.display()), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_error(format!("read {}", dir.display()), e))?;
                if !entry.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                    continue;
                }
                let path = entry.path();
                // One that an import (of another process sharing the store) holds stays.
                let _lock = match lock_dir(&path, false) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    // Not a directory (ELOOP, ENOTDIR): only clutter, removed below.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    Err(e) => return Err(io_error(format!("lock {}", path.display()), e)),
                };
                confined::remove_tree(&path).map_err(|e| io_error(format!("remove {}", path.display()), e.into()))?;
            }
        }
        Ok(LayerStore { root: root.to_path_buf() })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports an image: reads its index (choosing the `linux/amd64` manifest of a multi-platform
    /// index), manifest and config, verifies every blob against its digest, and unpacks each
    /// layer the store does not hold yet. Blocking: call from a blocking thread.
    ///
    /// An archive is first unpacked whole into a staging directory of the store (at most
    /// `options.max_bytes` and `options.max_entries` of it, under the archive rules). Every blob
    /// is verified before any layer is unpacked, and the new layers appear only once all of
    /// them are unpacked and their uncompressed content matched the config's `rootfs.diff_ids`:
    /// on any error nothing new is in the store.
    ///
    /// Errors: [`ImageError::Invalid`] (naming the document and field, or the layer and entry),
    /// [`ImageError::DigestMismatch`], [`ImageError::TooLarge`] past `options`, and
    /// [`ImageError::Io`].
    pub fn import(&self, source: &ImportSource, options: &UnpackOptions) -> Result<StoredImage, ImageError> {
        let (_staging, dir) = match source {
            ImportSource::Archive(path) => {
                let staging = TempTree::new(&self.root)?;
                let file = std::fs::File::open(path).map_err(|e| io_error(format!("open {}", path.display()), e))?;
                let root = Root::open(&staging.path)
                    .map_err(|e| io_error(format!("open {}", staging.path.display()), e.into()))?;
                // SAFETY: geteuid and getegid cannot fail and touch no memory.
                let owner = unsafe { Owner { uid: libc::geteuid(), gid: libc::getegid() } };
                let limits = archive::Limits { max_entries: options.max_entries, max_bytes: options.max_bytes };
                archive::extract(io::BufReader::new(file), &root, owner, limits).map_err(archive_error)?;
                let dir = staging.path.clone();
                (Some(staging), dir)
            }
            ImportSource::LayoutDir(dir) => (None, dir.clone()),
        };
        let root = Root::open(&dir).map_err(|e| io_error(format!("open {}", dir.display()), e.into()))?;
        // An uploaded archive is verified whole; a layout directory (the default image at each
        // start, a pull whose blobs were verified as they arrived) skips the blobs of layers the
        // store holds already, which are not used.
        let layout_dir = matches!(source, ImportSource::LayoutDir(_));
        let image = layout::read(&root, &|digest| layout_dir && self.has_layer(digest))?;

        let layers_dir = self.root.join("layers");
        let mut budget = layer::Budget::new(options);
        let mut unpacked: Vec<(TempTree, &layout::Layer)> = Vec::new();
        let mut seen = HashSet::new();
        for layer in &image.layers {
            if !seen.insert(&layer.digest) || self.has_layer(&layer.digest) {
                continue;
            }
            let temp = TempTree::new(&layers_dir)?;
            std::fs::set_permissions(&temp.path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io_error(format!("chmod {}", temp.path.display()), e))?;
            let blob = confined::open_read(&root, &layer.path)
                .map_err(|e| io_error(format!("read {}", layer.path.display()), e))?
                .0;
            layer::unpack(blob, &temp.path, &layer.digest, &layer.diff_id, options, &mut budget)?;
            unpacked.push((temp, layer));
        }
        for (mut temp, layer) in unpacked {
            let hex = layout::hex_of(&layer.digest, "layer")?;
            match rename_noreplace(&temp.path, &layers_dir.join(hex)) {
                Ok(()) => temp.armed = false,
                // Another import put the same layer in place first: ours goes.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {}
                Err(e) => return Err(io_error(format!("put layer {} in place", layer.digest), e)),
            }
        }
        std::fs::File::open(&layers_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(format!("sync {}", layers_dir.display()), e))?;
        let mut size_bytes = 0u64;
        for digest in image.layers.iter().map(|l| &l.digest).collect::<HashSet<_>>() {
            size_bytes = size_bytes.saturating_add(tree_size(&self.layer_path(digest))?);
        }
        Ok(StoredImage {
            digest: image.digest,
            config: image.config,
            layers: image.layers.into_iter().map(|l| l.digest).collect(),
            size_bytes,
        })
    }

    /// Adds one layer from `tar`, an uncompressed layer tar whose sha256 is `digest` (a
    /// snapshot's, see [`snapshot::write_layer`]): verified and unpacked under the same rules
    /// as an imported layer, renamed into place whole; nothing to do when the store holds it.
    /// Blocking. Errors as [`LayerStore::import`]'s.
    pub fn add_layer(&self, tar: &Path, digest: &str, options: &UnpackOptions) -> Result<(), ImageError> {
        let hex = layout::hex_of(digest, "layer")?;
        if self.has_layer(digest) {
            return Ok(());
        }
        let layers_dir = self.root.join("layers");
        let mut temp = TempTree::new(&layers_dir)?;
        std::fs::set_permissions(&temp.path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error(format!("chmod {}", temp.path.display()), e))?;
        let file = std::fs::File::open(tar).map_err(|e| io_error(format!("open {}", tar.display()), e))?;
        let mut budget = layer::Budget::new(options);
        layer::unpack(io::BufReader::new(file), &temp.path, digest, digest, options, &mut budget)?;
        match rename_noreplace(&temp.path, &layers_dir.join(hex)) {
            Ok(()) => temp.armed = false,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {}
            Err(e) => return Err(io_error(format!("put layer {digest} in place"), e)),
        }
        std::fs::File::open(&layers_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(format!("sync {}", layers_dir.display()), e))
    }

    /// The directory of an unpacked layer; `digest` as in [`StoredImage::layers`].
    pub fn layer_path(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest.trim_start_matches("sha256:"))
    }

    /// Whether the store holds layer `digest` whole.
    pub fn has_layer(&self, digest: &str) -> bool {
        self.layer_path(digest).is_dir()
    }

    /// The digests of every layer the store holds, sorted.
    pub fn layers(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.root.join("layers");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error(format!("read {}", dir.display()), e))? {
            let entry = entry.map_err(|e| io_error(format!("read {}", dir.display()), e))?;
            let name = entry.file_name();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && is_layer_name(name.as_bytes()) {
                out.push(format!("sha256:{}", name.to_string_lossy()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes the layers not in `keep` (the layers of every image still recorded); returns
    /// how many went.
    pub fn collect(&self, keep: &std::collections::HashSet<Digest>) -> Result<usize, ImageError> {
        let mut removed = 0;
        for digest in self.layers()? {
            if keep.contains(&digest) {
                continue;
            }
            let path = self.layer_path(&digest);
            confined::remove_tree(&path).map_err(|e| io_error(format!("remove {}", path.display()), e.into()))?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// `rename(2)` of a directory that fails with `EEXIST` when `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths that the kernel only reads.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
