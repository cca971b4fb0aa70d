//! The server's side of the supervisor protocol, async. Everything the supervisor sends is
//! untrusted: frame sizes are bounded, output is capped again here whatever the supervisor
//! claims, and a supervisor that stalls past the exec's own timeout is cut off.

use std::path::Path;
use std::time::Duration;

use bulkhead_supervisor::protocol::{
    self, kind, DirEntry, Done, ExecSpec, Exit, Failure, FailureKind, OutputStreamKind, ProcessInfo, ProcessSpec,
    Request, TtySize, CHUNK,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::{Result, RuntimeError};

/// How much longer than the exec's own timeout the server waits for the supervisor's answer.
/// The supervisor runs in its sandbox's CPU quota: ending a tree of busy commands that use all
/// of a small quota (freezing and killing each) can take it many seconds of wall time. Still
/// bounded, so a supervisor that never answers holds nothing for long.
const GRACE: Duration = Duration::from_secs(30);

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
    /// A stream fed by `rx` (an in-memory runtime's).
    #[cfg(feature = "fake")]
    pub(crate) fn from_channel(rx: mpsc::Receiver<Result<ExecEvent>>) -> ExecStream {
        ExecStream { rx }
    }

    pub async fn next(&mut self) -> Option<Result<ExecEvent>> {
        self.rx.recv().await
    }
}

async fn connect(socket: &Path, id: &str) -> Result<UnixStream> {
    UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => RuntimeError::NotRunning(id.to_owned()),
        // The server's own lack of descriptors or memory: not the sandbox's doing.
        _ if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)) => {
            RuntimeError::Io { what: format!("connect to the supervisor of {id}"), source: e }
        }
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

/// Sends a ping to the supervisor listening at `socket` and waits at most `timeout` for any
/// answer: a `Done`, or a refusal (a supervisor at its sandbox's pids limit refuses what it
/// has no thread for, and is alive). `Busy` when nothing comes in time (a stopped or hung
/// supervisor: the kernel accepts connections into its backlog all the same).
pub async fn ping(socket: &Path, id: &str, timeout: std::time::Duration) -> Result<()> {
    let answered = tokio::time::timeout(timeout, async {
        let mut conn = connect(socket, id).await?;
        send_request(&mut conn, &Request::Ping).await?;
        match read_frame(&mut conn).await? {
            Some(_) => Ok(()),
            None => Err(RuntimeError::Protocol(format!("the supervisor of {id} closed the connection"))),
        }
    })
    .await;
    match answered {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::Busy(format!("the supervisor of {id} did not answer within {timeout:?}"))),
    }
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
        // The caller dropping the stream closes the connection at once (the supervisor then
        // kills the command's whole cgroup), also while the command prints nothing.
        let result = tokio::select! {
            r = tokio::time::timeout(deadline, pump(&mut conn, cap, &tx)) => r,
            () = tx.closed() => return,
        };
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
                return Err(match f.kind {
                    // An unknown user or an empty argv: the caller's mistake, not the sandbox's.
                    FailureKind::InvalidRequest => RuntimeError::Invalid(f.message),
                    _ => RuntimeError::Protocol(f.message),
                });
            }
            other => return Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        }
    }
}

/// How long the server waits for the supervisor's next frame of a file transfer.
const FILE_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

async fn read_frame_timed(conn: &mut UnixStream, what: &str) -> Result<Option<(u8, Vec<u8>)>> {
    tokio::time::timeout(FILE_FRAME_TIMEOUT, read_frame(conn))
        .await
        .map_err(|_| RuntimeError::Protocol(format!("{what} timed out")))?
}

/// A file being read from a sandbox, pulled one frame (at most [`CHUNK`] bytes) at a time: the
/// supervisor writes the next frame only when the server has taken the previous ones from the
/// socket, so a download that is not read holds the socket's buffer and nothing more.
pub struct FileStream {
    conn: UnixStream,
    max_bytes: u64,
    received: u64,
    first: Option<Vec<u8>>,
    done: bool,
}

impl FileStream {
    /// The next chunk; `None` at the end of the file. An error ends the stream.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        if self.done {
            return None;
        }
        let chunk = self.read_chunk().await;
        if !matches!(chunk, Some(Ok(_))) {
            self.done = true;
        }
        chunk
    }

    async fn read_chunk(&mut self) -> Option<Result<Vec<u8>>> {
        let frame = match read_frame_timed(&mut self.conn, "file read").await {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        match frame {
            Some((kind::FILE_DATA, payload)) => {
                self.received += payload.len() as u64;
                if self.received > self.max_bytes {
                    return Some(Err(RuntimeError::Protocol("the supervisor sent more than the limit".into())));
                }
                Some(Ok(payload))
            }
            Some((kind::DONE, _)) => None,
            Some((kind::FAILURE, payload)) => Some(Err(match parse(&payload) {
                Ok(f) => RuntimeError::File(f),
                Err(e) => e,
            })),
            Some((other, _)) => Some(Err(RuntimeError::Protocol(format!("unexpected frame kind {other}")))),
            None => Some(Err(RuntimeError::Protocol("the sandbox closed the connection".into()))),
        }
    }
}

/// The bytes of a path inside a sandbox, as the supervisor protocol carries them (a Linux path
/// need not be UTF-8).
fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

/// Starts reading a file of at most `max_bytes` through the supervisor, as `user` (the
/// sandbox's root when `None`). A file that cannot be read (missing, a directory, a special
/// file, too large, not readable by the user) fails here, before any byte is returned.
pub async fn read_file(
    socket: &Path,
    id: &str,
    path: &Path,
    user: Option<String>,
    max_bytes: u64,
) -> Result<FileStream> {
    let mut conn = connect(socket, id).await?;
    send_request(&mut conn, &Request::ReadFile { path: path_bytes(path), max_bytes, user }).await?;
    file_stream(conn, max_bytes).await
}

/// The stream of a file read whose request was sent on `conn`: its first frame is read here, so
/// a file that cannot be read fails before any byte is returned.
pub(crate) async fn file_stream(conn: UnixStream, max_bytes: u64) -> Result<FileStream> {
    let mut stream = FileStream { conn, max_bytes, received: 0, first: None, done: false };
    match stream.read_chunk().await {
        Some(Ok(first)) => stream.first = Some(first),
        Some(Err(e)) => return Err(e),
        None => stream.done = true,
    }
    Ok(stream)
}

/// Writes a file through the supervisor, atomically on its side, from chunks as they arrive on
/// `data` (an error on it abandons the write; the previous content stays). At most `max_bytes`;
/// `mode` as in [`Request::WriteFile`]; as `user` (the sandbox's root when `None`).
pub async fn write_file(
    socket: &Path,
    id: &str,
    path: &Path,
    mut data: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    max_bytes: u64,
    mode: Option<u32>,
    user: Option<String>,
) -> Result<()> {
    let mut conn = connect(socket, id).await?;
    let request = Request::WriteFile { path: path_bytes(path), max_bytes, mode, user };
    send_request(&mut conn, &request).await?;
    let mut sent = 0u64;
    let mut refused = false;
    while let Some(chunk) = data.recv().await {
        let chunk = chunk.map_err(|e| RuntimeError::Io { what: "read the upload".into(), source: e })?;
        sent += chunk.len() as u64;
        if sent > max_bytes {
            return Err(RuntimeError::File(bulkhead_supervisor::protocol::Failure::new(
                bulkhead_supervisor::protocol::FailureKind::TooLarge,
                format!("{}: over the {max_bytes} byte limit", path.display()),
            )));
        }
        let mut failed = false;
        for part in chunk.chunks(CHUNK) {
            if send_frame(&mut conn, kind::DATA, part).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            // The supervisor stopped reading: its answer says why.
            refused = true;
            break;
        }
    }
    if !refused {
        // A failed end frame is answered below like any refusal.
        let _ = send_frame(&mut conn, kind::DATA_END, &[]).await;
    }
    match read_frame_timed(&mut conn, "file write").await? {
        Some((kind::DONE, payload)) => {
            let _: Done = parse(&payload)?;
            Ok(())
        }
        Some((kind::FAILURE, payload)) => Err(RuntimeError::File(parse(&payload)?)),
        Some((other, _)) => Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        None => Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
    }
}

// --- Background processes ---

/// How long the server waits for the supervisor's answer to a process request (not an output
/// stream, which follows the process for as long as it runs).
const PROCESS_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One event of a background process's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// Bytes exactly as the process wrote them; `seq` counts events from 1.
    Output { seq: u64, stream: OutputStreamKind, data: Vec<u8> },
    /// The process's final state; the last event.
    Exit(ProcessInfo),
}

/// The output events of a process, in order; ends after `Exit` or an error. Dropping it closes
/// the connection and leaves the process running.
pub struct ProcessOutput {
    rx: mpsc::Receiver<Result<ProcessEvent>>,
}

impl ProcessOutput {
    /// A stream fed by `rx` (an in-memory runtime's).
    #[cfg(feature = "fake")]
    pub(crate) fn from_channel(rx: mpsc::Receiver<Result<ProcessEvent>>) -> ProcessOutput {
        ProcessOutput { rx }
    }

    pub async fn next(&mut self) -> Option<Result<ProcessEvent>> {
        self.rx.recv().await
    }

    /// The next event if one has arrived already, without waiting (a reader that takes what
    /// has piled up in one go).
    pub fn try_next(&mut self) -> Option<Result<ProcessEvent>> {
        self.rx.try_recv().ok()
    }
}

/// The error for a supervisor's failure answer about process `id`.
fn process_failure(id: &str, f: Failure) -> RuntimeError {
    match f.kind {
        FailureKind::NotFound => RuntimeError::ProcessNotFound(id.to_owned()),
        FailureKind::InvalidRequest => RuntimeError::Invalid(f.message),
        FailureKind::TooLarge => RuntimeError::Busy(f.message),
        // "process prc_… has exited": a conflict with the process's state.
        FailureKind::Exited => RuntimeError::Busy(f.message),
        _ => RuntimeError::Protocol(f.message),
    }
}

/// Sends `request` and reads its one answer frame, which must be `want` (or a failure).
async fn ask(socket: &Path, sandbox: &str, process: &str, request: &Request, want: u8) -> Result<Vec<u8>> {
    let mut conn = connect(socket, sandbox).await?;
    send_request(&mut conn, request).await?;
    let answer = tokio::time::timeout(PROCESS_ANSWER_TIMEOUT, read_frame(&mut conn))
        .await
        .map_err(|_| RuntimeError::Protocol("the supervisor did not answer in time".into()))??;
    match answer {
        Some((k, payload)) if k == want => Ok(payload),
        Some((kind::FAILURE, payload)) => Err(process_failure(process, parse(&payload)?)),
        Some((other, _)) => Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        None => Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
    }
}

/// Binds the environment of every command the supervisor starts from now on (a warm pool's
/// sandbox at claim, see `Request::Bind`): `env` is the whole environment, `PATH` included.
pub async fn bind(socket: &Path, sandbox: &str, env: Vec<(String, String)>) -> Result<()> {
    let _: Done = parse(&ask(socket, sandbox, "", &Request::Bind { env }, kind::DONE).await?)?;
    Ok(())
}

/// Starts a background process.
pub async fn spawn_process(socket: &Path, sandbox: &str, spec: ProcessSpec) -> Result<ProcessInfo> {
    let id = spec.id.clone();
    parse(&ask(socket, sandbox, &id, &Request::Spawn(spec), kind::PROCESS).await?)
}

/// Every process the supervisor retains.
pub async fn processes(socket: &Path, sandbox: &str) -> Result<Vec<ProcessInfo>> {
    parse(&ask(socket, sandbox, "", &Request::List, kind::PROCESSES).await?)
}

/// One process.
pub async fn process(socket: &Path, sandbox: &str, id: &str) -> Result<ProcessInfo> {
    parse(&ask(socket, sandbox, id, &Request::Get { id: id.to_owned() }, kind::PROCESS).await?)
}

/// Sends a signal number to a process.
pub async fn signal_process(socket: &Path, sandbox: &str, id: &str, signal: i32) -> Result<()> {
    let _: Done = parse(&ask(socket, sandbox, id, &Request::Signal { id: id.to_owned(), signal }, kind::DONE).await?)?;
    Ok(())
}

/// Resizes a process's terminal.
pub async fn resize_process(socket: &Path, sandbox: &str, id: &str, size: TtySize) -> Result<()> {
    let request = Request::Resize { id: id.to_owned(), rows: size.rows, cols: size.cols };
    let _: Done = parse(&ask(socket, sandbox, id, &request, kind::DONE).await?)?;
    Ok(())
}

/// Follows a process's output from `after`.
pub async fn process_output(socket: &Path, sandbox: &str, id: &str, after: u64) -> Result<ProcessOutput> {
    let mut conn = connect(socket, sandbox).await?;
    send_request(&mut conn, &Request::Output { id: id.to_owned(), after }).await?;
    // The first frame, sent at once, tells whether the process exists (`FOLLOWING`); later
    // ones follow it as it runs, after any silence.
    let first = tokio::time::timeout(PROCESS_ANSWER_TIMEOUT, read_frame(&mut conn))
        .await
        .map_err(|_| RuntimeError::Protocol("the supervisor did not answer in time".into()))??;
    let first = match first {
        Some((kind::FAILURE, payload)) => return Err(process_failure(id, parse(&payload)?)),
        Some(frame) => frame,
        None => return Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
    };
    let (tx, rx) = mpsc::channel(16);
    let id = id.to_owned();
    tokio::spawn(async move {
        let mut frame = (first.0 != kind::FOLLOWING).then_some(first);
        let mut last = 0u64;
        loop {
            if frame.is_none() {
                // A caller that stops following closes the connection at once (the process runs on).
                let next = tokio::select! {
                    f = read_frame(&mut conn) => f,
                    () = tx.closed() => return,
                };
                frame = match next {
                    Ok(None) => {
                        let _ = tx.send(Err(RuntimeError::Protocol("the sandbox closed the connection".into()))).await;
                        return;
                    }
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
            }
            let event = match frame.take() {
                Some((kind::OUTPUT, payload)) => match protocol::decode_output(payload) {
                    // Sequence numbers only grow: anything else is a broken supervisor.
                    Some((seq, stream, data)) if seq > last => {
                        last = seq;
                        Ok(ProcessEvent::Output { seq, stream, data })
                    }
                    _ => Err(RuntimeError::Protocol("malformed output frame".into())),
                },
                Some((kind::PROCESS, payload)) => parse(&payload).map(ProcessEvent::Exit),
                Some((kind::FAILURE, payload)) => match parse(&payload) {
                    Ok(f) => Err(process_failure(&id, f)),
                    Err(e) => Err(e),
                },
                Some((other, _)) => Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
                None => Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
            };
            let end = !matches!(event, Ok(ProcessEvent::Output { .. }));
            if tx.send(event).await.is_err() || end {
                return;
            }
        }
    });
    Ok(ProcessOutput { rx })
}

/// Streams `data` to a process's stdin; closes it after when `eof`.
pub async fn process_stdin(
    socket: &Path,
    sandbox: &str,
    id: &str,
    mut data: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    eof: bool,
) -> Result<u64> {
    let mut conn = connect(socket, sandbox).await?;
    send_request(&mut conn, &Request::Stdin { id: id.to_owned(), eof }).await?;
    let mut refused = false;
    'chunks: while let Some(chunk) = data.recv().await {
        // An error on the caller's side ends the write without closing stdin: the connection
        // closes without the end frame.
        let chunk = chunk.map_err(|e| RuntimeError::Io { what: "read the stdin upload".into(), source: e })?;
        for part in chunk.chunks(CHUNK) {
            if send_frame(&mut conn, kind::DATA, part).await.is_err() {
                // The supervisor stopped reading: its answer says why.
                refused = true;
                break 'chunks;
            }
        }
    }
    if !refused {
        let _ = send_frame(&mut conn, kind::DATA_END, &[]).await;
    }
    let answer = tokio::time::timeout(PROCESS_ANSWER_TIMEOUT, read_frame(&mut conn))
        .await
        .map_err(|_| RuntimeError::Protocol("the supervisor did not answer in time".into()))??;
    match answer {
        Some((kind::DONE, payload)) => Ok(parse::<Done>(&payload)?.bytes),
        Some((kind::FAILURE, payload)) => Err(process_failure(id, parse(&payload)?)),
        Some((other, _)) => Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
        None => Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
    }
}

/// One page of a directory listing inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    /// At most the `limit` asked for, sorted by the bytes of their names.
    pub entries: Vec<DirEntry>,
    /// Whether entries follow the last one (ask again with it as `after`).
    pub more: bool,
}

/// Lists the directory `path` inside a sandbox through the supervisor, as `user`: at most
/// `limit` entries (1 to [`protocol::MAX_LIST`]) whose names sort after `after`.
pub async fn list_dir(
    socket: &Path,
    id: &str,
    path: &Path,
    user: Option<String>,
    after: Option<Vec<u8>>,
    limit: u32,
) -> Result<DirPage> {
    let limit = limit.clamp(1, protocol::MAX_LIST);
    let mut conn = connect(socket, id).await?;
    // One more than asked for tells whether another page follows.
    let request = Request::ListDir { path: path_bytes(path), after, limit: limit + 1, user };
    send_request(&mut conn, &request).await?;
    let mut entries = Vec::new();
    loop {
        match read_frame_timed(&mut conn, "directory listing").await? {
            Some((kind::DIR_ENTRY, payload)) => {
                if entries.len() > limit as usize {
                    return Err(RuntimeError::Protocol("the supervisor sent more entries than asked for".into()));
                }
                entries.push(parse::<DirEntry>(&payload)?);
            }
            Some((kind::DONE, payload)) => {
                let _: Done = parse(&payload)?;
                break;
            }
            Some((kind::FAILURE, payload)) => return Err(RuntimeError::File(parse(&payload)?)),
            Some((other, _)) => return Err(RuntimeError::Protocol(format!("unexpected frame kind {other}"))),
            None => return Err(RuntimeError::Protocol("the sandbox closed the connection".into())),
        }
    }
    // The sandbox is not trusted to sort: the next page starts after the last name given.
    entries.sort_by(|a, b| a.name_bytes().cmp(b.name_bytes()));
    entries.dedup_by(|a, b| a.name_bytes() == b.name_bytes());
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    Ok(DirPage { entries, more })
}
