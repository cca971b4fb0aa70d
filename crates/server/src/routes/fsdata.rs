//! The contents of a filesystem through the API: the whole of it as a tar archive (out, and in
//! with an atomic swap), and single files with content-hash ETags and conditional writes.
//!
//! Every path is resolved by the kernel inside the filesystem's data directory
//! (`bulkhead_runtime::confined`), so a symlink a sandbox planted can never lead the server, which
//! runs as the host's root, outside the tenant's own data.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::FilesystemFileParams as FileQuery;
use bulkhead_api::{ArchiveResult, ErrorBody, FileEntry};
use bulkhead_core::ids::hex;
use bulkhead_core::{Action, Target};
use bulkhead_runtime::archive::{self, ArchiveError, Limits};
use bulkhead_runtime::confined::{self, ConfinedError, Kind, Owner, Root};
use bulkhead_store::{FilesystemRow, SandboxStatus};
use sha2::{Digest, Sha256};

use super::filesystems::load_filesystem;
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::limits::{self, Direction, PumpError};
use crate::sandboxes::id_range;
use crate::state::{rfc3339, AppState};

/// Entries an uploaded archive may hold.
const MAX_ARCHIVE_ENTRIES: u64 = 100_000;
/// Bytes of tar headers and padding an upload may carry beyond the filesystem's size.
const MAX_ARCHIVE_OVERHEAD: u64 = 128 << 20;

/// The host ids new files get: the namespace's mapped root.
async fn owner_of(state: &AppState, f: &FilesystemRow) -> ApiResult<Owner> {
    let ns = &f.namespace;
    let namespace = state.store.get_namespace(ns).await?.ok_or_else(|| ApiError::namespace_not_found(ns))?;
    let ids = id_range(&namespace)?;
    Ok(Owner { uid: ids.host_start, gid: ids.host_start })
}

fn open_root(state: &AppState, id: &str) -> ApiResult<Root> {
    Root::open(state.storage.data_dir(id)).map_err(|e| ApiError::Internal(format!("open filesystem {id}: {e}")))
}

fn confined_error(e: ConfinedError) -> ApiError {
    match e {
        ConfinedError::InvalidPath { path, reason } => ApiError::Invalid(format!("path: {path:?} {reason}")),
        ConfinedError::TooLarge { limit } => ApiError::PayloadTooLarge(format!("more than {limit} bytes")),
        ConfinedError::NoSpace => ApiError::QuotaExceeded("the filesystem is full (its size_bytes)".into()),
        ConfinedError::Read(_) => ApiError::Invalid("body: could not be read to the end".into()),
        ConfinedError::Io { ref source, .. } if source.raw_os_error() == Some(libc_eloop()) => {
            ApiError::Invalid(format!("path: goes through a symlink ({e})"))
        }
        e => match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::NotFound("no such file".into()),
            std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory | std::io::ErrorKind::InvalidInput => {
                ApiError::Invalid(format!("path: {e}"))
            }
            std::io::ErrorKind::DirectoryNotEmpty => ApiError::Conflict("the directory is not empty".into()),
            _ => ApiError::Internal(e.to_string()),
        },
    }
}

/// `ELOOP`: a path that needs to follow a symlink where the server never does.
const fn libc_eloop() -> i32 {
    40
}

fn io_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(libc_eloop()) {
        return ApiError::Invalid("path: goes through a symlink".into());
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => ApiError::NotFound("no such file".into()),
        std::io::ErrorKind::IsADirectory => ApiError::Invalid("path: is a directory (use list=true)".into()),
        std::io::ErrorKind::InvalidInput => ApiError::Invalid(format!("path: {e}")),
        _ => ApiError::Internal(e.to_string()),
    }
}

/// A relative, normalized path inside the filesystem; the root is `""`.
fn relative(path: &str, allow_root: bool) -> ApiResult<PathBuf> {
    let bad = |why: &str| ApiError::Invalid(format!("path: {path:?} {why}"));
    if path.len() > archive::MAX_PATH || path.contains('\0') {
        return Err(bad("is too long or holds NUL"));
    }
    if path.starts_with('/') {
        return Err(bad("must be relative to the filesystem's root"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) if n.len() <= archive::MAX_NAME => out.push(n),
            Component::CurDir => {}
            Component::Normal(_) => return Err(bad("has a name longer than 255 bytes")),
            _ => return Err(bad("must not contain '..'")),
        }
    }
    if out.as_os_str().is_empty() && !allow_root {
        return Err(bad("names no file"));
    }
    Ok(out)
}

fn etag_of(digest: &[u8]) -> String {
    format!("\"{}\"", hex(digest))
}

/// Opens the file at `rel` for a download of at most `max` bytes and hashes it for its ETag;
/// `None` when there is none. The file comes back positioned at its start, with the length that
/// was hashed.
fn open_hashed(root: &Root, rel: &Path, max: u64) -> ApiResult<Option<(std::fs::File, u64, Vec<u8>)>> {
    let (mut file, meta) = match confined::open_read(root, rel) {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    if meta.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "the file has {} bytes; the files API serves at most {max} (use the archive)",
            meta.len()
        )));
    }
    let mut hasher = Sha256::new();
    let len = std::io::copy(&mut (&mut file).take(max + 1), &mut hasher).map_err(io_error)?;
    if len > max {
        return Err(ApiError::PayloadTooLarge(format!("the file grew past {max} bytes")));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_error)?;
    Ok(Some((file, len, hasher.finalize().to_vec())))
}

/// The ETag of the file at `rel` (bounded as a download); `None` when there is none.
fn current_etag(root: &Root, rel: &Path, max: u64) -> ApiResult<Option<String>> {
    Ok(open_hashed(root, rel, max)?.map(|(_, _, digest)| etag_of(&digest)))
}

/// The bytes of a file whose hash was taken when the download began: the download fails (the
/// client sees a cut body) when what it reads now is not what was hashed, so the ETag sent
/// always names the bytes sent.
struct Verified {
    file: std::io::Take<std::fs::File>,
    hasher: Option<Sha256>,
    expected: Vec<u8>,
}

impl Read for Verified {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(out)?;
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&out[..n]);
            }
        } else if let Some(h) = self.hasher.take() {
            if h.finalize().as_slice() != self.expected.as_slice() {
                return Err(std::io::Error::other("the file changed while it was read"));
            }
        }
        Ok(n)
    }
}

/// A `Read` that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        Ok(n)
    }
}

/// Checks `If-Match` and `If-None-Match: *` against the ETag of the file's current content.
fn preconditions(headers: &HeaderMap, current: Option<&str>) -> ApiResult<()> {
    let failed = |why: &str| ApiError::PreconditionFailed(why.to_owned());
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.as_bytes() != b"*" {
            return Err(ApiError::Invalid("If-None-Match: only \"*\" is supported".into()));
        }
        if current.is_some() {
            return Err(failed("If-None-Match: * but the file exists"));
        }
    }
    if let Some(v) = headers.get(header::IF_MATCH) {
        let wanted = v.to_str().map_err(|_| ApiError::Invalid("If-Match: not a valid ETag".into()))?;
        let matches = match current {
            None => false,
            Some(tag) => wanted == "*" || wanted.split(',').any(|t| t.trim() == tag),
        };
        if !matches {
            return Err(failed("If-Match does not match the file's current ETag"));
        }
    }
    Ok(())
}

/// How a streamed file write fails: in the confined write itself, or in its precondition.
enum WriteError {
    Confined(ConfinedError),
    Api(ApiError),
}

impl From<ConfinedError> for WriteError {
    fn from(e: ConfinedError) -> Self {
        WriteError::Confined(e)
    }
}

/// Read a file (raw bytes, with an ETag), or list a directory with `list=true`.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    responses((status = 200, description = "The file's bytes, or a JSON array of FileEntry with list=true",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn read_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemFileRead, &Target::filesystem(&ns, &id))?;
    let list = q.list.unwrap_or(false);
    let rel = relative(&q.path, list)?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let root = open_root(&ctx.state, &f.id)?;
    let max = ctx.state.config.sandbox_limits.file_bytes;
    if list {
        let entries = tokio::task::spawn_blocking(move || confined::list(&root, &rel))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(confined_error)?;
        let out: Vec<FileEntry> = entries
            .into_iter()
            .map(|e| FileEntry {
                name: e.name.to_string_lossy().into_owned(),
                kind: match e.kind {
                    Kind::File => "file",
                    Kind::Dir => "dir",
                    Kind::Symlink => "symlink",
                    Kind::Other => "other",
                }
                .to_owned(),
                size: e.size,
                mode: e.mode,
                modified: rfc3339(
                    e.modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
                ),
            })
            .collect();
        return Ok(Json(out).into_response());
    }
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let (file, len, digest) = tokio::task::spawn_blocking(move || open_hashed(&root, &rel, max))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
        .ok_or_else(|| ApiError::NotFound(format!("no file {:?}", q.path)))?;
    let reader = Verified { file: file.take(len), hasher: Some(Sha256::new()), expected: digest.clone() };
    let mut r = Response::new(limits::reader_body(reader, guard));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&etag_of(&digest)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

/// Write a file atomically (parents created). `If-Match: "<etag>"` writes only over that
/// content; `If-None-Match: *` only when there is no file. 412 otherwise.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Written; the ETag header names the new content"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 412, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "The filesystem is full", body = ErrorBody)))]
pub async fn write_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemFileWrite, &Target::filesystem(&ns, &id))?;
    if q.list.is_some() {
        return Err(ApiError::Invalid("list: only for reads".into()));
    }
    let rel = relative(&q.path, false)?;
    ctx.audit_detail("path", q.path.chars().take(512).collect::<String>());
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let _stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    let max = ctx.state.config.sandbox_limits.file_bytes.min(f.size_bytes);
    let file_max = ctx.state.config.sandbox_limits.file_bytes;
    let owner = owner_of(&ctx.state, &f).await?;
    let root = open_root(&ctx.state, &f.id)?;
    let conditional = headers.contains_key(header::IF_MATCH) || headers.contains_key(header::IF_NONE_MATCH);
    let root = if conditional {
        // Fail early, before the body is read; checked again under the lock before the swap.
        let (early, rel) = (headers.clone(), rel.clone());
        tokio::task::spawn_blocking(move || {
            preconditions(&early, current_etag(&root, &rel, file_max)?.as_deref())?;
            Ok::<_, ApiError>(root)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
    } else {
        root
    };
    // The body streams into a temporary file beside the target, bounded by `max` and by the
    // filesystem's own size, and replaces the target only when complete.
    let (tx, reader) = limits::BodyReader::channel();
    let (state, fs_id, handle) = (ctx.state.clone(), f.id.clone(), tokio::runtime::Handle::current());
    let writer = tokio::task::spawn_blocking(move || {
        let mut hashing = Hashing { inner: reader, hasher: Sha256::new() };
        let written = confined::write_atomic_when(&root, &rel, &mut hashing, max, 0o644, owner, || {
            // Writes through the API are serialized per filesystem, from the check to the
            // rename.
            let lock = handle.block_on(state.sandbox_locks.lock(&fs_id));
            if conditional {
                let current = current_etag(&root, &rel, file_max).map_err(WriteError::Api)?;
                preconditions(&headers, current.as_deref()).map_err(WriteError::Api)?;
            }
            Ok(lock)
        });
        written.map(|(n, _lock)| (n, hashing.hasher.finalize().to_vec()))
    });
    let pumped = limits::pump_body(body, tx, max).await;
    let written = writer.await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let (bytes, digest) = match (pumped, written) {
        (Err(PumpError::TooLarge), _) => return Err(ApiError::PayloadTooLarge(format!("at most {max} bytes"))),
        (Err(PumpError::Interrupted), _) => {
            return Err(ApiError::Invalid("body: could not be read to the end".into()));
        }
        (Ok(_), Err(WriteError::Api(e))) => return Err(e),
        (Ok(_), Err(WriteError::Confined(e))) => return Err(confined_error(e)),
        (Ok(_), Ok(done)) => done,
    };
    ctx.audit_detail("bytes", bytes);
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&etag_of(&digest)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

/// Delete a file or an empty directory; `If-Match` as for writes.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 412, body = ErrorBody)))]
pub async fn delete_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    ctx.authorize(Action::FilesystemFileDelete, &Target::filesystem(&ns, &id))?;
    let rel = relative(&q.path, false)?;
    ctx.audit_detail("path", q.path.chars().take(512).collect::<String>());
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let root = open_root(&ctx.state, &f.id)?;
    let _guard = ctx.state.sandbox_locks.lock(&f.id).await;
    let file_max = ctx.state.config.sandbox_limits.file_bytes;
    tokio::task::spawn_blocking(move || {
        if headers.contains_key(header::IF_MATCH) {
            preconditions(&headers, current_etag(&root, &rel, file_max)?.as_deref())?;
        }
        confined::remove(&root, &rel).map_err(confined_error)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

/// Download the whole filesystem as a tar archive, streamed.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems/{id}/archive", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "A tar archive", content_type = "application/x-tar", body = Vec<u8>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn read_archive(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemArchiveRead, &Target::filesystem(&ns, &id))?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let root = open_root(&ctx.state, &f.id)?;
    // The archive is produced as the client reads it: one chunk per step, no thread held
    // between steps, a bounded number of descriptors (see `TarReader`).
    let reader = archive::TarReader::new(root);
    let mut r = Response::new(limits::reader_body(reader, guard));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(r)
}

/// Replace the whole filesystem with a tar archive (plain, gzip or zstd). The new content is
/// staged on the filesystem itself and swapped in only when complete: a hostile entry, a broken
/// or dropped upload, or a full filesystem leaves the previous content exactly as it was.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/filesystems/{id}/archive", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, description = "Swapped in", body = ArchiveResult),
        (status = 400, description = "A refused entry, named", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Mounted by a running sandbox", body = ErrorBody),
        (status = 429, description = "Does not fit the filesystem", body = ErrorBody)))]
pub async fn write_archive(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    body: Body,
) -> ApiResult<Json<ArchiveResult>> {
    ctx.authorize(Action::FilesystemArchiveWrite, &Target::filesystem(&ns, &id))?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let _stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    let _guard = ctx.state.sandbox_locks.lock(&f.id).await;
    let users: Vec<String> = ctx
        .state
        .store
        .sandboxes_using(&f.id)
        .await?
        .into_iter()
        .filter(|s| s.status == SandboxStatus::Running || s.status == SandboxStatus::Creating)
        .map(|s| s.id)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "filesystem {} is mounted by {}: replacing its whole content under a running sandbox is refused; \
             delete the sandboxes or use the files API",
            f.id,
            users.join(", ")
        )));
    }
    let owner = owner_of(&ctx.state, &f).await?;
    let ids = bulkhead_runtime::IdRange { host_start: owner.uid, size: 1 };
    let staging = ctx.state.storage.staging_dir(&f.id, ids)?;
    let staging_root = Root::open(&staging).map_err(|e| ApiError::Internal(e.to_string()))?;
    let limits = Limits { max_entries: MAX_ARCHIVE_ENTRIES, max_bytes: f.size_bytes };
    let (tx, reader) = limits::BodyReader::channel();
    let extraction = tokio::task::spawn_blocking(move || archive::extract(reader, &staging_root, owner, limits));
    // The whole body must arrive before anything is swapped in: the extraction may finish at
    // the archive's end marker while the upload is still running (or about to fail), so the body
    // is read to its end, bounded, whatever the extraction does.
    let max_body = f.size_bytes.saturating_add(MAX_ARCHIVE_OVERHEAD);
    let upload_error = match limits::pump_body(body, tx, max_body).await {
        Ok(_) => None,
        Err(PumpError::TooLarge) => Some(ApiError::QuotaExceeded(format!(
            "the archive is larger than the filesystem can hold ({} bytes)",
            f.size_bytes
        ))),
        Err(PumpError::Interrupted) => Some(ApiError::Invalid("body: the upload was interrupted".into())),
    };
    let result = extraction.await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let stats = match (result, upload_error) {
        (Ok(stats), None) => stats,
        (outcome, upload_error) => {
            let _ = confined::remove_tree(&staging);
            // An incomplete upload is the reason even when the part that arrived was fine.
            return Err(match (upload_error, outcome) {
                (Some(e), _) => e,
                (None, Err(e)) => archive_error(e),
                (None, Ok(_)) => ApiError::Internal("upload outcome lost".into()),
            });
        }
    };
    if let Err(e) = ctx.state.storage.swap_in(&f.id, &staging) {
        let _ = confined::remove_tree(&staging);
        return Err(e.into());
    }
    ctx.audit_detail("entries", stats.entries);
    ctx.audit_detail("bytes", stats.bytes);
    Ok(Json(ArchiveResult { entries: stats.entries, bytes: stats.bytes }))
}

fn archive_error(e: ArchiveError) -> ApiError {
    match e {
        ArchiveError::Hostile { entry, reason } => ApiError::Invalid(format!("archive entry {entry:?}: {reason}")),
        ArchiveError::TooLarge { .. } | ArchiveError::NoSpace => {
            ApiError::QuotaExceeded(format!("the archive does not fit the filesystem: {e}"))
        }
        ArchiveError::Corrupt(m) => ApiError::Invalid(format!("body: not a valid archive: {m}")),
        ArchiveError::Write { entry, source } => match source {
            ConfinedError::NoSpace => ApiError::QuotaExceeded(format!("the filesystem is full at entry {entry:?}")),
            ConfinedError::InvalidPath { .. } => ApiError::Invalid(format!("archive entry {entry:?}: {source}")),
            other => match other.kind() {
                std::io::ErrorKind::NotADirectory
                | std::io::ErrorKind::IsADirectory
                | std::io::ErrorKind::AlreadyExists
                | std::io::ErrorKind::InvalidInput => ApiError::Invalid(format!("archive entry {entry:?}: {other}")),
                _ => ApiError::Internal(format!("extracting {entry:?}: {other}")),
            },
        },
    }
}
