//! Reading and verifying audit chains: a namespace's own, and the platform's (admin only).

use axum::Json;
use bulkhead_api::{AuditParams, AuditRecord, AuditVerification, ErrorBody, Page};
use bulkhead_core::audit::PLATFORM_CHAIN;
use bulkhead_core::{Action, Target};

use super::answers::ReadErrors;
use super::load_namespace;
use crate::auth::Ctx;
use crate::convert::audit_out;
use crate::error::{ApiError, ApiResult};
use crate::extract::{next_cursor, PageParams, Paging, PathParams, QueryParams};
use crate::service::records::AuditQuery;
use crate::time::parse_rfc3339;

async fn list_chain(ctx: &Ctx, chain: &str, params: AuditParams) -> ApiResult<Json<Page<AuditRecord>>> {
    let page = PageParams { limit: params.limit, cursor: params.cursor };
    let limit = page.limit()?;
    let after_seq = match page.after('a')? {
        None => 0,
        Some(s) => s.parse().map_err(|_| ApiError::Invalid("cursor: not a cursor of this list".into()))?,
    };
    if let Some(a) = &params.action {
        if a.len() > 128 {
            return Err(ApiError::Invalid("action: at most 128 characters".into()));
        }
    }
    let query = AuditQuery {
        action: params.action,
        since_ms: params.since.as_deref().map(|s| parse_rfc3339("since", s)).transpose()?,
        until_ms: params.until.as_deref().map(|s| parse_rfc3339("until", s)).transpose()?,
        after_seq,
        limit,
    };
    let records = crate::service::audit::list(&ctx.state, chain, &query).await?;
    let next_cursor = next_cursor(&records, limit, 'a', |r| r.seq.to_string());
    Ok(Json(Page { items: records.iter().map(audit_out).collect(), next_cursor }))
}

async fn verify_chain(ctx: &Ctx, chain: &str) -> ApiResult<Json<AuditVerification>> {
    let v = crate::service::audit::verify(&ctx.state, chain).await?;
    if !v.ok {
        tracing::warn!(chain, first_bad_seq = v.first_bad_seq, "audit chain failed verification");
    }
    Ok(Json(AuditVerification {
        ok: v.ok,
        records: v.records,
        first_bad_seq: v.first_bad_seq,
        pruned: v.pruned,
        pruned_at: v.pruned_at_ms.map(crate::time::rfc3339),
    }))
}

/// A namespace's audit records, oldest first.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/audit", tag = "audit", params(("ns" = String, Path), AuditParams),
    responses((status = 200, body = Page<AuditRecord>), (status = 400, body = ErrorBody), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(params): QueryParams<AuditParams>,
) -> ApiResult<Json<Page<AuditRecord>>> {
    ctx.authorize(Action::AuditRead, &Target::namespace(&ns))?;
    load_namespace(&ctx, &ns).await?;
    let Json(mut page) = list_chain(&ctx, &ns, params).await?;
    // A key limited to projects does not read the records of what it may not see (a sandbox's
    // exec argv, say); the cursor still moves past them.
    let mut visible = super::scope::Visible::new(ctx.decider(), Action::AuditRead);
    let mut items = Vec::with_capacity(page.items.len());
    for r in page.items {
        // A sandbox's egress record names the host it tried to reach; it is the sandbox's.
        let subject = match (r.resource.starts_with("host:"), r.principal.starts_with("sandbox:")) {
            (true, true) => &r.principal,
            _ => &r.resource,
        };
        if visible.named(&ctx.state, &ns, subject).await {
            items.push(r);
        }
    }
    page.items = items;
    Ok(Json(page))
}

/// Recompute a namespace's audit chain.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/audit/verify", tag = "audit", params(("ns" = String, Path)),
    responses((status = 200, body = AuditVerification), ReadErrors))]
pub async fn verify(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Json<AuditVerification>> {
    ctx.authorize(Action::AuditVerify, &Target::namespace(&ns))?;
    load_namespace(&ctx, &ns).await?;
    verify_chain(&ctx, &ns).await
}

/// The platform's audit records (namespace creation and deletion, failed authentication).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page<AuditRecord>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn platform_list(
    ctx: Ctx,
    QueryParams(params): QueryParams<AuditParams>,
) -> ApiResult<Json<Page<AuditRecord>>> {
    ctx.authorize(Action::PlatformAuditRead, &Target::Platform)?;
    list_chain(&ctx, PLATFORM_CHAIN, params).await
}

/// Recompute the platform's audit chain.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn platform_verify(ctx: Ctx) -> ApiResult<Json<AuditVerification>> {
    ctx.authorize(Action::PlatformAuditVerify, &Target::Platform)?;
    verify_chain(&ctx, PLATFORM_CHAIN).await
}
