//! Background processes of a sandbox: start, list, get, their output (resumable by `seq`),
//! their stdin, signals and terminal size, and an interactive attachment over a WebSocket.

use std::io::Read;

use bulkhead_api::{
    AttachControl, CreateProcess, ErrorBody, Page, Process, ProcessEvent, ProcessOutputParams, ProcessStdinParams,
    Signal, SignalRequest, StdinResult, TtySize,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::lines::{reader_body, EventStream};
use crate::{namespace_path, seg, Client, Error, Result};

const NDJSON: &str = "application/x-ndjson";
/// The size of the pieces a streamed stdin is read and sent in.
const STDIN_CHUNK: usize = 256 * 1024;

/// `/v1/namespaces/{ns}/sandboxes/{id}/processes` and `rest`.
fn processes_path(ns: &str, id: &str, rest: &str) -> String {
    namespace_path(ns, &format!("/sandboxes/{}/processes{rest}", seg(id)))
}

impl Client {
    /// Starts a process in the background; it runs on after this answers.
    pub async fn start_process(&self, ns: &str, id: &str, req: &CreateProcess) -> Result<Process> {
        self.send(self.request(Method::POST, &processes_path(ns, id, "")).json(req)).await
    }

    /// The sandbox's processes: running ones and those that ended in the last 10 minutes.
    pub async fn list_processes(&self, ns: &str, id: &str) -> Result<Vec<Process>> {
        let page: Page<Process> = self.send(self.request(Method::GET, &processes_path(ns, id, ""))).await?;
        Ok(page.items)
    }

    /// One process.
    pub async fn get_process(&self, ns: &str, id: &str, pid: &str) -> Result<Process> {
        self.send(self.request(Method::GET, &processes_path(ns, id, &format!("/{}", seg(pid))))).await
    }

    /// The process's output events with a `seq` above `after` (0: from the start), as they come;
    /// the stream ends with the `exit` event.
    pub async fn process_output(&self, ns: &str, id: &str, pid: &str, after: u64) -> Result<ProcessStream> {
        let builder = self
            .request(Method::GET, &processes_path(ns, id, &format!("/{}/output", seg(pid))))
            .query(&ProcessOutputParams { after: Some(after) })
            .header(ACCEPT, NDJSON);
        let answer = self.send_raw(builder).await?;
        answer.expect_content_type(NDJSON)?;
        Ok(ProcessStream::new(answer, "output stream"))
    }

    /// Writes `data` to the process's stdin; `eof` closes it after. Answers the bytes written.
    pub async fn process_stdin(&self, ns: &str, id: &str, pid: &str, data: Vec<u8>, eof: bool) -> Result<u64> {
        let builder = self
            .request(Method::POST, &processes_path(ns, id, &format!("/{}/stdin", seg(pid))))
            .query(&ProcessStdinParams { eof: Some(eof) })
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        let r: StdinResult = self.send(builder).await?;
        Ok(r.bytes)
    }

    /// Streams everything `source` yields to the process's stdin, a chunk at a time (never all
    /// of it in memory: `source` is read on a blocking thread a few chunks ahead of the
    /// connection); `eof` closes stdin after it. Answers the bytes written. The reading thread
    /// is detached: a caller that stops waiting (the process exited) is not held up by a
    /// `source` that blocks, such as a terminal.
    pub async fn process_stdin_from(
        &self,
        ns: &str,
        id: &str,
        pid: &str,
        source: Box<dyn Read + Send>,
        eof: bool,
    ) -> Result<u64> {
        let builder = self
            .request(Method::POST, &processes_path(ns, id, &format!("/{}/stdin", seg(pid))))
            .query(&ProcessStdinParams { eof: Some(eof) })
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reader_body(source, STDIN_CHUNK));
        let sent: StdinResult = self.send(builder).await?;
        Ok(sent.bytes)
    }

    /// Sends a signal by name (`SIGTERM`, `TERM`) or number (`15`).
    pub async fn signal_process(&self, ns: &str, id: &str, pid: &str, signal: &str) -> Result<()> {
        let body = SignalRequest { signal: Signal::Name(signal.to_owned()) };
        self.send(self.request(Method::POST, &processes_path(ns, id, &format!("/{}/signal", seg(pid)))).json(&body))
            .await
    }

    /// Sets the size of the process's terminal.
    pub async fn resize_process(&self, ns: &str, id: &str, pid: &str, size: TtySize) -> Result<()> {
        self.send(self.request(Method::POST, &processes_path(ns, id, &format!("/{}/resize", seg(pid)))).json(&size))
            .await
    }

    /// Attaches to the process over a WebSocket (`ws://`, from the server's `http://` URL):
    /// its output from the start, and its stdin.
    pub async fn attach_process(&self, ns: &str, id: &str, pid: &str) -> Result<Attachment> {
        let path = processes_path(ns, id, &format!("/{}/attach", seg(pid)));
        let url = match self.base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}{path}"),
            Some((_, rest)) => format!("ws://{rest}{path}"),
            None => format!("ws://{}{path}", self.base),
        };
        let ws_error = |source| Error::WebSocket { url: url.clone(), source: Box::new(source) };
        let mut request = url.as_str().into_client_request().map_err(ws_error)?;
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}").parse().map_err(|_| Error::Unexpected {
                method: Method::GET,
                url: url.clone(),
                status: 0,
                detail: "the token is not a valid header value".into(),
            })?;
            request.headers_mut().insert(reqwest::header::AUTHORIZATION, value);
        }
        let (socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                // The server refused the upgrade with an ordinary error answer.
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                return Err(match serde_json::from_slice::<ErrorBody>(body) {
                    Ok(b) => Error::Api {
                        status,
                        code: b.error.code,
                        message: b.error.message,
                        request_id: b.error.request_id,
                    },
                    Err(_) => Error::Unexpected {
                        method: Method::GET,
                        url,
                        status,
                        detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                    },
                });
            }
            Err(e) => return Err(ws_error(e)),
        };
        let (sink, source) = socket.split();
        Ok(Attachment { writer: AttachWriter { sink, url: url.clone() }, reader: AttachReader { source, url } })
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An attachment to a process: [`Attachment::split`] it to write and read at once.
#[derive(Debug)]
pub struct Attachment {
    writer: AttachWriter,
    reader: AttachReader,
}

impl Attachment {
    /// The writing half (stdin, resize, eof) and the reading half (output, exit).
    pub fn split(self) -> (AttachWriter, AttachReader) {
        (self.writer, self.reader)
    }
}

/// What an attachment receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    /// Bytes the process wrote (its terminal's, for a tty process).
    Output(Vec<u8>),
    /// The process ended; nothing follows.
    Exit { exit_code: i32, signal: Option<i32>, timed_out: bool },
    /// The server ended the attachment with this message.
    Error(String),
}

/// The writing half of an attachment.
#[derive(Debug)]
pub struct AttachWriter {
    sink: SplitSink<Socket, Message>,
    url: String,
}

impl AttachWriter {
    async fn send(&mut self, message: Message) -> Result<()> {
        let url = self.url.clone();
        self.sink.send(message).await.map_err(|source| Error::WebSocket { url, source: Box::new(source) })
    }

    async fn control(&mut self, control: &AttachControl) -> Result<()> {
        let text = serde_json::to_string(control).unwrap_or_default();
        self.send(Message::Text(text.into())).await
    }

    /// Writes to the process's stdin.
    pub async fn stdin(&mut self, data: Vec<u8>) -> Result<()> {
        self.send(Message::Binary(data.into())).await
    }

    /// Sets the size of the process's terminal.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        self.control(&AttachControl::Resize { rows, cols }).await
    }

    /// Closes the process's stdin.
    pub async fn eof(&mut self) -> Result<()> {
        self.control(&AttachControl::Eof).await
    }

    /// Closes the WebSocket; the process runs on.
    pub async fn close(&mut self) -> Result<()> {
        self.send(Message::Close(None)).await
    }
}

/// The reading half of an attachment.
#[derive(Debug)]
pub struct AttachReader {
    source: SplitStream<Socket>,
    url: String,
}

impl AttachReader {
    /// The next event; `None` when the socket closed without an `exit`.
    pub async fn next(&mut self) -> Result<Option<AttachEvent>> {
        loop {
            let message = match self.source.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(Error::WebSocket { url: self.url.clone(), source: Box::new(e) }),
                Some(Ok(m)) => m,
            };
            match message {
                Message::Binary(data) => return Ok(Some(AttachEvent::Output(data.to_vec()))),
                Message::Text(text) => {
                    let control: AttachControl =
                        serde_json::from_str(text.as_str()).map_err(|e| Error::Unexpected {
                            method: Method::GET,
                            url: self.url.clone(),
                            status: 101,
                            detail: format!("a control message that does not parse: {e}"),
                        })?;
                    match control {
                        AttachControl::Exit { exit_code, signal, timed_out } => {
                            return Ok(Some(AttachEvent::Exit { exit_code, signal, timed_out }))
                        }
                        AttachControl::Error { message } => return Ok(Some(AttachEvent::Error(message))),
                        // Client-side messages coming back are ignored.
                        AttachControl::Resize { .. } | AttachControl::Eof => {}
                    }
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
    }
}

/// The output of a process, one event at a time (see [`EventStream`]).
pub type ProcessStream = EventStream<ProcessEvent>;
