//! `ApiError`: every failure the API answers, mapped to PRODUCT.md's status and code.
//!
//! A handler's error becomes a response that carries an [`ErrorMark`] extension and no body; the
//! outermost middleware (`request::envelope`) writes the JSON envelope with the request id, so
//! errors raised anywhere (handlers, extractors, axum's own rejections, a caught panic) leave in
//! the same shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bulkhead_api::ErrorCode;
use bulkhead_core::FieldError;
use bulkhead_runtime::files::FileError;
use bulkhead_runtime::hostreg::RegistryError;
use bulkhead_runtime::RuntimeError;
use bulkhead_store::StoreError;

use crate::limits::RateLimited;
use crate::service::ServiceError;

/// The error code and message of a response, before the request id is added.
#[derive(Debug, Clone)]
pub struct ErrorMark {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// A create under an `Idempotency-Key` whose first request is still running: 409
    /// `conflict`, like any clash of keys, but with a `Retry-After` of [`IN_PROGRESS_RETRY_SECONDS`]
    /// that marks it as worth repeating: once the first has answered, a repeat gets its answer.
    #[error("{0}")]
    InProgress(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    QuotaExceeded(String),
    /// Too many requests of one kind at once for a principal, a namespace or the server: 429
    /// `rate_limited` with a `Retry-After` of this many seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after_seconds: u64 },
    /// A conditional write whose condition failed: 412, with the contract's `conflict` code.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The server's own disk (its data dir, or the host side of a filesystem) is full: 507
    /// `insufficient_storage`. Nothing was written; reads still work. (A tenant filesystem's
    /// own size stays 429 `quota_exceeded`.)
    #[error("{0}")]
    InsufficientStorage(String),
    /// A resource being repaired, a store busy past its timeout or a failed write or fsync of
    /// the store: 503 `unavailable` with a `Retry-After` of this many seconds. Never a success:
    /// what was asked is not known to be done.
    #[error("{message}")]
    Unavailable { message: String, retry_after_seconds: u64 },
    /// A method the path does not serve. `invalid_request` is the closest code of the contract;
    /// the status says precisely what is wrong.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A body that is not JSON where JSON is required; as above, `invalid_request` with 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Anything the client cannot fix. The message goes to the log only; the answer carries
    /// nothing but the request id.
    #[error("{0}")]
    Internal(String),
    // ---- Paths inside a sandbox or a filesystem (PRODUCT.md's HTTP conventions) ----
    /// A directory where a file is needed: 400 `is_a_directory` (a request the client fixes
    /// by changing the path, like every other 400 of the contract).
    #[error("{0}")]
    IsADirectory(String),
    /// A fifo, socket or device where a regular file is needed: 400 `not_a_regular_file`.
    #[error("{0}")]
    NotARegularFile(String),
    /// The sandbox's own file permissions refused the acting user: 403 `permission_denied`
    /// (the API allowed the request; the kernel inside did not).
    #[error("{0}")]
    PermissionDenied(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The `Retry-After` of [`ApiError::InProgress`], in seconds.
pub const IN_PROGRESS_RETRY_SECONDS: u64 = 1;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) | ApiError::InProgress(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QuotaExceeded(_) | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::IsADirectory(_) | ApiError::NotARegularFile(_) => StatusCode::BAD_REQUEST,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The code on the wire, one of [`ErrorCode`]'s (which the OpenAPI document lists).
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    pub fn error_code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Invalid(_) | ApiError::MethodNotAllowed(_) | ApiError::UnsupportedMediaType(_) => {
                ErrorCode::InvalidRequest
            }
            ApiError::Conflict(_) | ApiError::InProgress(_) | ApiError::PreconditionFailed(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
            ApiError::Unavailable { .. } => ErrorCode::Unavailable,
            ApiError::IsADirectory(_) => ErrorCode::IsADirectory,
            ApiError::NotARegularFile(_) => ErrorCode::NotARegularFile,
            ApiError::PermissionDenied(_) => ErrorCode::PermissionDenied,
        }
    }

    pub fn namespace_not_found(ns: &str) -> Self {
        ApiError::NotFound(format!("namespace {ns:?} not found"))
    }

    /// The error for a status that carries no mark of ours (axum's own rejections).
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthenticated("authentication required".into()),
            StatusCode::FORBIDDEN => ApiError::Forbidden("forbidden".into()),
            StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed("method not allowed on this path".into()),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge("request body too large".into()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType("unsupported content type".into()),
            s if s.is_client_error() => ApiError::Invalid(s.canonical_reason().unwrap_or("bad request").to_owned()),
            _ => ApiError::Internal(format!("unmarked {status} response")),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            // The detail (paths, SQLite's words) goes to the log; the client learns what it can do.
            StoreError::Full(detail) => {
                tracing::error!(error = %detail, "the store's disk is full");
                ApiError::InsufficientStorage(
                    "the server's disk is full: nothing was written; reads still work; retry once space is freed"
                        .into(),
                )
            }
            StoreError::Busy(detail) => {
                tracing::warn!(error = %detail, "the store is busy");
                ApiError::Unavailable { message: "the server's store is busy; retry".into(), retry_after_seconds: 1 }
            }
            StoreError::Io(detail) => {
                tracing::error!(error = %detail, "the store's disk failed");
                ApiError::Unavailable {
                    message: "the server could not write its store; nothing was acknowledged; retry".into(),
                    retry_after_seconds: 5,
                }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The one mapping of domain errors to the API's statuses and codes.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(m) => ApiError::NotFound(m),
            ServiceError::Invalid(m) => ApiError::Invalid(m),
            // Creates raced by another with the same name, a sandbox that is not running, a
            // filesystem mounted where the operation needs it unmounted: the resource's state.
            ServiceError::Conflict(m) => ApiError::Conflict(m),
            // The contract's 429 `quota_exceeded`: the client may retry once it freed something.
            ServiceError::QuotaExceeded(m) => ApiError::QuotaExceeded(m),
            ServiceError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            ServiceError::Store(e) => e.into(),
            ServiceError::Runtime(e) => e.into(),
            ServiceError::Registry(e) => e.into(),
            ServiceError::File(e) => e.into(),
            ServiceError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        match e {
            // A symlink on the way, or a file where a directory is needed (and the reverse): the
            // path the client sent does not fit the tree, which the client can see and fix.
            FileError::Invalid(m) | FileError::Loop(m) | FileError::NotADirectory(m) => ApiError::Invalid(m),
            FileError::IsADirectory(m) => ApiError::IsADirectory(m),
            FileError::NotARegularFile(m) => ApiError::NotARegularFile(m),
            FileError::PermissionDenied(m) => ApiError::PermissionDenied(m),
            FileError::NotFound(m) => ApiError::NotFound(m),
            FileError::NotEmpty => ApiError::Conflict(e.to_string()),
            FileError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            // A full filesystem is its size, the tenant's quota: 429 `quota_exceeded`, not 507.
            FileError::NoSpace(m) => ApiError::QuotaExceeded(m),
            FileError::PreconditionFailed(m) => ApiError::PreconditionFailed(m),
            // The host's disk under the filesystem's image is full, not the filesystem: 507.
            FileError::HostFull(m) => ApiError::InsufficientStorage(m),
            // The filesystem's mount is being repaired, or its repair failed: retry.
            FileError::Unavailable(m) => ApiError::Unavailable { message: m, retry_after_seconds: 2 },
            FileError::Io(m) => ApiError::Internal(m),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        use bulkhead_supervisor::protocol::FailureKind;
        match e {
            RuntimeError::NotRunning(id) => ApiError::Conflict(format!("sandbox {id} is not running")),
            // The host refuses the operation in the resource's present state (a mounted
            // filesystem it cannot grow online): retry after changing that state.
            RuntimeError::Busy(m) => ApiError::Conflict(m),
            RuntimeError::File(f) => match f.kind {
                FailureKind::NotFound => ApiError::NotFound(f.message),
                FailureKind::TooLarge => ApiError::PayloadTooLarge(f.message),
                FailureKind::NoSpace => ApiError::QuotaExceeded(format!("no space left: {}", f.message)),
                FailureKind::IsADirectory => ApiError::IsADirectory(f.message),
                FailureKind::NotAFile => ApiError::NotARegularFile(f.message),
                // A read-only mount (`/workspace` mounted `ro`) refuses like a permission does.
                FailureKind::PermissionDenied | FailureKind::ReadOnly => ApiError::PermissionDenied(f.message),
                // An unknown `user` among them, named in the message.
                FailureKind::InvalidRequest => ApiError::Invalid(f.message),
                // An IO failure inside the sandbox is the sandbox's state, not the server's.
                FailureKind::Io => ApiError::Conflict(f.message),
                // Never a file's failure; a process that has exited is a conflict anyway.
                FailureKind::Exited => ApiError::Conflict(f.message),
            },
            // A sandbox that crashed or broke the protocol is the sandbox's fault, not the
            // server's: a conflict with the sandbox's state, never a 5xx.
            RuntimeError::Protocol(m) => ApiError::Conflict(format!("the sandbox did not answer properly: {m}")),
            // Exec and processes: a request the sandbox refused (an unknown user, a bad signal),
            // and a process it does not have (never had, or forgotten 10 minutes after it ended).
            RuntimeError::Invalid(m) => ApiError::Invalid(m),
            RuntimeError::ProcessNotFound(id) => ApiError::NotFound(format!("process {id:?} not found")),
            // A resource of the host that is being repaired (a filesystem's mount), or that the
            // host cannot provide right now: retry.
            RuntimeError::Unavailable(m) => ApiError::Unavailable { message: m, retry_after_seconds: 2 },
            // The host's disk is full (an image that cannot grow, a filesystem that cannot be made).
            RuntimeError::Io { what, source }
                if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) =>
            {
                tracing::error!(error = %source, what, "the host's disk is full");
                ApiError::InsufficientStorage(format!(
                    "the server's disk is full: {what} failed; retry once space is freed"
                ))
            }
            // Anything else the host failed to do for a sandbox (the OCI runtime refused, a cgroup
            // would not go, a file of the state dir): the resource stays as it was (a delete that
            // failed leaves the sandbox active), so the request can be made again. The detail is
            // the host's, kept in the log.
            RuntimeError::Oci { runtime, action, detail } => {
                tracing::error!(runtime, action, detail, "the OCI runtime failed");
                ApiError::Unavailable { message: format!("the host could not {action}; retry"), retry_after_seconds: 2 }
            }
            RuntimeError::Io { what, source } => {
                tracing::error!(what, error = %source, "a host operation failed");
                ApiError::Unavailable { message: format!("the host could not {what}; retry"), retry_after_seconds: 2 }
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        // The host's registry is the operator's business, never the tenant's: no detail leaves.
        ApiError::Internal(format!("host registry: {e}"))
    }
}

impl From<RateLimited> for ApiError {
    fn from(e: RateLimited) -> Self {
        ApiError::RateLimited { message: e.message, retry_after_seconds: e.retry_after_seconds }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                // Logged here, where it is handled; the client sees only the request id.
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = status.into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_seconds, .. } | ApiError::Unavailable { retry_after_seconds, .. } => {
                Some(*retry_after_seconds)
            }
            ApiError::InProgress(_) => Some(IN_PROGRESS_RETRY_SECONDS),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response.extensions_mut().insert(ErrorMark { code: self.code(), message });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: impl Into<ApiError>) -> (u16, &'static str, String) {
        let e = e.into();
        (e.status().as_u16(), e.code(), e.to_string())
    }

    /// One error of each variant; a new variant fails to compile here until it is listed.
    fn every_variant() -> Vec<ApiError> {
        let s = String::new;
        let all = vec![
            ApiError::Unauthenticated(s()),
            ApiError::Forbidden(s()),
            ApiError::NotFound(s()),
            ApiError::Invalid(s()),
            ApiError::Conflict(s()),
            ApiError::InProgress(s()),
            ApiError::PayloadTooLarge(s()),
            ApiError::QuotaExceeded(s()),
            ApiError::RateLimited { message: s(), retry_after_seconds: 1 },
            ApiError::PreconditionFailed(s()),
            ApiError::InsufficientStorage(s()),
            ApiError::Unavailable { message: s(), retry_after_seconds: 1 },
            ApiError::MethodNotAllowed(s()),
            ApiError::UnsupportedMediaType(s()),
            ApiError::Internal(s()),
            ApiError::IsADirectory(s()),
            ApiError::NotARegularFile(s()),
            ApiError::PermissionDenied(s()),
        ];
        for e in &all {
            match e {
                ApiError::Unauthenticated(_)
                | ApiError::Forbidden(_)
                | ApiError::NotFound(_)
                | ApiError::Invalid(_)
                | ApiError::Conflict(_)
                | ApiError::InProgress(_)
                | ApiError::PayloadTooLarge(_)
                | ApiError::QuotaExceeded(_)
                | ApiError::RateLimited { .. }
                | ApiError::PreconditionFailed(_)
                | ApiError::InsufficientStorage(_)
                | ApiError::Unavailable { .. }
                | ApiError::MethodNotAllowed(_)
                | ApiError::UnsupportedMediaType(_)
                | ApiError::Internal(_)
                | ApiError::IsADirectory(_)
                | ApiError::NotARegularFile(_)
                | ApiError::PermissionDenied(_) => {}
            }
        }
        all
    }

    /// The error body's schema (and so `/openapi.json`, which SDKs map to exception classes)
    /// names every code an answer may carry with its status, and no code that none carries.
    #[test]
    fn the_error_body_documents_every_code_and_status() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(bulkhead_api::ErrorCode::schema()).expect("a schema");
        let doc = schema["description"].as_str().expect("the codes' description").to_owned();
        let mut codes = std::collections::BTreeSet::new();
        for e in every_variant() {
            let (code, status) = (e.code(), e.status().as_u16());
            assert!(doc.contains(&format!("`{code}`")), "{code} is not documented: {doc}");
            assert!(doc.contains(&status.to_string()), "{code}'s status {status} is not documented: {doc}");
            codes.insert(code);
        }
        let named: Vec<&str> = doc
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        for code in named {
            assert!(codes.contains(code), "{code} is documented but no error carries it: {doc}");
        }
    }

    /// A create whose first request still runs is a `conflict` a client may repeat: it alone
    /// of the 409s carries `Retry-After`.
    #[test]
    fn a_create_in_progress_is_a_conflict_to_retry() {
        let answer = ApiError::InProgress("in progress".into()).into_response();
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        assert_eq!(answer.extensions().get::<ErrorMark>().map(|m| m.code), Some("conflict"));
        let retry_after = answer.headers().get(axum::http::header::RETRY_AFTER);
        assert_eq!(retry_after.and_then(|v| v.to_str().ok()), Some("1"));
        let other = ApiError::Conflict("different body".into()).into_response();
        assert!(other.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }

    #[test]
    fn file_errors_answer_by_kind_with_their_message() {
        let cases = [
            (FileError::Invalid("path: \"/x\" must be relative".into()), 400, "invalid_request"),
            (FileError::Loop("path: goes through a symlink".into()), 400, "invalid_request"),
            (FileError::NotADirectory("path: a is not a directory".into()), 400, "invalid_request"),
            (FileError::IsADirectory("path: is a directory (use list=true)".into()), 400, "is_a_directory"),
            (FileError::NotARegularFile("path: \"p\" is a fifo, not a regular file".into()), 400, "not_a_regular_file"),
            (FileError::PermissionDenied("path: \"p\": permission denied".into()), 403, "permission_denied"),
            (FileError::NotFound("path: \"a/b\": no such file or directory".into()), 404, "not_found"),
            (FileError::NotEmpty, 409, "conflict"),
            (FileError::TooLarge("more than 5 bytes".into()), 413, "payload_too_large"),
            (FileError::NoSpace("the filesystem is full (its size_bytes)".into()), 429, "quota_exceeded"),
            (FileError::PreconditionFailed("If-Match does not match".into()), 412, "conflict"),
            (FileError::Io("disk on fire".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let message = e.to_string();
            assert_eq!(answer(ServiceError::File(e)), (status, code, message));
        }
    }

    #[test]
    fn sandbox_file_failures_answer_with_the_files_codes() {
        use bulkhead_supervisor::protocol::{Failure, FailureKind};
        let cases = [
            (FailureKind::NotFound, 404, "not_found"),
            (FailureKind::IsADirectory, 400, "is_a_directory"),
            (FailureKind::NotAFile, 400, "not_a_regular_file"),
            (FailureKind::PermissionDenied, 403, "permission_denied"),
            (FailureKind::ReadOnly, 403, "permission_denied"),
            (FailureKind::InvalidRequest, 400, "invalid_request"),
        ];
        for (kind, status, code) in cases {
            let message = format!("/tmp/x: {kind:?}");
            let e = ServiceError::Runtime(RuntimeError::File(Failure::new(kind, message.clone())));
            assert_eq!(answer(e), (status, code, message));
        }
    }

    #[test]
    fn service_errors_answer_once_with_their_message() {
        let cases = [
            (ServiceError::NotFound("filesystem \"fs_x\" not found".into()), 404, "not_found"),
            (ServiceError::Invalid("size_bytes: at least 16777216 (16 MiB)".into()), 400, "invalid_request"),
            (ServiceError::Conflict("sandbox sbx_x is stopped".into()), 409, "conflict"),
            (ServiceError::QuotaExceeded("quota disk_bytes exceeded".into()), 429, "quota_exceeded"),
            (ServiceError::TooLarge("at most 5 bytes".into()), 413, "payload_too_large"),
            (ServiceError::Runtime(RuntimeError::Busy("grow refused".into())), 409, "conflict"),
            (ServiceError::Runtime(RuntimeError::NotRunning("sbx_x".into())), 409, "conflict"),
            (ServiceError::Store(StoreError::NotFound("sandbox".into())), 404, "not_found"),
        ];
        for (e, status, code) in cases {
            let message = match &e {
                ServiceError::Runtime(RuntimeError::NotRunning(id)) => format!("sandbox {id} is not running"),
                ServiceError::Store(StoreError::NotFound(what)) => format!("{what} not found"),
                other => other.to_string(),
            };
            assert_eq!(answer(e), (status, code, message));
        }
        assert_eq!(answer(ServiceError::Internal("secret detail".into())).0, 500);
    }

    /// A full disk is 507 `insufficient_storage`; a busy store, a failed write of the store, a
    /// filesystem being repaired are 503 `unavailable` with `Retry-After`: never a 500, never a
    /// success.
    #[test]
    fn faults_of_the_host_answer_507_or_503_with_retry_after() {
        let full = ServiceError::Store(StoreError::Full("database or disk is full".into()));
        assert_eq!(answer(full).0, 507);
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                ServiceError::Store(StoreError::Full("(code: 13) database or disk is full".into())).into(),
                507,
                "insufficient_storage",
            ),
            (ServiceError::Store(StoreError::Busy("(code: 5) database is locked".into())).into(), 503, "unavailable"),
            (ServiceError::Store(StoreError::Io("fsync of bulkhead.db-wal: EIO".into())).into(), 503, "unavailable"),
            (
                ServiceError::File(FileError::HostFull("the server's disk is full".into())).into(),
                507,
                "insufficient_storage",
            ),
            (
                ServiceError::File(FileError::Unavailable("filesystem fs_a is being repaired".into())).into(),
                503,
                "unavailable",
            ),
            (
                ServiceError::Runtime(RuntimeError::Unavailable("filesystem fs_a is being repaired".into())).into(),
                503,
                "unavailable",
            ),
            (
                ServiceError::Runtime(RuntimeError::Io {
                    what: "grow the image".into(),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                })
                .into(),
                507,
                "insufficient_storage",
            ),
            (
                ServiceError::Runtime(RuntimeError::Io {
                    what: "remove the sandbox's cgroup".into(),
                    source: std::io::Error::from(std::io::ErrorKind::ResourceBusy),
                })
                .into(),
                503,
                "unavailable",
            ),
            (
                ServiceError::Runtime(RuntimeError::Oci {
                    runtime: "runc".into(),
                    action: "delete the sandbox",
                    detail: "/run/bulkhead/runc: a host detail".into(),
                })
                .into(),
                503,
                "unavailable",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e:?}");
            // The detail stays in the log.
            assert!(!e.to_string().contains("code:") && !e.to_string().contains("EIO"), "{e}");
            assert!(!e.to_string().contains("/run/"), "no host path leaves: {e}");
            let response = e.into_response();
            assert_eq!(response.status().as_u16(), status);
            let retry = response.headers().get(axum::http::header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
            if status == 503 {
                assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 1)), "503 without Retry-After");
            } else {
                assert_eq!(retry, None);
            }
        }
    }
}
