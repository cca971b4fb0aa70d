//! A typed client of Bulkhead's HTTP API, used by the CLI and the end-to-end tests.
//!
//! **Invariant:** the client trusts nothing it is told beyond the wire types; an answer that does
//! not parse is an error, never a panic.

use bulkhead_api::{
    AuditRecord, AuditVerification, CreateKey, CreateNamespace, CreatedKey, ErrorBody, Key, Namespace, Page,
    UpdateNamespace,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
        Self { base: base.trim_end_matches('/').to_owned(), token, http: reqwest::Client::new() }
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

    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T> {
        let response =
            builder.send().await.map_err(|source| ClientError::Transport { url: self.base.clone(), source })?;
        let status = response.status();
        let bytes =
            response.bytes().await.map_err(|source| ClientError::Transport { url: self.base.clone(), source })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
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
            });
        }
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
