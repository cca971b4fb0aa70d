//! A namespace's warm pools (see [`crate::service::pools`]): `GET .../pools`, and `PUT` or
//! `DELETE .../pools/{image}` to size the pool of one image. A namespace's admins size the pools
//! of its own images (`pool.set`); a public image's pool in a namespace is the platform admin's
//! to size (`platform.pool.set`), since its sandboxes take that namespace's quota for an image
//! the namespace does not own.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bulkhead_api::{ErrorBody, Page, SetWarmPool, WarmPool};
use bulkhead_core::{Action, Target};

use super::answers::{CheckedErrors, GuardedErrors, ReadErrors};
use super::load_namespace;
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PathParams};
use crate::service::pools::{self, PoolStatus, MAX_POOL_SIZE};
use crate::service::records::ImageRow;
use crate::time::rfc3339;

fn pool_out(status: &PoolStatus, image: &ImageRow) -> WarmPool {
    WarmPool {
        image: image.name.clone(),
        image_id: image.id.clone(),
        public: image.namespace.is_none(),
        size: status.config.size,
        ready: status.ready,
        starting: status.starting,
        updated_at: rfc3339(status.config.updated_at_ms),
    }
}

/// The namespace's warm pools, by image id, with what each holds now.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/pools", tag = "pools", params(("ns" = String, Path)),
    responses((status = 200, body = Page<WarmPool>), ReadErrors))]
pub async fn list(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Json<Page<WarmPool>>> {
    ctx.authorize(Action::PoolList, &Target::namespace(&ns))?;
    load_namespace(&ctx, &ns).await?;
    let mut items = Vec::new();
    for status in pools::list(&ctx.state, &ns).await? {
        // An image deleted meanwhile took its pool with it.
        if let Some(image) = crate::service::images::find(&ctx.state, Some(&ns), &status.config.image_id).await? {
            items.push(pool_out(&status, &image));
        }
    }
    Ok(Json(Page { items, next_cursor: None }))
}

/// Sets the size of the namespace's pool of an image (by name or id); 0 removes it. The pool
/// fills in the background as the namespace's quotas allow.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/pools/{image}", tag = "pools",
    params(("ns" = String, Path), ("image" = String, Path, description = "A name or an img_… id")),
    request_body = SetWarmPool,
    responses((status = 200, body = WarmPool),
        (status = 403, description = "A public image's pool, set by other than the platform admin", body = ErrorBody),
        CheckedErrors))]
pub async fn set(
    ctx: Ctx,
    PathParams((ns, image)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<WarmPool>> {
    ctx.authorize(Action::PoolSet, &Target::image(&ns, &image))?;
    let req: SetWarmPool = json(&headers, &body)?;
    let (row, status) = set_size(&ctx, &ns, &image, req.size).await?;
    Ok(Json(pool_out(&status, &row)))
}

/// Removes the namespace's pool of an image (its ready sandboxes are destroyed).
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/pools/{image}", tag = "pools",
    params(("ns" = String, Path), ("image" = String, Path, description = "A name or an img_… id")),
    responses((status = 204, description = "Removed (or there was none)"), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams((ns, image)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::PoolSet, &Target::image(&ns, &image))?;
    set_size(&ctx, &ns, &image, 0).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_size(ctx: &Ctx, ns: &str, image: &str, size: u64) -> ApiResult<(ImageRow, PoolStatus)> {
    let namespace = load_namespace(ctx, ns).await?;
    let row = super::images::load_image(ctx, ns, image).await?;
    if row.namespace.is_none() {
        ctx.require(Action::PlatformPoolSet, &Target::Platform)?;
    }
    let most = namespace.quotas.max_sandboxes.min(MAX_POOL_SIZE);
    if size > most {
        return Err(ApiError::Invalid(format!(
            "size: at most {most} (the namespace's max_sandboxes, and at most {MAX_POOL_SIZE})"
        )));
    }
    ctx.audit_resource(format!("image:{}", row.name));
    ctx.audit_detail("image", row.id.clone());
    ctx.audit_detail("size", size);
    let status = pools::set(&ctx.state, &namespace, &row.id, size).await?;
    Ok((row, status))
}
