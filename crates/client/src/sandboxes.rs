//! Sandboxes: create, list, delete, run commands in them (buffered or streamed), and copy files
//! in and out.

use bulkhead_api::{CreateSandbox, ExecEvent, ExecRequest, ExecResult, Page, Sandbox, SandboxFileParams};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Method;

use crate::lines::EventStream;
use crate::{namespace_path, seg, Client, Result};

const NDJSON: &str = "application/x-ndjson";

/// `/v1/namespaces/{ns}/sandboxes/{id}` and `rest`.
fn sandbox_path(ns: &str, id: &str, rest: &str) -> String {
    namespace_path(ns, &format!("/sandboxes/{}{rest}", seg(id)))
}

impl Client {
    /// Creates a sandbox and waits until it runs.
    pub async fn create_sandbox(&self, ns: &str, req: &CreateSandbox) -> Result<Sandbox> {
        self.create_in(ns, "/sandboxes", req).await
    }

    /// A page of the namespace's sandboxes that the token may see.
    pub async fn list_sandboxes(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Sandbox>> {
        self.list_in(ns, "/sandboxes", limit, cursor).await
    }

    /// A sandbox, live or ended.
    pub async fn get_sandbox(&self, ns: &str, id: &str) -> Result<Sandbox> {
        self.send(self.request(Method::GET, &sandbox_path(ns, id, ""))).await
    }

    /// Stops a sandbox and removes it; its record stays, `deleted`.
    pub async fn delete_sandbox(&self, ns: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &sandbox_path(ns, id, ""))).await
    }

    /// Saves running sandbox `id`'s root as the new private image `name` of `ns` (its changes
    /// to its image as one layer on top): `POST .../sandboxes/{id}/snapshot`.
    pub async fn snapshot_sandbox(&self, ns: &str, id: &str, name: &str) -> Result<bulkhead_api::Image> {
        let body = bulkhead_api::SnapshotSandbox { name: name.to_owned() };
        self.send(self.request(Method::POST, &sandbox_path(ns, id, "/snapshot")).json(&body)).await
    }

    /// Runs a command and waits for all of its output.
    pub async fn exec(&self, ns: &str, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        self.send(self.request(Method::POST, &sandbox_path(ns, id, "/exec")).json(req)).await
    }

    /// Runs a command and streams its output: pull events with [`ExecStream::next`] until an
    /// `exit` or `error` event.
    pub async fn exec_stream(&self, ns: &str, id: &str, req: &ExecRequest) -> Result<ExecStream> {
        let builder = self.request(Method::POST, &sandbox_path(ns, id, "/exec")).header(ACCEPT, NDJSON).json(req);
        let answer = self.send_raw(builder).await?;
        answer.expect_content_type(NDJSON)?;
        Ok(ExecStream::new(answer, "exec stream"))
    }

    /// The bytes of a file inside a sandbox (`path` absolute).
    pub async fn read_file(&self, ns: &str, id: &str, path: &str) -> Result<Vec<u8>> {
        let query = SandboxFileParams { path: path.to_owned(), ..Default::default() };
        let builder = self.request(Method::GET, &sandbox_path(ns, id, "/files")).query(&query);
        self.send_raw(builder).await?.bounded().await
    }

    /// Writes a file inside a sandbox, replacing it atomically; parent directories are created.
    pub async fn write_file(&self, ns: &str, id: &str, path: &str, data: Vec<u8>) -> Result<()> {
        let builder = self
            .request(Method::PUT, &sandbox_path(ns, id, "/files"))
            .query(&SandboxFileParams { path: path.to_owned(), ..Default::default() })
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        self.send_raw(builder).await?;
        Ok(())
    }
}

/// The output of a streamed exec, one event at a time (see [`EventStream`]).
pub type ExecStream = EventStream<ExecEvent>;
