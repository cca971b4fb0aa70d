//! Images on the server side: importing an archive into the right layer store and recording
//! it, finding an image as a namespace sees it (its own first, then a public one), deleting
//! one no live sandbox uses and collecting the layers no recorded image names, the default
//! image imported at start, and the root of a sandbox started from an image.
//!
//! A namespace's private images are unpacked into its own layer store
//! (`<data-dir>/images/ns/<namespace>/`), public ones into the public store: a namespace never
//! learns whether another holds a layer, because no lookup ever crosses stores.

use bulkhead_runtime::image::{ImageConfig, ImageError, ImportSource, StoredImage, UnpackOptions};
use bulkhead_runtime::{ImageRoot, RootSpec};
use bulkhead_store::{ImageDeletion, ImageRow, SandboxImage, StoreError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

/// The name of the platform's default image, the one a create without `"image"` starts from.
pub const DEFAULT_IMAGE: &str = "default";

/// What the import of an archive failed on, as the API answers it: a malformed image or a blob
/// that does not match its digest is the request's fault, a too large one a 413; the host's
/// own failures are internal (logged, not shown).
pub fn image_error(e: ImageError) -> ServiceError {
    match e {
        ImageError::Invalid(m) => ServiceError::Invalid(format!("image: {m}")),
        e @ ImageError::DigestMismatch { .. } => ServiceError::Invalid(format!("image: {e}")),
        ImageError::TooLarge(m) => ServiceError::TooLarge(format!("image: {m}")),
        e @ ImageError::Io { .. } => ServiceError::Internal(format!("image store: {e}")),
    }
}

/// The image's run configuration as it was recorded (the runtime's [`ImageConfig`], as JSON).
pub fn config_of(row: &ImageRow) -> ServiceResult<ImageConfig> {
    serde_json::from_str(&row.config)
        .map_err(|e| ServiceError::Internal(format!("image {} has an unreadable config: {e}", row.id)))
}

/// Image `name_or_id` as namespace `ns` sees it (with `None`, a public one): its own first,
/// then a public one. Another namespace's image is never found.
pub async fn find(state: &AppState, ns: Option<&str>, name_or_id: &str) -> ServiceResult<Option<ImageRow>> {
    Ok(state.store.find_image(ns, name_or_id).await?)
}

/// A page of the images `ns` sees (its own and the public ones; `None`: the public ones), by id.
pub async fn list(state: &AppState, ns: Option<&str>, after: Option<&str>, limit: u32) -> ServiceResult<Vec<ImageRow>> {
    Ok(state.store.list_images(ns, after, limit).await?)
}

/// What an import is: where the image goes and what it may hold.
#[derive(Debug, Clone)]
pub struct Import {
    /// The namespace whose private image it becomes; `None`: a public image.
    pub namespace: Option<String>,
    /// A checked name.
    pub name: String,
    /// `archive`, or a registry reference.
    pub source: String,
}

/// Whether `ns` (or the public images, with `None`) already has an image named `name` of its
/// own: a namespace's image may share a public image's name (it shadows it for that namespace).
pub async fn exists(state: &AppState, ns: Option<&str>, name: &str) -> ServiceResult<bool> {
    let found = state.store.find_image(ns, name).await?;
    Ok(found.is_some_and(|row| row.name == name && row.namespace.as_deref() == ns))
}

/// Imports the image at `source` (an archive spooled to disk, or the layout directory a pull
/// wrote) as `import` says: unpacked into the right layer store on a blocking thread (setuid
/// bits kept only for public images), every blob verified, then recorded. A name taken
/// meanwhile is a conflict, and the layers the import brought that nothing records are
/// collected again.
/// [`import`] of an archive spooled at `path`.
pub async fn import_archive(state: &AppState, import: &Import, path: &Path) -> ServiceResult<ImageRow> {
    self::import(state, import, ImportSource::Archive(path.to_owned())).await
}

pub async fn import(state: &AppState, import: &Import, source: ImportSource) -> ServiceResult<ImageRow> {
    let ns = import.namespace.as_deref();
    let store = state.layers.store(ns).await.map_err(image_error)?;
    let options = UnpackOptions {
        allow_setuid: ns.is_none(),
        max_bytes: state.config.images.max_image_bytes,
        max_entries: state.config.images.max_image_entries,
    };
    let stored = {
        let lock = state.layers.lock(ns);
        let _shared = lock.read().await;
        let store = store.clone();
        let imported = tokio::task::spawn_blocking(move || store.import(&source, &options))
            .await
            .map_err(|e| ServiceError::Internal(format!("the import of an image ended abnormally: {e}")))?;
        let stored = imported.map_err(image_error)?;
        // Recorded before the lock goes, so no collection runs between the unpack and the row.
        record(state, import, &stored).await
    };
    // Layers the failed import unpacked that nothing records go again; not when the namespace
    // itself went meanwhile (its store is gone with it).
    if matches!(&stored, Err(e) if !matches!(e, ServiceError::NotFound(_))) {
        collect_quietly(state, ns).await;
    }
    stored
}

/// Records image `stored` as `import` says (the caller holds the store's lock, shared, since
/// it unpacked the layers). A name taken meanwhile is a conflict.
pub async fn record(state: &AppState, import: &Import, stored: &StoredImage) -> ServiceResult<ImageRow> {
    let row = row_of(import, stored)?;
    match state.store.insert_image(&row).await {
        Ok(()) => Ok(row),
        Err(StoreError::Conflict(_)) => Err(ServiceError::Conflict(format!("image {:?} already exists", import.name))),
        Err(StoreError::NotFound(_)) => Err(ServiceError::NotFound(format!(
            "namespace {:?} not found",
            import.namespace.as_deref().unwrap_or_default()
        ))),
        Err(e) => Err(e.into()),
    }
}

fn row_of(import: &Import, stored: &StoredImage) -> ServiceResult<ImageRow> {
    let config = serde_json::to_string(&stored.config)
        .map_err(|e| ServiceError::Internal(format!("cannot record an image's config: {e}")))?;
    Ok(ImageRow {
        id: bulkhead_core::ids::new_id(bulkhead_core::ids::prefix::IMAGE),
        namespace: import.namespace.clone(),
        name: import.name.clone(),
        digest: stored.digest.clone(),
        config,
        layers: stored.layers.clone(),
        size_bytes: stored.size_bytes,
        source: import.source.clone(),
        created_at_ms: now_ms(),
        status: "ready".to_owned(),
    })
}

/// Deletes `row` unless a sandbox that has not ended uses it (a conflict naming the sandbox),
/// then collects the layers of its store that no recorded image names.
pub async fn delete(state: &AppState, row: &ImageRow) -> ServiceResult<()> {
    // Its warm pools go first (their sandboxes are the image's users, never the namespace's),
    // unless a sandbox of a namespace uses the image: then nothing changes.
    let user = state
        .store
        .active_sandboxes()
        .await?
        .into_iter()
        .find(|s| !s.pooled && s.image.as_ref().is_some_and(|i| i.id == row.id));
    if let Some(sandbox) = user {
        return Err(ServiceError::Conflict(format!(
            "image {:?} is used by sandbox {}; delete the sandbox first",
            row.name, sandbox.id
        )));
    }
    super::pools::drain_image(state, &row.id).await?;
    match state.store.delete_image(&row.id).await? {
        ImageDeletion::Deleted => {}
        ImageDeletion::NotFound => return Err(ServiceError::NotFound(format!("image {:?} not found", row.name))),
        ImageDeletion::InUse(sandbox) => {
            return Err(ServiceError::Conflict(format!(
                "image {:?} is used by sandbox {sandbox}; delete the sandbox first",
                row.name
            )))
        }
    }
    collect_quietly(state, row.namespace.as_deref()).await;
    Ok(())
}

/// Removes the layers of `ns`'s store (or the public one) that no recorded image names; how
/// many went. Holds the store's lock alone, so no import is between its unpack and its row.
///
/// A public store the operator named (`--public-layers`) may be shared by several servers of
/// the host, whose images this one cannot see: it is never collected here.
pub async fn collect(state: &AppState, ns: Option<&str>) -> ServiceResult<usize> {
    if ns.is_none() && state.config.images.public_layers.is_some() {
        return Ok(0);
    }
    let store = state.layers.store(ns).await.map_err(image_error)?;
    let lock = state.layers.lock(ns);
    let _alone = lock.write().await;
    let mut keep: HashSet<String> = state.store.image_layers(ns).await?.into_iter().collect();
    if ns.is_none() {
        // A namespace's snapshot of a public image stands on the public image's layers.
        let mut after: Option<String> = None;
        loop {
            let page = state.store.list_namespaces(after.as_deref(), 500, None).await?;
            for namespace in &page {
                keep.extend(state.store.image_layers(Some(&namespace.name)).await?);
            }
            match page.last() {
                Some(last) if page.len() == 500 => after = Some(last.name.clone()),
                _ => break,
            }
        }
    }
    tokio::task::spawn_blocking(move || store.collect(&keep))
        .await
        .map_err(|e| ServiceError::Internal(format!("a layer collection ended abnormally: {e}")))?
        .map_err(image_error)
}

/// [`collect`], its failure logged: what it leaves is collected by the next one.
pub(crate) async fn collect_quietly(state: &AppState, ns: Option<&str>) {
    match collect(state, ns).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(namespace = ns.unwrap_or("(public)"), layers = n, "collected unused image layers"),
        Err(e) => tracing::warn!(namespace = ns.unwrap_or("(public)"), error = %e, "collecting image layers failed"),
    }
}

/// Removes namespace `ns`'s layer store (its namespace is being deleted; its image rows go
/// with the namespace's).
pub async fn remove_namespace(state: &AppState, ns: &str) -> ServiceResult<()> {
    let lock = state.layers.lock(Some(ns));
    let _alone = lock.write().await;
    state.layers.forget(ns);
    let root = state.layers.root(Some(ns));
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("removing a layer store ended abnormally: {e}")))?;
    removed.map_err(|e| ServiceError::Internal(format!("removing the layer store of namespace {ns}: {e}")))
}

/// A sandbox's view of image `row`: what it records and what its commands default to.
pub fn sandbox_image(row: &ImageRow, config: &ImageConfig) -> SandboxImage {
    SandboxImage {
        id: row.id.clone(),
        name: row.name.clone(),
        digest: row.digest.clone(),
        user: config.user.clone().filter(|u| !u.is_empty()),
        working_dir: config.working_dir.clone().filter(|d| d.starts_with('/')),
    }
}

/// The root of a sandbox of image `row` with a writable layer of `writable_bytes`: the image's
/// layers in the store they were unpacked into, bottom first. A private image's layer that its
/// namespace's store does not hold is a public image's (a snapshot of a public image stands on
/// it), from the public store.
pub async fn root(state: &AppState, row: &ImageRow, writable_bytes: u64) -> ServiceResult<RootSpec> {
    let store = state.layers.store(row.namespace.as_deref()).await.map_err(image_error)?;
    let public = match row.namespace {
        Some(_) => Some(state.layers.store(None).await.map_err(image_error)?),
        None => None,
    };
    let mut layers: Vec<PathBuf> = Vec::with_capacity(row.layers.len());
    for d in &row.layers {
        let path = match &public {
            Some(public) if !store.has_layer(d) && public.has_layer(d) => public.layer_path(d),
            _ if store.has_layer(d) => store.layer_path(d),
            // Layer stores are a node's (its data dir): an image pulled, imported or built
            // through another replica of the store has its layers there.
            _ => {
                return Err(ServiceError::Conflict(format!(
                    "image {:?} has layers this server does not hold: it was pulled, imported or built through \
                     another replica of the store; create its sandboxes through that replica",
                    row.name
                )))
            }
        };
        layers.push(path);
    }
    Ok(RootSpec::Image(ImageRoot { layers, writable_bytes }))
}

/// The image's `Env` (`KEY=value` entries; malformed ones, with no `=`, an empty key or a NUL,
/// skipped; a later one of a key replacing an earlier one) under `env`: a variable `env` sets
/// wins, the image's others come first.
pub fn merge_env(image_env: &[String], env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(image_env.len() + env.len());
    for entry in image_env {
        let Some((k, v)) = entry.split_once('=') else { continue };
        if k.is_empty() || entry.contains('\0') || env.iter().any(|(e, _)| e == k) {
            continue;
        }
        match merged.iter_mut().find(|(m, _)| m == k) {
            Some(slot) => slot.1 = v.to_owned(),
            None => merged.push((k.to_owned(), v.to_owned())),
        }
    }
    merged.extend(env);
    merged
}

/// What a create without `"image"` answers when the server has no default image.
pub fn no_default_image(state: &AppState) -> ServiceError {
    let why = state.layers.default_missing.read().unwrap_or_else(|e| e.into_inner()).clone();
    ServiceError::Conflict(format!(
        "there is no default image{}: name one with \"image\", or have the platform admin add one \
         (bulkhead serve --default-image PATH, or bulkhead image import {DEFAULT_IMAGE} ./image.tar --public)",
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    ))
}

/// Where the last start's import of the default image is remembered: the file it read (path,
/// size, modification time) and the digest it found, so a start on an unchanged file does not
/// read the whole archive again.
const DEFAULT_MARK: &str = "default.source";

/// At start: imports `--default-image` as the public image `default` when the store has none,
/// or when the file's image differs from the recorded one (which is replaced unless a sandbox
/// still uses it). A missing or broken file is a warning, and creates without `"image"` are
/// refused saying why ([`no_default_image`]).
pub async fn ensure_default(state: &AppState) {
    let missing = |why: String| {
        tracing::warn!("no default image: {why}; sandbox creates must name an image");
        *state.layers.default_missing.write().unwrap_or_else(|e| e.into_inner()) = Some(why);
    };
    let current = match state.store.find_image(None, DEFAULT_IMAGE).await {
        Ok(row) => row.filter(|r| r.name == DEFAULT_IMAGE),
        Err(e) => return missing(format!("cannot read the store: {e}")),
    };
    let Some(path) = state.config.images.default_image.clone() else {
        if current.is_none() {
            missing("the server was started without --default-image".into());
        }
        return;
    };
    // A layout directory is known by its index (which names the manifest by digest).
    let identity = if path.is_dir() { path.join("index.json") } else { path.clone() };
    let meta = match std::fs::metadata(&identity) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return missing_or_keep(
                state,
                current,
                format!("--default-image {} is not an image archive or layout directory", path.display()),
            )
        }
        Err(e) => return missing_or_keep(state, current, format!("--default-image {}: {e}", path.display())),
    };
    let mark_path = state.config.data_dir.join("images").join(DEFAULT_MARK);
    let mark = format!(
        "{} {} {}",
        path.display(),
        meta.len(),
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos())
    );
    if let Some(row) = &current {
        let remembered = std::fs::read_to_string(&mark_path).unwrap_or_default();
        if remembered.trim_end() == format!("{mark} {}", row.digest) {
            return;
        }
    }
    // The operator's file is read where it is, never written.
    match import_default(state, current.as_ref(), &path).await {
        Ok(row) => {
            if let Some(dir) = mark_path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&mark_path, format!("{mark} {}\n", row.digest));
            tracing::info!(image = %row.id, digest = %row.digest, "the default image is ready");
        }
        Err(e) => missing_or_keep(state, current, format!("importing --default-image {}: {e}", path.display())),
    }
}

/// A failed default import: the image recorded before stays the default; with none, creates
/// without `"image"` are refused.
fn missing_or_keep(state: &AppState, current: Option<ImageRow>, why: String) {
    match current {
        Some(row) => tracing::warn!("{why}; keeping the default image {} ({})", row.id, row.digest),
        None => {
            tracing::warn!("no default image: {why}; sandbox creates must name an image");
            *state.layers.default_missing.write().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
    }
}

/// Imports the default image from `archive`, replacing `current` when its digest differs.
async fn import_default(state: &AppState, current: Option<&ImageRow>, archive: &Path) -> ServiceResult<ImageRow> {
    let store = state.layers.store(None).await.map_err(image_error)?;
    let options = UnpackOptions {
        allow_setuid: true,
        max_bytes: state.config.images.max_image_bytes,
        max_entries: state.config.images.max_image_entries,
    };
    let import = Import { namespace: None, name: DEFAULT_IMAGE.to_owned(), source: "default-image".to_owned() };
    let lock = state.layers.lock(None);
    let _shared = lock.read().await;
    let source = if archive.is_dir() {
        ImportSource::LayoutDir(archive.to_owned())
    } else {
        ImportSource::Archive(archive.to_owned())
    };
    let stored = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.import(&source, &options)
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("the import of the default image ended abnormally: {e}")))?
    .map_err(image_error)?;
    if let Some(row) = current {
        if row.digest == stored.digest {
            return Ok(row.clone());
        }
        match state.store.delete_image(&row.id).await? {
            ImageDeletion::Deleted | ImageDeletion::NotFound => {}
            ImageDeletion::InUse(sandbox) => {
                return Err(ServiceError::Conflict(format!(
                    "the recorded default image is used by sandbox {sandbox}; restart once it has ended"
                )))
            }
        }
    }
    let row = row_of(&import, &stored)?;
    state.store.insert_image(&row).await?;
    Ok(row)
}

/// A spooled upload: a file under the spool dir, removed when dropped.
#[derive(Debug)]
pub struct Spooled(pub PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A new, empty spool file (mode 0600) under the server's spool dir.
pub fn spool_file(state: &AppState) -> std::io::Result<(Spooled, std::fs::File)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = &state.layers.spool_dir;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let path = dir.join(bulkhead_core::ids::new_id("upload_"));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    Ok((Spooled(path), file))
}

/// Removes the upload spool files and pull directories an interrupted import or pull left
/// behind (at start).
pub fn sweep_spool(state: &AppState) {
    if let Ok(entries) = std::fs::read_dir(&state.layers.spool_dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(entry.path());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requests_env_wins_over_the_images() {
        let image = vec![
            "PATH=/usr/bin".to_owned(),
            "LANG=C".to_owned(),
            "junk".to_owned(),
            "=x".to_owned(),
            "NUL=a\0b".to_owned(),
            "LANG=C.UTF-8".to_owned(),
        ];
        let env = vec![("PATH".to_owned(), "/opt/bin".to_owned()), ("X".to_owned(), "1".to_owned())];
        assert_eq!(
            merge_env(&image, env),
            vec![
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("PATH".to_owned(), "/opt/bin".to_owned()),
                ("X".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn import_errors_answer_as_the_api_documents() {
        assert!(matches!(image_error(ImageError::Invalid("x".into())), ServiceError::Invalid(_)));
        let mismatch = ImageError::DigestMismatch { expected: "sha256:a".into(), actual: "sha256:b".into() };
        assert!(matches!(image_error(mismatch), ServiceError::Invalid(_)));
        assert!(matches!(image_error(ImageError::TooLarge("x".into())), ServiceError::TooLarge(_)));
        let io = ImageError::Io { what: "x".into(), source: std::io::Error::other("y") };
        assert!(matches!(image_error(io), ServiceError::Internal(_)));
    }
}
