//! The contents of a filesystem through the API: the whole of it as a tar archive (out, and in
//! with an atomic swap), and single files with content-hash ETags and conditional writes.
//!
//! Every path is resolved by the kernel inside the filesystem's data directory
//! (`bulkhead_runtime::confined`, behind `FilesystemStorage`), so a symlink a sandbox planted can never lead the server, which
//! runs as the host's root, outside the tenant's own data.

use crate::service::records::{files, Kind, Preconditions};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::FilesystemFileParams as FileQuery;
use bulkhead_api::{ArchiveResult, ErrorBody, FileEntry};
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

fn etag_header(r: &mut Response, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

/// Read a file (raw bytes, with an ETag), or list a directory with `list=true`.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems/{id}/files", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), FileQuery),
    responses((status = 200, description = "The file's bytes, or a JSON array of FileEntry with list=true",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 413, body = ErrorBody), CheckedErrors))]
pub async fn read_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(q): QueryParams<FileQuery>,
) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemFileRead, &Target::filesystem(&ns, &id))?;
    let list = q.list.unwrap_or(false);
    let rel = files::relative(&q.path, list)?;
    let f = load_filesystem(&ctx, &ns, &id).await?;
    if list {
        let entries = filesystems::list_dir(&ctx.state, &f, rel).await?;
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
    let file = filesystems::open(&ctx.state, &f, rel)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no file {:?}", q.path)))?;
    let mut r = Response::new(limits::reader_body(file.reader, guard));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(file.len));
    etag_header(&mut r, &file.etag);
    Ok(r)
}

/// Write a file atomically (parents created). `If-Match: "<etag>"` writes only over that
/// content; `If-None-Match: *` only when there is no file. 412 otherwise.
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
    if q.list.is_some() {
        return Err(ApiError::Invalid("list: only for reads".into()));
    }
    let rel = files::relative(&q.path, false)?;
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
    let write = filesystems::write(&ctx.state, &namespace, &f, rel, Box::new(reader), pre);
    let (pumped, written) = tokio::join!(limits::pump_body(body, tx, max), write);
    let written = match (pumped, written) {
        (Err(PumpError::TooLarge), _) => return Err(ApiError::PayloadTooLarge(format!("at most {max} bytes"))),
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
    let rel = files::relative(&q.path, false)?;
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
    let reader = filesystems::archive(&ctx.state, &f)?;
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
