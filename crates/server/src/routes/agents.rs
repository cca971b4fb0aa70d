//! Agents and their versions: create, list, get, delete; push a bundle as a new version (a tar
//! of the agent's code with an `agent.json` at its root, plain, gzip or zstd), list versions,
//! deploy one and roll back. A version is immutable and content-addressed: the same bundle
//! pushed again answers the version it already is. Another namespace's agent answers as a
//! missing one does.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{Agent, AgentVersion, CreateAgent, Deploy, ErrorBody, Page};
use bulkhead_core::{validate, Action, Target};

use super::answers::{CheckedErrors, GuardedErrors, ReadErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::limits::{self, Direction, PumpError, SpoolError};
use crate::service::agents;
use crate::service::records::{AgentRow, VersionRow};
use crate::time::rfc3339;

pub(crate) fn agent_out(row: &AgentRow) -> Agent {
    let n = row.deploys.len();
    Agent {
        id: row.id.clone(),
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        active_version: row.active().map(str::to_owned),
        previous_version: (n >= 2).then(|| row.deploys[n - 2].clone()),
        created_at: rfc3339(row.created_at_ms),
        updated_at: rfc3339(row.updated_at_ms),
    }
}

fn version_out(agent: &AgentRow, row: &VersionRow) -> ApiResult<AgentVersion> {
    Ok(AgentVersion {
        id: row.id.clone(),
        agent: agent.name.clone(),
        digest: row.digest.clone(),
        size_bytes: row.size_bytes,
        manifest: agents::manifest_of(row)?,
        active: agent.active() == Some(row.id.as_str()),
        created_at: rfc3339(row.created_at_ms),
    })
}

/// The agent a request names (a name or an `agt_…` id), authorized for the request's action:
/// 404 when the namespace has none of that name.
pub(crate) async fn load_agent(ctx: &Ctx, ns: &str, agent: &str) -> ApiResult<AgentRow> {
    load_namespace(ctx, ns).await?;
    let row = agents::find(&ctx.state, ns, agent)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {agent:?} not found")))?;
    ctx.reauthorize(&Target::agent(ns, &row.name))?;
    ctx.audit_resource(format!("agent:{}", row.name));
    Ok(row)
}

/// Create an agent: `{"name"}`. Push a version and deploy it before tasks run it.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/agents", tag = "agents", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateAgent,
    responses((status = 201, body = Agent),
        (status = 409, description = "The name is taken, or the Idempotency-Key is in use", body = ErrorBody),
        CheckedErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::AgentCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, |ctx, ns, headers, body| async move {
        let req: CreateAgent = json(&headers, &body)?;
        validate::name("name", &req.name)?;
        load_namespace(&ctx, &ns).await?;
        ctx.audit_resource(format!("agent:{}", req.name));
        let row = agents::create(&ctx.state, &ns, &req.name).await?;
        Created::json(StatusCode::CREATED, &agent_out(&row))
    })
    .await
}

/// The namespace's agents, by id.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/agents", tag = "agents", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Agent>), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Agent>>> {
    ctx.authorize(Action::AgentList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| ctx.state.store.list_agents(&ns, after, limit).await).await?;
    let items =
        rows.iter().filter(|r| ctx.sees(Action::AgentList, &Target::agent(&ns, &r.name))).map(agent_out).collect();
    Ok(Json(Page { items, next_cursor }))
}

/// One agent, by name or id.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/agents/{agent}", tag = "agents",
    params(("ns" = String, Path), ("agent" = String, Path, description = "A name or an agt_… id")),
    responses((status = 200, body = Agent), GuardedErrors))]
pub async fn get(ctx: Ctx, PathParams((ns, agent)): PathParams<(String, String)>) -> ApiResult<Json<Agent>> {
    ctx.authorize(Action::AgentGet, &Target::agent(&ns, &agent))?;
    Ok(Json(agent_out(&load_agent(&ctx, &ns, &agent).await?)))
}

/// Delete an agent with its versions and its ended tasks; refused (409) while a task of it has
/// not ended.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/agents/{agent}", tag = "agents",
    params(("ns" = String, Path), ("agent" = String, Path, description = "A name or an agt_… id")),
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "A task of the agent has not ended", body = ErrorBody), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams((ns, agent)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::AgentDelete, &Target::agent(&ns, &agent))?;
    let row = load_agent(&ctx, &ns, &agent).await?;
    agents::delete(&ctx.state, &row).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Push a version: the body is a tar (plain, gzip or zstd) of the agent's code with an
/// `agent.json` at its root (`command` and `protocol` required; see `AgentManifest`). It is
/// unpacked under the archive rules (no path escapes, links out, devices or setuid bits) and its
/// manifest validated (400 naming the field). 201 with a new version, 200 with the version the
/// same bundle already is. An `Idempotency-Key` is checked against the bundle's digest.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/agents/{agent}/versions", tag = "agents",
    params(("ns" = String, Path), ("agent" = String, Path, description = "A name or an agt_… id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried push safe")),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = AgentVersion), (status = 200, description = "The same bundle's version", body = AgentVersion),
        (status = 409, description = "The Idempotency-Key is in use, or was used with another bundle", body = ErrorBody),
        (status = 413, description = "Larger than the bound on a bundle", body = ErrorBody), CheckedErrors))]
pub async fn push(
    ctx: Ctx,
    PathParams((ns, agent)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ctx.authorize(Action::AgentVersionCreate, &Target::agent(&ns, &agent))?;
    let row = load_agent(&ctx, &ns, &agent).await?;
    let namespace = load_namespace(&ctx, &ns).await?;
    let stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    let max = agents::MAX_BUNDLE_BYTES.min(namespace.quotas.disk_bytes.max(1 << 20));
    let (spooled, file) =
        agents::spool(&ctx.state).map_err(|e| ApiError::Internal(format!("cannot spool a bundle upload: {e}")))?;
    match limits::spool_body(body, file, max).await {
        Ok(_) => {}
        Err(SpoolError::Body(PumpError::TooLarge)) => {
            return Err(ApiError::PayloadTooLarge(format!("body: the bundle is larger than {max} bytes")));
        }
        Err(SpoolError::Body(PumpError::Interrupted)) => {
            return Err(ApiError::Invalid("body: the upload was interrupted".into()))
        }
        Err(SpoolError::Write(e)) => return Err(ApiError::Internal(format!("cannot spool a bundle upload: {e}"))),
    }
    let digest = agents::digest(&spooled.0).await?;
    // The key is checked against what was pushed, and where.
    let fingerprint = Bytes::from(format!("{}\n{digest}", row.id));
    idempotency::create_in(
        ctx,
        ns,
        headers,
        fingerprint,
        idempotency::replay_response,
        move |ctx, _ns, _, _| async move {
            let _stream = stream;
            let (version, new) = agents::push(&ctx.state, &namespace, &row, &spooled.0, digest).await?;
            ctx.audit_detail("version", version.id.clone());
            ctx.audit_detail("digest", version.digest.clone());
            let status = if new { StatusCode::CREATED } else { StatusCode::OK };
            Created::json(status, &version_out(&row, &version)?)
        },
    )
    .await
}

/// The agent's versions, by id.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/agents/{agent}/versions", tag = "agents",
    params(("ns" = String, Path), ("agent" = String, Path, description = "A name or an agt_… id"), PageParams),
    responses((status = 200, body = Page<AgentVersion>), GuardedErrors))]
pub async fn versions(
    ctx: Ctx,
    PathParams((ns, agent)): PathParams<(String, String)>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<AgentVersion>>> {
    ctx.authorize(Action::AgentGet, &Target::agent(&ns, &agent))?;
    let row = load_agent(&ctx, &ns, &agent).await?;
    let (rows, next_cursor) = list_page(&ctx, &ns, &page, async |after, limit| {
        ctx.state.store.list_versions(&ns, &row.id, after, limit).await
    })
    .await?;
    let items = rows.iter().map(|v| version_out(&row, v)).collect::<ApiResult<_>>()?;
    Ok(Json(Page { items, next_cursor }))
}

/// Deploy a version: `{"version"}` becomes the one new tasks run. Running tasks keep theirs.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/agents/{agent}/deploy", tag = "agents",
    params(("ns" = String, Path), ("agent" = String, Path, description = "A name or an agt_… id")),
    request_body = Deploy,
    responses((status = 200, body = Agent),
        (status = 409, description = "The agent changed meanwhile", body = ErrorBody), CheckedErrors))]
pub async fn deploy(
    ctx: Ctx,
    PathParams((ns, agent)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Agent>> {
    ctx.authorize(Action::AgentDeploy, &Target::agent(&ns, &agent))?;
    let req: Deploy = json(&headers, &body)?;
    let row = load_agent(&ctx, &ns, &agent).await?;
    let version = agents::version_of(&ctx.state, &row, &req.version).await.map_err(|_| {
        ApiError::Invalid(format!("version: agent {} has no version {:?}", row.name, agents::shorten(&req.version, 80)))
    })?;
    ctx.audit_detail("version", version.id.clone());
    Ok(Json(agent_out(&agents::deploy(&ctx.state, &row, &version).await?)))
}

/// Roll back: the version deployed before the active one becomes active again (409 when there
/// is none).
#[utoipa::path(post, path = "/v1/namespaces/{ns}/agents/{agent}/rollback", tag = "agents",
    params(("ns" = String, Path), ("agent" = String, Path, description = "A name or an agt_… id")),
    responses((status = 200, body = Agent),
        (status = 409, description = "No previous version, or the agent changed meanwhile", body = ErrorBody),
        GuardedErrors))]
pub async fn rollback(ctx: Ctx, PathParams((ns, agent)): PathParams<(String, String)>) -> ApiResult<Json<Agent>> {
    ctx.authorize(Action::AgentDeploy, &Target::agent(&ns, &agent))?;
    let row = load_agent(&ctx, &ns, &agent).await?;
    let rolled = agents::rollback(&ctx.state, &row).await?;
    ctx.audit_detail("version", rolled.active().unwrap_or_default().to_owned());
    Ok(Json(agent_out(&rolled)))
}
