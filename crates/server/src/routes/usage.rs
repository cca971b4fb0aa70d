//! A namespace's metered usage over a period, in buckets.

use axum::Json;
use bulkhead_api::{ErrorBody, UsageBucket, UsageParams, UsageReport, UsageTotals};
use bulkhead_core::{Action, Target};

use super::answers::ReadErrors;
use super::load_namespace;
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::service::metering;
use crate::service::records::UsageDelta;
use crate::time::{now_ms, parse_rfc3339, rfc3339};

const DAY_MS: i64 = 24 * 3600 * 1000;

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
        egress_bytes: d.egress_bytes_out.saturating_add(d.egress_bytes_in),
        egress_bytes_out: d.egress_bytes_out,
        egress_bytes_in: d.egress_bytes_in,
        egress_connections: d.egress_connections,
        egress_denied: d.egress_denied,
    }
}

/// Metered usage of a namespace: cpu, memory over time, sandbox time, peaks, execs, quota
/// refusals, from the kernel's counters; egress bytes (each direction), connections and denials,
/// from the egress gateway's counters; and its disk now.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/usage", tag = "usage", params(("ns" = String, Path), UsageParams),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), ReadErrors))]
pub async fn get(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(params): QueryParams<UsageParams>,
) -> ApiResult<Json<UsageReport>> {
    ctx.authorize(Action::UsageRead, &Target::namespace(&ns))?;
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
    let report = metering::usage(&ctx.state, &ns, from, to, width).await?;
    let sum = totals(&report.total);
    Ok(Json(UsageReport {
        namespace: ns,
        from: rfc3339(from),
        to: rfc3339(to),
        granularity,
        totals: sum,
        disk_bytes: report.disk_bytes,
        disk_used_bytes: report.disk_used_bytes,
        egress_bytes: sum.egress_bytes,
        buckets: report.buckets.iter().map(|(s, d)| UsageBucket { start: rfc3339(*s), usage: totals(d) }).collect(),
    }))
}
