//! Filesystems: admission against the namespace's `disk_bytes`, creation, growth and deletion on
//! the host, and their contents through the files and archive APIs. Every operation that
//! changes a filesystem holds its lock (the one sandboxes use), so a create, a resize, a delete
//! and an upload never act on the same filesystem at once.

use std::io::Read;
use std::path::PathBuf;

use bulkhead_core::ids::{self, prefix};
use bulkhead_runtime::archive::{self, Limits};
use bulkhead_runtime::confined::Entry;
use bulkhead_runtime::files::{Download, FileError, Preconditions, StagedArchive, WriteOptions, Written};
use bulkhead_runtime::storage;
use bulkhead_store::{FilesystemRow, NamespaceRow, SandboxRow, SandboxStatus, StoreError};

use super::sandboxes::{self, id_range};
use super::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

/// Entries an uploaded archive may hold.
const MAX_ARCHIVE_ENTRIES: u64 = 100_000;
/// Bytes of tar headers and padding an upload may carry beyond the filesystem's size.
pub const MAX_ARCHIVE_OVERHEAD: u64 = 128 << 20;

/// The answer for a filesystem that is not there (or not for this caller).
pub fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("filesystem {id:?} not found"))
}

/// A requested size, checked and rounded up to whole blocks.
pub fn check_size(size: u64) -> ServiceResult<u64> {
    if size < storage::MIN_SIZE {
        return Err(ServiceError::Invalid(format!("size_bytes: at least {} (16 MiB)", storage::MIN_SIZE)));
    }
    // Bounded by the namespace quota later; this only keeps the arithmetic safe.
    if size > bulkhead_core::quota::DISK_BYTES.max {
        return Err(ServiceError::Invalid(format!("size_bytes: at most {}", bulkhead_core::quota::DISK_BYTES.max)));
    }
    Ok(size.div_ceil(storage::BLOCK) * storage::BLOCK)
}

/// A new filesystem's row, not yet admitted: a fresh id, now as its times.
pub fn new_row(namespace: &str, name: String, project: Option<String>, size_bytes: u64) -> FilesystemRow {
    let now = now_ms();
    FilesystemRow {
        id: ids::new_id(prefix::FILESYSTEM),
        namespace: namespace.to_owned(),
        name,
        project_id: project,
        size_bytes,
        created_at_ms: now,
        updated_at_ms: now,
        node: String::new(),
    }
}

/// Admits `row` against the namespace's `disk_bytes` and makes it on the host; the row is
/// removed again when the host fails.
pub async fn create(state: &AppState, ns: &NamespaceRow, row: &FilesystemRow) -> ServiceResult<()> {
    // Its image is made in this node's data dir.
    let row = &FilesystemRow { node: state.node.id.clone(), ..row.clone() };
    match state.store.admit_filesystem(row, ns.quotas.disk_bytes).await {
        Err(StoreError::Quota(b)) => return Err(ServiceError::quota(&b)),
        other => other?,
    }
    let _guard = state.sandbox_locks.lock(&row.id).await;
    if let Err(e) = state.storage.create(&row.id, row.size_bytes, id_range(ns)?).await {
        state.store.delete_filesystem(&ns.name, &row.id).await?;
        // A full host disk is named as such (507); anything else is the server's.
        if let bulkhead_runtime::RuntimeError::Io { source, .. } = &e {
            if source.kind() == std::io::ErrorKind::StorageFull {
                return Err(e.into());
            }
        }
        return Err(ServiceError::Internal(format!("filesystem {} could not be created: {e}", row.id)));
    }
    Ok(())
}

/// A page of the namespace's filesystems, by id.
pub async fn list(
    state: &AppState,
    namespace: &str,
    after: Option<&str>,
    limit: u32,
) -> ServiceResult<Vec<FilesystemRow>> {
    Ok(state.store.list_filesystems(namespace, after, limit).await?)
}

/// Bytes written on the host to the filesystems `ids` (0 for one the host cannot tell).
pub fn disk_used(state: &AppState, ids: &[String]) -> u64 {
    ids.iter().map(|id| state.storage.usage(id).map(|x| x.used_bytes).unwrap_or(0)).sum()
}

/// Bytes in use on the host (0 when the host cannot tell) and the sandboxes mounting it.
pub async fn usage(state: &AppState, row: &FilesystemRow) -> ServiceResult<(u64, Vec<String>)> {
    let used_bytes = state.storage.usage(&row.id).map(|u| u.used_bytes).unwrap_or(0);
    let mounted_by = state.store.sandboxes_using(&row.id).await?.into_iter().map(|s| s.id).collect();
    Ok((used_bytes, mounted_by))
}

/// Grows `row` to `size` (already checked): refused below its size, nothing done at it. The
/// store follows the host: when the host cannot grow it, the row keeps its old size.
pub async fn resize(
    state: &AppState,
    ns: &NamespaceRow,
    row: &FilesystemRow,
    size: u64,
) -> ServiceResult<FilesystemRow> {
    let _guard = state.sandbox_locks.lock(&row.id).await;
    if size < row.size_bytes {
        return Err(ServiceError::Invalid(format!(
            "size_bytes: filesystems only grow ({} is below the current {}); create a smaller one and copy",
            size, row.size_bytes
        )));
    }
    if size == row.size_bytes {
        return Ok(row.clone());
    }
    let (name, id) = (&ns.name, &row.id);
    let updated = match state.store.resize_filesystem(name, id, size, ns.quotas.disk_bytes, now_ms()).await {
        Err(StoreError::Quota(b)) => return Err(ServiceError::quota(&b)),
        other => other?.ok_or_else(|| not_found(id))?,
    };
    let in_use = !state.store.sandboxes_using(id).await?.is_empty();
    if let Err(e) = state.storage.grow(id, size, in_use).await {
        state.store.resize_filesystem(name, id, row.size_bytes, u64::MAX, now_ms()).await?;
        return Err(e.into());
    }
    Ok(updated)
}

/// The sandboxes that mount `id` now.
async fn mounted_by(state: &AppState, id: &str) -> ServiceResult<Vec<SandboxRow>> {
    Ok(state.store.sandboxes_using(id).await?)
}

/// Deletes a filesystem and its data. Sandboxes that mount it are refused with a conflict, or
/// stopped first when `force`; returns whether any were.
pub async fn delete(state: &AppState, row: &FilesystemRow, force: bool) -> ServiceResult<bool> {
    let users = mounted_by(state, &row.id).await?;
    if !users.is_empty() && !force {
        let ids: Vec<&str> = users.iter().map(|s| s.id.as_str()).collect();
        return Err(ServiceError::Conflict(format!(
            "filesystem {} is mounted by {}; delete those sandboxes or pass force=true",
            row.id,
            ids.join(", ")
        )));
    }
    for s in &users {
        sandboxes::destroy(state, s, SandboxStatus::Deleted, "filesystem_deleted").await?;
    }
    let _guard = state.sandbox_locks.lock(&row.id).await;
    state.storage.delete(&row.id).await?;
    state.store.delete_filesystem(&row.namespace, &row.id).await?;
    Ok(!users.is_empty())
}

/// Makes sure the filesystem is mounted before its files are touched: a mount gone from under
/// the server is mounted again here, or the answer is a retryable `unavailable`.
async fn mounted(state: &AppState, row: &FilesystemRow) -> ServiceResult<()> {
    state.storage.ensure_mounted(&row.id).await?;
    Ok(())
}

/// Runs a blocking file operation on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, FileError> + Send + 'static) -> ServiceResult<T> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(|e| ServiceError::Internal(e.to_string()))??)
}

/// A page of the directory `rel`: at most `limit` entries whose names sort after `after`.
pub async fn list_dir(
    state: &AppState,
    row: &FilesystemRow,
    rel: PathBuf,
    after: Option<Vec<u8>>,
    limit: u32,
) -> ServiceResult<super::listing::Listing> {
    mounted(state, row).await?;
    let (storage, id) = (state.storage.clone(), row.id.clone());
    let limit = limit.clamp(1, super::listing::MAX_PAGE) as usize;
    let (entries, more): (Vec<Entry>, bool) =
        blocking(move || storage.list(&id, &rel, after.as_deref(), limit)).await?;
    Ok(super::listing::Listing { entries: entries.into_iter().map(Into::into).collect(), more })
}

/// The file `rel` for download, of any size, streamed; `None` when there is none. Files up to
/// the bound of ETags carry one. The operator's ceiling, when set, refuses a larger file.
pub async fn open(state: &AppState, row: &FilesystemRow, rel: PathBuf) -> ServiceResult<Option<Download>> {
    mounted(state, row).await?;
    let limits = &state.config.sandbox_limits;
    let (storage, id, hash_max, ceiling) =
        (state.storage.clone(), row.id.clone(), limits.etag_bytes, limits.file_bytes);
    let shown = rel.clone();
    let file = blocking(move || storage.open(&id, &rel, hash_max)).await?;
    match file {
        Some(f) if f.len > ceiling => Err(ServiceError::TooLarge(format!(
            "path: {shown:?}: the file has {} bytes; this server's files API serves at most {ceiling}",
            f.len
        ))),
        other => Ok(other),
    }
}

/// Checks `pre` against the file `rel` now, before a write's body is read.
pub async fn check(state: &AppState, row: &FilesystemRow, rel: PathBuf, pre: Preconditions) -> ServiceResult<()> {
    mounted(state, row).await?;
    let (storage, id, max) = (state.storage.clone(), row.id.clone(), state.config.sandbox_limits.etag_bytes);
    blocking(move || storage.check(&id, &rel, &pre, max)).await
}

/// The largest content a file write to `row` accepts: the filesystem's size (or the
/// operator's ceiling when lower). The kernel's `ENOSPC` usually comes first.
pub fn max_write(state: &AppState, row: &FilesystemRow) -> u64 {
    state.config.sandbox_limits.file_bytes.min(row.size_bytes)
}

/// Writes `data` to the file `rel` atomically; `pre` is checked again under the filesystem's
/// lock just before the new content replaces the old. `mode` when given (checked by the caller:
/// at most `0o1777`); otherwise an existing file keeps its mode and owner, a new one gets 0644.
pub async fn write(
    state: &AppState,
    ns: &NamespaceRow,
    row: &FilesystemRow,
    rel: PathBuf,
    mut data: Box<dyn Read + Send>,
    pre: Preconditions,
    mode: Option<u32>,
) -> ServiceResult<Written> {
    mounted(state, row).await?;
    let options = WriteOptions {
        max_bytes: max_write(state, row),
        hash_max: state.config.sandbox_limits.etag_bytes,
        mode,
        owner: id_range(ns)?,
    };
    let (storage, id) = (state.storage.clone(), row.id.clone());
    let (locks, handle) = (state.clone(), tokio::runtime::Handle::current());
    let serialize_id = id.clone();
    // Writes through the API are serialized per filesystem, from the check to the rename.
    let serialize: bulkhead_runtime::files::Serialize =
        Box::new(move || Box::new(handle.block_on(locks.sandbox_locks.lock(&serialize_id))));
    blocking(move || storage.write(&id, &rel, &mut data, options, &pre, serialize)).await
}

/// Removes the file or empty directory `rel` when `pre` holds.
pub async fn remove(state: &AppState, row: &FilesystemRow, rel: PathBuf, pre: Preconditions) -> ServiceResult<()> {
    mounted(state, row).await?;
    let _guard = state.sandbox_locks.lock(&row.id).await;
    let (storage, id, max) = (state.storage.clone(), row.id.clone(), state.config.sandbox_limits.etag_bytes);
    blocking(move || storage.remove(&id, &rel, &pre, max)).await
}

/// The whole filesystem as a tar archive, produced as it is read.
pub async fn archive(state: &AppState, row: &FilesystemRow) -> ServiceResult<Box<dyn Read + Send>> {
    mounted(state, row).await?;
    Ok(state.storage.archive(&row.id)?)
}

/// An archive upload that may go ahead: the filesystem's lock, held until it is done.
pub struct ArchiveUpload {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    owner: bulkhead_runtime::IdRange,
    id: String,
    limits: Limits,
}

impl ArchiveUpload {
    /// The most body bytes the upload may carry: the filesystem's size and tar's overhead.
    pub fn max_body(&self) -> u64 {
        self.limits.max_bytes.saturating_add(MAX_ARCHIVE_OVERHEAD)
    }
}

/// Takes the filesystem for an archive upload: refused while a sandbox that runs (or is being
/// made) mounts it, since its whole content would change under it.
pub async fn begin_archive(state: &AppState, ns: &NamespaceRow, row: &FilesystemRow) -> ServiceResult<ArchiveUpload> {
    mounted(state, row).await?;
    let guard = state.sandbox_locks.lock(&row.id).await;
    let users: Vec<String> = mounted_by(state, &row.id)
        .await?
        .into_iter()
        .filter(|s| s.status == SandboxStatus::Running || s.status == SandboxStatus::Creating)
        .map(|s| s.id)
        .collect();
    if !users.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "filesystem {} is mounted by {}: replacing its whole content under a running sandbox is refused; \
             delete the sandboxes or use the files API",
            row.id,
            users.join(", ")
        )));
    }
    let limits = Limits { max_entries: MAX_ARCHIVE_ENTRIES, max_bytes: row.size_bytes };
    Ok(ArchiveUpload { _guard: guard, owner: id_range(ns)?, id: row.id.clone(), limits })
}

/// Extracts `data` beside the filesystem's data; nothing changes until [`commit_archive`].
pub async fn stage_archive(
    state: &AppState,
    upload: &ArchiveUpload,
    mut data: Box<dyn Read + Send>,
) -> ServiceResult<Box<dyn StagedArchive>> {
    let (storage, id, owner, limits) = (state.storage.clone(), upload.id.clone(), upload.owner, upload.limits);
    blocking(move || storage.stage_archive(&id, &mut data, owner, limits)).await
}

/// Swaps a staged archive in, in one step, and releases the filesystem.
pub async fn commit_archive(upload: ArchiveUpload, staged: Box<dyn StagedArchive>) -> ServiceResult<archive::Stats> {
    let stats = blocking(move || staged.commit()).await;
    drop(upload);
    stats
}

/// Filesystem `id` of namespace `ns`, if it exists.
pub async fn get(state: &AppState, ns: &str, id: &str) -> ServiceResult<Option<FilesystemRow>> {
    Ok(state.store.get_filesystem(ns, id).await?)
}
