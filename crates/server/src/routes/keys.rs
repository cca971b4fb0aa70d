//! API keys of a namespace: created with a role, shown once, stored as a keyed hash, revoked at
//! once.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{CreateKey, CreatedKey, Key, Page};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::token::{self, KEY_TOKEN_PREFIX};
use bulkhead_core::{validate, Action, Role, Target};

use super::answers::{ConflictErrors, GuardedErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::convert::{key_out, role_in};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::service::namespaces;
use crate::service::records::KeyRow;
use crate::time::{now_ms, parse_rfc3339};

/// Keys may live at most ten years.
const MAX_KEY_LIFETIME_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

fn key_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("key {id:?} not found"))
}

/// Create an API key. The token is in this answer and nowhere else, ever.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/keys", tag = "keys", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateKey,
    responses((status = 201, body = CreatedKey), ConflictErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    // May this principal create keys here at all? Asked with the weakest role before the body is
    // read; the role asked for is checked once it is known.
    ctx.authorize(Action::KeyCreate, &Target::key(&ns, None, Some(Role::Viewer)))?;
    let on_replay = |reply: crate::service::records::IdempotentReply| -> ApiResult<Response> {
        let id = serde_json::from_str::<Key>(&reply.body).map(|k| k.id).unwrap_or_default();
        Err(ApiError::Conflict(format!(
            "this Idempotency-Key already created key {id}; its token was shown once and cannot be shown again"
        )))
    };
    idempotency::create_in(ctx, ns, headers, body, on_replay, create_key).await
}

async fn create_key(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let ns = ns.as_str();
    let req: CreateKey = json(&headers, &body)?;
    let role = role_in(req.role);
    ctx.authorize(Action::KeyCreate, &Target::key(ns, None, Some(role)))?;
    validate::name("name", &req.name)?;
    ctx.audit_detail("name", req.name.as_str());
    ctx.audit_detail("role", role.as_str());
    let now = now_ms();
    let expires_at_ms = match &req.expires_at {
        None => None,
        Some(s) => {
            let t = parse_rfc3339("expires_at", s)?;
            if t <= now {
                return Err(ApiError::Invalid("expires_at: must be in the future".into()));
            }
            if t - now > MAX_KEY_LIFETIME_MS {
                return Err(ApiError::Invalid("expires_at: must be at most ten years away".into()));
            }
            ctx.audit_detail("expires_at", s.as_str());
            Some(t)
        }
    };
    let namespace = load_namespace(&ctx, ns).await?;
    let projects = match &req.projects {
        None => None,
        Some(list) => {
            if list.len() > 100 {
                return Err(ApiError::Invalid("projects: at most 100".into()));
            }
            for id in list {
                let found = ids::is_id(prefix::PROJECT, id)
                    && crate::service::projects::get(&ctx.state, ns, id).await?.is_some();
                // A key limited to projects may only mint keys within the projects it sees.
                if !found || !ctx.reaches(Action::ProjectList, &Target::project(ns, Some(id))) {
                    return Err(ApiError::Invalid(format!("projects: no project {id:?} in this namespace")));
                }
            }
            let mut list = list.clone();
            list.sort();
            list.dedup();
            ctx.audit_detail("projects", list.clone());
            Some(list)
        }
    };
    if projects.is_none() && !ctx.reaches(Action::ProjectList, &Target::project(ns, None)) {
        return Err(ApiError::Invalid(
            "projects: a key limited to projects can only create keys limited to them".into(),
        ));
    }
    let token = token::generate(KEY_TOKEN_PREFIX);
    let row = KeyRow {
        id: ids::new_id(prefix::KEY),
        namespace: namespace.name,
        name: req.name,
        role,
        token_hash: ctx.state.hasher.hash(&token),
        created_at_ms: now,
        expires_at_ms,
        projects,
    };
    namespaces::create_key(&ctx.state, &row).await?;
    ctx.audit_resource(format!("key:{}", row.id));
    let key = key_out(&row);
    // Replays keep the metadata only: the token is stored nowhere.
    let stored = serde_json::to_string(&key).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut created = Created::json(StatusCode::CREATED, &CreatedKey { key, token })?;
    created.stored = Some(stored);
    Ok(created)
}

/// List the namespace's keys (metadata only).
#[utoipa::path(get, path = "/v1/namespaces/{ns}/keys", tag = "keys", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Key>), GuardedErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Key>>> {
    ctx.authorize(Action::KeyList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| namespaces::list_keys(&ctx.state, &ns, after, limit).await)
            .await?;
    Ok(Json(Page { items: rows.iter().map(key_out).collect(), next_cursor }))
}

/// Get one key's metadata.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/keys/{id}", tag = "keys",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Key), GuardedErrors))]
pub async fn get(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Json<Key>> {
    ctx.authorize(Action::KeyGet, &Target::key(&ns, Some(&id), None))?;
    load_namespace(&ctx, &ns).await?;
    if !ids::is_id(prefix::KEY, &id) {
        return Err(key_not_found(&id));
    }
    let row = namespaces::get_key(&ctx.state, &ns, &id).await?.ok_or_else(|| key_not_found(&id))?;
    Ok(Json(key_out(&row)))
}

/// Revoke a key. The next request with its token is refused.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/keys/{id}", tag = "keys",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "Revoked"), GuardedErrors))]
pub async fn revoke(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::KeyRevoke, &Target::key(&ns, Some(&id), Some(Role::Viewer)))?;
    load_namespace(&ctx, &ns).await?;
    if !ids::is_id(prefix::KEY, &id) {
        return Err(key_not_found(&id));
    }
    let row = namespaces::get_key(&ctx.state, &ns, &id).await?.ok_or_else(|| key_not_found(&id))?;
    ctx.authorize(Action::KeyRevoke, &Target::key(&ns, Some(&id), Some(row.role)))?;
    ctx.audit_detail("name", row.name.as_str());
    ctx.audit_detail("role", row.role.as_str());
    if !namespaces::delete_key(&ctx.state, &ns, &id).await? {
        return Err(key_not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}
