//! A namespace's secrets: values sealed with AES-256-GCM under the namespace's data key, which
//! the server's master key wraps. The API takes a value in and never gives one back: answers,
//! logs, audit records and errors carry names and ids only. Sandboxes get values at create, when
//! the policies allow them `secret.read`.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{CreateSecret, ErrorBody, Page, Secret};
use bulkhead_core::{validate, Action, Target};

use super::answers::{CheckedErrors, GuardedErrors, ReadErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::service::records::SecretRow;
use crate::service::secrets;
use crate::time::rfc3339;

/// Largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

fn secret_out(s: &SecretRow) -> Secret {
    Secret {
        id: s.id.clone(),
        name: s.name.clone(),
        created_at: rfc3339(s.created_at_ms),
        updated_at: rfc3339(s.updated_at_ms),
    }
}

/// Creates a secret, or replaces the value of the one of that name (201 or 200).
#[utoipa::path(post, path = "/v1/namespaces/{ns}/secrets", tag = "secrets", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateSecret,
    responses((status = 201, body = Secret), (status = 200, description = "The value was replaced", body = Secret),
        (status = 409, description = "The Idempotency-Key is in use, or was used with another body", body = ErrorBody),
        CheckedErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::SecretCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, create_secret).await
}

async fn create_secret(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let req: CreateSecret = json(&headers, &body)?;
    validate::name("name", &req.name)?;
    if req.value.is_empty() || req.value.len() > MAX_SECRET_BYTES {
        return Err(ApiError::Invalid(format!("value: 1 to {MAX_SECRET_BYTES} bytes")));
    }
    load_namespace(&ctx, &ns).await?;
    let sealed = crate::identity::seal_secret(&ctx.state, &ns, &req.name, req.value.as_bytes()).await?;
    let (row, created) = secrets::put(&ctx.state, &ns, req.name, sealed).await?;
    ctx.audit_resource(format!("secret:{}", row.name));
    ctx.audit_detail("replaced", !created);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Created::json(status, &secret_out(&row))
}

/// The namespace's secrets: names and dates, never values.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/secrets", tag = "secrets", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Secret>), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Secret>>> {
    ctx.authorize(Action::SecretList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| secrets::list(&ctx.state, &ns, after, limit).await).await?;
    Ok(Json(Page { items: rows.iter().map(secret_out).collect(), next_cursor }))
}

/// Deletes a secret. Sandboxes that already hold it keep their copy until they end.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/secrets/{name}", tag = "secrets",
    params(("ns" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "Deleted"), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams((ns, name)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::SecretDelete, &Target::secret(&ns, &name))?;
    load_namespace(&ctx, &ns).await?;
    secrets::delete(&ctx.state, &ns, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
