//! What happened in a namespace: its metered usage, its audit chain (or the platform's), and
//! the output of the commands run in its sandboxes, as pages or followed live.

use bulkhead_api::{AuditRecord, AuditVerification, LogPage, LogRecord, Page, UsageParams, UsageReport};
use reqwest::header::ACCEPT;
use reqwest::Method;

use crate::lines::Lines;
use crate::{namespace_path, Answer, Client, Result};

/// Filters of an audit listing (the wire type [`bulkhead_api::AuditParams`]).
pub type AuditFilter = bulkhead_api::AuditParams;

/// What a log query selects (the wire type [`bulkhead_api::LogParams`]).
pub type LogQuery = bulkhead_api::LogParams;

const EVENT_STREAM: &str = "text/event-stream";

/// Longest line of a log tail: a record of 64 KiB of output, JSON-escaped.
const MAX_SSE_LINE_BYTES: usize = 1 << 20;

/// `/v1/namespaces/{ns}/audit…`, or the platform's `/v1/audit…` when `ns` is `None`.
fn audit_path(ns: Option<&str>, rest: &str) -> String {
    match ns {
        Some(ns) => namespace_path(ns, &format!("/audit{rest}")),
        None => format!("/v1/audit{rest}"),
    }
}

impl Client {
    /// A namespace's metered usage; `from`, `to` RFC 3339, `granularity` minute, hour or day.
    pub async fn usage(
        &self,
        ns: &str,
        from: Option<&str>,
        to: Option<&str>,
        granularity: Option<&str>,
    ) -> Result<UsageReport> {
        let query = UsageParams {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            granularity: granularity.map(str::to_owned),
        };
        self.send(self.request(Method::GET, &namespace_path(ns, "/usage")).query(&query)).await
    }

    /// Namespace `ns`'s own Prometheus series (`GET /v1/namespaces/{ns}/metrics`), as the text
    /// exposition format.
    pub async fn namespace_metrics(&self, ns: &str) -> Result<String> {
        let bytes = self.send_raw(self.request(Method::GET, &namespace_path(ns, "/metrics"))).await?.bounded().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A namespace's audit records, or the platform's when `ns` is `None`.
    pub async fn audit(&self, ns: Option<&str>, filter: &AuditFilter) -> Result<Page<AuditRecord>> {
        self.send(self.request(Method::GET, &audit_path(ns, "")).query(filter)).await
    }

    /// Recomputes a namespace's audit chain, or the platform's when `ns` is `None`.
    pub async fn verify_audit(&self, ns: Option<&str>) -> Result<AuditVerification> {
        self.send(self.request(Method::GET, &audit_path(ns, "/verify"))).await
    }

    /// A page of a namespace's retained exec output, oldest first.
    pub async fn logs(&self, ns: &str, q: &LogQuery) -> Result<LogPage> {
        self.send(self.request(Method::GET, &namespace_path(ns, "/logs")).query(q)).await
    }

    /// Follows a namespace's exec output live (server-sent events). With `after` or `since` the
    /// retained records that match come first.
    pub async fn tail_logs(&self, ns: &str, q: &LogQuery) -> Result<LogTail> {
        let builder = self.request(Method::GET, &namespace_path(ns, "/logs")).query(q).header(ACCEPT, EVENT_STREAM);
        let answer = self.send_raw(builder).await?;
        answer.expect_content_type(EVENT_STREAM)?;
        Ok(LogTail { answer, lines: Lines::new(MAX_SSE_LINE_BYTES), ended: false })
    }
}

/// One event of a log tail.
#[derive(Debug, Clone)]
pub enum LogTailEvent {
    Record(LogRecord),
    /// The server could not keep this tail up to date and skipped records.
    Lagged(String),
}

/// A live log tail.
#[derive(Debug)]
pub struct LogTail {
    answer: Answer,
    lines: Lines,
    ended: bool,
}

impl LogTail {
    /// The next event; `None` when the server ended the stream. Keep-alive comments are skipped.
    pub async fn next(&mut self) -> Result<Option<LogTailEvent>> {
        let status = self.answer.status();
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
                            .map_err(|e| self.answer.call.decode(status, e));
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
                Err(detail) => return Err(self.answer.call.unexpected(status, detail)),
            }
            if self.ended {
                return Ok(None);
            }
            match self.answer.chunk().await? {
                Some(chunk) => self.lines.push(&chunk),
                None => self.ended = true,
            }
        }
    }
}
