//! Images: a namespace's own (import an archive, pull, list, get, delete) and the public ones the
//! platform admin publishes. A namespace sees its own images and the public ones; another
//! namespace's image answers exactly as a missing one does.
//!
//! An import's body (an OCI image layout or a `docker save` tar, plain, gzip or zstd) is spooled
//! to a file under the data dir, bounded by `--max-image-bytes` (413 past it), then unpacked and
//! verified on a blocking thread; the image is recorded only once whole. A pull
//! (`POST .../images` with `"source"`) fetches the image from its registry into a spool
//! directory (`service::image_pull`, which checks the destination first) and imports it the
//! same way.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use bulkhead_api::{ErrorBody, Image, Page, PublishPulledImage, PullImage, SnapshotSandbox};
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{validate, Action, Target};

use super::answers::{CheckedErrors, GuardedErrors, ReadErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, next_cursor, Listed, PageParams, Paging, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::limits::{self, Direction, PumpError, SpoolError};
use crate::service::image_pull::{self, Pull};
use crate::service::images::{self, Import};
use crate::service::records::{ImageConfig, ImageRow};
use crate::time::rfc3339;

/// An image as the API shows it.
pub fn image_out(row: &ImageRow) -> ApiResult<Image> {
    let ImageConfig { env, working_dir, user, entrypoint, cmd } = images::config_of(row)?;
    Ok(Image {
        id: row.id.clone(),
        name: row.name.clone(),
        namespace: row.namespace.clone(),
        public: row.namespace.is_none(),
        digest: row.digest.clone(),
        size_bytes: row.size_bytes,
        config: bulkhead_api::ImageConfig { env, working_dir, user, entrypoint, cmd },
        layers: row.layers.clone(),
        created_at: rfc3339(row.created_at_ms),
    })
}

/// Checks how a request names an image: a name (`[a-z0-9-]{1,63}`, starting with a letter) or
/// an `img_…` id; `field` names it in the 400.
pub fn check_ref(field: &str, name_or_id: &str) -> ApiResult<()> {
    if ids::is_id(prefix::IMAGE, name_or_id) {
        return Ok(());
    }
    validate::name(field, name_or_id).map_err(|e| ApiError::Invalid(format!("{e} (or an img_… id)")))
}

fn image_not_found(name_or_id: &str) -> ApiError {
    ApiError::NotFound(format!("image {name_or_id:?} not found"))
}

/// The image `name_or_id` as namespace `ns` sees it (its own, else a public one), decided
/// again by its name when the request named its id; 404 when it does not exist or is another
/// namespace's.
pub(crate) async fn load_image(ctx: &Ctx, ns: &str, name_or_id: &str) -> ApiResult<ImageRow> {
    load_namespace(ctx, ns).await?;
    if check_ref("name", name_or_id).is_err() {
        return Err(image_not_found(name_or_id));
    }
    let row = images::find(&ctx.state, Some(ns), name_or_id).await?.ok_or_else(|| image_not_found(name_or_id))?;
    if row.name != name_or_id {
        ctx.reauthorize(&Target::image(ns, &row.name))?;
    }
    Ok(row)
}

/// Import an image into the namespace: the body is an OCI image layout or a `docker save`
/// archive (tar, plain, gzip or zstd). Every blob is verified against its digest and layers are
/// unpacked under the archive rules (no path escapes, no devices, no setuid or setgid bits).
#[utoipa::path(put, path = "/v1/namespaces/{ns}/images/{name}/archive", tag = "images",
    params(("ns" = String, Path), ("name" = String, Path, description = "The new image's name")),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = Image),
        (status = 400, description = "Not a valid image, or a blob that does not match its digest", body = ErrorBody),
        (status = 409, description = "The namespace has an image of this name", body = ErrorBody),
        (status = 413, description = "Larger than the server's bound on an image", body = ErrorBody),
        CheckedErrors))]
pub async fn import(
    ctx: Ctx,
    PathParams((ns, name)): PathParams<(String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Image>)> {
    ctx.authorize(Action::ImageCreate, &Target::namespace(&ns))?;
    load_namespace(&ctx, &ns).await?;
    validate::name("name", &name)?;
    import_archive(&ctx, Import { namespace: Some(ns), name, source: "archive".into() }, body).await
}

/// Pull an image from an OCI distribution registry into the namespace:
/// `{"name", "source": "registry/repo:tag" | "registry/repo@sha256:<hex>", "credentials"?: {"secret"}}`.
/// https, except plain http to a loopback registry or one the operator lists with
/// `--insecure-registry`; the registry's addresses must pass the server's outbound rule
/// (`--outbound-allow`). Every blob is verified against its digest and the image is imported as
/// an archive is. Whatever the registry refuses or fails on is a 400 naming the registry and
/// its answer. The same route builds an image from `{"name", "from", "run"}`.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/images", tag = "images", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried pull safe")),
    request_body = bulkhead_api::CreateImage,
    responses((status = 201, body = Image),
        (status = 400, description = "A bad body or reference, a registry the outbound rule refuses, a malformed \
            credentials secret, or what the registry refused or failed on (credentials, a missing image, a blob \
            that does not match its digest, an unreachable registry)", body = ErrorBody),
        (status = 404, description = "The credentials secret does not exist", body = ErrorBody),
        (status = 409, description = "The namespace has an image of this name", body = ErrorBody),
        (status = 413, description = "Larger than the server's bound on an image", body = ErrorBody),
        CheckedErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::ImageCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, create_image).await
}

/// A pull, or a build (a body with `from` or `run` and no `source`).
async fn create_image(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let shape: serde_json::Value = json(&headers, &body)?;
    let is_build = shape
        .as_object()
        .is_some_and(|o| !o.contains_key("source") && (o.contains_key("from") || o.contains_key("run")));
    if is_build {
        return build_image(ctx, ns, headers, body).await;
    }
    let req: PullImage = json(&headers, &body)?;
    load_namespace(&ctx, &ns).await?;
    validate::name("name", &req.name)?;
    let secret = req.credentials.map(|c| c.secret);
    if let Some(secret) = &secret {
        validate::name("credentials.secret", secret)?;
        // The secret's name, never its value.
        ctx.audit_detail("secret", secret.clone());
    }
    let import = Import { namespace: Some(ns), name: req.name, source: req.source };
    pull(&ctx, Pull { import, secret }).await
}

/// Builds an image from `{"name", "from", "run"}` (see [`build`]).
async fn build_image(ctx: Ctx, ns: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let req: bulkhead_api::BuildImage = json(&headers, &body)?;
    load_namespace(&ctx, &ns).await?;
    validate::name("name", &req.name)?;
    check_ref("from", &req.from)?;
    ctx.audit_resource(format!("image:{}", req.name));
    ctx.audit_detail("from", req.from.clone());
    let row = build(&ctx, &ns, &req.name, &req.from, &req.run).await?;
    ctx.audit_detail("image", row.id.clone());
    ctx.audit_detail("digest", row.digest.clone());
    Created::json(StatusCode::CREATED, &image_out(&row)?)
}

/// Pull a public image every namespace may use (platform admin), anonymously:
/// `{"name", "source"}`; as a namespace's pull, but setuid and setgid bits are kept.
#[utoipa::path(post, path = "/v1/images", tag = "images",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried pull safe")),
    request_body = PublishPulledImage,
    responses((status = 201, body = Image),
        (status = 400, description = "A bad body or reference, a registry the outbound rule refuses, or what the \
            registry refused or failed on", body = ErrorBody),
        (status = 409, description = "A public image has this name", body = ErrorBody),
        (status = 413, description = "Larger than the server's bound on an image", body = ErrorBody),
        CheckedErrors))]
pub async fn create_public(ctx: Ctx, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    ctx.authorize(Action::PlatformImageCreate, &Target::Platform)?;
    let request_headers = headers.clone();
    idempotency::create(ctx, &request_headers, None, body, idempotency::replay_response, move |ctx, body| async move {
        let req: PublishPulledImage = json(&headers, &body)?;
        validate::name("name", &req.name)?;
        pull(&ctx, Pull { import: Import { namespace: None, name: req.name, source: req.source }, secret: None }).await
    })
    .await
}

/// Pulls and imports `pull`, answering the image (201).
async fn pull(ctx: &Ctx, pull: Pull) -> ApiResult<Created> {
    let ns = pull.import.namespace.as_deref();
    ctx.audit_resource(format!("image:{}", pull.import.name));
    ctx.audit_detail("source", pull.import.source.clone());
    if images::exists(&ctx.state, ns, &pull.import.name).await? {
        return Err(ApiError::Conflict(format!("image {:?} already exists", pull.import.name)));
    }
    let _stream = ctx.state.streams.acquire(&ctx.principal, ns.unwrap_or(""), Direction::Upload)?;
    let row = image_pull::pull(&ctx.state, &pull).await?;
    ctx.audit_detail("image", row.id.clone());
    ctx.audit_detail("digest", row.digest.clone());
    ctx.audit_detail("size_bytes", row.size_bytes);
    Created::json(StatusCode::CREATED, &image_out(&row)?)
}

/// The namespace's images and the public ones, by id.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/images", tag = "images", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Image>), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Image>>> {
    ctx.authorize(Action::ImageList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| images::list(&ctx.state, Some(&ns), after, limit).await)
            .await?;
    let items = rows
        .iter()
        .filter(|r| ctx.sees(Action::ImageList, &Target::image(&ns, &r.name)))
        .map(image_out)
        .collect::<ApiResult<_>>()?;
    Ok(Json(Page { items, next_cursor }))
}

/// An image of the namespace, or a public one, by name or id.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/images/{name}", tag = "images",
    params(("ns" = String, Path), ("name" = String, Path, description = "A name or an img_… id")),
    responses((status = 200, body = Image), ReadErrors))]
pub async fn get(ctx: Ctx, PathParams((ns, image)): PathParams<(String, String)>) -> ApiResult<Json<Image>> {
    ctx.authorize(Action::ImageGet, &Target::image(&ns, &image))?;
    let row = load_image(&ctx, &ns, &image).await?;
    Ok(Json(image_out(&row)?))
}

/// Delete one of the namespace's images, by name or id; refused (409) while a sandbox that has
/// not ended uses it. Its layers that no other image of the namespace names are removed.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/images/{name}", tag = "images",
    params(("ns" = String, Path), ("name" = String, Path, description = "A name or an img_… id")),
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "A sandbox uses it", body = ErrorBody), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams((ns, image)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::ImageDelete, &Target::image(&ns, &image))?;
    let row = load_image(&ctx, &ns, &image).await?;
    if row.namespace.is_none() {
        return Err(ApiError::Forbidden(format!(
            "image {:?} is public: only the platform admin deletes it (DELETE /v1/images/{})",
            row.name, row.name
        )));
    }
    ctx.audit_resource(format!("image:{}", row.name));
    ctx.audit_detail("image", row.id.clone());
    images::delete(&ctx.state, &row).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish a public image every namespace may use (platform admin): as a namespace's import,
/// but setuid and setgid bits are kept.
#[utoipa::path(put, path = "/v1/images/{name}/archive", tag = "images",
    params(("name" = String, Path, description = "The new image's name")),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 201, body = Image),
        (status = 400, description = "Not a valid image, or a blob that does not match its digest", body = ErrorBody),
        (status = 409, description = "A public image has this name", body = ErrorBody),
        (status = 413, description = "Larger than the server's bound on an image", body = ErrorBody),
        CheckedErrors))]
pub async fn publish(
    ctx: Ctx,
    PathParams(name): PathParams<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Image>)> {
    ctx.authorize(Action::PlatformImageCreate, &Target::Platform)?;
    validate::name("name", &name)?;
    import_archive(&ctx, Import { namespace: None, name, source: "archive".into() }, body).await
}

/// The public images (platform admin), by id.
#[utoipa::path(get, path = "/v1/images", tag = "images", params(PageParams),
    responses((status = 200, body = Page<Image>), GuardedErrors))]
pub async fn list_public(ctx: Ctx, QueryParams(page): QueryParams<PageParams>) -> ApiResult<Json<Page<Image>>> {
    ctx.authorize(Action::PlatformImageList, &Target::Platform)?;
    let limit = page.limit()?;
    let after = page.after(<ImageRow as Listed>::CURSOR)?;
    let rows = images::list(&ctx.state, None, after.as_deref(), limit).await?;
    let next_cursor = next_cursor(&rows, limit, <ImageRow as Listed>::CURSOR, |r| r.id.clone());
    Ok(Json(Page { items: rows.iter().map(image_out).collect::<ApiResult<_>>()?, next_cursor }))
}

/// Delete a public image (platform admin), by name or id; refused (409) while a sandbox that
/// has not ended uses it.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "A name or an img_… id")),
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "A sandbox uses it", body = ErrorBody), GuardedErrors))]
pub async fn delete_public(ctx: Ctx, PathParams(image): PathParams<String>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::PlatformImageDelete, &Target::Platform)?;
    let not_found = || image_not_found(&image);
    check_ref("image", &image).map_err(|_| not_found())?;
    let row = images::find(&ctx.state, None, &image).await?.ok_or_else(not_found)?;
    ctx.audit_resource(format!("image:{}", row.name));
    ctx.audit_detail("image", row.id.clone());
    images::delete(&ctx.state, &row).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Spools the body to a file (at most `--max-image-bytes`), imports it and answers the image.
async fn import_archive(ctx: &Ctx, import: Import, body: Body) -> ApiResult<(StatusCode, Json<Image>)> {
    let ns = import.namespace.as_deref();
    ctx.audit_resource(format!("image:{}", import.name));
    // A name taken answers before the body is read.
    if images::exists(&ctx.state, ns, &import.name).await? {
        return Err(ApiError::Conflict(format!("image {:?} already exists", import.name)));
    }
    let _stream = ctx.state.streams.acquire(&ctx.principal, ns.unwrap_or(""), Direction::Upload)?;
    let max = ctx.state.config.images.max_image_bytes;
    let (spooled, file) =
        images::spool_file(&ctx.state).map_err(|e| ApiError::Internal(format!("cannot spool an image upload: {e}")))?;
    let bytes = match limits::spool_body(body, file, max).await {
        Ok(n) => n,
        Err(SpoolError::Body(PumpError::TooLarge)) => {
            return Err(ApiError::PayloadTooLarge(format!(
                "body: the archive is larger than this server's bound on an image ({max} bytes)"
            )))
        }
        Err(SpoolError::Body(PumpError::Interrupted)) => {
            return Err(ApiError::Invalid("body: the upload was interrupted".into()))
        }
        Err(SpoolError::Write(e)) => return Err(ApiError::Internal(format!("cannot spool an image upload: {e}"))),
    };
    ctx.audit_detail("archive_bytes", bytes);
    let row = images::import_archive(&ctx.state, &import, &spooled.0).await?;
    drop(spooled);
    ctx.audit_detail("image", row.id.clone());
    ctx.audit_detail("digest", row.digest.clone());
    ctx.audit_detail("size_bytes", row.size_bytes);
    Ok((StatusCode::CREATED, Json(image_out(&row)?)))
}

/// Save a running sandbox's root as a new private image of the namespace: its changes to its
/// image (what it installed, wrote or removed, outside `/tmp`, `/run` and `/workspace`) as one
/// layer on top of the image's. Sandboxes created from it start with those files.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes/{id}/snapshot", tag = "images",
    params(("ns" = String, Path), ("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried snapshot safe")),
    request_body = SnapshotSandbox,
    responses((status = 201, body = Image),
        (status = 409, description = "The sandbox is not running or has no image root, or the name is taken", body = ErrorBody),
        (status = 413, description = "The changes are larger than the server's bound on an image", body = ErrorBody),
        CheckedErrors))]
pub async fn snapshot(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::ImageCreate, &Target::namespace(&ns))?;
    // A key is checked against the sandbox as well as the body: the same body sent for another
    // sandbox is another request.
    let fingerprint = Bytes::from([id.as_bytes(), b"\n", &body[..]].concat());
    idempotency::create_in(
        ctx,
        ns,
        headers,
        fingerprint,
        idempotency::replay_response,
        move |ctx, ns, headers, _| async move { snapshot_admitted(ctx, ns, id, headers, body).await },
    )
    .await
}

/// The snapshot once authorized.
async fn snapshot_admitted(ctx: Ctx, ns: String, id: String, headers: HeaderMap, body: Bytes) -> ApiResult<Created> {
    let req: SnapshotSandbox = json(&headers, &body)?;
    validate::name("name", &req.name)?;
    let namespace = load_namespace(&ctx, &ns).await?;
    // The sandbox as its readers see it: another namespace's, or one hidden by scope, is 404.
    let missing = || super::sandboxes::sandbox_not_found(&id);
    if !ids::is_id(prefix::SANDBOX, &id) {
        return Err(missing());
    }
    let sandbox = crate::service::sandboxes::get(&ctx.state, &ns, &id).await?.ok_or_else(missing)?;
    ctx.require_or(Action::SandboxGet, &super::sandboxes::sandbox_target(&sandbox), missing)?;
    ctx.audit_resource(format!("image:{}", req.name));
    ctx.audit_detail("sandbox", sandbox.id.clone());
    let row = crate::service::image_build::snapshot(&ctx.state, &namespace, &sandbox, &req.name).await?;
    ctx.audit_detail("image", row.id.clone());
    ctx.audit_detail("digest", row.digest.clone());
    Created::json(StatusCode::CREATED, &image_out(&row)?)
}

/// Builds image `name` of namespace `ns` (the caller authorized `image.create`): a sandbox of
/// image `from` is created as the caller (so `sandbox.create` and the namespace's quotas
/// apply), with the namespace's egress ceiling as what it may reach (each connection still
/// decided by the namespace's policies), each command of `run` runs in it in order as the
/// image's user, and its root is saved as `name` ([`image_build::snapshot`]); the sandbox is
/// deleted whatever happens. A command that fails (non-zero, killed, or past 30 minutes) is a
/// 400 naming it, with the end of its output.
pub(crate) async fn build(ctx: &Ctx, ns: &str, name: &str, from: &str, run: &[Vec<String>]) -> ApiResult<ImageRow> {
    if run.is_empty() || run.len() > 64 {
        return Err(ApiError::Invalid("run: between 1 and 64 commands".into()));
    }
    if let Some(i) = run.iter().position(|cmd| cmd.is_empty() || cmd.iter().any(|a| a.contains('\0'))) {
        return Err(ApiError::Invalid(format!("run[{i}]: a command is a non-empty argv without NUL bytes")));
    }
    ctx.require(Action::SandboxCreate, &Target::namespace(ns))?;
    let namespace = load_namespace(ctx, ns).await?;
    if images::exists(&ctx.state, Some(ns), name).await? {
        return Err(ApiError::Conflict(format!("image {name:?} already exists")));
    }
    let egress = namespace.egress.as_ref().filter(|c| !c.allow.is_empty()).map(|c| bulkhead_api::SandboxEgress {
        allow: c.allow.iter().map(|e| e.to_string()).collect(),
        credentials: Vec::new(),
    });
    let body = bulkhead_api::CreateSandbox { image: Some(from.to_owned()), egress, ..Default::default() };
    let body = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut json_headers = HeaderMap::new();
    json_headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    let created = super::sandboxes::create_admitted(ctx, ns, &json_headers, &body).await?;
    let id = serde_json::from_str::<serde_json::Value>(&created.body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .ok_or_else(|| ApiError::Internal("a build's sandbox has no id".into()))?;
    ctx.audit_resource(format!("image:{name}"));
    ctx.audit_detail("sandbox", id.clone());
    let sandbox = crate::service::sandboxes::get(&ctx.state, ns, &id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("the build's sandbox {id} is gone")))?;
    Ok(crate::service::image_build::run_and_snapshot(&ctx.state, &namespace, &sandbox, name, run).await?)
}
