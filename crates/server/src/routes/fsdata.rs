//! The contents of a filesystem through the API: the whole of it as a tar archive (out, and in
//! with an atomic swap), and single files with content-hash ETags and conditional writes.
//!
//! Every path is resolved by the kernel inside the filesystem's data directory
//! (`bulkhead_runtime::confined`, behind `FilesystemStorage`), so a symlink a sandbox planted can never lead the server, which
//! runs as the host's root, outside the tenant's own data.

use crate::service::listing::{Listing, MAX_PAGE};
use crate::service::records::{files, Preconditions};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bulkhead_api::FilesystemFileParams as FileQuery;
use bulkhead_api::{ArchiveResult, ErrorBody, FileEntry, Page};
use bulkhead_core::{Action, Target};

use super::answers::{CheckedErrors, ConflictErrors, GuardedErrors};
use super::filesystems::load_filesystem;
use super::load_namespace;
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::limits::{self, Direction, PumpError};
use crate::service::filesystems;
use crate::time::rfc3339;

/// The conditions of a write or delete, from `If-Match` and `If-None-Match: *`.
fn preconditions(headers: &HeaderMap) -> ApiResult<Preconditions> {
    let if_none_match = match headers.get(header::IF_NONE_MATCH) {
        Some(v) if v.as_bytes() != b"*" => {
            return Err(ApiError::Invalid("If-None-Match: only \"*\" is supported".into()));
        }
        Some(_) => true,
        None => false,
    };
    let if_match = match headers.get(header::IF_MATCH) {
        Some(v) => Some(v.to_str().map_err(|_| ApiError::Invalid("If-Match: not a valid ETag".into()))?.to_owned()),
        None => None,
    };
    Ok(Preconditions { if_match, if_none_match })
}

// ---- Shared by both files APIs (a sandbox's and a filesystem's) ----

/// The permission bits of a `mode` query parameter: 1 to 4 octal digits, at most `1777`
/// (permissions and the sticky bit); setuid and setgid are refused.
pub(crate) fn parse_mode(mode: &str) -> ApiResult<u32> {
    let bad = |why: &str| ApiError::Invalid(format!("mode: {mode:?} {why}"));
    if mode.is_empty() || mode.len() > 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad("must be 1 to 4 octal digits, such as 0755"));
    }
    let bits = u32::from_str_radix(mode, 8).map_err(|_| bad("is not octal"))?;
    if bits & 0o6000 != 0 {
        return Err(bad("sets setuid or setgid, which the files API refuses"));
    }
    Ok(bits)
}

/// The name a listing continues after, from its `cursor` (the base64url of the last name).
pub(crate) fn list_after(cursor: Option<&str>) -> ApiResult<Option<Vec<u8>>> {
    let Some(c) = cursor else { return Ok(None) };
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .filter(|n| !n.is_empty() && n.len() <= 255 && !n.contains(&0) && !n.contains(&b'/'));
    name.map(Some).ok_or_else(|| ApiError::Invalid("cursor: not a cursor of this listing".into()))
}

/// The page size of a listing: 1 to 1000, default 1000.
pub(crate) fn list_limit(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(MAX_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::Invalid(format!("limit: must be 1 to {MAX_PAGE}"))),
    }
}

fn text_and_base64(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => {
            (String::from_utf8_lossy(bytes).into_owned(), Some(base64::engine::general_purpose::STANDARD.encode(bytes)))
        }
    }
}

/// A listing as the API answers it: a page of entries, and a cursor when more follow.
pub(crate) fn listing_page(listing: Listing) -> Page<FileEntry> {
    let next_cursor = match listing.entries.last() {
        Some(last) if listing.more => Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&last.name)),
        _ => None,
    };
    let items = listing
        .entries
        .into_iter()
        .map(|e| {
            let (name, name_base64) = text_and_base64(&e.name);
            let (target, target_base64) = match e.target.as_deref().map(text_and_base64) {
                Some((t, b)) => (Some(t), b),
                None => (None, None),
            };
            FileEntry {
                name,
                name_base64,
                file_type: e.file_type.as_str().to_owned(),
                size: e.size,
                mode: format!("{:04o}", e.mode),
                modified: rfc3339(e.mtime_ms.max(0)),
                modified_ms: e.mtime_ms,
                target,
                target_base64,
            }
        })
        .collect();
    Page { items, next_cursor }
}

// ---- end of shared ----

fn etag_header(r: &mut Response, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

/// Read a file (raw bytes, with an ETag), or list a directory with `list=true` (a page of
/// FileEntry). A directory is `is_a_directory`, a fifo or socket `not_a_regular_file`, at once;
/// a missing path is `not_found` naming it. `user` is refused: a filesystem has no users.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    responses((status = 200, description = "The file's bytes, or with list=true a JSON Page of FileEntry",
            content((Vec<u8> = "application/octet-stream"), (Page<FileEntry> = "application/json"))),
        (status = 413, body = ErrorBody), CheckedErrors))]
pub async fn read_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemFileRead, &Target::filesystem(&ns, &id))?;
    refuse_user(&q)?;
    if q.mode.is_some() {
        return Err(ApiError::Invalid("mode: only for writes".into()));
    }
    let list = q.list.unwrap_or(false);
    if !list && (q.limit.is_some() || q.cursor.is_some()) {
        return Err(ApiError::Invalid("limit, cursor: only with list=true".into()));
    }
    let rel = fs_path(&q, list)?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    if list {
        let (after, limit) = (list_after(q.cursor.as_deref())?, list_limit(q.limit)?);
        let listing = filesystems::list_dir(&ctx.state, &f, rel, after, limit).await?;
        return Ok(Json(listing_page(listing)).into_response());
    }
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let file = filesystems::open(&ctx.state, &f, rel)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("path: {:?}: no such file or directory", q.path)))?;
    let mut r = Response::new(limits::reader_body(file.reader, guard));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(file.len));
    if let Some(etag) = &file.etag {
        etag_header(&mut r, etag);
    }
    Ok(r)
}

/// Write a file atomically (parents created). `If-Match: "<etag>"` writes only over that
/// content; `If-None-Match: *` only when there is no file. 412 otherwise. An existing file keeps
/// its mode and owner unless `mode` is given; a new one gets 0644. A directory at the path is
/// `is_a_directory`, a fifo or socket `not_a_regular_file`.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Written; the ETag header names the new content"),
        (status = 412, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "The filesystem is full", body = ErrorBody), CheckedErrors))]
pub async fn write_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemFileWrite, &Target::filesystem(&ns, &id))?;
    refuse_user(&q)?;
    if q.list.is_some() || q.limit.is_some() || q.cursor.is_some() {
        return Err(ApiError::Invalid("list, limit, cursor: only for reads".into()));
    }
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    let rel = fs_path(&q, false)?;
    ctx.audit_detail("path", q.path.chars().take(512).collect::<String>());
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let _stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    let max = filesystems::max_write(&ctx.state, &f);
    let namespace = load_namespace(&ctx, &ns).await?;
    let pre = preconditions(&headers)?;
    if pre.any() {
        // Fail early, before the body is read; checked again under the lock before the swap.
        filesystems::check(&ctx.state, &f, rel.clone(), pre.clone()).await?;
    }
    // The body streams into a temporary file beside the target, bounded by `max` and by the
    // filesystem's own size, and replaces the target only when complete.
    let (tx, reader) = limits::BodyReader::channel();
    let write = filesystems::write(&ctx.state, &namespace, &f, rel, Box::new(reader), pre, mode);
    let (pumped, written) = tokio::join!(limits::pump_body(body, tx, max), write);
    let written = match (pumped, written) {
        // Past the filesystem's size: it cannot fit, the same answer as the kernel's ENOSPC.
        (Err(PumpError::TooLarge), _) if max >= f.size_bytes => {
            return Err(ApiError::QuotaExceeded(format!(
                "path: {:?}: no space left: the filesystem holds at most {} bytes (its size_bytes)",
                q.path, f.size_bytes
            )))
        }
        (Err(PumpError::TooLarge), _) => {
            return Err(ApiError::PayloadTooLarge(format!(
                "path: {:?}: this server accepts files of at most {max} bytes",
                q.path
            )))
        }
        (Err(PumpError::Interrupted), _) => {
            return Err(ApiError::Invalid("body: could not be read to the end".into()));
        }
        (Ok(_), written) => written?,
    };
    ctx.audit_detail("bytes", written.bytes);
    let mut r = StatusCode::NO_CONTENT.into_response();
    etag_header(&mut r, &written.etag);
    Ok(r)
}

/// The relative path of a filesystem's files route: `path`, or the exact bytes of
/// `path_base64` (for names that are not UTF-8), never both.
fn fs_path(q: &FileQuery, allow_root: bool) -> ApiResult<std::path::PathBuf> {
    match &q.path_base64 {
        None => Ok(files::relative(&q.path, allow_root)?),
        Some(_) if !q.path.is_empty() => Err(ApiError::Invalid("path, path_base64: give one, not both".into())),
        Some(b) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| ApiError::Invalid(format!("path_base64: {b:?} is not standard base64")))?;
            Ok(files::relative_bytes(&bytes, allow_root)?)
        }
    }
}

/// A filesystem has no image and so no users: its files belong to the namespace's root, and the
/// server acts on them as that root. Acting as a user is a sandbox's files route's business.
fn refuse_user(q: &FileQuery) -> ApiResult<()> {
    match &q.user {
        Some(u) => Err(ApiError::Invalid(format!(
            "user: {u:?} is refused: a filesystem has no users; use the files route of a sandbox that mounts it"
        ))),
        None => Ok(()),
    }
}

/// Delete a file or an empty directory; `If-Match` as for writes.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    responses((status = 204, description = "Deleted"), (status = 412, body = ErrorBody), ConflictErrors))]
pub async fn delete_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    ctx.authorize(Action::FilesystemFileDelete, &Target::filesystem(&ns, &id))?;
    refuse_user(&q)?;
    let rel = fs_path(&q, false)?;
    ctx.audit_detail("path", q.path.chars().take(512).collect::<String>());
    let f = load_filesystem(&ctx, &ns, &id).await?;
    // A delete is conditional on If-Match (and then on If-None-Match too) only.
    let pre = if headers.contains_key(header::IF_MATCH) { preconditions(&headers)? } else { Preconditions::default() };
    filesystems::remove(&ctx.state, &f, rel, pre).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download the whole filesystem as a tar archive, streamed.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems/{id}/archive", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "A tar archive", content_type = "application/x-tar", body = Vec<u8>),
        GuardedErrors))]
pub async fn read_archive(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemArchiveRead, &Target::filesystem(&ns, &id))?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    // The archive is produced as the client reads it: one chunk per step, no thread held
    // between steps, a bounded number of descriptors.
    let reader = filesystems::archive(&ctx.state, &f).await?;
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
        (status = 400, description = "A refused entry, named", body = ErrorBody),
        (status = 409, description = "Mounted by a running sandbox", body = ErrorBody),
        (status = 429, description = "Does not fit the filesystem", body = ErrorBody), GuardedErrors))]
pub async fn write_archive(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    body: Body,
) -> ApiResult<Json<ArchiveResult>> {
    ctx.authorize(Action::FilesystemArchiveWrite, &Target::filesystem(&ns, &id))?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    let _stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    let namespace = load_namespace(&ctx, &ns).await?;
    let upload = filesystems::begin_archive(&ctx.state, &namespace, &f).await?;
    let (tx, reader) = limits::BodyReader::channel();
    // The whole body must arrive before anything is swapped in: the extraction may finish at
    // the archive's end marker while the upload is still running (or about to fail), so the body
    // is read to its end, bounded, whatever the extraction does.
    let staging = filesystems::stage_archive(&ctx.state, &upload, Box::new(reader));
    let (pumped, staged) = tokio::join!(limits::pump_body(body, tx, upload.max_body()), staging);
    let upload_error = match pumped {
        Ok(_) => None,
        Err(PumpError::TooLarge) => Some(ApiError::QuotaExceeded(format!(
            "the archive is larger than the filesystem can hold ({} bytes)",
            f.size_bytes
        ))),
        Err(PumpError::Interrupted) => Some(ApiError::Invalid("body: the upload was interrupted".into())),
    };
    // An incomplete upload is the reason even when the part that arrived was fine; the staged
    // tree is discarded when dropped.
    let staged = match (upload_error, staged) {
        (Some(e), _) => return Err(e),
        (None, staged) => staged?,
    };
    let stats = filesystems::commit_archive(upload, staged).await?;
    ctx.audit_detail("entries", stats.entries);
    ctx.audit_detail("bytes", stats.bytes);
    Ok(Json(ArchiveResult { entries: stats.entries, bytes: stats.bytes }))
}
