//! Bulkhead's wire types: the JSON bodies of the HTTP API, shared by the server and the client.
//!
//! **Invariant:** these are plain data. Request bodies reject unknown fields; conversion to and
//! from domain types happens in the server, so the wire format can stay stable while the core
//! changes.

mod agents;
pub use agents::*;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, with a message for people and the request's id (as in the server's log).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// One of [`ErrorCode`]'s codes. A string on the wire, so a client meeting a code newer than
    /// itself still reads the answer.
    #[schema(value_type = ErrorCode)]
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// Every error code the API answers, each with its status: `unauthenticated` 401, `forbidden`
/// 403, `not_found` 404, `invalid_request` 400 (also 405 for a method a path does not serve and
/// 415 for a body that is not JSON), `conflict` 409 (also 412 for a failed `If-Match`),
/// `payload_too_large` 413, `quota_exceeded` 429, `rate_limited` 429 (with `Retry-After`),
/// `internal` 500 (no detail beyond the request id), `insufficient_storage` 507 (the server's
/// own disk is full), `unavailable` 503 (with `Retry-After`); for paths inside a sandbox or a
/// filesystem `is_a_directory` 400, `not_a_regular_file` 400 and `permission_denied` 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    NotFound,
    InvalidRequest,
    Conflict,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    Internal,
    InsufficientStorage,
    Unavailable,
    IsADirectory,
    NotARegularFile,
    PermissionDenied,
}

impl ErrorCode {
    /// Every code, in the order the schema lists them.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::InvalidRequest,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::QuotaExceeded,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::InsufficientStorage,
        ErrorCode::Unavailable,
        ErrorCode::IsADirectory,
        ErrorCode::NotARegularFile,
        ErrorCode::PermissionDenied,
    ];

    /// The code as it is on the wire (`not_found`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::NotARegularFile => "not_a_regular_file",
            ErrorCode::PermissionDenied => "permission_denied",
        }
    }
}

/// A page of a list. Pass `next_cursor` back as `cursor` to get the next page; it is absent on
/// the last one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A namespace principal's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Developer,
    Viewer,
}

/// All quotas of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Thousandths of a CPU core, summed over the namespace's sandboxes.
    pub cpu_millis: u64,
    /// Memory of all the namespace's sandboxes together, in bytes.
    pub memory_bytes: u64,
    /// Bytes of all the namespace's filesystems together.
    pub disk_bytes: u64,
    pub max_sandboxes: u64,
    pub pids_per_sandbox: u64,
    pub max_sandbox_ttl_seconds: u64,
    /// API requests a second of all the namespace's principals together, with a burst of one
    /// second's worth; past it `429 rate_limited` with `Retry-After`. 1 to 1,000,000; default
    /// 1,000.
    #[serde(default = "default_api_requests_per_second")]
    #[schema(default = 1000, minimum = 1, maximum = 1_000_000)]
    pub api_requests_per_second: u64,
    /// Commands running at once in the namespace (execs, streamed execs, background and
    /// terminal processes); the next is `429 rate_limited`. Sandbox creates in flight at once
    /// are bounded by the same number, counted apart. 1 to 100,000; default 32.
    #[serde(default = "default_max_concurrent_execs")]
    #[schema(default = 32, minimum = 1, maximum = 100_000)]
    pub max_concurrent_execs: u64,
}

fn default_api_requests_per_second() -> u64 {
    1000
}

fn default_max_concurrent_execs() -> u64 {
    32
}

/// Quotas to change; absent ones stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotasPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_per_sandbox: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandbox_ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_requests_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_execs: Option<u64>,
}

/// `POST /v1/namespaces`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespace {
    /// `[a-z0-9-]{1,63}`, starting with a letter.
    pub name: String,
    /// The isolation tier: a runtime class configured on the server. Default `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// Where its sandboxes run; default `shared`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
    /// Its egress ceiling from the start (see [`EgressCeiling`]); default empty: no egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressCeiling>,
    pub quotas: Quotas,
}

/// Whether a namespace's sandboxes share the host's cores with other tenants or have their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlacementMode {
    /// The host's shared cores (every core no dedicated namespace holds), under the quotas.
    Shared,
    /// Cores no other tenant's sandbox may use and a memory reservation, admitted against what
    /// the host has left.
    Dedicated,
}

/// A namespace's placement as asked (at create, or by `PATCH`; platform admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    pub mode: PlacementMode,
    /// `dedicated` only: whole cores, 1 to 1024; default the cpu quota rounded up to cores. The
    /// host always keeps one core for the control plane and the shared namespaces: asking for
    /// more than it has left is `409 conflict` naming what is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `dedicated` only: bytes reserved, at least 4 MiB and at most the namespace's memory
    /// quota; default the memory quota. Admitted against the host's memory less a tenth (at
    /// least 1 GiB) and every other reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// A namespace's placement as admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Placement {
    pub mode: PlacementMode,
    /// Dedicated cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Reserved memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The host cores it holds, in the kernel's list format (`2-3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
}

/// `PATCH /v1/namespaces/{ns}`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNamespace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<QuotasPatch>,
    /// Replaces the namespace's egress ceiling (see [`EgressCeiling`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressCeiling>,
    /// Moves the namespace (its running sandboxes at once) to another placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
}

/// A namespace's egress ceiling, set by the platform admin: what its sandboxes may ask for at
/// most. The default is empty: no egress at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressCeiling {
    /// Entries: a domain (`pypi.org`), a wildcard domain (`*.pythonhosted.org`: every name below
    /// it, not the name itself) or a CIDR (`203.0.113.0/24`; an IPv6 one with a port in
    /// brackets), each with an optional `:port` or `:low-high`. At most 256. A private,
    /// shared or unique-local CIDR named here makes that range reachable; nothing else does.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Bytes per second shared by every connection of every sandbox of the namespace; absent:
    /// no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_bytes_per_second: Option<u64>,
}

/// What a sandbox asks of the network at create. Everything must lie within the namespace's
/// ceiling (else 403 naming the entry); a sandbox that asks for nothing gets nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxEgress {
    /// Entries, as in [`EgressCeiling::allow`].
    #[serde(default)]
    pub allow: Vec<String>,
    /// Headers the gateway adds to a host's requests; the secret never enters the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<EgressCredential>,
}

/// A brokered credential: the gateway adds `header: format` (with `{secret}` replaced by the
/// secret's value) to every request to `host`, terminating TLS for that host with the
/// namespace's CA, which the sandbox trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressCredential {
    /// A DNS name within the sandbox's `allow`.
    pub host: String,
    /// A secret of the namespace; the sandbox's principal must be allowed `secret.read` on it.
    pub secret: String,
    /// Such as `Authorization`.
    pub header: String,
    /// Such as `Bearer {secret}`.
    pub format: String,
}

/// A namespace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Namespace {
    pub name: String,
    pub isolation: String,
    pub quotas: Quotas,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What the namespace uses now (on a single namespace's answers, not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<NamespaceUsage>,
    /// The egress ceiling (empty: no egress).
    #[serde(default)]
    pub egress: EgressCeiling,
    /// Where its sandboxes run.
    pub placement: Placement,
}

/// `POST /v1/namespaces/{ns}/keys`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Unique in the namespace; same syntax as a namespace name.
    pub name: String,
    pub role: Role,
    /// RFC 3339; the key stops working then. Absent: it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Project ids the key is limited to: it sees and mounts only their filesystems. Absent: the
    /// whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
}

/// An API key's metadata. The token is never part of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Key {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
}

/// The answer to a key creation: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: Key,
    /// The bearer token. Stored only as a keyed hash; it cannot be shown again.
    pub token: String,
}

/// One record of an audit chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub seq: u64,
    /// RFC 3339 with milliseconds.
    pub time: String,
    /// Milliseconds since the Unix epoch, as hashed.
    pub time_ms: i64,
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub status: u16,
    /// The server-made id of the request (`req_…`), as in the answer's `X-Request-Id` header
    /// and its error envelope. Never chosen by the client.
    pub request_id: String,
    /// Extra facts of the action as a JSON text, as hashed. A client's own `X-Request-Id` (at
    /// most 128 characters of `[A-Za-z0-9._:-]`) is kept here as `client_request_id`; an
    /// `Idempotency-Key` as `idempotency_key`, and a replayed create has `idempotent_replay`.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /v1/namespaces/{ns}/permissions`: who the caller is and which actions the namespace's
/// decisions allow it at large (on a sandbox that mounts nothing, a filesystem of no project, a
/// task on no filesystem), so a client can offer only what it may do. Each request is still
/// decided on its own target: a key limited to projects, or a policy on one sandbox, may be
/// refused where this allows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// The caller as audit records name it (`admin`, `key:key_…`, `user:<sub>`, `sandbox:sbx_…`).
    pub principal: String,
    /// The caller's role in the namespace, when it has one (the platform admin has none).
    pub role: Option<Role>,
    /// The names of the allowed actions (as in the policies and the audit: `sandbox.exec`),
    /// platform actions (`namespace.create`, `platform.audit.read`) included.
    pub actions: Vec<String>,
}

/// The result of recomputing a chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    pub ok: bool,
    /// Records checked: those the chain keeps.
    pub records: u64,
    pub first_bad_seq: Option<u64>,
    /// Records pruned by retention before the chain's checkpoint (their sequence numbers are
    /// `1..=pruned`); the first record kept links to the last one pruned.
    #[serde(default)]
    pub pruned: u64,
    /// When the chain was last pruned (RFC 3339), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_at: Option<String>,
}

/// `GET /healthz`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `POST /v1/namespaces/{ns}/sandboxes`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Thousandths of a core; default the smaller of 1000 and the namespace's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Default the smaller of 512 MiB and the namespace's quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Default the smaller of one hour and the namespace's `max_sandbox_ttl_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Environment of every command in the sandbox, on top of `PATH` and `HOME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// A filesystem of the namespace to mount at `/workspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<SandboxFilesystem>,
    /// Secrets of the namespace to hand to the sandbox, each as an environment variable or a
    /// file under `/run/secrets/`. The sandbox gets one only when the namespace's policies allow
    /// its principal (`sandbox:<id>`) `secret.read` on it; otherwise the create is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SandboxSecret>>,
    /// What the sandbox may reach on the network; absent: nothing but `$BULKHEAD_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SandboxEgress>,
    /// The image the sandbox starts from: a name or an `img_…` id, the namespace's own image
    /// first, then a public one. Default: the platform's default image (`default`). Refused
    /// (409) by a server started with `--root host`, whose sandboxes run on the host's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The size of the sandbox's writable root in bytes (what `apt-get install` and
    /// `pip install` may add to the image); a write past it fails with `ENOSPC` inside. It is
    /// memory (a tmpfs charged to the sandbox's memory cgroup): default the smaller of 1 GiB and
    /// `memory_bytes`, at most `memory_bytes`, at least 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// A secret handed to a sandbox: exactly one of `env` and `path`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSecret {
    pub name: String,
    /// An environment variable of every command in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A read-only file, `/run/secrets/<file name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub namespace: String,
    /// `creating`, `running`, `stopped`, `failed` or `deleted`.
    pub status: String,
    /// Why the sandbox ended: `deleted`, `ttl_expired`, `namespace_deleted`, `start_failed: …`,
    /// `lost: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub isolation: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids_limit: u64,
    pub ttl_seconds: u64,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<SandboxFilesystem>,
    /// Who created it: `key:<id>`, `user:<sub>` or `sandbox:<id>`.
    #[serde(default)]
    pub creator: String,
    /// Names of the secrets handed to it (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// What it asked of the network at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<SandboxEgress>,
    /// The image it started from; `null` when it runs on the host's base (`--root host`).
    #[serde(default)]
    pub image: Option<SandboxImage>,
    /// The size of its writable root in bytes; absent without an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// The image a sandbox started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxImage {
    /// `img_…`.
    pub id: String,
    pub name: String,
    /// The digest of its manifest, `sha256:<hex>`.
    pub digest: String,
}

/// `POST .../sandboxes/{id}/exec`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; not run through a shell. At most the kernel's `ARG_MAX`:
    /// each argument at most 131072 bytes (`MAX_ARG_STRLEN`), arguments and environment
    /// together at most 2 MiB.
    pub cmd: Vec<String>,
    /// Fed to the command's standard input: UTF-8 text, or base64 with `"encoding": "base64"`.
    /// Absent (or empty) means end-of-file at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// `utf8` (default) or `base64`: how `stdin` and the answer's `stdout`/`stderr` (or each
    /// streamed event's `data`) are carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Run as this user of the image: a name, `uid`, `uid:gid` or `name:group`; default the
    /// image's user. An unknown user is a 400 naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Variables added to the sandbox's environment for this command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// Absolute working directory; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Seconds, 1 to 3600 (an hour); default 60. The command and every process of its group
    /// are killed then. A background process (`POST .../processes`) may run up to 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// The answer of a buffered exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// The exit status; 128 + the signal number when a signal killed the command.
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Standard output: UTF-8 text (only bytes that are not UTF-8 at all replaced by U+FFFD),
    /// or with `"encoding": "base64"` the exact bytes in base64.
    pub stdout: String,
    /// Standard error, encoded like `stdout`.
    pub stderr: String,
    pub timed_out: bool,
    /// Output went past the cap and was cut.
    pub truncated: bool,
    pub duration_ms: u64,
}

/// How the bytes of a stream are carried in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text; a character is never split across two pieces, and only bytes that are not
    /// UTF-8 at all become U+FFFD.
    #[default]
    Utf8,
    /// Standard base64 (RFC 4648, with padding) of the exact bytes.
    Base64,
}

/// One line of a streamed exec (`Accept: application/x-ndjson`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// A piece of standard output, encoded as the request asked (text never splits a character).
    Stdout {
        data: String,
    },
    /// A piece of standard error, encoded like `stdout`.
    Stderr {
        data: String,
    },
    Exit {
        exit_code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        timed_out: bool,
        truncated: bool,
        duration_ms: u64,
    },
    Error {
        message: String,
    },
}

/// `POST /v1/namespaces/{ns}/projects`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
}

/// A project: a permission boundary for filesystems.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub created_at: String,
}

/// `POST /v1/namespaces/{ns}/filesystems`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFilesystem {
    pub name: String,
    /// Hard limit enforced by the kernel; at least 16 MiB, a multiple of 4096 (rounded up).
    pub size_bytes: u64,
    /// The project it belongs to; keys limited to projects see only their projects'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// `PATCH /v1/namespaces/{ns}/filesystems/{id}`: grow a filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeFilesystem {
    pub size_bytes: u64,
}

/// A filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Filesystem {
    pub id: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub size_bytes: u64,
    /// Bytes in use, as the kernel counts them (including the filesystem's own metadata).
    pub used_bytes: u64,
    /// Sandboxes that mount it now.
    pub mounted_by: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Where a sandbox mounts a filesystem (`/workspace`) and how.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxFilesystem {
    pub id: String,
    /// `rw` or `ro`.
    pub mode: String,
}

/// One entry of a directory listing (`GET .../files?path=dir&list=true`), as `lstat(2)` sees
/// it: a symlink is never followed. Listings are sorted by the bytes of the names and paged
/// (`limit`, `cursor`; [`Page`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    /// The name as UTF-8; a name that is not UTF-8 shows U+FFFD here and its exact bytes in
    /// `name_base64`.
    pub name: String,
    /// The exact bytes of the name (standard base64), only when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_base64: Option<String>,
    /// `file`, `directory`, `symlink`, `fifo`, `socket`, `char_device` or `block_device`.
    #[serde(rename = "type")]
    pub file_type: String,
    /// Bytes of a file (of a symlink: of its target's path).
    pub size: u64,
    /// Permission bits with setuid, setgid and sticky, as an octal string such as `"0755"`.
    pub mode: String,
    /// Last modification, RFC 3339 with milliseconds.
    pub modified: String,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// A symlink's target as stored (UTF-8; exact bytes in `target_base64` when not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_base64: Option<String>,
}

/// What a namespace uses now, beside its quotas.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NamespaceUsage {
    pub sandboxes: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Sum of the sizes of its filesystems (what counts against `disk_bytes`).
    pub disk_bytes: u64,
    /// Bytes actually written on its filesystems.
    pub disk_used_bytes: u64,
}

/// Metered usage over a period.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
pub struct UsageTotals {
    /// CPU time, from the sandboxes' cgroup counters.
    pub cpu_seconds: f64,
    /// Memory in use integrated over time.
    pub memory_byte_seconds: f64,
    /// Sandbox lifetime summed over sandboxes.
    pub sandbox_seconds: f64,
    /// The highest memory use of any sandbox.
    pub memory_peak_bytes: u64,
    pub exec_count: u64,
    /// Creates refused with `quota_exceeded`.
    pub quota_rejections: u64,
    /// Block device bytes read and written, from the kernel's io accounting. Writes the kernel
    /// flushes later on the sandbox's behalf (page cache writeback to a loop-mounted filesystem,
    /// or tmpfs, which never reaches a device) are not attributed to it on every host.
    #[serde(default)]
    pub io_read_bytes: u64,
    #[serde(default)]
    pub io_write_bytes: u64,
    /// Network egress through the gateway, both directions: `egress_bytes_out +
    /// egress_bytes_in`. Payload bytes of the forwarded connections (TLS records as they pass,
    /// not decrypted); DNS answers are not counted.
    #[serde(default)]
    pub egress_bytes: u64,
    /// The bytes the sandboxes sent.
    #[serde(default)]
    pub egress_bytes_out: u64,
    /// The bytes the sandboxes received.
    #[serde(default)]
    pub egress_bytes_in: u64,
    /// Connections the gateway allowed and forwarded.
    #[serde(default)]
    pub egress_connections: u64,
    /// Connections and DNS queries the gateway denied.
    #[serde(default)]
    pub egress_denied: u64,
}

/// One time bucket of usage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageBucket {
    /// RFC 3339 start of the bucket.
    pub start: String,
    #[serde(flatten)]
    pub usage: UsageTotals,
}

/// `GET /v1/namespaces/{ns}/usage`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub namespace: String,
    pub from: String,
    pub to: String,
    /// `minute`, `hour` or `day`.
    pub granularity: String,
    pub totals: UsageTotals,
    /// Allocated to filesystems now (counts against `disk_bytes`).
    pub disk_bytes: u64,
    /// Written on its filesystems now.
    pub disk_used_bytes: u64,
    /// Network egress over the period, both directions: the same as `totals.egress_bytes`.
    pub egress_bytes: u64,
    pub buckets: Vec<UsageBucket>,
}

/// Which output stream a log record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A piece of the output of an exec in a sandbox, as retained in its namespace's log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    /// Increases by one per record within a namespace; pass the last one seen as `after`.
    pub seq: u64,
    /// RFC 3339 time the output was produced.
    pub time: String,
    pub sandbox: String,
    /// The request id of the exec that produced it.
    pub request_id: String,
    pub stream: LogStream,
    /// The bytes: UTF-8 text (a character is never split across records; only bytes that are
    /// not UTF-8 at all become U+FFFD), or their base64 with `encoding=base64`.
    pub data: String,
}

/// A page of log records, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub records: Vec<LogRecord>,
    /// The `seq` to pass as `after` for the next page; absent when this page reached the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// A namespace's single sign-on settings: `PUT /v1/namespaces/{ns}/identity`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// An OpenID Connect provider whose tokens sign users of the namespace in; `null` turns
    /// single sign-on off.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// An OpenID Connect provider of a namespace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL: https, or http to an address literal in a range the operator opened with
    /// `--outbound-allow`; loopback, private and link-local addresses only in such a range.
    pub issuer: String,
    /// The `aud` the tokens must carry.
    pub audience: String,
    /// The claim holding the user's groups; default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Group → role. A user gets the strongest role any of its groups maps to; a user with no
    /// mapped group is refused (403).
    pub role_mappings: std::collections::BTreeMap<String, Role>,
    /// The console's OAuth client at the provider (a public client: no secret), 1 to 256
    /// printable ASCII characters. With it the console offers "Sign in with your organisation":
    /// the authorization code flow with PKCE through `/console/oidc/start`, redirecting back to
    /// `<public URL>/console/oidc/callback`. The ID tokens the provider issues to it are used as
    /// API bearer tokens, so their `aud` must be `audience` (usually the same value). Absent: no
    /// console sign-in; bearer tokens work as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

/// `POST /v1/namespaces/{ns}/policies`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    pub name: String,
    /// One Cedar policy (`permit(...)` or `forbid(...)`), validated against the schema at
    /// `GET /v1/policy-schema`.
    pub policy: String,
}

/// A policy of a namespace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub policy: String,
    pub created_at: String,
}

/// `POST /v1/namespaces/{ns}/authz/explain`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// `key:<id>`, `user:<sub>` or `sandbox:<id>`.
    pub principal: String,
    /// An action name such as `sandbox.exec`, `filesystem.mount_rw` or `secret.read`.
    pub action: String,
    /// `namespace:<name>`, `sandbox:<id>`, `filesystem:<id>`, `project:<id>`, `secret:<name>`,
    /// `key:<id>`, `policy:<id>`, or for `network.connect` `host:<name or address>`.
    pub resource: String,
    /// For `network.connect`: the port and protocol (default 443 and `tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ExplainContext>,
}

/// The context of an explained `network.connect`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainContext {
    /// 1 to 65535; default 443 (`tcp`). A `dns` query names no port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp` (default) or `dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// How a request would be decided.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExplainResult {
    /// `allow` or `deny`.
    pub decision: String,
    /// Ids of the policies that decided: the permits that allowed, or the forbids that denied
    /// (`builtin.*` for the built-in role policies). Empty for a deny because nothing permits.
    /// For `network.connect` denied before the policies: the rule, `always-denied`, `allow`
    /// (not in the sandbox's `egress.allow`) or `ceiling` (beyond the namespace's).
    pub policies: Vec<String>,
    /// The role the principal was evaluated with, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Why a `network.connect` was denied before the policies, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/namespaces/{ns}/secrets`: creates the secret, or replaces its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    pub name: String,
    /// The value; at most 64 KiB. Never returned by the API.
    pub value: String,
}

/// A secret's metadata; its value is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

/// How an image runs (the OCI image config's `config`): what sandboxes of it inherit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageConfig {
    /// `KEY=value` entries: every command's environment, under the sandbox's own `env`.
    #[serde(default)]
    pub env: Vec<String>,
    /// The default working directory of commands; `null` is `/`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The default user of commands and file operations (a name, `uid`, `uid:gid` or
    /// `name:group`); `null` is root.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
}

/// A warm pool: started sandboxes of one image that a namespace keeps ready, so that a create
/// naming the image claims one (its identity, limits, filesystem and egress bound at claim)
/// instead of starting a sandbox. They count against the namespace's quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WarmPool {
    /// The image's name as the namespace sees it.
    pub image: String,
    /// `img_…`.
    pub image_id: String,
    /// Whether the image is public (its pool is the platform admin's to size).
    pub public: bool,
    /// Sandboxes to keep ready.
    pub size: u64,
    /// Sandboxes ready to claim now.
    pub ready: u64,
    /// Sandboxes being started for the pool.
    pub starting: u64,
    /// When its size was last set (RFC 3339).
    pub updated_at: String,
}

/// `PUT /v1/namespaces/{ns}/pools/{image}`: the size of the namespace's pool of an image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetWarmPool {
    /// Sandboxes to keep ready: 0 (no pool) to the namespace's `max_sandboxes` (at most 1000).
    pub size: u64,
}

/// `POST /v1/namespaces/{ns}/sandboxes/{id}/snapshot`: save a running sandbox's root (its
/// changes on top of its image) as a new private image of the namespace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSandbox {
    /// The new image's name (`[a-z0-9-]{1,63}`, starting with a letter).
    pub name: String,
}

/// An image: `PUT /v1/namespaces/{ns}/images/{name}/archive` (a namespace's own) or
/// `PUT /v1/images/{name}/archive` (public, by the platform admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// `img_…`.
    pub id: String,
    pub name: String,
    /// The namespace it belongs to; `null` for a public image.
    pub namespace: Option<String>,
    /// Whether every namespace may use it.
    pub public: bool,
    /// The digest of its manifest, `sha256:<hex>`: the image's identity.
    pub digest: String,
    /// Its layers' unpacked size in bytes.
    pub size_bytes: u64,
    pub config: ImageConfig,
    /// Its layers' blob digests, bottom first.
    pub layers: Vec<String>,
    pub created_at: String,
}

/// `POST /v1/namespaces/{ns}/images` with `source`: pull an image from an OCI distribution
/// registry into the namespace. (The same route builds an image from `{"name", "from", "run"}`.)
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// The new image's name.
    pub name: String,
    /// `registry/repository:tag` or `registry/repository@sha256:<hex>` (no registry: Docker
    /// Hub). https, except plain http to a loopback registry or one the operator lists with
    /// `--insecure-registry`.
    pub source: String,
    /// The registry credentials to pull with; none: anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
}

/// `POST /v1/namespaces/{ns}/images` with `from` and `run`: build an image by running commands
/// in a sandbox of another image (with the namespace's egress ceiling, each connection decided
/// by its policies), then saving the sandbox's root.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// The new image's name.
    pub name: String,
    /// The image to start from: a name or `img_…` the namespace sees.
    pub from: String,
    /// The commands, each an argv, run in order as the image's user in its working directory
    /// (1 to 64; a shell is `["sh", "-c", "..."]`). The first that fails ends the build: a 400
    /// naming it, with the end of its output.
    pub run: Vec<Vec<String>>,
}

/// The body of `POST /v1/namespaces/{ns}/images`: a pull (`source`) or a build (`from` and
/// `run`); a body with both, or with neither, is refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreateImage {
    Pull(PullImage),
    Build(BuildImage),
}

/// Registry credentials a pull uses, kept in a secret of the namespace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// The name of a secret of the namespace whose value is `user:password` or the JSON
    /// `{"username": "...", "password": "..."}`. The value is sent to the registry only (basic
    /// auth, or exchanged for a bearer token as the registry asks), never logged or shown.
    pub secret: String,
}

/// `POST /v1/images` (platform admin): pull a public image every namespace may use, anonymously.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishPulledImage {
    /// The new image's name.
    pub name: String,
    /// `registry/repository:tag` or `registry/repository@sha256:<hex>`, as in [`PullImage`].
    pub source: String,
}

// Query strings. An absent field is `None`, and a `None` is left out of the query string
// (`serde_urlencoded` writes no pair for it), so these need no `default` or `skip` attributes.

/// `limit` and `cursor` of a list: the query of every `GET` of a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1 to 1000; default 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Filters of an audit listing: `GET /v1/audit` and `GET /v1/namespaces/{ns}/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only records of this action, such as `key.create`.
    pub action: Option<String>,
    /// RFC 3339; records at or after.
    pub since: Option<String>,
    /// RFC 3339; records before.
    pub until: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Which log records: `GET /v1/namespaces/{ns}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only this sandbox's output.
    pub sandbox: Option<String>,
    /// RFC 3339; records at or after.
    pub since: Option<String>,
    /// RFC 3339; records before.
    pub until: Option<String>,
    /// Only records with a larger `seq` (the `next_after` of the previous page).
    pub after: Option<u64>,
    /// 1 to 10000; default 1000.
    pub limit: Option<u32>,
    /// `utf8` (default) or `base64`: how each record's `data` is carried.
    pub encoding: Option<Encoding>,
}

/// The period and bucket size of a usage report: `GET /v1/namespaces/{ns}/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
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

/// `force` of a filesystem delete: `DELETE /v1/namespaces/{ns}/filesystems/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilesystemDeleteParams {
    /// Stop the sandboxes that mount it first, instead of refusing with 409.
    pub force: Option<bool>,
}

/// The query of a sandbox's files routes: `.../sandboxes/{id}/files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SandboxFileParams {
    /// Absolute path inside the sandbox. Empty (or absent) with `path_base64`.
    #[serde(default)]
    pub path: String,
    /// The path's exact bytes in standard base64, for a name that is not UTF-8 (a listing's
    /// `name_base64`); instead of `path`, never with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
    /// Act as this user of the sandbox's image: a name, a uid or `uid:gid`. The kernel decides
    /// what the user may do (`permission_denied`); what the user creates is the user's. The
    /// sandbox's root when absent.
    pub user: Option<String>,
    /// `PUT` only: the new file's permission bits, in octal (`0755`, `1777` with the sticky
    /// bit). Without it an existing file keeps its mode and a new file gets `0644`. setuid and
    /// setgid are refused.
    pub mode: Option<String>,
    /// `GET` only: list the directory at `path` instead of reading a file.
    pub list: Option<bool>,
    /// With `list`: 1 to 1000 entries per page; default 1000.
    pub limit: Option<u32>,
    /// With `list`: `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The query of a filesystem's files routes: `.../filesystems/{id}/files`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilesystemFileParams {
    /// Relative to the filesystem's root, such as `src/main.rs`. Empty (or absent) with
    /// `path_base64`.
    #[serde(default)]
    pub path: String,
    /// The path's exact bytes in standard base64, for a name that is not UTF-8 (a listing's
    /// `name_base64`); instead of `path`, never with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
    /// List the directory at `path` (`""` or `.` for the root) instead of reading a file.
    pub list: Option<bool>,
    /// `PUT` only: the new file's permission bits in octal, as for a sandbox's files.
    pub mode: Option<String>,
    /// Refused: a filesystem has no users of its own (no image); its files belong to the
    /// namespace's root. Use a sandbox's files route with `user` to act as a user.
    pub user: Option<String>,
    /// With `list`: 1 to 1000 entries per page; default 1000.
    pub limit: Option<u32>,
    /// With `list`: `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// What an archive upload put in place: `PUT .../filesystems/{id}/archive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveResult {
    /// Entries of the archive written.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

// ---- Background processes: `.../sandboxes/{id}/processes` ----

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    /// 1 to 1000.
    pub rows: u16,
    /// 1 to 1000.
    pub cols: u16,
}

/// `POST .../sandboxes/{id}/processes`: starts a command in the background.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProcess {
    /// The program and its arguments; not run through a shell. The bounds of `exec` apply.
    pub cmd: Vec<String>,
    /// Variables added to the sandbox's environment for this command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// Absolute working directory; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run as this user of the image (name, `uid`, `uid:gid`, `name:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a terminal of this size: its stdin goes to the terminal and its output is one
    /// stream, `pty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// Seconds, 1 to 86400 (a day; an exec's bound is 3600); default none: the process runs
    /// until it exits, is killed or its sandbox ends. It and every process it started are
    /// killed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Whether a process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessStatus {
    Running,
    Exited,
}

/// A background process of a sandbox. A finished one stays listed for 10 minutes (at most 64
/// per sandbox).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Process {
    /// `prc_…`
    pub id: String,
    pub sandbox: String,
    /// The command as started, bounded for listing: at most 32 arguments of 256 bytes each,
    /// longer ones cut and marked with `…`.
    pub cmd: Vec<String>,
    /// Its process id inside the sandbox.
    pub pid: i32,
    pub status: ProcessStatus,
    /// Set once exited: the exit status, or 128 + the signal number when a signal ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Whether it runs on a terminal.
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

/// Which output of a process an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
    /// The terminal of a process started with `tty`.
    Pty,
}

/// One event of `GET .../processes/{pid}/output`: an NDJSON line, or the `data` of a
/// server-sent event whose `id` is the output's `seq`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessEvent {
    /// A piece of output. `seq` starts at 1 and grows by one per piece; pass the last one seen
    /// as `after` to resume.
    Output {
        seq: u64,
        stream: OutputStream,
        /// The exact bytes, base64.
        data: String,
    },
    /// Output was lost here: the events `from` to `to` (inclusive) were dropped before this
    /// read asked for them (a process's retained output is bounded, 8 MiB, oldest dropped
    /// first). Sent once, before the first event kept, when `after` was older than the oldest
    /// event still held; no server-sent event `id` (it is not output).
    Gap { from: u64, to: u64 },
    /// The process ended; the last event of the stream.
    Exit {
        exit_code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        timed_out: bool,
    },
}

/// `after` of `GET .../processes/{pid}/output`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProcessOutputParams {
    /// Only events with a larger `seq`; default 0 (from the start). `Last-Event-ID` does the same
    /// for server-sent events. When older output was dropped (more than 8 MiB of it), the
    /// stream starts with a `gap` event naming the seqs lost, then the oldest event kept.
    pub after: Option<u64>,
}

/// `eof` of `POST .../processes/{pid}/stdin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProcessStdinParams {
    /// Close the process's standard input after the body.
    pub eof: Option<bool>,
}

/// What `POST .../processes/{pid}/stdin` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StdinResult {
    /// Bytes written to the process's standard input.
    pub bytes: u64,
}

/// `POST .../processes/{pid}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// The signal to send.
    pub signal: Signal,
}

/// A signal: a JSON number (`15`), or a string holding a name (`"SIGTERM"`, `"TERM"`, any case)
/// or a decimal number (`"15"`). Numbers are 1 to 64 except 32 and 33 (kept by the C library):
/// the standard signals 1 to 31 and the real-time ones 34 to 64. Names are those of the
/// standard signals. Anything else is a 400 naming it: padding (`"SIGHUP "`), signs or leading
/// zeros (`"+1"`, `"010"`), unknown names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Signal {
    Number(i64),
    Name(String),
}

/// A control message of `GET .../processes/{pid}/attach` (a WebSocket text frame). Binary
/// frames carry stdin (client to server) and output (server to client).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttachControl {
    /// Client to server: the terminal's new size.
    Resize { rows: u16, cols: u16 },
    /// Client to server: close the process's standard input.
    Eof,
    /// Server to client: the process ended; the server closes the socket after it.
    Exit {
        exit_code: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        timed_out: bool,
    },
    /// Server to client: the attachment failed.
    Error { message: String },
}
