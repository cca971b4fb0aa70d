//! `/healthz`: unauthenticated liveness, with the version.

use axum::Json;
use bulkhead_api::Health;

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", security(),
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}
