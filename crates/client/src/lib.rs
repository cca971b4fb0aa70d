//! A typed client of Bulkhead's HTTP API, used by the CLI and the end-to-end tests.
//!
//! One [`Client`] of one server with one token; its methods are grouped by resource, one module
//! each: [`namespaces`] (namespaces and keys), [`sandboxes`] (sandboxes, exec, their files),
//! [`processes`] (background processes, their output, stdin and WebSocket attachment),
//! [`filesystems`] (filesystems, their files and archives, projects), [`images`], [`agents`]
//! (agents, their versions, tasks and their messages, events and state), [`identity`] (single
//! sign-on, policies, secrets) and [`observe`] (usage, audit, logs). Every body and query it
//! sends or reads is a wire type of `bulkhead-api`, the same one the server parses.
//!
//! **Invariant:** the client trusts nothing it is told beyond the wire types; an answer that does
//! not parse is an error, never a panic.

pub mod agents;
pub mod error;
pub mod files;
pub mod filesystems;
pub mod identity;
pub mod images;
mod lines;
pub mod namespaces;
pub mod observe;
pub mod processes;
pub mod sandboxes;

use bulkhead_api::ErrorBody;
use reqwest::header::{HeaderName, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::agents::{PermissionOutcome, Pushed, TaskMessages, TaskState};
use crate::error::Call;
pub use crate::error::{ClientError, Error, Result};
pub use crate::filesystems::FsFile;
pub use crate::identity::SecretSet;
pub use crate::lines::EventStream;
pub use crate::observe::{AuditFilter, LogQuery, LogTail, LogTailEvent};
pub use crate::processes::{AttachEvent, AttachReader, AttachWriter, Attachment, ProcessStream};
pub use crate::sandboxes::ExecStream;
pub use bulkhead_api::ArchiveResult;

/// The longest NDJSON line of a streamed exec the client accepts; a longer one is an error, so
/// a hostile server cannot make the client buffer without end. The server sends output in
/// chunks far smaller than this.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The largest file `read_file` accepts. The server's own cap is smaller (64 MiB by default);
/// this one only stops a hostile server from exhausting the client's memory.
pub const MAX_FILE_BYTES: usize = 1 << 30;

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

    /// The server's URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`: the server's status and version; needs no token.
    pub async fn health(&self) -> Result<bulkhead_api::Health> {
        self.send(self.request(Method::GET, "/healthz")).await
    }

    /// A request of `path` (which starts with `/`), with the token when there is one.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends the request; an answer that is not a success becomes an error, from its envelope
    /// when it has one.
    async fn send_raw(&self, builder: RequestBuilder) -> Result<Answer> {
        let (http, request) = builder.build_split();
        let request = request.map_err(|source| Error::Build { base: self.base.clone(), source })?;
        let call = Call { method: request.method().clone(), url: request.url().to_string() };
        let response = http.execute(request).await.map_err(|e| call.send(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answer { call, response });
        }
        let bytes = response.bytes().await.map_err(|e| call.receive(e))?;
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Error::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
                request_id: body.error.request_id,
            },
            Err(_) => call.unexpected(status.as_u16(), String::from_utf8_lossy(&bytes[..bytes.len().min(200)])),
        })
    }

    /// Sends the request and parses the JSON of its answer; a 204 parses as `null`.
    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T> {
        self.send_raw(builder).await?.json().await
    }

    /// `POST /v1/namespaces/{ns}{collection}` with `req` as its JSON body: the created item.
    async fn create_in<B: Serialize, T: DeserializeOwned>(&self, ns: &str, collection: &str, req: &B) -> Result<T> {
        self.send(self.request(Method::POST, &namespace_path(ns, collection)).json(req)).await
    }

    /// One page of `GET /v1/namespaces/{ns}{collection}`.
    async fn list_in<T: DeserializeOwned>(
        &self,
        ns: &str,
        collection: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<bulkhead_api::Page<T>> {
        self.send(self.request(Method::GET, &namespace_path(ns, collection)).query(&page(limit, cursor))).await
    }

    /// `DELETE /v1/namespaces/{ns}{collection}/{id}`, `id` percent-encoded.
    async fn delete_in(&self, ns: &str, collection: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &namespace_path(ns, &format!("{collection}/{}", seg(id))))).await
    }
}

/// A success answer and the call it answers, which its errors name.
#[derive(Debug)]
struct Answer {
    call: Call,
    response: Response,
}

impl Answer {
    fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    /// A header's value, when it is there and is text.
    fn header(&self, name: HeaderName) -> Option<&str> {
        self.response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// An error unless the answer's content type is `want`.
    fn expect_content_type(&self, want: &str) -> Result<()> {
        let got = self.header(CONTENT_TYPE).unwrap_or("");
        if got.starts_with(want) {
            return Ok(());
        }
        Err(self.call.unexpected(self.status(), format!("asked for {want}, got {got:?}")))
    }

    /// The next piece of the body; `None` at its end.
    async fn chunk(&mut self) -> Result<Option<impl std::ops::Deref<Target = [u8]>>> {
        self.response.chunk().await.map_err(|e| self.call.receive(e))
    }

    async fn json<T: DeserializeOwned>(self) -> Result<T> {
        let status = self.status();
        let Answer { call, response } = self;
        let bytes = response.bytes().await.map_err(|e| call.receive(e))?;
        let body: &[u8] = if status == StatusCode::NO_CONTENT.as_u16() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| call.decode(status, e))
    }

    /// The body, at most [`MAX_FILE_BYTES`].
    async fn bounded(mut self) -> Result<Vec<u8>> {
        let status = self.status();
        let too_large = |call: &Call| call.unexpected(status, format!("the file is over {MAX_FILE_BYTES} bytes"));
        let announced = self.response.content_length().unwrap_or(0);
        if announced > MAX_FILE_BYTES as u64 {
            return Err(too_large(&self.call));
        }
        let mut data = Vec::with_capacity(announced as usize);
        while let Some(chunk) = self.chunk().await? {
            if data.len() + chunk.len() > MAX_FILE_BYTES {
                return Err(too_large(&self.call));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }
}

/// The query of one page of a list.
fn page(limit: Option<u32>, cursor: Option<&str>) -> bulkhead_api::PageParams {
    bulkhead_api::PageParams { limit, cursor: cursor.map(str::to_owned) }
}

/// `/v1/namespaces/{ns}` and `rest`.
fn namespace_path(ns: &str, rest: &str) -> String {
    format!("/v1/namespaces/{}{rest}", seg(ns))
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
    #[test]
    fn segments_are_encoded() {
        assert_eq!(super::seg("acme"), "acme");
        assert_eq!(super::seg("../x y"), "%2E%2E%2Fx%20y");
    }
}
