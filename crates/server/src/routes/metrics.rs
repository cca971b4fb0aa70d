//! The Prometheus endpoints: `GET /metrics` (platform admin) shows every namespace;
//! `GET /v1/namespaces/{ns}/metrics` shows one namespace's series and nothing else. The series
//! are kept by [`crate::metrics::Metrics`]; the gauges are read at scrape time.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bulkhead_api::ErrorBody;
use bulkhead_core::{Action, Target};

use super::answers::ReadErrors;
use crate::auth::Ctx;
use crate::error::ApiResult;
use crate::extract::PathParams;
use crate::service::metering;

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Every namespace's series, in the Prometheus text format (platform admin).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn platform(ctx: Ctx) -> ApiResult<Response> {
    ctx.authorize(Action::PlatformMetricsRead, &Target::Platform)?;
    let rows = metering::all_namespaces(&ctx.state).await?;
    let running = metering::running(&ctx.state, None).await?;
    Ok(text(ctx.state.metrics.render(&rows, false, &running)))
}

/// One namespace's series and nothing else.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/metrics", tag = "metrics", params(("ns" = String, Path)),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        ReadErrors))]
pub async fn namespace(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Response> {
    ctx.authorize(Action::MetricsRead, &Target::namespace(&ns))?;
    let row = super::load_namespace(&ctx, &ns).await?;
    let running = metering::running(&ctx.state, Some(&row.name)).await?;
    Ok(text(ctx.state.metrics.render(std::slice::from_ref(&row), true, &running)))
}
