//! A namespace's metered usage over a period, in buckets.

use axum::Json;
use bulkhead_api::{ErrorBody, UsageBucket, UsageReport, UsageTotals};
use bulkhead_core::Action;
use bulkhead_store::UsageDelta;
use serde::Deserialize;

use super::load_namespace;
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::time::{now_ms, parse_rfc3339, rfc3339};

/// The period and bucket size of a usage report.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// RFC 3339; default 24 hours before `to`.
    pub from: Option<String>,
    /// RFC 3339; default now.
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<String>,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

fn add(total: &mut UsageDelta, d: &UsageDelta) {
    total.cpu_ns = total.cpu_ns.saturating_add(d.cpu_ns);
    total.memory_byte_ms = total.memory_byte_ms.saturating_add(d.memory_byte_ms);
    total.sandbox_ms = total.sandbox_ms.saturating_add(d.sandbox_ms);
    total.memory_peak_bytes = total.memory_peak_bytes.max(d.memory_peak_bytes);
    total.exec_count = total.exec_count.saturating_add(d.exec_count);
    total.quota_rejections = total.quota_rejections.saturating_add(d.quota_rejections);
    total.io_read_bytes = total.io_read_bytes.saturating_add(d.io_read_bytes);
    total.io_write_bytes = total.io_write_bytes.saturating_add(d.io_write_bytes);
}

fn totals(d: &UsageDelta) -> UsageTotals {
    UsageTotals {
        cpu_seconds: d.cpu_ns as f64 / 1e9,
        memory_byte_seconds: d.memory_byte_ms as f64 / 1e3,
        sandbox_seconds: d.sandbox_ms as f64 / 1e3,
        memory_peak_bytes: d.memory_peak_bytes,
        exec_count: d.exec_count,
        quota_rejections: d.quota_rejections,
        io_read_bytes: d.io_read_bytes,
        io_write_bytes: d.io_write_bytes,
    }
}

/// Metered usage of a namespace: cpu, memory over time, sandbox time, peaks, execs, quota
/// refusals, from the kernel's counters; and its disk now.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/usage", tag = "usage", params(("ns" = String, Path), UsageParams),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(params): QueryParams<UsageParams>,
) -> ApiResult<Json<UsageReport>> {
    ctx.authorize(Action::UsageRead, Some(&ns), format!("usage:{ns}"))?;
    let to = match &params.to {
        Some(t) => parse_rfc3339("to", t)?,
        None => now_ms(),
    };
    let from = match &params.from {
        Some(f) => parse_rfc3339("from", f)?,
        None => to - DAY_MS,
    };
    if from >= to {
        return Err(ApiError::Invalid("from: must be before to".into()));
    }
    let granularity = params.granularity.clone().unwrap_or_else(|| "hour".to_owned());
    let (width, max_range) = match granularity.as_str() {
        "minute" => (60_000, 7 * DAY_MS),
        "hour" => (3_600_000, 400 * DAY_MS),
        "day" => (DAY_MS, 3660 * DAY_MS),
        _ => return Err(ApiError::Invalid("granularity: must be minute, hour or day".into())),
    };
    if to - from > max_range {
        return Err(ApiError::Invalid(format!(
            "from: at most {} days before to at {granularity} granularity",
            max_range / DAY_MS
        )));
    }
    load_namespace(&ctx, &ns).await?;
    let rows = ctx.state.store.usage(&ns, from - from.rem_euclid(60_000), to).await?;
    let mut total = UsageDelta::default();
    let mut buckets: Vec<(i64, UsageDelta)> = Vec::new();
    for row in &rows {
        add(&mut total, &row.usage);
        let start = row.bucket_ms - row.bucket_ms.rem_euclid(width);
        match buckets.last_mut() {
            Some((s, d)) if *s == start => add(d, &row.usage),
            _ => {
                let mut d = UsageDelta::default();
                add(&mut d, &row.usage);
                buckets.push((start, d));
            }
        }
    }
    let u = ctx.state.store.namespace_use(&ns).await?;
    let disk_used_bytes =
        u.filesystem_ids.iter().map(|id| ctx.state.storage.usage(id).map(|x| x.used_bytes).unwrap_or(0)).sum();
    Ok(Json(UsageReport {
        namespace: ns,
        from: rfc3339(from),
        to: rfc3339(to),
        granularity,
        totals: totals(&total),
        disk_bytes: u.disk_bytes,
        disk_used_bytes,
        egress_bytes: 0,
        buckets: buckets.iter().map(|(s, d)| UsageBucket { start: rfc3339(*s), usage: totals(d) }).collect(),
    }))
}
