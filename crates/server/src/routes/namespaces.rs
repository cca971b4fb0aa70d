//! Namespaces: the admin creates, changes and deletes them; a key sees its own.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{CreateNamespace, ErrorBody, Namespace, Page, Permissions, UpdateNamespace};
use bulkhead_core::{validate, Action, Target};

use super::answers::{CheckedErrors, GuardedErrors, ReadErrors};
use super::load_namespace;
use crate::auth::Ctx;
use crate::convert::{ceiling_in, namespace_out, placement_in, quota_patch_in, quotas_in};
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, next_cursor, PageParams, Paging, PathParams, QueryParams};
use crate::idempotency::{self, replay_response, Created};
use crate::service::{namespaces, placement};

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
    let placement = req.placement.as_ref().map(placement_in).transpose()?.unwrap_or(placement::Request::Shared);
    if let Some(p) = &req.placement {
        ctx.audit_detail("placement", serde_json::to_value(p).unwrap_or_default());
    }
    let egress = req.egress.as_ref().map(ceiling_in).transpose()?;
    if let Some(e) = &egress {
        ctx.audit_detail("egress", serde_json::to_value(e).unwrap_or_default());
    }
    let row = namespaces::create(&ctx.state, req.name, isolation, quotas, &placement, egress).await?;
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
    let rows = namespaces::list(&ctx.state, after.as_deref(), limit, only).await?;
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
    let u = namespaces::usage(&ctx.state, ns).await?;
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

/// Who the caller is and which actions it may take in the namespace at large (see
/// [`Permissions`]): what the console shows and hides.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/permissions", tag = "namespaces", params(("ns" = String, Path)),
    responses((status = 200, body = Permissions), ReadErrors))]
pub async fn permissions(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<Json<Permissions>> {
    ctx.authorize(Action::NamespaceGet, &Target::namespace(&ns))?;
    load_namespace(&ctx, &ns).await?;
    let actions = Action::ALL
        .into_iter()
        // Not `decide`: an action merely not offered is no denial to audit.
        .filter(|a| ctx.sees(*a, &representative(*a, &ns)))
        .map(|a| a.name().to_owned())
        .collect();
    let role = ctx.principal.role().map(crate::convert::role_out);
    Ok(Json(Permissions { principal: ctx.principal.audit_name(), role, actions }))
}

/// The target `action` is decided on for [`permissions`]: the platform for the platform's
/// actions, else something of namespace `ns` in general, in no project, of the resource type
/// Bulkhead's Cedar schema has the action apply to (a test asks Cedar for every action).
fn representative(action: Action, ns: &str) -> Target {
    use bulkhead_core::Scope;
    let namespace = ns.to_owned();
    match action {
        Action::NamespaceCreate
        | Action::NamespaceList
        | Action::PlatformAuditRead
        | Action::PlatformAuditVerify
        | Action::PlatformMetricsRead
        | Action::PlatformImageCreate
        | Action::PlatformImageList
        | Action::PlatformImageDelete
        | Action::PlatformPoolSet => Target::Platform,
        Action::SandboxGet
        | Action::SandboxDelete
        | Action::SandboxExec
        | Action::SandboxFileRead
        | Action::SandboxFileWrite => Target::Sandbox { namespace, id: String::new(), scope: Scope::Open },
        Action::FilesystemGet
        | Action::FilesystemResize
        | Action::FilesystemDelete
        | Action::FilesystemArchiveRead
        | Action::FilesystemArchiveWrite
        | Action::FilesystemFileRead
        | Action::FilesystemFileWrite
        | Action::FilesystemFileDelete
        | Action::FilesystemMountRw
        | Action::FilesystemMountRo => Target::Filesystem { namespace, id: String::new(), scope: Scope::Namespace },
        Action::TaskGet | Action::TaskEvent | Action::TaskCancel | Action::TaskStateRead | Action::TaskStateWrite => {
            Target::Task { namespace, id: String::new(), scope: Scope::Open }
        }
        Action::KeyCreate => Target::key(ns, None, None),
        Action::KeyGet | Action::KeyRevoke => Target::key(ns, Some(""), None),
        Action::AgentGet | Action::AgentDelete | Action::AgentVersionCreate | Action::AgentDeploy => {
            Target::agent(ns, "")
        }
        Action::ImageGet | Action::ImageDelete | Action::PoolSet => Target::image(ns, ""),
        Action::FilesystemCreate | Action::ProjectCreate => Target::project(ns, None),
        Action::ProjectDelete => Target::project(ns, Some("")),
        Action::SecretRead | Action::SecretDelete => Target::secret(ns, ""),
        Action::PolicyDelete => Target::policy(ns, ""),
        Action::NetworkConnect => Target::host(ns, "", 0, "tcp"),
        Action::TaskToolCall => Target::tool_call(ns, "", "", ""),
        _ => Target::namespace(ns),
    }
}

/// Change a namespace's quotas, its egress ceiling or its placement (platform admin). A narrower
/// ceiling holds for the next connection of every running sandbox; a new placement moves its
/// running sandboxes at once (`409` names what the host lacks for a dedicated one).
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
    if req.quotas.is_none() && req.egress.is_none() && req.placement.is_none() {
        return Err(ApiError::Invalid("body: name quotas, egress or placement to change".into()));
    }
    let patch = req.quotas.as_ref().map(quota_patch_in).unwrap_or_default();
    if req.quotas.is_some() && patch.is_empty() {
        return Err(ApiError::Invalid("quotas: name at least one quota to change".into()));
    }
    let egress = req.egress.as_ref().map(ceiling_in).transpose()?;
    let placement = req.placement.as_ref().map(placement_in).transpose()?;
    let mut row = load_namespace(&ctx, &ns).await?;
    let quotas = req.quotas.as_ref().map(|_| row.quotas.apply(&patch)).transpose()?;
    // Everything is checked before anything changes: the placement is admitted first (against
    // the quotas as they will be), and quotas below a kept reservation are refused.
    if let Some(placement) = placement {
        if let Some(p) = &req.placement {
            ctx.audit_detail("placement", serde_json::to_value(p).unwrap_or_default());
        }
        // Running sandboxes move at once.
        row = placement::update(&ctx.state, &ns, &placement, quotas.as_ref())
            .await?
            .ok_or_else(|| ApiError::namespace_not_found(&ns))?;
    } else if let Some(quotas) = &quotas {
        placement::check_quotas(&row.placement, quotas)?;
    }
    if let Some(quotas) = quotas {
        if let Some(q) = &req.quotas {
            ctx.audit_detail("quotas", serde_json::to_value(q).unwrap_or_default());
        }
        row = namespaces::update_quotas(&ctx.state, &ns, &quotas)
            .await?
            .ok_or_else(|| ApiError::namespace_not_found(&ns))?;
    }
    if let Some(egress) = egress {
        ctx.audit_detail("egress", serde_json::to_value(&egress).unwrap_or_default());
        // Running sandboxes are judged against the new ceiling from their next connection.
        row = namespaces::update_egress(&ctx.state, &ns, &egress)
            .await?
            .ok_or_else(|| ApiError::namespace_not_found(&ns))?;
    }
    Ok(Json(namespace_out(&row)))
}

/// Delete a namespace and everything it owns (platform admin).
#[utoipa::path(delete, path = "/v1/namespaces/{ns}", tag = "namespaces", params(("ns" = String, Path)),
    responses((status = 204, description = "Deleted"), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams(ns): PathParams<String>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::NamespaceDelete, &Target::namespace(&ns))?;
    // The namespace's own chain goes with it; its deletion is recorded on the platform's.
    ctx.audit_chain(bulkhead_core::audit::PLATFORM_CHAIN);
    let Some(row) = namespaces::get(&ctx.state, &ns).await? else {
        return Err(ApiError::namespace_not_found(&ns));
    };
    if !namespaces::delete(&ctx.state, &row).await? {
        return Err(ApiError::namespace_not_found(&ns));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every action's representative is of a resource type the schema lets it apply to: Cedar
    /// evaluates a policy that names every action on it without an error.
    #[test]
    fn every_representative_is_a_resource_the_action_applies_to() {
        let engine = bulkhead_policy::Engine::new();
        let set =
            engine.compile(&[("everything".into(), "permit(principal, action, resource);".into())]).expect("a policy");
        let owner = bulkhead_core::Principal::Key {
            id: "key_1".into(),
            namespace: "acme".into(),
            role: bulkhead_core::Role::Owner,
            projects: None,
        };
        for action in Action::ALL {
            let target = representative(action, "acme");
            // The engine asked directly: what is checked is the request's shape, not a decision.
            #[allow(clippy::disallowed_methods)]
            let ruling = bulkhead_policy::decide(&set, &owner, action, &target);
            assert!(ruling.errors.is_empty(), "{}: {:?}", action.name(), ruling.errors);
        }
    }
}
