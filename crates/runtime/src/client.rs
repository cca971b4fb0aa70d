//! The server's side of the supervisor protocol, async. Everything the supervisor sends is
//! untrusted: frame sizes are bounded, output is capped again here whatever the supervisor
//! claims, and a supervisor that stalls past the exec's own timeout is cut off.

use std::path::Path;
use std::time::Duration;

use bulkhead_supervisor::protocol::{self, kind, Done, ExecSpec, Exit, Failure, Request, CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::{Result, RuntimeError};

/// How much longer than the exec's own timeout the server waits for the supervisor's answer.
const GRACE: Duration = Duration::from_secs(5);

/// One event of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(Exit),
}

/// The events of an exec, in order; the last is `Exit` or an error. Dropping it cancels the
/// exec: the connection closes and the supervisor kills the command.
pub struct ExecStream {
    rx: mpsc::Receiver<Result<ExecEvent>>,
}

impl ExecStream {
    pub async fn next(&mut self) -> Option<Result<ExecEvent>> {
        self.rx.recv().await
    }
}

async fn connect(socket: &Path, id: &str) -> Result<UnixStream> {
    UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => RuntimeError::NotRunning(id.to_owned()),
        _ => RuntimeError::Protocol(format!("connect to the supervisor of {id}: {e}")),
    })
}

async fn send_frame(conn: &mut UnixStream, k: u8, payload: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(5 + payload.len());
    protocol::write_frame(&mut buf, k, payload).map_err(|e| RuntimeError::Protocol(format!("encode a frame: {e}")))?;
    // The other end is the sandbox: a broken connection is the sandbox's doing.
    conn.write_all(&buf).await.map_err(|e| RuntimeError::Protocol(format!("send to the supervisor: {e}")))
}

async fn send_request(conn: &mut UnixStream, request: &Request) -> Result<()> {
    let bytes = serde_json::to_vec(request).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
    send_frame(conn, kind::REQUEST, &bytes).await
}

async fn send_data(conn: &mut UnixStream, data: &[u8]) -> Result<()> {
    for chunk in data.chunks(CHUNK) {
        send_frame(conn, kind::DATA, chunk).await?;
    }
    send_frame(conn, kind::DATA_END, &[]).await
}

/// Reads one frame; `None` at end of stream.
async fn read_frame(conn: &mut UnixStream) -> Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match conn.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(RuntimeError::Protocol(format!("read from the supervisor: {e}"))),
    }
    let (k, len) = protocol::parse_header(header).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload)
        .await
        .map_err(|e| RuntimeError::Protocol(format!("read from the supervisor: {e}")))?;
    Ok(Some((k, payload)))
}

fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| RuntimeError::Protocol(format!("malformed answer: {e}")))
}

/// Starts `spec` through the supervisor listening at `socket`.
pub async fn exec(socket: &Path, id: &str, mut spec: ExecSpec, stdin: Vec<u8>) -> Result<ExecStream> {
    let mut conn = connect(socket, id).await?;
    spec.stdin = !stdin.is_empty();
    let cap = spec.max_output_bytes;
    let deadline = Duration::from_millis(spec.timeout_ms) + GRACE;
    send_request(&mut conn, &Request::Exec(spec)).await?;
    if !stdin.is_empty() {
        send_data(&mut conn, &stdin).await?;
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let result = tokio::time::timeout(deadline, pump(&mut conn, cap, &tx)).await;
        let end = match result {
            Ok(Ok(exit)) => Ok(ExecEvent::Exit(exit)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RuntimeError::Protocol("the supervisor did not finish the exec in time".into())),
        };
        let _ = tx.send(end).await;
    });
    Ok(ExecStream { rx })
}

/// Forwards output frames until the exit; caps each stream at `cap` bytes.
async fn pump(conn: &mut UnixStream, cap: u64, tx: &mpsc::Sender<Result<ExecEvent>>) -> Result<Exit> {
    let mut sent = [0u64; 2];
    let mut over = [false; 2];
    loop {
        let Some((k, payload)) = read_frame(conn).await? else {
            return Err(RuntimeError::Protocol("the sandbox ended before the command finished".into()));
        };
        match k {
            kind::STDOUT | kind::STDERR => {
                let slot = usize::from(k == kind::STDERR);
                let room = cap.saturating_sub(sent[slot]) as usize;
                let mut data = payload;
                if data.len() > room {
                    data.truncate(room);
                    over[slot] = true;
                }
                if data.is_empty() {
                    continue;
                }
                sent[slot] += data.len() as u64;
                let event = if slot == 0 { ExecEvent::Stdout(data) } else { ExecEvent::Stderr(data) };
                if tx.send(Ok(event)).await.is_err() {
                    // The caller is gone; closing the connection cancels the command.
                    return Err(RuntimeError::Protocol("cancelled".into()));
                }
            }
            kind::EXIT => {
                let mut exit: Exit = parse(&payload)?;
                exit.stdout_truncated |= over[0];
                exit.stderr_truncated |= over[1];
                return Ok(exit);
            }
            kind::FAILURE => {
                let f: Failure = parse(&payload)?;
                return Err(RuntimeError::Protocol(f.message));
            }
            other => return Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        }
    }
}

/// Reads a file of at most `max_bytes` through the supervisor.
pub async fn read_file(socket: &Path, id: &str, path: &str, max_bytes: u64) -> Result<Vec<u8>> {
    let mut conn = connect(socket, id).await?;
    send_request(&mut conn, &Request::ReadFile { path: path.to_owned(), max_bytes }).await?;
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut conn))
            .await
            .map_err(|_| RuntimeError::Protocol("file read timed out".into()))??;
        let Some((k, payload)) = frame else {
            return Err(RuntimeError::Protocol("the sandbox closed the connection".into()));
        };
        match k {
            kind::FILE_DATA => {
                if (out.len() + payload.len()) as u64 > max_bytes {
                    return Err(RuntimeError::Protocol("the supervisor sent more than the limit".into()));
                }
                out.extend_from_slice(&payload);
            }
            kind::DONE => return Ok(out),
            kind::FAILURE => return Err(RuntimeError::File(parse(&payload)?)),
            other => return Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        }
    }
}

/// Writes a whole file through the supervisor, atomically on its side.
pub async fn write_file(socket: &Path, id: &str, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut conn = connect(socket, id).await?;
    let request = Request::WriteFile { path: path.to_owned(), max_bytes: data.len() as u64, mode };
    send_request(&mut conn, &request).await?;
    send_data(&mut conn, data).await?;
    let frame = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut conn))
        .await
        .map_err(|_| RuntimeError::Protocol("file write timed out".into()))??;
    match frame {
        Some((kind::DONE, payload)) => {
            let _: Done = parse(&payload)?;
            Ok(())
        }
        Some((kind::FAILURE, payload)) => Err(RuntimeError::File(parse(&payload)?)),
        Some((other, _)) => Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        None => Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
    }
}
