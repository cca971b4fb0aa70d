//! The client's one error type. Each variant's message names its own step (the request, the
//! answer); the underlying failure is reached through [`std::error::Error::source`], never
//! repeated in the message, so printing the chain prints each step once.

use reqwest::Method;

/// Why a call of the API failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error envelope: a 4xx or 5xx with its `code` (such as
    /// `not_found`), its message, and the request id that finds the request in the server's log
    /// and audit chain.
    #[error("{code}: {message} (HTTP {status}, request {request_id})")]
    Api { status: u16, code: String, message: String, request_id: String },
    /// The request could not be built: the server's URL, `base`, is not one.
    #[error("building a request to {base}")]
    Build { base: String, source: reqwest::Error },
    /// The request could not be sent or no answer came: nothing listens at the URL, the
    /// connection was refused or dropped before an answer, or it timed out.
    #[error("cannot reach the server for {method} {url}")]
    Transport { method: Method, url: String, source: reqwest::Error },
    /// The answer's body broke off while it was read.
    #[error("reading the answer to {method} {url}")]
    Receive { method: Method, url: String, source: reqwest::Error },
    /// The answer's body is not the JSON the API promises.
    #[error("parsing the answer to {method} {url} (HTTP {status})")]
    Decode { method: Method, url: String, status: u16, source: serde_json::Error },
    /// The answer is not what the API promises, in a way `detail` says.
    #[error("unexpected answer to {method} {url} (HTTP {status}): {detail}")]
    Unexpected { method: Method, url: String, status: u16, detail: String },
    /// A local file to upload could not be opened or read.
    #[error("reading {path}")]
    Read { path: String, source: std::io::Error },
    /// The writer an archive was streamed into refused a chunk; what it had was written.
    #[error("writing the archive")]
    Write { source: std::io::Error },
    /// The writer a file download was streamed into refused a chunk; what it had was written.
    #[error("writing the downloaded file")]
    WriteFile { source: std::io::Error },
    /// A WebSocket of `url` (a process's attachment) could not be opened or broke off.
    #[error("WebSocket {url}")]
    WebSocket { url: String, source: Box<tokio_tungstenite::tungstenite::Error> },
}

/// The error's former name, kept for the callers that use it.
pub type ClientError = Error;

/// A result of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One request as errors name it: its method and URL (query included, never the token).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    pub url: String,
}

impl Call {
    pub fn send(&self, source: reqwest::Error) -> Error {
        Error::Transport { method: self.method.clone(), url: self.url.clone(), source: source.without_url() }
    }

    pub fn receive(&self, source: reqwest::Error) -> Error {
        Error::Receive { method: self.method.clone(), url: self.url.clone(), source: source.without_url() }
    }

    pub fn decode(&self, status: u16, source: serde_json::Error) -> Error {
        Error::Decode { method: self.method.clone(), url: self.url.clone(), status, source }
    }

    pub fn unexpected(&self, status: u16, detail: impl Into<String>) -> Error {
        Error::Unexpected { method: self.method.clone(), url: self.url.clone(), status, detail: detail.into() }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A message names its own step; the cause is only reached through `source()`.
    #[test]
    fn messages_leave_their_cause_to_source() {
        let source = serde_json::from_slice::<u8>(b"x").unwrap_err();
        let cause = source.to_string();
        let call = Call { method: Method::GET, url: "http://h/v1/namespaces?limit=1".into() };
        let e = call.decode(200, source);
        assert_eq!(e.to_string(), "parsing the answer to GET http://h/v1/namespaces?limit=1 (HTTP 200)");
        assert_eq!(e.source().map(ToString::to_string), Some(cause));

        let e = Error::Write { source: std::io::Error::other("pipe closed") };
        assert_eq!(e.to_string(), "writing the archive");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("pipe closed"));
    }
}
