//! Filesystems: persistent, kernel-limited storage of a namespace, mounted at `/workspace` by
//! sandboxes, with whole-filesystem archives and single-file access.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::FilesystemDeleteParams as DeleteParams;
use bulkhead_api::{CreateFilesystem, ErrorBody, Filesystem, Page, ResizeFilesystem};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{validate, Action, Scope, Target};

use super::answers::{ConflictErrors, GuardedErrors, ReadErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::service::filesystems;
use crate::service::records::FilesystemRow;
use crate::state::AppState;
use crate::time::rfc3339;

/// The wire form, with what the kernel and the store say about use.
pub async fn filesystem_out(state: &AppState, f: &FilesystemRow) -> ApiResult<Filesystem> {
    let (used_bytes, mounted_by) = filesystems::usage(state, f).await?;
    Ok(Filesystem {
        id: f.id.clone(),
        namespace: f.namespace.clone(),
        name: f.name.clone(),
        project: f.project_id.clone(),
        size_bytes: f.size_bytes,
        used_bytes,
        mounted_by,
        created_at: rfc3339(f.created_at_ms),
        updated_at: rfc3339(f.updated_at_ms),
    })
}

pub fn filesystem_not_found(id: &str) -> ApiError {
    filesystems::not_found(id).into()
}

/// The filesystem of this namespace that the principal may see, or 404: another namespace's,
/// a missing one and one of a project the key is not limited to all look the same. The
/// request's action is decided again on it, its project known.
pub async fn load_filesystem(ctx: &Ctx, ns: &str, id: &str) -> ApiResult<FilesystemRow> {
    let row = find_filesystem(ctx, ns, id).await?;
    ctx.reauthorize(&filesystem_target(&row))?;
    Ok(row)
}

/// Filesystem `id` of `ns` as the store has it, or 404; not yet decided on.
pub async fn find_filesystem(ctx: &Ctx, ns: &str, id: &str) -> ApiResult<FilesystemRow> {
    load_namespace(ctx, ns).await?;
    if !ids::is_id(prefix::FILESYSTEM, id) {
        return Err(filesystem_not_found(id));
    }
    filesystems::get(&ctx.state, ns, id).await?.ok_or_else(|| filesystem_not_found(id))
}

/// A filesystem as decisions see it: in its project.
pub fn filesystem_target(row: &FilesystemRow) -> Target {
    Target::Filesystem {
        namespace: row.namespace.clone(),
        id: row.id.clone(),
        scope: Scope::of_filesystem(row.project_id.as_deref()),
    }
}

/// Create a filesystem.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/filesystems", tag = "filesystems", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateFilesystem,
    responses((status = 201, body = Filesystem), ConflictErrors,
        (status = 429, description = "The namespace's disk_bytes would be exceeded", body = ErrorBody)))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::FilesystemCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, create_filesystem).await
}

async fn create_filesystem(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let req: CreateFilesystem = json(&headers, &body)?;
    validate::name("name", &req.name)?;
    let size = filesystems::check_size(req.size_bytes)?;
    let namespace = load_namespace(&ctx, &ns).await?;
    let missing = || match &req.project {
        Some(p) => ApiError::Invalid(format!("project: no project {p:?} in this namespace")),
        None => ApiError::Invalid("project: required for a key limited to projects".into()),
    };
    if let Some(p) = &req.project {
        if !ids::is_id(prefix::PROJECT, p) || crate::service::projects::get(&ctx.state, &ns, p).await?.is_none() {
            return Err(missing());
        }
    }
    // Created in its project, or in the namespace outside every project.
    ctx.require_or(Action::FilesystemCreate, &Target::project(&ns, req.project.as_deref()), missing)?;
    let row = filesystems::new_row(&ns, req.name, req.project, size);
    ctx.audit_resource(format!("filesystem:{}", row.id));
    ctx.audit_detail("size_bytes", size);
    match filesystems::create(&ctx.state, &namespace, &row).await {
        Err(e) if e.is_quota() => return super::note_rejection(&ctx.state, &ns, Err(e.into())).await,
        other => other?,
    }
    Created::json(StatusCode::CREATED, &filesystem_out(&ctx.state, &row).await?)
}

/// List the filesystems this principal may see.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems", tag = "filesystems", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Filesystem>), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Filesystem>>> {
    ctx.authorize(Action::FilesystemList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| filesystems::list(&ctx.state, &ns, after, limit).await)
            .await?;
    let mut items = Vec::new();
    for row in rows.iter().filter(|f| ctx.sees(Action::FilesystemList, &filesystem_target(f))) {
        items.push(filesystem_out(&ctx.state, row).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

/// Get a filesystem, with its use.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/filesystems/{id}", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Filesystem), ReadErrors))]
pub async fn get(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Json<Filesystem>> {
    ctx.authorize(Action::FilesystemGet, &Target::filesystem(&ns, &id))?;
    let row = load_filesystem(&ctx, &ns, &id).await?;
    Ok(Json(filesystem_out(&ctx.state, &row).await?))
}

/// Grow a filesystem in place. Shrinking is refused.
#[utoipa::path(patch, path = "/v1/namespaces/{ns}/filesystems/{id}", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path)), request_body = ResizeFilesystem,
    responses((status = 200, body = Filesystem), (status = 429, body = ErrorBody), ConflictErrors))]
pub async fn resize(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Filesystem>> {
    ctx.authorize(Action::FilesystemResize, &Target::filesystem(&ns, &id))?;
    let req: ResizeFilesystem = json(&headers, &body)?;
    let size = filesystems::check_size(req.size_bytes)?;
    let row = load_filesystem(&ctx, &ns, &id).await?;
    if size > row.size_bytes {
        ctx.audit_detail("size_bytes", size);
    }
    let namespace = load_namespace(&ctx, &ns).await?;
    let updated = filesystems::resize(&ctx.state, &namespace, &row, size).await?;
    Ok(Json(filesystem_out(&ctx.state, &updated).await?))
}

/// Delete a filesystem and destroy its data.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/filesystems/{id}", tag = "filesystems",
    params(("ns" = String, Path), ("id" = String, Path), DeleteParams),
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "Mounted by a sandbox", body = ErrorBody), GuardedErrors))]
pub async fn delete(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<DeleteParams>,
) -> ApiResult<StatusCode> {
    ctx.authorize(Action::FilesystemDelete, &Target::filesystem(&ns, &id))?;
    let row = load_filesystem(&ctx, &ns, &id).await?;
    let force = params.force == Some(true);
    let deleted = filesystems::delete(&ctx.state, &row, force).await;
    // Recorded when the delete tore sandboxes down, or may have before it failed.
    if force && deleted.as_ref().map_or(true, |tore_down| *tore_down) {
        ctx.audit_detail("force", true);
    }
    deleted?;
    Ok(StatusCode::NO_CONTENT)
}
