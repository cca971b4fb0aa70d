//! A typed client of Bulkhead's HTTP API, used by the CLI and the end-to-end tests.
//!
//! **Invariant:** the client trusts nothing it is told beyond the wire types; an answer that does
//! not parse is an error, never a panic.

use bulkhead_api::{
    AuditRecord, AuditVerification, CreateFilesystem, CreateKey, CreateNamespace, CreatePolicy, CreateProject,
    CreateSandbox, CreateSecret, CreatedKey, ErrorBody, ExecEvent, ExecRequest, ExecResult, ExplainRequest,
    ExplainResult, FileEntry, Filesystem, IdentityConfig, Key, Namespace, Page, Policy, Project, ResizeFilesystem,
    Sandbox, Secret, UpdateNamespace,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope.
    #[error("{code}: {message} (HTTP {status}, request {request_id})")]
    Api { status: u16, code: String, message: String, request_id: String },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The server answered something that is not what the API promises.
    #[error("unexpected answer (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The longest NDJSON line of a streamed exec the client accepts; a longer one is an error, so
/// a hostile server cannot make the client buffer without end. The server sends output in
/// chunks far smaller than this.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The largest file `read_file` accepts. The server's own cap is smaller (64 MiB by default);
/// this one only stops a hostile server from exhausting the client's memory.
pub const MAX_FILE_BYTES: usize = 1 << 30;

const NDJSON: &str = "application/x-ndjson";

/// Filters of an audit listing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[derive(Serialize)]
struct PageQuery<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
}

/// A client of one server with one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the server's URL, such as `http://127.0.0.1:7070`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::builder().tcp_nodelay(true).build().unwrap_or_default(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn transport(&self) -> impl FnOnce(reqwest::Error) -> ClientError + '_ {
        move |source| ClientError::Transport { url: self.base.clone(), source }
    }

    /// Sends the request; an answer that is not a success becomes an error, from its envelope
    /// when it has one.
    async fn send_raw(&self, builder: RequestBuilder) -> Result<Response> {
        let response = builder.send().await.map_err(self.transport())?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.map_err(self.transport())?;
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
                request_id: body.error.request_id,
            },
            Err(_) => ClientError::Unexpected {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            },
        })
    }

    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T> {
        let response = self.send_raw(builder).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(self.transport())?;
        let body: &[u8] = if status == StatusCode::NO_CONTENT { b"null" } else { &bytes };
        serde_json::from_slice(body)
            .map_err(|e| ClientError::Unexpected { status: status.as_u16(), detail: e.to_string() })
    }

    pub async fn health(&self) -> Result<bulkhead_api::Health> {
        self.send(self.request(Method::GET, "/healthz")).await
    }

    pub async fn create_namespace(&self, req: &CreateNamespace) -> Result<Namespace> {
        self.send(self.request(Method::POST, "/v1/namespaces").json(req)).await
    }

    pub async fn list_namespaces(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Namespace>> {
        self.send(self.request(Method::GET, "/v1/namespaces").query(&PageQuery { limit, cursor })).await
    }

    pub async fn get_namespace(&self, ns: &str) -> Result<Namespace> {
        self.send(self.request(Method::GET, &format!("/v1/namespaces/{}", seg(ns)))).await
    }

    pub async fn update_namespace(&self, ns: &str, req: &UpdateNamespace) -> Result<Namespace> {
        self.send(self.request(Method::PATCH, &format!("/v1/namespaces/{}", seg(ns))).json(req)).await
    }

    pub async fn delete_namespace(&self, ns: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/namespaces/{}", seg(ns)))).await
    }

    pub async fn create_key(&self, ns: &str, req: &CreateKey) -> Result<CreatedKey> {
        self.send(self.request(Method::POST, &format!("/v1/namespaces/{}/keys", seg(ns))).json(req)).await
    }

    pub async fn list_keys(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Key>> {
        let path = format!("/v1/namespaces/{}/keys", seg(ns));
        self.send(self.request(Method::GET, &path).query(&PageQuery { limit, cursor })).await
    }

    pub async fn revoke_key(&self, ns: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/namespaces/{}/keys/{}", seg(ns), seg(id)))).await
    }

    /// A namespace's audit records, or the platform's when `ns` is `None`.
    pub async fn audit(&self, ns: Option<&str>, filter: &AuditFilter) -> Result<Page<AuditRecord>> {
        let path = match ns {
            Some(ns) => format!("/v1/namespaces/{}/audit", seg(ns)),
            None => "/v1/audit".to_owned(),
        };
        self.send(self.request(Method::GET, &path).query(filter)).await
    }

    pub async fn verify_audit(&self, ns: Option<&str>) -> Result<AuditVerification> {
        let path = match ns {
            Some(ns) => format!("/v1/namespaces/{}/audit/verify", seg(ns)),
            None => "/v1/audit/verify".to_owned(),
        };
        self.send(self.request(Method::GET, &path)).await
    }

    pub async fn create_sandbox(&self, ns: &str, req: &CreateSandbox) -> Result<Sandbox> {
        self.send(self.request(Method::POST, &format!("/v1/namespaces/{}/sandboxes", seg(ns))).json(req)).await
    }

    pub async fn list_sandboxes(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Sandbox>> {
        let path = format!("/v1/namespaces/{}/sandboxes", seg(ns));
        self.send(self.request(Method::GET, &path).query(&PageQuery { limit, cursor })).await
    }

    pub async fn get_sandbox(&self, ns: &str, id: &str) -> Result<Sandbox> {
        self.send(self.request(Method::GET, &sandbox_path(ns, id, ""))).await
    }

    pub async fn delete_sandbox(&self, ns: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &sandbox_path(ns, id, ""))).await
    }

    /// Runs a command and waits for all of its output.
    pub async fn exec(&self, ns: &str, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        self.send(self.request(Method::POST, &sandbox_path(ns, id, "/exec")).json(req)).await
    }

    /// Runs a command and streams its output: pull events with [`ExecStream::next`] until an
    /// `exit` or `error` event.
    pub async fn exec_stream(&self, ns: &str, id: &str, req: &ExecRequest) -> Result<ExecStream> {
        let builder = self.request(Method::POST, &sandbox_path(ns, id, "/exec")).header(ACCEPT, NDJSON).json(req);
        let response = self.send_raw(builder).await?;
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with(NDJSON) {
            return Err(ClientError::Unexpected {
                status: response.status().as_u16(),
                detail: format!("asked for {NDJSON}, got {content_type:?}"),
            });
        }
        Ok(ExecStream { response, base: self.base.clone(), lines: Lines::new(MAX_LINE_BYTES), ended: false })
    }

    /// The bytes of a file inside a sandbox.
    pub async fn read_file(&self, ns: &str, id: &str, path: &str) -> Result<Vec<u8>> {
        let builder = self.request(Method::GET, &sandbox_path(ns, id, "/files")).query(&[("path", path)]);
        let response = self.send_raw(builder).await?;
        self.read_bounded(response).await
    }

    /// Writes a file inside a sandbox, replacing it atomically; parent directories are created.
    pub async fn write_file(&self, ns: &str, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        let builder = self
            .request(Method::PUT, &sandbox_path(ns, id, "/files"))
            .query(&[("path", path)])
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        self.send_raw(builder).await?;
        Ok(())
    }
}

/// What an archive upload put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveResult {
    /// Entries of the archive written.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// A file of a filesystem and the ETag of its content.
#[derive(Debug, Clone)]
pub struct FsFile {
    pub data: Vec<u8>,
    /// The ETag the server sent, quotes included; `None` when it sent none.
    pub etag: Option<String>,
}

/// Why an archive download failed: the server, or the writer it was streamed into.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The writer refused a chunk; what it had was written.
    #[error("cannot write the archive")]
    Write(#[source] std::io::Error),
}

/// Filesystems, their contents, and projects.
impl Client {
    pub async fn create_filesystem(&self, ns: &str, req: &CreateFilesystem) -> Result<Filesystem> {
        self.send(self.request(Method::POST, &format!("/v1/namespaces/{}/filesystems", seg(ns))).json(req)).await
    }

    pub async fn list_filesystems(
        &self,
        ns: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Filesystem>> {
        let path = format!("/v1/namespaces/{}/filesystems", seg(ns));
        self.send(self.request(Method::GET, &path).query(&PageQuery { limit, cursor })).await
    }

    pub async fn get_filesystem(&self, ns: &str, id: &str) -> Result<Filesystem> {
        self.send(self.request(Method::GET, &filesystem_path(ns, id, ""))).await
    }

    /// Grows a filesystem to `size_bytes`; the server refuses to shrink one.
    pub async fn resize_filesystem(&self, ns: &str, id: &str, req: &ResizeFilesystem) -> Result<Filesystem> {
        self.send(self.request(Method::PATCH, &filesystem_path(ns, id, "")).json(req)).await
    }

    /// Deletes a filesystem and its data; with `force`, the sandboxes that mount it are deleted
    /// first instead of the server refusing with 409.
    pub async fn delete_filesystem(&self, ns: &str, id: &str, force: bool) -> Result<()> {
        let mut builder = self.request(Method::DELETE, &filesystem_path(ns, id, ""));
        if force {
            builder = builder.query(&[("force", "true")]);
        }
        self.send(builder).await
    }

    /// Streams the whole filesystem as a plain tar archive into `writer`, calling `progress`
    /// with the bytes received so far after every chunk; returns the archive's size.
    pub async fn download_archive(
        &self,
        ns: &str,
        id: &str,
        writer: &mut impl std::io::Write,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, DownloadError> {
        let builder = self.request(Method::GET, &filesystem_path(ns, id, "/archive"));
        let mut response = self.send_raw(builder).await?;
        let mut received = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(self.transport())? {
            writer.write_all(&chunk).map_err(DownloadError::Write)?;
            received += chunk.len() as u64;
            progress(received);
        }
        writer.flush().map_err(DownloadError::Write)?;
        Ok(received)
    }

    /// Replaces the whole content of a filesystem with a tar archive (plain, gzip or zstd).
    pub async fn upload_archive(&self, ns: &str, id: &str, body: Vec<u8>) -> Result<ArchiveResult> {
        let builder = self
            .request(Method::PUT, &filesystem_path(ns, id, "/archive"))
            .header(CONTENT_TYPE, "application/x-tar")
            .body(body);
        self.send(builder).await
    }

    /// A file of a filesystem (`path` relative to its root) and its ETag.
    pub async fn fs_read_file(&self, ns: &str, id: &str, path: &str) -> Result<FsFile> {
        let builder = self.request(Method::GET, &filesystem_path(ns, id, "/files")).query(&[("path", path)]);
        let response = self.send_raw(builder).await?;
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let data = self.read_bounded(response).await?;
        Ok(FsFile { data, etag })
    }

    /// The entries of a directory of a filesystem (`""` for its root).
    pub async fn fs_list(&self, ns: &str, id: &str, path: &str) -> Result<Vec<FileEntry>> {
        let builder =
            self.request(Method::GET, &filesystem_path(ns, id, "/files")).query(&[("path", path), ("list", "true")]);
        self.send(builder).await
    }

    /// Writes a file of a filesystem atomically (parents created); returns the new ETag. With
    /// `if_match` only over that content, with `if_none_match` only when there is no file; the
    /// server answers 412 otherwise.
    pub async fn fs_write_file(
        &self,
        ns: &str,
        id: &str,
        path: &str,
        data: Vec<u8>,
        if_match: Option<&str>,
        if_none_match: bool,
    ) -> Result<String> {
        let mut builder = self
            .request(Method::PUT, &filesystem_path(ns, id, "/files"))
            .query(&[("path", path)])
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        if let Some(tag) = if_match {
            builder = builder.header(IF_MATCH, tag);
        }
        if if_none_match {
            builder = builder.header(IF_NONE_MATCH, "*");
        }
        let response = self.send_raw(builder).await?;
        let status = response.status().as_u16();
        match response.headers().get(ETAG).and_then(|v| v.to_str().ok()) {
            Some(tag) => Ok(tag.to_owned()),
            None => Err(ClientError::Unexpected { status, detail: "the write was answered without an ETag".into() }),
        }
    }

    /// Deletes a file or an empty directory of a filesystem.
    pub async fn fs_delete_file(&self, ns: &str, id: &str, path: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &filesystem_path(ns, id, "/files")).query(&[("path", path)])).await
    }

    pub async fn create_project(&self, ns: &str, req: &CreateProject) -> Result<Project> {
        self.send(self.request(Method::POST, &format!("/v1/namespaces/{}/projects", seg(ns))).json(req)).await
    }

    pub async fn list_projects(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Project>> {
        let path = format!("/v1/namespaces/{}/projects", seg(ns));
        self.send(self.request(Method::GET, &path).query(&PageQuery { limit, cursor })).await
    }

    /// Deletes a project; the server refuses while filesystems belong to it.
    pub async fn delete_project(&self, ns: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/namespaces/{}/projects/{}", seg(ns), seg(id)))).await
    }

    /// The body of `response`, at most [`MAX_FILE_BYTES`].
    async fn read_bounded(&self, mut response: Response) -> Result<Vec<u8>> {
        let status = response.status().as_u16();
        let too_large =
            || ClientError::Unexpected { status, detail: format!("the file is over {MAX_FILE_BYTES} bytes") };
        let announced = response.content_length().unwrap_or(0);
        if announced > MAX_FILE_BYTES as u64 {
            return Err(too_large());
        }
        let mut data = Vec::with_capacity(announced as usize);
        while let Some(chunk) = response.chunk().await.map_err(self.transport())? {
            if data.len() + chunk.len() > MAX_FILE_BYTES {
                return Err(too_large());
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }
}

/// What setting a secret did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretSet {
    #[serde(flatten)]
    pub secret: Secret,
    /// `true` when the secret is new (HTTP 201), `false` when its value was replaced (HTTP 200).
    pub created: bool,
}

/// Single sign-on, policies and secrets of a namespace.
impl Client {
    /// The namespace's single sign-on settings; `oidc` is `None` when it has none.
    pub async fn get_identity(&self, ns: &str) -> Result<IdentityConfig> {
        self.send(self.request(Method::GET, &format!("/v1/namespaces/{}/identity", seg(ns)))).await
    }

    /// Replaces the namespace's single sign-on settings; `oidc: None` turns single sign-on off.
    pub async fn set_identity(&self, ns: &str, req: &IdentityConfig) -> Result<IdentityConfig> {
        self.send(self.request(Method::PUT, &format!("/v1/namespaces/{}/identity", seg(ns))).json(req)).await
    }

    /// Adds a Cedar policy; the server refuses one that does not parse or match the schema.
    pub async fn create_policy(&self, ns: &str, req: &CreatePolicy) -> Result<Policy> {
        self.send(self.request(Method::POST, &format!("/v1/namespaces/{}/policies", seg(ns))).json(req)).await
    }

    pub async fn list_policies(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Policy>> {
        let path = format!("/v1/namespaces/{}/policies", seg(ns));
        self.send(self.request(Method::GET, &path).query(&PageQuery { limit, cursor })).await
    }

    pub async fn delete_policy(&self, ns: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/namespaces/{}/policies/{}", seg(ns), seg(id)))).await
    }

    /// How the namespace's policies would decide a request, without making it.
    pub async fn explain(&self, ns: &str, req: &ExplainRequest) -> Result<ExplainResult> {
        self.send(self.request(Method::POST, &format!("/v1/namespaces/{}/authz/explain", seg(ns))).json(req)).await
    }

    /// Bulkhead's Cedar schema, in Cedar's schema syntax.
    pub async fn policy_schema(&self) -> Result<String> {
        let response = self.send_raw(self.request(Method::GET, "/v1/policy-schema")).await?;
        let status = response.status().as_u16();
        let bytes = self.read_bounded(response).await?;
        String::from_utf8(bytes)
            .map_err(|_| ClientError::Unexpected { status, detail: "the schema is not UTF-8 text".into() })
    }

    /// Creates a secret, or replaces the value of the one of that name.
    pub async fn set_secret(&self, ns: &str, req: &CreateSecret) -> Result<SecretSet> {
        let builder = self.request(Method::POST, &format!("/v1/namespaces/{}/secrets", seg(ns))).json(req);
        let response = self.send_raw(builder).await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(self.transport())?;
        let secret = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Unexpected { status: status.as_u16(), detail: e.to_string() })?;
        Ok(SecretSet { secret, created: status == StatusCode::CREATED })
    }

    /// A page of the namespace's secrets: names and times, never values.
    pub async fn list_secrets(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Secret>> {
        let path = format!("/v1/namespaces/{}/secrets", seg(ns));
        self.send(self.request(Method::GET, &path).query(&PageQuery { limit, cursor })).await
    }

    pub async fn delete_secret(&self, ns: &str, name: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/v1/namespaces/{}/secrets/{}", seg(ns), seg(name)))).await
    }
}

/// The output of a streamed exec, one event at a time.
#[derive(Debug)]
pub struct ExecStream {
    response: Response,
    base: String,
    lines: Lines,
    ended: bool,
}

impl ExecStream {
    /// The next event; `None` when the server ended the stream. Lines are parsed across chunk
    /// boundaries; a line over [`MAX_LINE_BYTES`], a line that does not parse, or a stream cut
    /// mid-line is an error.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        let status = self.response.status().as_u16();
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) if line.trim_ascii().is_empty() => continue,
                Ok(Some(line)) => {
                    return serde_json::from_slice(line)
                        .map(Some)
                        .map_err(|e| ClientError::Unexpected { status, detail: format!("a bad exec event: {e}") })
                }
                Ok(None) => {}
                Err(detail) => return Err(ClientError::Unexpected { status, detail }),
            }
            if self.ended {
                if self.lines.rest_is_blank() {
                    return Ok(None);
                }
                return Err(ClientError::Unexpected { status, detail: "the exec stream ended mid-line".into() });
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.lines.push(&chunk),
                Ok(None) => self.ended = true,
                Err(source) => return Err(ClientError::Transport { url: self.base.clone(), source }),
            }
        }
    }
}

/// Splits received bytes into newline-terminated lines of at most `max` bytes.
#[derive(Debug)]
struct Lines {
    /// Bytes received and not yet handed out; the next line starts at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Everything before this offset is known to hold no newline.
    scanned: usize,
    max: usize,
}

impl Lines {
    fn new(max: usize) -> Lines {
        Lines { buf: Vec::new(), start: 0, scanned: 0, max }
    }

    /// Appends received bytes, first dropping the lines already handed out.
    fn push(&mut self, chunk: &[u8]) {
        self.buf.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line without its newline; `None` until more bytes arrive; an error
    /// when the unfinished line is already longer than `max`.
    fn next_line(&mut self) -> std::result::Result<Option<&[u8]>, String> {
        if let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + i;
            let start = self.start;
            self.start = end + 1;
            self.scanned = self.start;
            return Ok(Some(&self.buf[start..end]));
        }
        self.scanned = self.buf.len();
        if self.buf.len() - self.start > self.max {
            return Err(format!("a line of the stream is over {} bytes", self.max));
        }
        Ok(None)
    }

    /// Whether nothing but whitespace is left after the last complete line.
    fn rest_is_blank(&self) -> bool {
        self.buf[self.start..].trim_ascii().is_empty()
    }
}

/// `/v1/namespaces/{ns}/sandboxes/{id}` and `rest`.
fn sandbox_path(ns: &str, id: &str, rest: &str) -> String {
    format!("/v1/namespaces/{}/sandboxes/{}{rest}", seg(ns), seg(id))
}

/// `/v1/namespaces/{ns}/filesystems/{id}` and `rest`.
fn filesystem_path(ns: &str, id: &str, rest: &str) -> String {
    format!("/v1/namespaces/{}/filesystems/{}{rest}", seg(ns), seg(id))
}

impl Client {
    /// A namespace's metered usage; `from`, `to` RFC 3339, `granularity` minute, hour or day.
    pub async fn usage(
        &self,
        ns: &str,
        from: Option<&str>,
        to: Option<&str>,
        granularity: Option<&str>,
    ) -> Result<bulkhead_api::UsageReport> {
        let mut q: Vec<(&str, &str)> = Vec::new();
        for (k, v) in [("from", from), ("to", to), ("granularity", granularity)] {
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        self.send(self.request(Method::GET, &format!("/v1/namespaces/{}/usage", seg(ns))).query(&q)).await
    }

    /// A page of a namespace's retained exec output, oldest first.
    pub async fn logs(&self, ns: &str, q: &LogQuery) -> Result<bulkhead_api::LogPage> {
        self.send(self.request(Method::GET, &format!("/v1/namespaces/{}/logs", seg(ns))).query(&q.pairs())).await
    }

    /// Follows a namespace's exec output live (server-sent events). With `after` or `since` the
    /// retained records that match come first.
    pub async fn tail_logs(&self, ns: &str, q: &LogQuery) -> Result<LogTail> {
        let builder = self
            .request(Method::GET, &format!("/v1/namespaces/{}/logs", seg(ns)))
            .query(&q.pairs())
            .header(ACCEPT, "text/event-stream");
        let response = self.send_raw(builder).await?;
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(ClientError::Unexpected {
                status: response.status().as_u16(),
                detail: format!("asked for text/event-stream, got {content_type:?}"),
            });
        }
        Ok(LogTail { response, base: self.base.clone(), lines: Lines::new(MAX_SSE_LINE_BYTES), ended: false })
    }
}

/// What a log query selects.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub sandbox: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub until: Option<String>,
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

impl LogQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        for (k, v) in [("sandbox", &self.sandbox), ("since", &self.since), ("until", &self.until)] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        if let Some(a) = self.after {
            q.push(("after", a.to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

/// Longest line of a log tail: a record of 64 KiB of output, JSON-escaped.
const MAX_SSE_LINE_BYTES: usize = 1 << 20;

/// One event of a log tail.
#[derive(Debug, Clone)]
pub enum LogTailEvent {
    Record(bulkhead_api::LogRecord),
    /// The server could not keep this tail up to date and skipped records.
    Lagged(String),
}

/// A live log tail.
pub struct LogTail {
    response: Response,
    base: String,
    lines: Lines,
    ended: bool,
}

impl LogTail {
    /// The next event; `None` when the server ended the stream. Keep-alive comments are skipped.
    pub async fn next(&mut self) -> Result<Option<LogTailEvent>> {
        let status = self.response.status().as_u16();
        let (mut kind, mut data) = (String::new(), String::new());
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => {
                    let line = String::from_utf8_lossy(line);
                    let line = line.strip_suffix('\r').unwrap_or(&line);
                    if line.is_empty() {
                        if data.is_empty() {
                            kind.clear();
                            continue;
                        }
                        if kind == "lagged" {
                            return Ok(Some(LogTailEvent::Lagged(data)));
                        }
                        return serde_json::from_str(&data)
                            .map(|r| Some(LogTailEvent::Record(r)))
                            .map_err(|e| ClientError::Unexpected { status, detail: format!("a bad log event: {e}") });
                    }
                    if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_owned();
                    }
                    continue;
                }
                Ok(None) => {}
                Err(detail) => return Err(ClientError::Unexpected { status, detail }),
            }
            if self.ended {
                return Ok(None);
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.lines.push(&chunk),
                Ok(None) => self.ended = true,
                Err(source) => return Err(ClientError::Transport { url: self.base.clone(), source }),
            }
        }
    }
}

/// Percent-encodes one path segment, so a hostile name cannot change the path.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Lines;

    /// Every way of cutting a stream into chunks gives the same lines.
    #[test]
    fn lines_across_chunks() {
        let text = b"{\"type\":\"stdout\",\"data\":\"a\"}\n\n{\"type\":\"exit\"}\nrest";
        for size in 1..text.len() {
            let mut lines = Lines::new(64);
            let mut got: Vec<Vec<u8>> = Vec::new();
            for chunk in text.chunks(size) {
                lines.push(chunk);
                while let Some(l) = lines.next_line().unwrap() {
                    got.push(l.to_vec());
                }
            }
            assert_eq!(
                got,
                vec![b"{\"type\":\"stdout\",\"data\":\"a\"}".to_vec(), vec![], b"{\"type\":\"exit\"}".to_vec()]
            );
            assert!(!lines.rest_is_blank());
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let mut lines = Lines::new(8);
        lines.push(b"12345678");
        assert_eq!(lines.next_line().unwrap(), None);
        lines.push(b"9");
        assert!(lines.next_line().is_err());
        let mut lines = Lines::new(8);
        lines.push(b"12345678\n12");
        assert_eq!(lines.next_line().unwrap(), Some(&b"12345678"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        assert!(!lines.rest_is_blank());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(super::seg("acme"), "acme");
        assert_eq!(super::seg("../x y"), "%2E%2E%2Fx%20y");
    }
}
