//! A namespace's identity and permissions: its single sign-on provider, its Cedar policies, the
//! schema they are checked against, and `authz/explain`, which answers how a request would be
//! decided and by which policies.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::{CreatePolicy, ErrorBody, ExplainRequest, ExplainResult, IdentityConfig, Page, Policy};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{validate, Action, Decision, Principal, Target};
use bulkhead_policy::PrincipalName;

use super::answers::{CheckedErrors, ConflictErrors, GuardedErrors};
use super::filesystems::filesystem_target;
use super::sandboxes::sandbox_target;
use super::{list_page, load_namespace};
use crate::auth::{Ctx, Decider};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::identity::{oidc_settings, MAX_POLICIES};
use crate::service::records::{PolicyRow, SandboxStatus};
use crate::service::{egress, filesystems, namespaces, policies, sandboxes};
use crate::time::{now_ms, rfc3339};

/// The namespace's single sign-on settings (`{"oidc": null}` when none).
#[utoipa::path(get, path = "/v1/namespaces/{ns}/identity", tag = "identity", params(("ns" = String, Path)),
    responses((status = 200, body = IdentityConfig), GuardedErrors))]
pub async fn get(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Json<IdentityConfig>> {
    ctx.authorize(Action::IdentityGet, &Target::namespace(&ns))?;
    load_namespace(&ctx, &ns).await?;
    Ok(Json(crate::identity::identity_config(&ctx.state, &ns).await?))
}

/// Sets the namespace's OpenID Connect provider (owner). The provider is contacted when its
/// first token arrives, not here.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/identity", tag = "identity", params(("ns" = String, Path)),
    request_body = IdentityConfig,
    responses((status = 200, body = IdentityConfig), CheckedErrors))]
pub async fn set(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<IdentityConfig>> {
    ctx.authorize(Action::IdentitySet, &Target::namespace(&ns))?;
    let req: IdentityConfig = json(&headers, &body)?;
    if let Some(oidc) = &req.oidc {
        // The issuer's shape, and its address when it is one: a tenant may not point the server
        // at loopback, private, link-local or metadata addresses the operator did not allow.
        oidc_settings(oidc, &ctx.state.config.outbound.policy).map_err(ApiError::Invalid)?;
        if oidc.audience.is_empty() || oidc.audience.len() > 256 {
            return Err(ApiError::Invalid("oidc.audience: 1 to 256 characters".into()));
        }
        if let Some(id) = &oidc.client_id {
            if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::Invalid("oidc.client_id: 1 to 256 printable ASCII characters".into()));
            }
        }
        if oidc.groups_claim.is_empty() || oidc.groups_claim.len() > 128 {
            return Err(ApiError::Invalid("oidc.groups_claim: 1 to 128 characters".into()));
        }
        if oidc.role_mappings.is_empty() || oidc.role_mappings.len() > 256 {
            return Err(ApiError::Invalid("oidc.role_mappings: 1 to 256 groups".into()));
        }
        if oidc.role_mappings.keys().any(|g| g.is_empty() || g.len() > 256) {
            return Err(ApiError::Invalid("oidc.role_mappings: group names of 1 to 256 characters".into()));
        }
        ctx.audit_detail("issuer", oidc.issuer.as_str());
    }
    load_namespace(&ctx, &ns).await?;
    let text = req
        .oidc
        .as_ref()
        .map(|_| serde_json::to_string(&req))
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    policies::put_identity(&ctx.state, &ns, text.as_deref()).await?;
    Ok(Json(req))
}

fn policy_out(p: &PolicyRow) -> Policy {
    Policy { id: p.id.clone(), name: p.name.clone(), policy: p.text.clone(), created_at: rfc3339(p.created_at_ms) }
}

/// Adds a Cedar policy to the namespace (owner). It is validated against the schema and must
/// compile together with the namespace's other policies; a bad one is a 400 carrying Cedar's
/// message.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/policies", tag = "identity", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreatePolicy,
    responses((status = 201, body = Policy), (status = 429, body = ErrorBody), ConflictErrors))]
pub async fn create_policy(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::PolicyCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, create_policy_once).await
}

async fn create_policy_once(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let req: CreatePolicy = json(&headers, &body)?;
    validate::name("name", &req.name)?;
    let cedar = |e: bulkhead_policy::PolicyError| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        ApiError::Invalid(format!("policy: {msg}"))
    };
    ctx.state.identity.engine.check_policy(&req.policy).map_err(cedar)?;
    load_namespace(&ctx, &ns).await?;
    let row = PolicyRow {
        id: ids::new_id(prefix::POLICY),
        namespace: ns.clone(),
        name: req.name,
        text: req.policy,
        created_at_ms: now_ms(),
    };
    // The whole set must still compile (ids are unique, nothing clashes).
    let mut custom = policies::all(&ctx.state, &ns).await?;
    custom.push((row.id.clone(), row.text.clone()));
    ctx.state.identity.engine.compile(&custom).map_err(cedar)?;
    policies::create(&ctx.state, &row, MAX_POLICIES).await?;
    ctx.audit_resource(format!("policy:{}", row.id));
    ctx.audit_detail("name", row.name.as_str());
    Created::json(StatusCode::CREATED, &policy_out(&row))
}

/// The namespace's own policies (the built-in ones are at `GET /v1/policy-schema`'s side, in
/// the documentation).
#[utoipa::path(get, path = "/v1/namespaces/{ns}/policies", tag = "identity", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Policy>), GuardedErrors))]
pub async fn list_policies(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Policy>>> {
    ctx.authorize(Action::PolicyList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| policies::list(&ctx.state, &ns, after, limit).await).await?;
    Ok(Json(Page { items: rows.iter().map(policy_out).collect(), next_cursor }))
}

/// Removes a policy (owner); it stops deciding at once.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/policies/{id}", tag = "identity",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "Deleted"), GuardedErrors))]
pub async fn delete_policy(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::PolicyDelete, &Target::policy(&ns, &id))?;
    load_namespace(&ctx, &ns).await?;
    if !ids::is_id(prefix::POLICY, &id) || !policies::delete(&ctx.state, &ns, &id).await? {
        return Err(ApiError::NotFound(format!("policy {id:?} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// How the namespace's policies would decide a request, and which policies decide it.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/authz/explain", tag = "identity", params(("ns" = String, Path)),
    request_body = ExplainRequest,
    responses((status = 200, body = ExplainResult), CheckedErrors))]
pub async fn explain(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ExplainResult>> {
    ctx.authorize(Action::AuthzExplain, &Target::namespace(&ns))?;
    let req: ExplainRequest = json(&headers, &body)?;
    let invalid = |field: &str, e: bulkhead_policy::RefError| ApiError::Invalid(format!("{field}: {e}"));
    let action = bulkhead_policy::parse_action(&req.action).map_err(|e| invalid("action", e))?;
    let name = bulkhead_policy::parse_principal(&req.principal).map_err(|e| invalid("principal", e))?;
    let mut target = bulkhead_policy::parse_resource(&req.resource, &ns).map_err(|e| invalid("resource", e))?;
    load_namespace(&ctx, &ns).await?;
    if let Target::Namespace { namespace: other } = &target {
        if *other != ns {
            return Err(ApiError::Invalid(format!("resource: namespace {other:?} is not this namespace")));
        }
    }
    // What the server knows of the named principal and resource, as a real request would see it.
    let namespace = ns.clone();
    let (principal, role) = match name {
        PrincipalName::Key(id) => {
            let key = namespaces::get_key(&ctx.state, &ns, &id)
                .await?
                .ok_or_else(|| ApiError::Invalid(format!("principal: namespace {ns} has no key {id}")))?;
            (Principal::Key { id, namespace, role: key.role, projects: key.projects }, Some(key.role))
        }
        PrincipalName::Sandbox(id) => {
            let sbx = sandboxes::get(&ctx.state, &ns, &id)
                .await?
                .filter(|s| s.status != SandboxStatus::Deleted)
                // One the caller may not see (another project's) is answered like a missing one.
                .filter(|s| ctx.sees(Action::AuthzExplain, &sandbox_target(s)))
                .ok_or_else(|| ApiError::Invalid(format!("principal: namespace {ns} has no sandbox {id}")))?;
            (Principal::Sandbox { id, namespace, creator: sbx.creator, project: sbx.project, task: sbx.task }, None)
        }
        PrincipalName::User(sub) => {
            // A user's role comes from its token's groups; explain asks as the strongest role the
            // namespace maps any group to, unless the request names a role by a key.
            let config = crate::identity::identity_config(&ctx.state, &ns).await?;
            let role = config
                .oidc
                .as_ref()
                .and_then(|o| o.role_mappings.values().map(|r| crate::convert::role_in(*r)).min())
                .ok_or_else(|| {
                    ApiError::Invalid("principal: the namespace has no single sign-on to map users to roles".into())
                })?;
            (Principal::User { sub, namespace, role, email: None, groups: Vec::new() }, Some(role))
        }
    };
    // A resource the caller may not see (another project's) is explained as a missing one: its
    // scope unknown, so the answer never tells whether it exists.
    let known = match &target {
        Target::Filesystem { id, .. } => filesystems::get(&ctx.state, &ns, id).await?.map(|f| filesystem_target(&f)),
        Target::Sandbox { id, .. } => sandboxes::get(&ctx.state, &ns, id).await?.map(|s| sandbox_target(&s)),
        _ => None,
    };
    if let Some(known) = known.filter(|t| ctx.sees(Action::AuthzExplain, t)) {
        target = known;
    }
    // Egress: the port and protocol of the context, and for a sandbox the whole egress decision
    // (its allow, the ceiling, the addresses never reachable), exactly as the gateway asks it.
    if let Target::Host { host, port, protocol, .. } = &mut target {
        let c = req.context.clone().unwrap_or_default();
        let proto = c.protocol.as_deref().unwrap_or("tcp");
        match (proto, c.port) {
            ("tcp", Some(0)) => return Err(ApiError::Invalid("context.port: 1 to 65535".into())),
            ("tcp", p) => *port = p.unwrap_or(443),
            ("dns", None) => *port = 0,
            ("dns", Some(_)) => return Err(ApiError::Invalid("context.port: a dns query names no port".into())),
            (other, _) => {
                return Err(ApiError::Invalid(format!("context.protocol: {other:?} is not tcp or dns")));
            }
        }
        *protocol = proto.to_owned();
        if let Principal::Sandbox { id, .. } = &principal {
            let sbx = sandboxes::get(&ctx.state, &ns, id)
                .await?
                .ok_or_else(|| ApiError::Internal("sandbox vanished".into()))?;
            let row = load_namespace(&ctx, &ns).await?;
            let addr = host.parse::<std::net::IpAddr>().ok();
            let dest = bulkhead_core::egress::Dest {
                name: if addr.is_some() { None } else { Some(host.as_str()) },
                addr,
                port: (proto == "tcp").then_some(*port),
            };
            let protocol = if proto == "dns" { egress::Protocol::Dns } else { egress::Protocol::Tcp };
            let j = egress::judge(&ctx.state, &row, &sbx, &dest, protocol).await?;
            return Ok(Json(ExplainResult {
                decision: if j.allowed { "allow" } else { "deny" }.to_owned(),
                policies: j.policies,
                role: None,
                errors: j.errors,
                reason: j.reason,
            }));
        }
    } else if req.context.is_some() {
        return Err(ApiError::Invalid("context: only for network.connect on host:<name>".into()));
    }
    // The named principal's decision, with the namespace's policies (whoever asks), exactly as
    // a request of that principal would be decided; one outside its projects is a denial.
    let ruling = Decider::load(&ctx.state, principal).await?.ruling(action, &target);
    let (decision, policies) = match ruling.decision {
        Decision::Allow => ("allow", ruling.permits),
        Decision::Forbidden { policies } => ("deny", policies),
        Decision::NotFound(_) => ("deny", Vec::new()),
    };
    Ok(Json(ExplainResult {
        decision: decision.to_owned(),
        policies,
        role: role.map(crate::convert::role_out),
        errors: ruling.errors,
        reason: None,
    }))
}

/// The Cedar schema every policy is validated against: principals, actions and resources.
#[utoipa::path(get, path = "/v1/policy-schema", tag = "identity",
    responses((status = 200, description = "The Cedar schema", content_type = "text/plain", body = String), (status = 401, body = ErrorBody)))]
pub async fn schema(ctx: Ctx) -> ApiResult<Response> {
    // Any principal may read it; deciding `namespace.list` keeps every route authorized.
    ctx.authorize(Action::NamespaceList, &Target::Platform)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bulkhead_policy::schema_text()).into_response())
}
