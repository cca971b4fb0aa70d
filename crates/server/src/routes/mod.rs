//! The handlers, one module per resource. Each handler starts with [`crate::auth::Ctx`], names
//! its action through `ctx.authorize` before it reads a body or touches the store, and answers
//! wire types only.

pub mod agents;
pub mod answers;
pub mod audit;
pub mod filesystems;
pub mod fsdata;
pub mod health;
pub mod identity;
pub mod images;
pub mod keys;
pub mod logs;
pub mod metrics;
pub mod namespaces;
pub mod pools;
pub mod processes;
pub mod projects;
pub mod sandboxes;
pub mod scope;
pub mod secrets;
pub mod tasks;
pub mod usage;

use crate::service::records::NamespaceRow;

use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{next_cursor, Listed, PageParams, Paging};
use crate::state::AppState;

/// The namespace a request names, once authorized. Keys only ever reach their own namespace
/// here (authorization answered the others); for the admin a missing one is a 404.
pub async fn load_namespace(ctx: &Ctx, ns: &str) -> ApiResult<NamespaceRow> {
    let row = match ctx.state.namespaces.get(ns) {
        Some(row) => row,
        None => {
            let row = crate::service::namespaces::get(&ctx.state, ns)
                .await?
                .ok_or_else(|| ApiError::namespace_not_found(ns))?;
            ctx.state.namespaces.put(row.clone());
            row
        }
    };
    ctx.audit_chain(&row.name);
    Ok(row)
}

/// A place for one command (an exec, a streamed exec, a background process) of namespace `ns`,
/// held while it runs: one past the namespace's `max_concurrent_execs` is `429 rate_limited`.
pub async fn exec_slot(ctx: &Ctx, ns: &str) -> ApiResult<crate::ratelimit::Slot> {
    let row = load_namespace(ctx, ns).await?;
    take_slot(ctx, &row, crate::ratelimit::SlotKind::Exec)
}

/// A place for one command or create of namespace `row`, of which at most its
/// `max_concurrent_execs` may be in flight; a refusal is counted in the namespace's metrics.
pub fn take_slot(ctx: &Ctx, row: &NamespaceRow, kind: crate::ratelimit::SlotKind) -> ApiResult<crate::ratelimit::Slot> {
    ctx.state.rate_limits.acquire(&row.name, kind, row.quotas.max_concurrent_execs).map_err(|refused| {
        ctx.state.metrics.rate_limited(&crate::metrics::Tenant::of(row), kind.label());
        refused.into()
    })
}

/// One page of namespace `ns`'s `R`s as `page` asks: its `limit` and `cursor` read (400 when
/// wrong), the namespace loaded (404 when missing), the rows fetched by `fetch(after, limit)`.
/// Returns the rows, all of them (filtering by what the principal sees is the caller's), and
/// the cursor of the next page when this one is full.
pub async fn list_page<R: Listed, E: Into<ApiError>>(
    ctx: &Ctx,
    ns: &str,
    page: &PageParams,
    fetch: impl AsyncFnOnce(Option<&str>, u32) -> Result<Vec<R>, E>,
) -> ApiResult<(Vec<R>, Option<String>)> {
    let limit = page.limit()?;
    let after = page.after(R::CURSOR)?;
    load_namespace(ctx, ns).await?;
    let rows = fetch(after.as_deref(), limit).await.map_err(Into::into)?;
    let next_cursor = next_cursor(&rows, limit, R::CURSOR, R::position);
    Ok((rows, next_cursor))
}

/// Counts a create refused for a quota (by the handler's checks or the service's), then hands
/// the answer back.
pub async fn note_rejection<T>(state: &AppState, namespace: &str, result: ApiResult<T>) -> ApiResult<T> {
    if let Err(ApiError::QuotaExceeded(_)) = &result {
        crate::service::metering::note_quota_rejection(state, namespace).await;
    }
    result
}
