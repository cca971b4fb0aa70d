//! Sandboxes of a namespace: create, list, get, delete, exec (buffered or streamed as NDJSON),
//! and files read and written inside the sandbox.

use std::collections::BTreeMap;

use crate::service::records::{files, ExecEvent as RtEvent, ExecSpec, Exit, RunFile, SandboxRow, SandboxStatus};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulkhead_api::SandboxFileParams as FileParams;
use bulkhead_api::{
    CreateSandbox, Encoding, ErrorBody, ExecEvent, ExecRequest, ExecResult, FileEntry, LogStream, Page, Sandbox,
    SandboxSecret,
};
use bulkhead_core::audit::AuditEvent;
use bulkhead_core::ids::{self, prefix};
use bulkhead_core::{Action, Decision, Principal, Scope, Target};

use super::answers::{CheckedErrors, ConflictErrors, GuardedErrors, ReadErrors};
use super::{list_page, load_namespace};
use crate::auth::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::extract::{json, PageParams, PathParams, QueryParams};
use crate::idempotency::{self, Created};
use crate::limits::{Direction, StreamGuard};
use crate::service::images;
use crate::service::records::RootSpec;
use crate::service::sandboxes::{self, Plan};
use crate::state::RootMode;
use crate::time::{now_ms, rfc3339};

const MIN_CPU_MILLIS: u64 = 10;
const MIN_MEMORY_BYTES: u64 = 16 << 20;
use crate::service::sandboxes::{DEFAULT_CPU_MILLIS, DEFAULT_DISK_BYTES, DEFAULT_MEMORY_BYTES, MIN_DISK_BYTES};
const DEFAULT_TTL_SECONDS: u64 = 3600;
const DEFAULT_EXEC_TIMEOUT: u64 = 60;
const MAX_EXEC_TIMEOUT: u64 = 3600;
/// The kernel's `MAX_ARG_STRLEN`: the longest argument `execve` takes, with its NUL.
const MAX_ARG_STRLEN: usize = 131_072;
/// The kernel's `ARG_MAX` under the default 8 MiB stack: arguments and environment together,
/// each string with its NUL and its pointer.
const MAX_ARGV_BYTES: usize = 2 << 20;
/// The largest exec body: its argv, environment and stdin (as JSON).
pub const MAX_EXEC_BODY_BYTES: usize = 16 << 20;
const MAX_ENV: usize = 128;
const MAX_ENV_VALUE: usize = 32 * 1024;
const MAX_PATH: usize = 4096;
pub const NDJSON: &str = "application/x-ndjson";

pub fn sandbox_out(row: &SandboxRow) -> Sandbox {
    Sandbox {
        id: row.id.clone(),
        namespace: row.namespace.clone(),
        status: row.status.as_str().to_owned(),
        reason: row.reason.clone(),
        isolation: row.isolation.clone(),
        cpu_millis: row.cpu_millis,
        memory_bytes: row.memory_bytes,
        pids_limit: row.pids,
        ttl_seconds: row.ttl_seconds,
        created_at: rfc3339(row.created_at_ms),
        expires_at: rfc3339(row.expires_at_ms),
        ended_at: row.ended_at_ms.map(rfc3339),
        filesystem: row
            .filesystem
            .as_ref()
            .map(|(id, mode)| bulkhead_api::SandboxFilesystem { id: id.clone(), mode: mode.clone() }),
        creator: row.creator.clone(),
        secrets: row.secrets.clone(),
        egress: row.egress.as_ref().map(crate::convert::sandbox_egress_out),
        image: row.image.as_ref().map(|i| bulkhead_api::SandboxImage {
            id: i.id.clone(),
            name: i.name.clone(),
            digest: i.digest.clone(),
        }),
        disk_bytes: row.disk_bytes,
    }
}

pub(crate) fn sandbox_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("sandbox {id:?} not found"))
}

/// The sandbox of this namespace that the principal may see, or 404: the one door of every
/// route that takes a sandbox id. A sandbox is in the scope of the filesystem it mounts, so one
/// of another namespace, a missing one, and one that mounts a filesystem of a project the key is
/// not limited to all look the same; the request's action is decided again on it, its scope
/// known, so that policies on projects hold for it.
pub async fn load_sandbox(ctx: &Ctx, ns: &str, id: &str) -> ApiResult<SandboxRow> {
    load_namespace(ctx, ns).await?;
    if !ids::is_id(prefix::SANDBOX, id) {
        return Err(sandbox_not_found(id));
    }
    let row = sandboxes::get(&ctx.state, ns, id).await?.ok_or_else(|| sandbox_not_found(id))?;
    ctx.reauthorize(&sandbox_target(&row))?;
    Ok(row)
}

/// A sandbox as decisions see it: in the scope of the filesystem it mounts.
pub fn sandbox_target(row: &SandboxRow) -> Target {
    Target::Sandbox {
        namespace: row.namespace.clone(),
        id: row.id.clone(),
        scope: Scope::of_sandbox(row.filesystem.is_some(), row.project.as_deref()),
    }
}

/// The running sandbox of this namespace: 404 when it does not exist, 409 when it ended. A
/// sandbox that runs a task's agent carries the task's conversation (its processes' output, its
/// files): reaching into it also takes `task.get` on the task.
pub(crate) async fn load_running(ctx: &Ctx, ns: &str, id: &str) -> ApiResult<SandboxRow> {
    let row = load_sandbox(ctx, ns, id).await?;
    if let Some(task) = &row.task {
        let target = Target::Task {
            namespace: row.namespace.clone(),
            id: task.clone(),
            scope: Scope::of_sandbox(row.filesystem.is_some(), row.project.as_deref()),
        };
        ctx.require(Action::TaskGet, &target)?;
    }
    if row.status != SandboxStatus::Running {
        return Err(ApiError::Conflict(format!("sandbox {id} is {}", row.status.as_str())));
    }
    Ok(row)
}

pub(crate) fn check_env(field: &str, env: &BTreeMap<String, String>) -> ApiResult<Vec<(String, String)>> {
    if env.len() > MAX_ENV {
        return Err(ApiError::Invalid(format!("{field}: at most {MAX_ENV} variables")));
    }
    for (k, v) in env {
        let ok_name = !k.is_empty()
            && k.len() <= 255
            && !k.as_bytes()[0].is_ascii_digit()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_name {
            return Err(ApiError::Invalid(format!("{field}: {k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")));
        }
        if v.len() > MAX_ENV_VALUE || v.contains('\0') {
            return Err(ApiError::Invalid(format!("{field}.{k}: at most {MAX_ENV_VALUE} bytes, no NUL")));
        }
    }
    Ok(env.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub(crate) fn check_abs_path(field: &str, path: &str) -> ApiResult<()> {
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
        return Err(ApiError::Invalid(format!("{field}: must be an absolute path of at most {MAX_PATH} bytes")));
    }
    Ok(())
}

/// Create a sandbox.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes", tag = "sandboxes", params(("ns" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create safe")),
    request_body = CreateSandbox,
    responses((status = 201, body = Sandbox),
        (status = 409, description = "The Idempotency-Key is in use, or was used with another body", body = ErrorBody),
        (status = 429, description = "A namespace quota would be exceeded", body = ErrorBody), CheckedErrors))]
pub async fn create(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Action::SandboxCreate, &Target::namespace(&ns))?;
    idempotency::create_in(ctx, ns, headers, body, idempotency::replay_response, |ctx, ns, headers, body| async move {
        let result = create_admitted(&ctx, &ns, &headers, &body).await;
        super::note_rejection(&ctx.state, &ns, result).await
    })
    .await
}

/// The create once authorized; a quota refusal is counted by the caller.
pub(crate) async fn create_admitted(ctx: &Ctx, ns: &str, headers: &HeaderMap, body: &[u8]) -> ApiResult<Created> {
    let req: CreateSandbox = json(headers, body)?;
    let row = create_sandbox(ctx, ns, &req, None).await?;
    Created::json(StatusCode::CREATED, &sandbox_out(&row))
}

/// The agent a task's sandbox runs, for [`create_sandbox`].
pub(crate) struct TaskBoot {
    /// The task (`tsk_…`): the sandbox's workload principal's `task`.
    pub task: String,
    /// Its agent's unpacked bundle on the host, mounted read-only at `/agent`.
    pub code: std::path::PathBuf,
}

/// Creates a sandbox as `req` asks, every field checked against the namespace's quotas and
/// policies. With `task`, the sandbox runs that task's agent, and its filesystem's mode was
/// decided by the task (it is not asked again).
pub(crate) async fn create_sandbox(
    ctx: &Ctx,
    ns: &str,
    req: &CreateSandbox,
    task: Option<TaskBoot>,
) -> ApiResult<crate::service::records::SandboxRow> {
    let began = std::time::Instant::now();
    let ns = ns.to_owned();
    let task_id = task.as_ref().map(|t| t.task.clone());
    let namespace = load_namespace(ctx, &ns).await?;
    let q = namespace.quotas;
    // Creates in flight at once are bounded like commands (counted apart): one past it is
    // refused, not queued behind the others.
    let _creating = super::take_slot(ctx, &namespace, crate::ratelimit::SlotKind::Create)?;
    let over = |field: &str, value: u64, quota: &str, limit: u64| {
        ApiError::QuotaExceeded(format!("{field} {value} is over the namespace quota {quota} of {limit}"))
    };
    let cpu_millis = req.cpu_millis.unwrap_or(DEFAULT_CPU_MILLIS.min(q.cpu_millis));
    if cpu_millis < MIN_CPU_MILLIS {
        return Err(ApiError::Invalid(format!("cpu_millis: at least {MIN_CPU_MILLIS}")));
    }
    if cpu_millis > q.cpu_millis {
        return Err(over("cpu_millis", cpu_millis, "cpu_millis", q.cpu_millis));
    }
    let memory_bytes = req.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES.min(q.memory_bytes));
    if memory_bytes < MIN_MEMORY_BYTES {
        return Err(ApiError::Invalid(format!("memory_bytes: at least {MIN_MEMORY_BYTES}")));
    }
    if memory_bytes > q.memory_bytes {
        return Err(over("memory_bytes", memory_bytes, "memory_bytes", q.memory_bytes));
    }
    let ttl_seconds = req.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS.min(q.max_sandbox_ttl_seconds));
    if ttl_seconds == 0 {
        return Err(ApiError::Invalid("ttl_seconds: at least 1".into()));
    }
    if ttl_seconds > q.max_sandbox_ttl_seconds {
        return Err(over("ttl_seconds", ttl_seconds, "max_sandbox_ttl_seconds", q.max_sandbox_ttl_seconds));
    }
    let env = match &req.env {
        Some(env) => check_env("env", env)?,
        None => Vec::new(),
    };
    let filesystem = match &req.filesystem {
        None => None,
        Some(f) => {
            if f.mode != "rw" && f.mode != "ro" {
                return Err(ApiError::Invalid("filesystem.mode: must be \"rw\" or \"ro\"".into()));
            }
            // Another namespace's filesystem, or one of a project the key cannot see: 404.
            let row = super::filesystems::find_filesystem(ctx, &ns, &f.id).await?;
            let mount = if f.mode == "rw" { Action::FilesystemMountRw } else { Action::FilesystemMountRo };
            if task_id.is_none() {
                ctx.require(mount, &super::filesystems::filesystem_target(&row))?;
            }
            ctx.audit_detail("filesystem", format!("{}:{}", row.id, f.mode));
            Some((row, f.mode.clone()))
        }
    };
    let boot = boot_of(ctx, &namespace, req.image.as_deref(), req.disk_bytes, memory_bytes).await?;
    ctx.audit_detail("cpu_millis", cpu_millis);
    ctx.audit_detail("memory_bytes", memory_bytes);
    ctx.audit_detail("ttl_seconds", ttl_seconds);
    // What can be refused without naming the sandbox is refused before a pool sandbox is taken:
    // a secret that does not exist or is delivered twice or to a bad place, an egress list that
    // does not parse or goes beyond the namespace's ceiling.
    {
        let (mut env_used, mut files_used) = (env.clone(), Vec::new());
        for s in req.secrets.as_deref().unwrap_or_default() {
            match secret_delivery(s, &env_used, &files_used)? {
                SecretDelivery::Env(var) => env_used.push((var, String::new())),
                SecretDelivery::File(name) => {
                    files_used.push(RunFile { dir: "secrets".into(), name, data: Vec::new() })
                }
            }
            if crate::service::secrets::get(&ctx.state, &ns, &s.name).await?.is_none() {
                return Err(ApiError::Invalid(format!("secrets: namespace {ns} has no secret {:?}", s.name)));
            }
        }
    }
    let egress_asked = match &req.egress {
        Some(e) => Some(egress_asked(ctx, &namespace, e).await?),
        None => None,
    };
    // A ready sandbox of the namespace's warm pool of this image, when the create needs nothing
    // a claim cannot bind (brokered credentials need their CA in place at start). Its id is
    // the new sandbox's; dropped on any refusal below (a policy's, which may have named it), it
    // is destroyed, never handed out again.
    let brokered = req.egress.as_ref().is_some_and(|e| !e.credentials.is_empty());
    let reservation = match &boot.image {
        Some(image) if !brokered => crate::service::pools::Pools::reserve(&ctx.state, &ns, &image.id),
        _ => None,
    };
    let id = match &reservation {
        Some(r) => r.id().to_owned(),
        None => bulkhead_core::ids::new_id(bulkhead_core::ids::prefix::SANDBOX),
    };
    let creator = ctx.principal.audit_name();
    // The workload token: the sandbox's own identity, at /run/bulkhead/token.
    let token = bulkhead_core::token::generate(bulkhead_core::token::WORKLOAD_TOKEN_PREFIX);
    let mut run_files =
        vec![RunFile { dir: "bulkhead".into(), name: "token".into(), data: format!("{token}\n").into_bytes() }];
    let mut env = env;
    let mut secrets = Vec::new();
    for s in req.secrets.as_deref().unwrap_or_default() {
        let delivery = secret_delivery(s, &env, &run_files)?;
        // The sandbox is the principal that reads the secret; the namespace's policies decide.
        let principal = Principal::Sandbox {
            id: id.clone(),
            namespace: ns.clone(),
            creator: creator.clone(),
            project: filesystem.as_ref().and_then(|(f, _)| f.project_id.clone()),
            task: task_id.clone(),
        };
        match ctx.decide_as(principal, Action::SecretRead, &Target::secret(&ns, &s.name)).await? {
            Decision::Allow => {}
            Decision::Forbidden { policies } => {
                let by = forbidden_by(&policies);
                return Err(ApiError::Forbidden(format!("sandbox {id} may not secret.read {}{by}", s.name)));
            }
            // The sandbox is of the namespace and a secret is in no project: never hidden.
            Decision::NotFound(_) => return Err(ApiError::Internal("a new sandbox's own namespace was hidden".into())),
        }
        let row = crate::service::secrets::get(&ctx.state, &ns, &s.name)
            .await?
            .ok_or_else(|| ApiError::Invalid(format!("secrets: namespace {ns} has no secret {:?}", s.name)))?;
        let value = crate::identity::open_secret(&ctx.state, &ns, &s.name, &row.sealed).await?;
        match delivery {
            SecretDelivery::Env(var) => {
                let value = String::from_utf8(value)
                    .map_err(|_| ApiError::Invalid(format!("secrets: {:?} is not UTF-8 text; use a path", s.name)))?;
                env.push((var, value));
            }
            SecretDelivery::File(file) => run_files.push(RunFile { dir: "secrets".into(), name: file, data: value }),
        }
        secrets.push(s.name.clone());
    }
    ctx.audit_detail("secrets", secrets.clone());
    let egress = match egress_asked {
        None => None,
        Some(asked) => {
            let principal = Principal::Sandbox {
                id: id.clone(),
                namespace: ns.clone(),
                creator: creator.clone(),
                project: filesystem.as_ref().and_then(|(f, _)| f.project_id.clone()),
                task: task_id.clone(),
            };
            check_egress(ctx, &ns, principal, asked).await?
        }
    };
    if let Some(e) = &egress {
        ctx.audit_detail("egress", serde_json::to_value(crate::convert::sandbox_egress_out(e)).unwrap_or_default());
    }
    // The image's `Env` under the request's (and the secrets' variables).
    let env = images::merge_env(&boot.image_env, env);
    let plan = Plan {
        cpu_millis,
        memory_bytes,
        ttl_seconds,
        env,
        filesystem,
        id,
        creator,
        run_files,
        workload_token_hash: Some(ctx.state.hasher.hash(&token)),
        secrets,
        egress,
        root: boot.root,
        image: boot.image,
        disk_bytes: boot.disk_bytes,
        task: task.map(|t| (t.task, t.code)),
        start: reservation.map_or(sandboxes::Start::Cold, sandboxes::Start::Claim),
    };
    let planned_ms = began.elapsed().as_secs_f64() * 1000.0;
    let row = sandboxes::create(&ctx.state, &namespace, plan).await?;
    // Where the route's time goes, at debug level (ms since it began, cumulative).
    tracing::debug!(sandbox = %row.id, planned_ms, created_ms = began.elapsed().as_secs_f64() * 1000.0, "create route timing");
    ctx.audit_resource(format!("sandbox:{}", row.id));
    Ok(row)
}

/// What a sandbox boots from, resolved at create.
struct Boot {
    root: RootSpec,
    image: Option<crate::service::records::SandboxImage>,
    image_env: Vec<String>,
    disk_bytes: Option<u64>,
}

/// Resolves a create's `image` and `disk_bytes`. Under `--root host` a sandbox boots the host's
/// base and a request naming either is refused (409: the server's configuration, not the
/// request, is why). Otherwise the image is the namespace's own of that name or id, else a
/// public one (404 naming it when neither exists, or when it is another namespace's), `default`
/// when none is named (409 saying how to add one when the server has none); using it is
/// `image.get` on it. The writable root is memory (a tmpfs whose pages are charged to the
/// sandbox's memory cgroup), so `disk_bytes` defaults to the smaller of 1 GiB and the
/// sandbox's `memory_bytes` and may not exceed them (400 naming the field): past its size a
/// write fails with `ENOSPC` rather than the sandbox running out of memory. It is not the
/// namespace's `disk_bytes` quota, which is for filesystems (persistent storage).
async fn boot_of(
    ctx: &Ctx,
    namespace: &crate::service::records::NamespaceRow,
    image: Option<&str>,
    disk_bytes: Option<u64>,
    memory_bytes: u64,
) -> ApiResult<Boot> {
    if ctx.state.config.images.root == RootMode::Host {
        if image.is_some() || disk_bytes.is_some() {
            let field = if image.is_some() { "image" } else { "disk_bytes" };
            return Err(ApiError::Conflict(format!(
                "{field}: this server runs sandboxes on the host's base (bulkhead serve --root host), not on images"
            )));
        }
        return Ok(Boot { root: RootSpec::Host, image: None, image_env: Vec::new(), disk_bytes: None });
    }
    let disk_bytes = match disk_bytes {
        None => DEFAULT_DISK_BYTES.min(memory_bytes).max(MIN_DISK_BYTES),
        Some(d) if d < MIN_DISK_BYTES => {
            return Err(ApiError::Invalid(format!("disk_bytes: at least {MIN_DISK_BYTES} (16 MiB)")));
        }
        Some(d) if d > memory_bytes => {
            return Err(ApiError::Invalid(format!(
                "disk_bytes: {d} is more than the sandbox's memory_bytes ({memory_bytes}): the writable root is \
                 memory, charged to the sandbox"
            )));
        }
        Some(d) => d,
    };
    let row = match image {
        Some(name) => {
            super::images::check_ref("image", name)?;
            images::find(&ctx.state, Some(&namespace.name), name)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("image {name:?} not found")))?
        }
        None => images::find(&ctx.state, Some(&namespace.name), images::DEFAULT_IMAGE)
            .await?
            .ok_or_else(|| ApiError::from(images::no_default_image(&ctx.state)))?,
    };
    ctx.require(Action::ImageGet, &Target::image(&namespace.name, &row.name))?;
    let config = images::config_of(&row)?;
    ctx.audit_detail("image", row.id.clone());
    ctx.audit_detail("disk_bytes", disk_bytes);
    let root = images::root(&ctx.state, &row, disk_bytes).await?;
    Ok(Boot {
        root,
        image: Some(images::sandbox_image(&row, &config)),
        image_env: config.env,
        disk_bytes: Some(disk_bytes),
    })
}

/// The user and working directory of a command in sandbox `row`: the request's, else its
/// image's (`User`, `WorkingDir`), else root in `/`.
pub(crate) fn command_defaults(
    row: &SandboxRow,
    user: Option<String>,
    cwd: Option<String>,
) -> (Option<String>, String) {
    let image = row.image.as_ref();
    let user = user.or_else(|| image.and_then(|i| i.user.clone()));
    let cwd = cwd.or_else(|| image.and_then(|i| i.working_dir.clone())).unwrap_or_else(|| "/".to_owned());
    (user, cwd)
}

/// The user of a file operation in sandbox `row`: the request's, else its image's `User`.
pub(crate) fn file_user(row: &SandboxRow, user: Option<String>) -> Option<String> {
    user.or_else(|| row.image.as_ref().and_then(|i| i.user.clone()))
}

/// A create's `egress` as parsed and checked before the sandbox has an id: its `allow` entries
/// and its credentials.
struct EgressAsked {
    allow: Vec<bulkhead_core::egress::Entry>,
    credentials: Vec<bulkhead_core::egress::Credential>,
}

/// Checks a create's `egress` as far as it can without the sandbox's id: a malformed entry or
/// credential is a 400 naming it, an entry beyond the namespace's ceiling a 403 naming it; each
/// credential's secret must exist, and its host lie within the sandbox's `allow`.
async fn egress_asked(
    ctx: &Ctx,
    namespace: &crate::service::records::NamespaceRow,
    req: &bulkhead_api::SandboxEgress,
) -> ApiResult<EgressAsked> {
    use bulkhead_core::egress::{first_beyond, parse_list, Credential, Dest, MAX_CREDENTIALS};
    let ns = &namespace.name;
    let allow = parse_list("egress.allow", &req.allow)?;
    let ceiling = namespace.egress.as_ref().map(|c| c.allow.as_slice()).unwrap_or_default();
    if let Some(beyond) = first_beyond(&allow, ceiling) {
        return Err(ApiError::Forbidden(format!(
            "egress.allow: {beyond} is beyond namespace {ns}'s egress ceiling; the platform admin sets it"
        )));
    }
    if req.credentials.len() > MAX_CREDENTIALS {
        return Err(ApiError::Invalid(format!("egress.credentials: at most {MAX_CREDENTIALS}")));
    }
    let mut credentials = Vec::with_capacity(req.credentials.len());
    for (i, c) in req.credentials.iter().enumerate() {
        let field = format!("egress.credentials[{i}]");
        let c = Credential {
            host: c.host.clone(),
            secret: c.secret.clone(),
            header: c.header.clone(),
            format: c.format.clone(),
        };
        c.check(&field)?;
        if credentials.iter().any(|o: &Credential| o.host == c.host) {
            return Err(ApiError::Invalid(format!("{field}.host: {} is brokered twice", c.host)));
        }
        let dest = Dest { name: Some(&c.host), addr: None, port: None };
        if !allow.iter().any(|e| e.matches(&dest)) {
            return Err(ApiError::Invalid(format!(
                "{field}.host: {} is not within the sandbox's egress.allow",
                c.host
            )));
        }
        crate::service::secrets::get(&ctx.state, ns, &c.secret)
            .await?
            .ok_or_else(|| ApiError::Invalid(format!("{field}.secret: namespace {ns} has no secret {:?}", c.secret)))?;
        credentials.push(c);
    }
    Ok(EgressAsked { allow, credentials })
}

/// Decides a create's checked `egress` ([`egress_asked`]) for the sandbox: each credential's
/// secret must be readable by the sandbox's principal (403 naming the policy otherwise). `None`
/// when the sandbox asks for nothing.
async fn check_egress(
    ctx: &Ctx,
    ns: &str,
    principal: Principal,
    asked: EgressAsked,
) -> ApiResult<Option<bulkhead_core::egress::SandboxEgress>> {
    let EgressAsked { allow, credentials } = asked;
    for (i, c) in credentials.iter().enumerate() {
        let field = format!("egress.credentials[{i}]");
        match ctx.decide_as(principal.clone(), Action::SecretRead, &Target::secret(ns, &c.secret)).await? {
            Decision::Allow => {}
            Decision::Forbidden { policies } => {
                let by = forbidden_by(&policies);
                return Err(ApiError::Forbidden(format!(
                    "{field}.secret: {} may not secret.read {}{by}",
                    principal.audit_name(),
                    c.secret
                )));
            }
            Decision::NotFound(_) => return Err(ApiError::Internal("a new sandbox's own namespace was hidden".into())),
        }
    }
    if allow.is_empty() && credentials.is_empty() {
        return Ok(None);
    }
    Ok(Some(bulkhead_core::egress::SandboxEgress { allow, credentials }))
}

/// How a secret reaches a sandbox.
enum SecretDelivery {
    Env(String),
    File(String),
}

/// Checks one `secrets` entry of a create: a secret name, and exactly one of an environment
/// variable not yet used or a file `/run/secrets/<name>` not yet used.
fn secret_delivery(s: &SandboxSecret, env: &[(String, String)], files: &[RunFile]) -> ApiResult<SecretDelivery> {
    bulkhead_core::validate::name("secrets.name", &s.name)?;
    match (&s.env, &s.path) {
        (Some(var), None) => {
            let ok = !var.is_empty()
                && var.len() <= 128
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(ApiError::Invalid(format!("secrets.env: {var:?} is not an environment variable name")));
            }
            if env.iter().any(|(k, _)| k == var) {
                return Err(ApiError::Invalid(format!("secrets.env: {var} is set twice")));
            }
            Ok(SecretDelivery::Env(var.clone()))
        }
        (None, Some(path)) => {
            let file = path.strip_prefix("/run/secrets/").unwrap_or_default();
            let ok = !file.is_empty()
                && file.len() <= 128
                && file != "."
                && file != ".."
                && file.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(ApiError::Invalid(format!(
                    "secrets.path: {path:?} must be /run/secrets/<file name> ([A-Za-z0-9._-])"
                )));
            }
            if files.iter().any(|f| f.dir == "secrets" && f.name == file) {
                return Err(ApiError::Invalid(format!("secrets.path: {path} is used twice")));
            }
            Ok(SecretDelivery::File(file.to_owned()))
        }
        _ => Err(ApiError::Invalid(format!("secrets: {:?} needs exactly one of env and path", s.name))),
    }
}

/// List the namespace's sandboxes, newest state first by id.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes", tag = "sandboxes", params(("ns" = String, Path), PageParams),
    responses((status = 200, body = Page<Sandbox>), ReadErrors))]
pub async fn list(
    ctx: Ctx,
    PathParams(ns): PathParams<String>,
    QueryParams(page): QueryParams<PageParams>,
) -> ApiResult<Json<Page<Sandbox>>> {
    ctx.authorize(Action::SandboxList, &Target::namespace(&ns))?;
    let (rows, next_cursor) =
        list_page(&ctx, &ns, &page, async |after, limit| sandboxes::list(&ctx.state, &ns, after, limit).await).await?;
    // Sandboxes of filesystems the principal cannot see are not there for it.
    let items = rows.iter().filter(|r| ctx.sees(Action::SandboxList, &sandbox_target(r))).map(sandbox_out).collect();
    Ok(Json(Page { items, next_cursor }))
}

/// Get a sandbox.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes/{id}", tag = "sandboxes",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Sandbox), ReadErrors))]
pub async fn get(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<Json<Sandbox>> {
    ctx.authorize(Action::SandboxGet, &Target::sandbox(&ns, &id))?;
    Ok(Json(sandbox_out(&load_sandbox(&ctx, &ns, &id).await?)))
}

/// Delete a sandbox: its processes, mounts, cgroups and network namespace are gone when this
/// answers.
#[utoipa::path(delete, path = "/v1/namespaces/{ns}/sandboxes/{id}", tag = "sandboxes",
    params(("ns" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "Deleted"), GuardedErrors))]
pub async fn delete(ctx: Ctx, PathParams((ns, id)): PathParams<(String, String)>) -> ApiResult<StatusCode> {
    ctx.authorize(Action::SandboxDelete, &Target::sandbox(&ns, &id))?;
    let row = load_sandbox(&ctx, &ns, &id).await?;
    sandboxes::destroy(&ctx.state, &row, SandboxStatus::Deleted, "deleted").await?;
    Ok(StatusCode::NO_CONTENT)
}

fn exit_code(exit: &Exit) -> i32 {
    exit.exit_code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(0))
}

/// Checks an argv and its environment against the kernel's bounds for `execve`: no argument
/// longer than `MAX_ARG_STRLEN` (131072 bytes with its terminating NUL), and arguments and
/// variables together (each string with its NUL and its pointer) within [`MAX_ARGV_BYTES`].
/// A command's environment as pairs, in order.
pub(crate) type Env = Vec<(String, String)>;

/// The checks of a command to run, an exec's or a background process's: its environment, argv
/// (within the kernel's bounds), working directory (absolute) and `user` (shape). Answers the
/// environment as pairs and the working directory as given (its default, the image's or `/`,
/// is [`command_defaults`]'s once the sandbox is loaded).
pub(crate) fn check_command(
    cmd: &[String],
    env: Option<&BTreeMap<String, String>>,
    cwd: Option<String>,
    user: Option<&str>,
) -> ApiResult<(Env, Option<String>)> {
    let env = match env {
        Some(env) => check_env("env", env)?,
        None => Vec::new(),
    };
    check_argv(cmd, &env)?;
    if let Some(cwd) = &cwd {
        check_abs_path("cwd", cwd)?;
    }
    if let Some(u) = user {
        check_user(u)?;
    }
    Ok((env, cwd))
}

pub(crate) fn check_argv(cmd: &[String], env: &[(String, String)]) -> ApiResult<()> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(ApiError::Invalid("cmd: must name a program".into()));
    }
    if let Some((i, a)) = cmd.iter().enumerate().find(|(_, a)| a.len() + 1 > MAX_ARG_STRLEN) {
        return Err(ApiError::Invalid(format!(
            "cmd[{i}]: {} bytes; an argument is at most {} bytes (the kernel's MAX_ARG_STRLEN)",
            a.len(),
            MAX_ARG_STRLEN - 1
        )));
    }
    if cmd.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::Invalid("cmd: an argument contains NUL".into()));
    }
    let size = |s: usize| s + 1 + std::mem::size_of::<u64>();
    let total: usize = cmd.iter().map(|a| size(a.len())).sum::<usize>()
        + env.iter().map(|(k, v)| size(k.len() + 1 + v.len())).sum::<usize>();
    if total > MAX_ARGV_BYTES {
        return Err(ApiError::Invalid(format!(
            "cmd: arguments and environment take {total} bytes; at most {MAX_ARGV_BYTES} (the kernel's ARG_MAX)"
        )));
    }
    Ok(())
}

/// Whether `headers` ask for an NDJSON answer.
pub(crate) fn wants(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with(mime)))
}

/// The body of an exec or a process start, at most [`MAX_EXEC_BODY_BYTES`] (the server's
/// general body limit does not apply to these routes: stdin and argvs up to the kernel's
/// `ARG_MAX` make their bodies larger than other requests).
pub(crate) async fn exec_body(body: Body) -> ApiResult<Bytes> {
    match axum::body::to_bytes(body, MAX_EXEC_BODY_BYTES).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let inner = e.into_inner();
            if inner.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(ApiError::PayloadTooLarge(format!("a command's body is at most {MAX_EXEC_BODY_BYTES} bytes")))
            } else {
                Err(ApiError::Invalid(format!("body: could not be read to the end: {inner}")))
            }
        }
    }
}

/// Run a command. With `Accept: application/x-ndjson` the answer streams one JSON object per
/// line (`stdout`, `stderr`, then `exit` or `error`) as output is produced. The body may be up
/// to 16 MiB; `"encoding": "base64"` makes `stdin` and the output base64, otherwise they are
/// UTF-8 text and a streamed event never ends inside a character.
#[utoipa::path(post, path = "/v1/namespaces/{ns}/sandboxes/{id}/exec", tag = "sandboxes",
    params(("ns" = String, Path), ("id" = String, Path)), request_body = ExecRequest,
    responses((status = 200, description = "The command ran; with `Accept: application/x-ndjson`, NDJSON lines of ExecEvent as it runs",
            content((ExecResult = "application/json"), (ExecEvent = "application/x-ndjson"))),
        (status = 409, description = "The sandbox is not running", body = ErrorBody),
        (status = 413, description = "The body is over 16 MiB", body = ErrorBody), CheckedErrors))]
pub async fn exec(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let begun = std::time::Instant::now();
    ctx.authorize(Action::SandboxExec, &Target::sandbox(&ns, &id))?;
    let body = exec_body(body).await?;
    let req: ExecRequest = json(&headers, &body)?;
    // The request holds its own copy of stdin now; the body's goes.
    drop(body);
    let ExecRequest { cmd, stdin, encoding, user, env, cwd, timeout_seconds } = req;
    let encoding = encoding.unwrap_or_default();
    let (env, cwd) = check_command(&cmd, env.as_ref(), cwd, user.as_deref())?;
    let timeout = timeout_seconds.unwrap_or(DEFAULT_EXEC_TIMEOUT);
    if !(1..=MAX_EXEC_TIMEOUT).contains(&timeout) {
        return Err(ApiError::Invalid(format!("timeout_seconds: must be between 1 and {MAX_EXEC_TIMEOUT}")));
    }
    let stdin = match (stdin, encoding) {
        (None, _) => Vec::new(),
        (Some(text), Encoding::Utf8) => text.into_bytes(),
        (Some(b64), Encoding::Base64) => {
            crate::text::unbase64(&b64).map_err(|e| ApiError::Invalid(format!("stdin: not base64: {e}")))?
        }
    };
    // The argv goes to the audit log, where long arguments are kept as their length and
    // SHA-256 (`audit::bounded_detail`); stdin and output never do.
    ctx.audit_detail("argv", cmd.clone());
    if let Some(u) = &user {
        ctx.audit_detail("user", u.clone());
    }
    let checked = begun.elapsed();
    let row = load_running(&ctx, &ns, &id).await?;
    let loaded = begun.elapsed();
    let (user, cwd) = command_defaults(&row, user, cwd);
    let streaming = wants(&headers, NDJSON);
    let limits = &ctx.state.config.sandbox_limits;
    let spec = ExecSpec {
        argv: cmd,
        env,
        cwd,
        timeout_ms: timeout * 1000,
        max_output_bytes: if streaming { limits.stream_output_bytes } else { limits.exec_output_bytes },
        stdin: !stdin.is_empty(),
        user,
    };
    // The command's place among the namespace's running ones, held until it ends (a streamed
    // exec's, until its body is dropped).
    let slot = super::exec_slot(&ctx, &ns).await?;
    // A streamed exec is a long-running download, counted until its body is dropped.
    let guard =
        if streaming { Some(ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?) } else { None };
    let started = std::time::Instant::now();
    let mut stream = sandboxes::exec(&ctx.state, &ns, &id, spec, stdin).await?;
    let running = begun.elapsed();
    if let Some(guard) = guard {
        ctx.audit_detail("stream", true);
        return Ok(stream_response(ctx, ns, id, stream, (guard, slot), encoding));
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = loop {
        match stream.next().await {
            Some(Ok(RtEvent::Stdout(d))) => stdout.extend_from_slice(&d),
            Some(Ok(RtEvent::Stderr(d))) => stderr.extend_from_slice(&d),
            Some(Ok(RtEvent::Exit(exit))) => break exit,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ApiError::Conflict("the sandbox ended during the command".into())),
        }
    };
    ctx.audit_detail("exit_code", exit_code(&exit));
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    tracing::debug!(
        checked_ms = ms(checked),
        loaded_ms = ms(loaded),
        running_ms = ms(running),
        exited_ms = ms(begun.elapsed()),
        command_ms = exit.duration_ms,
        "exec timing (ms since the handler began, cumulative)"
    );
    if let Some(tenant) = &ctx.tenant {
        ctx.state.metrics.exec(tenant, started.elapsed().as_secs_f64());
    }
    // The namespace's log is kept under its incarnation.
    if let Some(tenant) = &ctx.tenant {
        for (stream, data) in [(LogStream::Stdout, &stdout), (LogStream::Stderr, &stderr)] {
            if !data.is_empty() {
                crate::service::logs::record(&ctx.state, &tenant.incarnation, &id, &ctx.request_id, stream, data);
            }
        }
    }
    Ok(Json(ExecResult {
        exit_code: exit_code(&exit),
        signal: exit.signal,
        stdout: crate::text::encode(encoding, &stdout),
        stderr: crate::text::encode(encoding, &stderr),
        timed_out: exit.timed_out,
        truncated: exit.stdout_truncated || exit.stderr_truncated,
        duration_ms: exit.duration_ms,
    })
    .into_response())
}

/// A user as `exec` and processes take it: a name or `uid`, optionally `:group` or `:gid`.
/// Whether the image has it is decided inside the sandbox.
pub(crate) fn check_user(user: &str) -> ApiResult<()> {
    let ok = !user.is_empty()
        && user.len() <= 256
        && user.split(':').count() <= 2
        && user.split(':').all(|p| !p.is_empty())
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'$'));
    if !ok {
        return Err(ApiError::Invalid(format!("user: {user:?} is not a user name, uid, or user:group")));
    }
    Ok(())
}

fn ndjson_line(event: &ExecEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The state of a streamed exec's answer: its output, what is held back of each stream until a
/// character is complete, and the lines ready to send.
struct Streamed {
    stream: sandboxes::Exec,
    /// The stream's place and the command's, freed when the body is dropped.
    _guard: (StreamGuard, crate::ratelimit::Slot),
    encoding: Encoding,
    out: crate::text::Utf8Carry,
    err: crate::text::Utf8Carry,
    ready: std::collections::VecDeque<ExecEvent>,
    done: bool,
}

impl Streamed {
    /// The bytes of `data` to send and log now: in text, up to the last whole character (the
    /// rest waits for the next piece); in base64, all of them.
    fn piece(&mut self, stdout: bool, data: Vec<u8>) -> Vec<u8> {
        match (self.encoding, stdout) {
            (Encoding::Base64, _) => data,
            (Encoding::Utf8, true) => self.out.push(data),
            (Encoding::Utf8, false) => self.err.push(data),
        }
    }
}

/// The streamed answer of an exec. The audit record of the request says the exec began; the
/// stream appends one more (`sandbox.exec.exit`) with the exit code when it ends.
fn stream_response(
    ctx: Ctx,
    ns: String,
    id: String,
    stream: sandboxes::Exec,
    guard: (StreamGuard, crate::ratelimit::Slot),
    encoding: Encoding,
) -> Response {
    let app = ctx.state.clone();
    let principal = ctx.principal.audit_name();
    let request_id = ctx.request_id.clone();
    let client_request_id = ctx.client_request_id.clone();
    // The namespace's log is kept under its incarnation.
    let log_key = ctx.tenant.as_ref().map(|t| t.incarnation.clone());
    let state = Streamed {
        stream,
        _guard: guard,
        encoding,
        out: Default::default(),
        err: Default::default(),
        ready: Default::default(),
        done: false,
    };
    let body = futures_util::stream::unfold(state, move |mut st| {
        let app = app.clone();
        let (ns, id, principal, request_id) = (ns.clone(), id.clone(), principal.clone(), request_id.clone());
        let client_request_id = client_request_id.clone();
        let log_key = log_key.clone();
        async move {
            loop {
                if let Some(event) = st.ready.pop_front() {
                    return Some((Ok::<_, std::convert::Infallible>(ndjson_line(&event)), st));
                }
                if st.done {
                    return None;
                }
                let record = |stream: LogStream, data: &[u8]| {
                    if let (Some(key), false) = (&log_key, data.is_empty()) {
                        crate::service::logs::record(&app, key, &id, &request_id, stream, data);
                    }
                };
                let mut exit = None;
                match st.stream.next().await {
                    Some(Ok(RtEvent::Stdout(d))) => {
                        let piece = st.piece(true, d);
                        record(LogStream::Stdout, &piece);
                        if !piece.is_empty() {
                            st.ready.push_back(ExecEvent::Stdout { data: crate::text::encode(encoding, &piece) });
                        }
                        continue;
                    }
                    Some(Ok(RtEvent::Stderr(d))) => {
                        let piece = st.piece(false, d);
                        record(LogStream::Stderr, &piece);
                        if !piece.is_empty() {
                            st.ready.push_back(ExecEvent::Stderr { data: crate::text::encode(encoding, &piece) });
                        }
                        continue;
                    }
                    Some(Ok(RtEvent::Exit(e))) => exit = Some(e),
                    Some(Err(e)) => st.ready.push_back(ExecEvent::Error { message: ApiError::from(e).to_string() }),
                    None => {
                        st.ready.push_back(ExecEvent::Error { message: "the sandbox ended during the command".into() })
                    }
                }
                // The end: what was held back of each stream goes out (replaced if incomplete).
                st.done = true;
                let (out, err) = (st.out.finish(), st.err.finish());
                record(LogStream::Stdout, &out);
                record(LogStream::Stderr, &err);
                let mut tail = Vec::new();
                if !out.is_empty() {
                    tail.push(ExecEvent::Stdout { data: crate::text::encode(encoding, &out) });
                }
                if !err.is_empty() {
                    tail.push(ExecEvent::Stderr { data: crate::text::encode(encoding, &err) });
                }
                for e in tail.into_iter().rev() {
                    st.ready.push_front(e);
                }
                let code = exit.as_ref().map(exit_code);
                if let Some(exit) = &exit {
                    st.ready.push_back(ExecEvent::Exit {
                        exit_code: exit_code(exit),
                        signal: exit.signal,
                        timed_out: exit.timed_out,
                        truncated: exit.stdout_truncated || exit.stderr_truncated,
                        duration_ms: exit.duration_ms,
                    });
                }
                let mut detail = serde_json::json!({ "exit_code": code });
                if let Some(c) = &client_request_id {
                    detail["client_request_id"] = c.clone().into();
                }
                let event = AuditEvent {
                    time_ms: now_ms(),
                    principal: principal.clone(),
                    action: "sandbox.exec.exit".into(),
                    resource: format!("sandbox:{id}"),
                    decision: "allow".into(),
                    status: 200,
                    request_id: request_id.clone(),
                    detail: detail.to_string(),
                };
                crate::audit::append_late(&app, &ns, event).await;
            }
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    r
}

/// Read a file inside the sandbox (raw bytes, streamed), or list a directory with `list=true`
/// (a page of FileEntry), as `user` when given. A directory is `is_a_directory`, a fifo, socket
/// or device `not_a_regular_file`, at once; a missing path is `not_found` naming it; what the
/// user may not read is `permission_denied`; an unknown user is a 400 naming it.
#[utoipa::path(get, path = "/v1/namespaces/{ns}/sandboxes/{id}/files", tag = "sandboxes",
    params(("ns" = String, Path), ("id" = String, Path), FileParams),
    responses((status = 200, description = "The file's bytes, or with list=true a JSON Page of FileEntry",
            content((Vec<u8> = "application/octet-stream"), (Page<FileEntry> = "application/json"))),
        (status = 403, description = "permission_denied: the sandbox's permissions refused the user", body = ErrorBody),
        (status = 413, body = ErrorBody), ConflictErrors))]
pub async fn read_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<FileParams>,
) -> ApiResult<Response> {
    ctx.authorize(Action::SandboxFileRead, &Target::sandbox(&ns, &id))?;
    let path = file_path(&params)?;
    if params.mode.is_some() {
        return Err(ApiError::Invalid("mode: only for writes".into()));
    }
    let list = params.list.unwrap_or(false);
    if !list && (params.limit.is_some() || params.cursor.is_some()) {
        return Err(ApiError::Invalid("limit, cursor: only with list=true".into()));
    }
    let user = check_file_user(params.user)?;
    let row = load_running(&ctx, &ns, &id).await?;
    let user = file_user(&row, user);
    if list {
        let (after, limit) =
            (super::fsdata::list_after(params.cursor.as_deref())?, super::fsdata::list_limit(params.limit)?);
        let listing = sandboxes::list_dir(&ctx.state, &id, &path, user, after, limit).await?;
        return Ok(axum::Json(super::fsdata::listing_page(listing)).into_response());
    }
    let guard = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Download)?;
    let file = sandboxes::read_file(&ctx.state, &id, &path, user).await?;
    // Pulled from the sandbox as the client reads: one frame at a time, nothing read ahead.
    let body = futures_util::stream::unfold(Some((file, guard)), |state| async move {
        let (mut file, guard) = state?;
        match file.next().await? {
            Ok(chunk) => Some((Ok(Bytes::from(chunk)), Some((file, guard)))),
            Err(e) => {
                tracing::warn!(error = %e, "sandbox file download failed");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(r)
}

/// Write a file inside the sandbox (raw bytes, streamed), atomically (a temporary file beside
/// it, synced, then renamed over it); parent directories are created. An existing file keeps
/// its mode (and owner, where the acting user may give it) unless `mode` is given; a new file
/// gets 0644 and belongs to the acting `user`. A directory at the path is `is_a_directory`, a
/// fifo, socket or device `not_a_regular_file`.
#[utoipa::path(put, path = "/v1/namespaces/{ns}/sandboxes/{id}/files", tag = "sandboxes",
    params(("ns" = String, Path), ("id" = String, Path), FileParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204, description = "Written"),
        (status = 403, description = "permission_denied: the sandbox's permissions refused the user", body = ErrorBody),
        (status = 413, body = ErrorBody), ConflictErrors))]
pub async fn write_file(
    ctx: Ctx,
    PathParams((ns, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<FileParams>,
    body: Body,
) -> ApiResult<StatusCode> {
    ctx.authorize(Action::SandboxFileWrite, &Target::sandbox(&ns, &id))?;
    let path = file_path(&params)?;
    if params.list.is_some() || params.limit.is_some() || params.cursor.is_some() {
        return Err(ApiError::Invalid("list, limit, cursor: only for reads".into()));
    }
    let mode = params.mode.as_deref().map(super::fsdata::parse_mode).transpose()?;
    let user = check_file_user(params.user)?;
    ctx.audit_detail("path", path.to_string_lossy().chars().take(512).collect::<String>());
    if let Some(u) = &user {
        ctx.audit_detail("user", u.clone());
    }
    let row = load_running(&ctx, &ns, &id).await?;
    let user = file_user(&row, user);
    let _stream = ctx.state.streams.acquire(&ctx.principal, &ns, Direction::Upload)?;
    let limit = ctx.state.config.sandbox_limits.file_bytes;
    // The body goes to the sandbox as it arrives, a few chunks at a time.
    let (tx, rx) = tokio::sync::mpsc::channel(crate::limits::UPLOAD_QUEUE);
    let write = sandboxes::write_file(&ctx.state, &id, &path, rx, mode, user);
    let (received, written) = tokio::join!(crate::limits::pump_body(body, tx, limit), write);
    let received = received.map_err(|e| match e {
        crate::limits::PumpError::TooLarge => ApiError::PayloadTooLarge(format!(
            "path: {:?}: this server accepts files of at most {limit} bytes",
            path.to_string_lossy()
        )),
        crate::limits::PumpError::Interrupted => ApiError::Invalid("body: could not be read to the end".into()),
    })?;
    written?;
    ctx.audit_detail("bytes", received);
    Ok(StatusCode::NO_CONTENT)
}

/// The path of a sandbox's files route: `path`, or the exact bytes of `path_base64` (for a name
/// that is not UTF-8, as a listing's `name_base64` gives it), never both; absolute either way.
fn file_path(params: &FileParams) -> ApiResult<std::path::PathBuf> {
    use base64::Engine as _;
    let bytes = match &params.path_base64 {
        None => params.path.as_bytes().to_vec(),
        Some(_) if !params.path.is_empty() => {
            return Err(ApiError::Invalid("path, path_base64: give one, not both".into()))
        }
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).map_err(|_| {
            ApiError::Invalid(format!(
                "path_base64: {:?} is not standard base64",
                b.chars().take(64).collect::<String>()
            ))
        })?,
    };
    Ok(files::absolute_bytes(&bytes)?)
}

/// The `user` of a file route, checked for shape (the sandbox resolves it against its image's
/// `/etc/passwd`): a name, a uid or `uid:gid`, at most 256 bytes.
fn check_file_user(user: Option<String>) -> ApiResult<Option<String>> {
    match user {
        Some(u) if u.is_empty() || u.len() > 256 || u.chars().any(|c| c.is_control() || c == '/') => {
            Err(ApiError::Invalid(format!("user: {u:?} is not a user name, uid or uid:gid")))
        }
        other => Ok(other),
    }
}

/// ` (forbidden by p1, p2)` naming the policies that forbade, or nothing when none did.
fn forbidden_by(policies: &[String]) -> String {
    if policies.is_empty() {
        String::new()
    } else {
        format!(" (forbidden by {})", policies.join(", "))
    }
}
