//! The wire protocol between the server and a sandbox's supervisor, over one Unix stream per
//! request. Every message is a frame: a kind byte, a big-endian `u32` length, the payload.
//!
//! The server opens a connection, sends one [`Request`] frame and, for an exec with stdin or a
//! file write, data frames and an end-of-data frame. The supervisor answers with output or file
//! frames and one final frame ([`Exit`], [`Done`] or [`Failure`]).
//!
//! **Invariant:** the server treats everything read here as hostile: frame lengths are bounded
//! before allocation, JSON is parsed into closed types, and totals are capped by the reader.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame payload either side accepts, but for a request.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest request frame (server → supervisor, JSON): an exec's argv and environment go up to
/// the kernel's `ARG_MAX` (2 MiB), which JSON escaping can grow up to six times.
pub const MAX_REQUEST_FRAME: u32 = 16 << 20;

/// The largest payload of a frame of kind `k`.
pub fn frame_limit(k: u8) -> u32 {
    if k == kind::REQUEST {
        MAX_REQUEST_FRAME
    } else {
        MAX_FRAME
    }
}
/// Largest chunk of data (output, stdin, file bytes) put in one frame.
pub const CHUNK: usize = 64 * 1024;

/// Frame kinds.
pub mod kind {
    /// Server → supervisor: the JSON [`super::Request`].
    pub const REQUEST: u8 = 1;
    /// Server → supervisor: stdin of an exec, or the bytes of a file write.
    pub const DATA: u8 = 2;
    /// Server → supervisor: no more data.
    pub const DATA_END: u8 = 3;
    /// Supervisor → server: a chunk of stdout.
    pub const STDOUT: u8 = 10;
    /// Supervisor → server: a chunk of stderr.
    pub const STDERR: u8 = 11;
    /// Supervisor → server: the JSON [`super::Exit`] of an exec; the last frame.
    pub const EXIT: u8 = 12;
    /// Supervisor → server: a JSON [`super::Failure`]; the last frame.
    pub const FAILURE: u8 = 13;
    /// Supervisor → server: a chunk of a file being read.
    pub const FILE_DATA: u8 = 14;
    /// Supervisor → server: the JSON [`super::Done`] of a file operation; the last frame.
    pub const DONE: u8 = 15;

    // --- Background processes (exec/process part) ---
    /// Supervisor → server: the JSON [`super::ProcessInfo`] answering a spawn or a get, or the
    /// last frame of an output stream (the process's final state).
    pub const PROCESS: u8 = 20;
    /// Supervisor → server: the JSON list of [`super::ProcessInfo`] answering a list.
    pub const PROCESSES: u8 = 21;
    /// Supervisor → server: one retained output event of a process: its sequence number as a
    /// big-endian `u64`, the stream as one byte ([`super::OutputStreamKind::byte`]), then the
    /// bytes exactly as the process wrote them.
    pub const OUTPUT: u8 = 22;
    /// Supervisor → server: the first frame answering an output request, sent at once: the
    /// process exists (its JSON [`super::ProcessInfo`] now); its output events follow as they
    /// come, however long it stays silent, then the final [`PROCESS`] frame.
    pub const FOLLOWING: u8 = 23;
    /// Supervisor → server: one JSON [`super::DirEntry`] of a directory listing.
    pub const DIR_ENTRY: u8 = 16;
}

/// What the server asks of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Runs `argv` and streams its output.
    Exec(ExecSpec),
    /// Streams the regular file at `path` when it is at most `max_bytes`, as `user` (see
    /// [`crate::users`]; the sandbox's root when `None`). A directory, fifo, socket or device
    /// fails at once, before any byte is read.
    ReadFile {
        /// The path's bytes (a Linux path need not be UTF-8).
        path: Vec<u8>,
        max_bytes: u64,
        #[serde(default)]
        user: Option<String>,
    },
    /// Replaces the file at `path` atomically with the data frames that follow (at most
    /// `max_bytes`), creating parent directories, as `user`. `mode` (permission bits and the
    /// sticky bit; setuid and setgid are refused) when given; otherwise an existing file keeps
    /// its mode and a new one gets 0644. An existing file keeps its owner where the acting user
    /// may give it.
    WriteFile {
        /// The path's bytes (a Linux path need not be UTF-8).
        path: Vec<u8>,
        max_bytes: u64,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        user: Option<String>,
    },
    /// Lists the directory at `path` as `user`: at most `limit` [`DirEntry`] frames, in byte
    /// order of their names, starting after the name `after`; then `Done` with the count.
    ListDir {
        /// The path's bytes (a Linux path need not be UTF-8).
        path: Vec<u8>,
        #[serde(default)]
        after: Option<Vec<u8>>,
        limit: u32,
        #[serde(default)]
        user: Option<String>,
    },
    /// Answers `Done` at once; used to wait for a new sandbox to be ready.
    Ping,

    // --- Background processes (exec/process part) ---
    /// Starts a background process; answered with a `PROCESS` frame (or a `FAILURE`: an empty
    /// argv, an unknown user, an id in use, a full table).
    Spawn(ProcessSpec),
    /// Every process in the table (running, and finished ones still retained); one `PROCESSES`
    /// frame.
    List,
    /// One process; a `PROCESS` frame, or `FAILURE` `not_found`.
    Get { id: String },
    /// Streams the retained output events with `seq > after` (from the oldest retained one when
    /// `after` is older) as `OUTPUT` frames, follows new ones until the process exits, then
    /// ends with a `PROCESS` frame of its final state.
    Output { id: String, after: u64 },
    /// Writes the data frames that follow to the process's stdin (its terminal for a tty), with
    /// backpressure: the next frame is read only once the previous one is written. At the
    /// `DATA_END` frame, stdin is closed when `eof` (a tty gets its terminal's EOF character
    /// instead; the terminal itself stays open). Answered with `DONE` (bytes written).
    Stdin { id: String, eof: bool },
    /// Sends signal number `signal` (1..=64, not 0) to the process; `SIGKILL` kills its whole
    /// cgroup (every descendant). `DONE`, or `FAILURE` `invalid_request` / `not_found`.
    Signal { id: String, signal: i32 },
    /// Sets the terminal size of a tty process (the process gets `SIGWINCH`). `DONE`.
    Resize { id: String, rows: u16, cols: u16 },

    // --- Warm pools ---
    /// Sets the environment (`NAME`, value pairs, in order; a later pair of a name wins) that
    /// every command started from now on inherits, in place of the one the supervisor started
    /// with: a sandbox from a warm pool gets its claimant's here, at claim, before anything of
    /// the claimant runs. Once per sandbox: `DONE`, then `FAILURE` `invalid_request` for another.
    Bind { env: Vec<(String, String)> },
}

/// A background process to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The server's id for it (`prc_…`): letters, digits and `_`, at most 64 bytes.
    pub id: String,
    pub argv: Vec<String>,
    /// Variables set for this process on top of the supervisor's own environment.
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// As [`ExecSpec::user`]; the sandbox's root when absent.
    pub user: Option<String>,
    /// A terminal of this size instead of pipes.
    pub tty: Option<TtySize>,
    /// The process (its whole cgroup) is killed after this long.
    pub timeout_ms: Option<u64>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Running,
    Exited,
}

/// A background process as the supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    pub id: String,
    /// The argv it was started with, bounded for listing: at most 32 arguments of 256 bytes
    /// each, longer ones cut and marked with `…`.
    pub argv: Vec<String>,
    /// Its pid inside the sandbox.
    pub pid: i32,
    pub status: ProcessStatus,
    /// The exit status, once it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// Whether its timeout killed it.
    pub timed_out: bool,
    pub tty: bool,
    pub user: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
}

/// Which stream an output event came from; a tty process has the one stream `Pty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStreamKind {
    Stdout,
    Stderr,
    Pty,
}

impl OutputStreamKind {
    /// Its byte in an `OUTPUT` frame.
    pub fn byte(self) -> u8 {
        match self {
            OutputStreamKind::Stdout => 1,
            OutputStreamKind::Stderr => 2,
            OutputStreamKind::Pty => 3,
        }
    }

    pub fn from_byte(b: u8) -> Option<OutputStreamKind> {
        match b {
            1 => Some(OutputStreamKind::Stdout),
            2 => Some(OutputStreamKind::Stderr),
            3 => Some(OutputStreamKind::Pty),
            _ => None,
        }
    }
}

/// Encodes the payload of an `OUTPUT` frame.
pub fn encode_output(seq: u64, stream: OutputStreamKind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + data.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(stream.byte());
    out.extend_from_slice(data);
    out
}

/// Decodes the payload of an `OUTPUT` frame; `None` when it is malformed.
pub fn decode_output(mut payload: Vec<u8>) -> Option<(u64, OutputStreamKind, Vec<u8>)> {
    if payload.len() < 9 {
        return None;
    }
    let seq = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let stream = OutputStreamKind::from_byte(payload[8])?;
    payload.drain(..9);
    Some((seq, stream, payload))
}

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// Variables set for this command on top of the supervisor's own environment.
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// The command and its process group are killed after this long.
    pub timeout_ms: u64,
    /// Bytes of stdout, and separately of stderr, forwarded at most; the rest is drained.
    pub max_output_bytes: u64,
    /// Whether data frames carrying stdin follow; without them stdin is `/dev/null` (EOF at once).
    pub stdin: bool,
    /// Who runs the command: a name, a uid, `uid:gid` or `name:group`, resolved inside the
    /// sandbox (see [`crate::users`]); the sandbox's root when absent. Unknown → `Failure`
    /// `invalid_request` `unknown user "x"`.
    #[serde(default)]
    pub user: Option<String>,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exit {
    /// The exit status, when the command exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// The end of a successful file operation or ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {
    pub bytes: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    NotFound,
    /// A fifo, socket or device where a regular file is needed.
    NotAFile,
    /// A directory where a file is needed.
    IsADirectory,
    TooLarge,
    PermissionDenied,
    ReadOnly,
    NoSpace,
    InvalidRequest,
    Io,
    /// A background process that has exited (or is exiting): it can no longer be signalled.
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The failure for an IO error on `what`.
    pub fn from_io(what: &str, e: &io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => FailureKind::NotFound,
            io::ErrorKind::PermissionDenied => FailureKind::PermissionDenied,
            io::ErrorKind::ReadOnlyFilesystem => FailureKind::ReadOnly,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FailureKind::NoSpace,
            io::ErrorKind::IsADirectory => FailureKind::IsADirectory,
            io::ErrorKind::NotADirectory => FailureKind::InvalidRequest,
            _ => FailureKind::Io,
        };
        Self { kind, message: format!("{what}: {e}") }
    }
}

// ---- Files: directory entries (the files API's part of the protocol) ----

/// Largest `limit` of a [`Request::ListDir`].
pub const MAX_LIST: u32 = 1000;

/// What a directory entry is, as `lstat(2)` sees it (a symlink is never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileType {
    /// The type of a `st_mode`; `None` for a format the kernel does not define.
    pub fn of_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::File,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// The name the API uses: `file`, `directory`, `symlink`, `fifo`, `socket`, `char_device`,
    /// `block_device`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Directory => "directory",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::CharDevice => "char_device",
            FileType::BlockDevice => "block_device",
        }
    }
}

/// One entry of a directory listing. Names and symlink targets are bytes on Linux: `name` is
/// the name as UTF-8 (lossy), and `name_bytes` carries the exact bytes when they are not UTF-8
/// (likewise `target` and `target_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub name: String,
    #[serde(default)]
    pub name_bytes: Option<Vec<u8>>,
    pub file_type: FileType,
    /// `st_size`: bytes of a file, of a symlink's target path.
    pub size: u64,
    /// `st_mode & 0o7777`: permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Last modification, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub target_bytes: Option<Vec<u8>>,
}

/// `bytes` as UTF-8 text, and the exact bytes too when they are not UTF-8.
pub fn lossless_name(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(bytes.to_vec())),
    }
}

impl DirEntry {
    /// The exact bytes of the name.
    pub fn name_bytes(&self) -> &[u8] {
        self.name_bytes.as_deref().unwrap_or(self.name.as_bytes())
    }
}

// ---- end of files ----

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= frame_limit(kind))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut header = [0u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&len.to_be_bytes());
    // Header and payload in one write where the writer takes both: one syscall, and the
    // reader wakes once for the whole frame rather than for its header first.
    let mut written = loop {
        match w.write_vectored(&[io::IoSlice::new(&header), io::IoSlice::new(payload)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if written < header.len() {
        w.write_all(&header[written..])?;
        written = header.len();
    }
    w.write_all(&payload[written - header.len()..])
}

/// Writes a frame whose payload is `value` as JSON.
pub fn write_json<T: Serialize>(w: &mut impl Write, kind: u8, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(w, kind, &bytes)
}

/// Reads one frame; `Ok(None)` at a clean end of stream. Lengths are bounded by
/// [`frame_limit`] before anything is allocated.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..])?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > frame_limit(header[0]) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is over the limit")));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

/// Parses the header of a frame the supervisor sent: kind and length, with the length bounded
/// by [`MAX_FRAME`] (the server never takes a request frame).
pub fn parse_header(header: [u8; 5]) -> io::Result<(u8, usize)> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is over the limit")));
    }
    Ok((header[0], len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_lengths_are_bounded() {
        let mut buf = Vec::new();
        write_json(&mut buf, kind::REQUEST, &Request::Ping).unwrap();
        write_frame(&mut buf, kind::DATA, b"abc").unwrap();
        let mut r = &buf[..];
        let (k, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(k, kind::REQUEST);
        assert_eq!(serde_json::from_slice::<Request>(&p).unwrap(), Request::Ping);
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), (kind::DATA, b"abc".to_vec()));
        assert!(read_frame(&mut r).unwrap().is_none());

        let mut hostile = vec![kind::STDOUT];
        hostile.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_frame(&mut &hostile[..]).is_err());

        // A request may carry an argv up to ARG_MAX; output frames stay small.
        let big = vec![b'a'; 3 << 20];
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::REQUEST, &big).unwrap();
        assert_eq!(read_frame(&mut &buf[..]).unwrap().unwrap().1.len(), big.len());
        assert!(write_frame(&mut Vec::new(), kind::STDOUT, &big).is_err());
        let mut header = [0u8; 5];
        header[0] = kind::REQUEST;
        header[1..].copy_from_slice(&(3u32 << 20).to_be_bytes());
        assert!(parse_header(header).is_err(), "the server takes no frame over MAX_FRAME");
        buf[0] = kind::STDOUT;
        assert!(read_frame(&mut &buf[..]).is_err());
        assert!(
            serde_json::from_slice::<Request>(br#"{"op":"read_file","path":"/x","max_bytes":1,"extra":1}"#).is_err()
        );
    }
}
