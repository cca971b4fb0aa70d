//! Projects: permission boundaries for filesystems inside a namespace.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{CreateProject, ErrorBody, Page, Project};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{validate, Action, Target};

use super::answers::{ConflictErrors, GuardedErrors, ReadErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::service::projects;
use crate::service::records::ProjectRow;
use crate::time::{now_ms, rfc3339};

fn project_out(p: &ProjectRow) -> Project {
    Project {
        id: p.id.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        created_at: rfc3339(p.created_at_ms),
    }
}

/// Create a project.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/projects", tag = "projects", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateProject,
    responses((status = 201, body = Project), ConflictErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::ProjectCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, create_project).await
}

async fn create_project(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let req: CreateProject = json(&headers, &body)?;
    validate::name("name", &req.name)?;
    // A project is made outside every project: a key limited to projects cannot.
    ctx.require_or(Action::ProjectCreate, &Target::project(&ns, None), || {
        ApiError::Forbidden("a key limited to projects cannot create projects".into())
    })?;
    load_namespace(&ctx, &ns).await?;
    let row = ProjectRow { id: ids::new_id(prefix::PROJECT), namespace: ns, name: req.name, created_at_ms: now_ms() };
    projects::create(&ctx.state, &row).await?;
    ctx.audit_resource(format!("project:{}", row.id));
    ctx.audit_detail("name", row.name.as_str());
    Created::json(StatusCode::CREATED, &project_out(&row))
}

/// List the projects this principal may see.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/projects", tag = "projects", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Project>), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Project>>> {
    ctx.authorize(Action::ProjectList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| projects::list(&ctx.state, &ns, after, limit).await).await?;
    let items = rows
        .iter()
        .filter(|p| ctx.sees(Action::ProjectList, &Target::project(&ns, Some(&p.id))))
        .map(project_out)
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Delete a project; refused while filesystems belong to it.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/projects/{id}", tag = "projects",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 409, body = ErrorBody), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::ProjectDelete, &Target::project(&ns, Some(&id)))?;
    load_namespace(&ctx, &ns).await?;
    let not_found = || ApiError::NotFound(format!("project {id:?} not found"));
    if !ids::is_id(prefix::PROJECT, &id) {
        return Err(not_found());
    }
    if !projects::delete(&ctx.state, &ns, &id).await? {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
