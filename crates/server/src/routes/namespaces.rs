//! Namespaces: the admin creates, changes and deletes them; a key sees its own.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{CreateNamespace, ErrorBody, Namespace, Page, UpdateNamespace};
use bulkhead_core::{validate, Action, Target};
use bulkhead_store::NamespaceRow;

use super::answers::{CheckedErrors, GuardedErrors, ReadErrors};
use super::load_namespace;
use crate::auth::Ctx;
use crate::convert::{namespace_out, quota_patch_in, quotas_in};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, next_cursor, PageParams, Paging, PathParams, QueryParams};
use crate::idempotency::{self, replay_response, Created};
use crate::time::now_ms;

/// Create a namespace (platform admin).
#[utoipa::path(post, path = "/v1/namespaces", tag = "namespaces", request_body = CreateNamespace,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    responses(
        (status = 201, description = "Created", body = Namespace),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
pub async fn create(ctx: Ctx, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    ctx.authorize(Action::NamespaceCreate, &Target::Platform)?;
    let h = headers.clone();
    idempotency::create(ctx, &headers, None, body, replay_response, move |ctx, body| async move {
        create_namespace(&ctx, &h, &body).await
    })
    .await
}

async fn create_namespace(ctx: &Ctx, headers: &HeaderMap, body: &[u8]) -> ApiResult<Created> {
    let req: CreateNamespace = json(headers, body)?;
    validate::name("name", &req.name)?;
    ctx.audit_detail("name", req.name.as_str());
    let isolation = req.isolation.clone().unwrap_or_else(|| "container".to_owned());
    let classes = &ctx.state.config.runtime_classes;
    if !classes.contains_key(&isolation) {
        let configured: Vec<&str> = classes.keys().map(String::as_str).collect();
        return Err(ApiError::Invalid(format!(
            "isolation: {isolation:?} is not a runtime class of this server; configured: {}",
            configured.join(", ")
        )));
    }
    let quotas = quotas_in(&req.quotas);
    quotas.validate()?;
    let now = now_ms();
    // The namespace's host ids come from the host registry, so no other server maps onto them.
    let ids = ctx.state.host_ids.allocate(&req.name).await?;
    let row = NamespaceRow {
        name: req.name,
        isolation,
        quotas,
        created_at_ms: now,
        updated_at_ms: now,
        id_start: ids.host_start,
        id_count: ids.size,
        incarnation: bulkhead_core::ids::new_incarnation(),
    };
    if let Err(e) = ctx.state.store.create_namespace(&row).await {
        ctx.state.host_ids.release(ids).await;
        return Err(e.into());
    }
    if let Err(e) = ctx.state.host_ids.confirm(&row).await {
        let _ = ctx.state.store.delete_namespace(&row.name).await;
        return Err(e.into());
    }
    // A name can be reused after a delete: the new incarnation starts with nothing cached of the
    // old one (its logs and metrics are keyed by incarnation and start empty anyway).
    ctx.state.namespaces.remove(&row.name);
    ctx.state.keys.evict_namespace(&row.name);
    ctx.state.identity.forget(&row.name);
    Created::json(StatusCode::CREATED, &namespace_out(&row))
}

/// List namespaces: all of them for the admin, its own for a key.
#[utoipa::path(get, path = "/v1/namespaces", tag = "namespaces", params(PageParams),
    responses((status = 200, body = Page<Namespace>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(ctx: Ctx, QueryParams(page): QueryParams<PageParams>) -> ApiResult<Json<Page<Namespace>>> {
    ctx.authorize(Action::NamespaceList, &Target::Platform)?;
    let limit = page.limit()?;
    let after = page.after('n')?;
    // The store reads only the principal's own namespace for a namespace's principal; each one
    // read is decided too.
    let only = ctx.principal.namespace();
    let rows = ctx.state.store.list_namespaces(after.as_deref(), limit, only).await?;
    let next_cursor = next_cursor(&rows, limit, 'n', |r| r.name.clone());
    let items = rows
        .iter()
        .filter(|r| ctx.sees(Action::NamespaceList, &Target::namespace(&r.name)))
        .map(namespace_out)
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// What a namespace uses now: active sandboxes, allocated and written disk.
async fn usage(ctx: &Ctx, ns: &str) -> ApiResult<bulkhead_api::NamespaceUsage> {
    let u = ctx.state.store.namespace_use(ns).await?;
    let disk_used_bytes = crate::service::filesystems::disk_used(&ctx.state, &u.filesystem_ids);
    Ok(bulkhead_api::NamespaceUsage {
        sandboxes: u.sandboxes,
        cpu_millis: u.cpu_millis,
        memory_bytes: u.memory_bytes,
        disk_bytes: u.disk_bytes,
        disk_used_bytes,
    })
}

/// Get a namespace.
#[utoipa::path(get, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path)),
    responses((status = 200, body = Namespace), ReadErrors))]
pub async fn get(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Json<Namespace>> {
    ctx.authorize(Action::NamespaceGet, &Target::namespace(&ns))?;
    let row = load_namespace(&ctx, &ns).await?;
    let mut out = namespace_out(&row);
    out.usage = Some(usage(&ctx, &ns).await?);
    Ok(Json(out))
}

/// Change a namespace's quotas (platform admin).
#[utoipa::path(patch, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path)),
    request_body = UpdateNamespace,
    responses((status = 200, body = Namespace), CheckedErrors))]
pub async fn update(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Namespace>> {
    ctx.authorize(Action::NamespaceUpdate, &Target::namespace(&ns))?;
    let req: UpdateNamespace = json(&headers, &body)?;
    let patch = req.quotas.as_ref().map(quota_patch_in).unwrap_or_default();
    if patch.is_empty() {
        return Err(ApiError::Invalid("quotas: name at least one quota to change".into()));
    }
    let row = load_namespace(&ctx, &ns).await?;
    let quotas = row.quotas.apply(&patch)?;
    if let Some(q) = &req.quotas {
        ctx.audit_detail("quotas", serde_json::to_value(q).unwrap_or_default());
    }
    let row = ctx
        .state
        .store
        .update_namespace_quotas(&ns, &quotas, now_ms())
        .await?
        .ok_or_else(|| ApiError::namespace_not_found(&ns))?;
    ctx.state.namespaces.put(row.clone());
    // The kernel enforces the new limits on the namespace's cgroup at once.
    ctx.state.runtime.ensure_namespace(&ns, &crate::sandboxes::namespace_limits(&row)).await?;
    Ok(Json(namespace_out(&row)))
}

/// Delete a namespace and everything it owns (platform admin).
#[utoipa::path(delete, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path)),
    responses((status = 204, description = "Deleted"), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::NamespaceDelete, &Target::namespace(&ns))?;
    // The namespace's own chain goes with it; its deletion is recorded on the platform's.
    ctx.audit_chain(bulkhead_core::audit::PLATFORM_CHAIN);
    let Some(row) = ctx.state.store.get_namespace(&ns).await? else {
        return Err(ApiError::namespace_not_found(&ns));
    };
    ctx.state.namespaces.remove(&ns);
    crate::sandboxes::destroy_namespace(&ctx.state, &ns).await?;
    if !ctx.state.store.delete_namespace(&ns).await? {
        return Err(ApiError::namespace_not_found(&ns));
    }
    // Nothing on the host is owned by the namespace's ids any more: its range goes back.
    ctx.state.host_ids.release(crate::sandboxes::id_range(&row)?).await;
    ctx.state.keys.evict_namespace(&ns);
    ctx.state.namespaces.remove(&ns);
    // Everything kept per incarnation outside the store goes with it.
    ctx.state.logs.forget(&row.incarnation).await;
    ctx.state.metrics.forget(&row.incarnation);
    ctx.state.identity.forget(&ns);
    Ok(StatusCode::NO_CONTENT)
}
