//! In-memory fakes of [`Runtime`] and [`FilesystemStorage`] (the `fake` feature), so the server's
//! handlers and services can be tested without root, cgroups or loop devices.
//!
//! They keep the contracts the server relies on: a sandbox that was not created (or was deleted)
//! is `NotRunning`; files inside a sandbox and on a filesystem are bounded by `max_bytes`; a
//! filesystem holds at most its size (a write past it is `NoSpace`, as ext4's `ENOSPC` is); a
//! missing file is `NotFound`; writes are atomic and archives are swapped in whole. Commands run
//! by [`FakeRuntime::exec`] are a tiny set: `echo ARGS...`, `cat` (stdin to stdout), `true`,
//! `false`, `sh -c 'exit N'`; anything else exits 127.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bulkhead_supervisor::protocol::{self, Failure, FailureKind};

use crate::archive::{self, Stats};
use crate::confined::{Entry, Kind};
use crate::egress::EgressCounters;
use crate::files::{self, Download, FileError, Preconditions, StagedArchive, WriteOptions, Written};
use crate::storage::{FilesystemStorage, Usage};
use crate::{
    ExecEvent, ExecSpec, ExecStream, Exit, FileStream, HostSandbox, IdRange, NamespaceLimits, OutputStreamKind,
    ProcessEvent, ProcessInfo, ProcessOutput, ProcessSpec, ProcessStatus, Result, RuntimeError, SandboxSpec,
    SandboxStats, TtySize,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One sandbox of the fake runtime.
#[derive(Debug, Clone)]
pub struct FakeSandbox {
    pub spec: SandboxSpec,
    /// Files written into it, by absolute path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Commands it ran, in order.
    pub commands: Vec<Vec<String>>,
    /// Its egress gateway's counters, reported by [`Runtime::stats`] as `egress`; a test counts
    /// into them as the gateway would ([`FakeRuntime::egress`]).
    pub egress: Arc<EgressCounters>,
}

#[derive(Debug, Default)]
struct RuntimeState {
    namespaces: BTreeMap<String, NamespaceLimits>,
    sandboxes: BTreeMap<String, FakeSandbox>,
    /// Background processes by sandbox, then by id.
    processes: BTreeMap<String, BTreeMap<String, FakeProcess>>,
}

/// A background process of the fake runtime. `cat` runs until its stdin is closed and echoes
/// it; `sleep ...` runs until signalled; every other command of the fake's set runs to its end
/// at once.
#[derive(Debug, Clone)]
struct FakeProcess {
    info: ProcessInfo,
    events: Vec<(u64, OutputStreamKind, Vec<u8>)>,
    cat: bool,
}

impl FakeProcess {
    fn stream(&self) -> OutputStreamKind {
        if self.info.tty {
            OutputStreamKind::Pty
        } else {
            OutputStreamKind::Stdout
        }
    }

    fn push(&mut self, stream: OutputStreamKind, data: Vec<u8>) {
        if !data.is_empty() {
            let seq = self.events.last().map_or(0, |e| e.0) + 1;
            self.events.push((seq, stream, data));
        }
    }

    fn finish(&mut self, exit_code: Option<i32>, signal: Option<i32>) {
        self.info.status = ProcessStatus::Exited;
        self.info.exit_code = exit_code;
        self.info.signal = signal;
        self.info.ended_at_ms = Some(now_ms());
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The fake's users: `root`/`0`, `user`/`1000`, and any other number.
fn check_user(user: &Option<String>) -> Result<()> {
    match user.as_deref() {
        None | Some("root" | "user") => Ok(()),
        Some(u) if u.split(':').next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) => {
            Ok(())
        }
        Some(u) => Err(RuntimeError::Invalid(format!("unknown user {u:?}"))),
    }
}

/// A [`Runtime`] that keeps sandboxes in memory.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<RuntimeState>>,
    /// Woken on every change to a process, for output followers.
    changed: Arc<tokio::sync::Notify>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// The sandbox `id`, while it exists.
    pub fn sandbox(&self, id: &str) -> Option<FakeSandbox> {
        lock(&self.state).sandboxes.get(id).cloned()
    }

    /// The egress counters of sandbox `id`, while it exists: what a test adds to them is what
    /// the sandbox's gateway forwarded (or denied), as [`Runtime::stats`] reports it.
    pub fn egress(&self, id: &str) -> Option<Arc<EgressCounters>> {
        lock(&self.state).sandboxes.get(id).map(|s| s.egress.clone())
    }

    /// Namespaces with a (fake) cgroup, and their limits.
    pub fn namespace_limits(&self, namespace: &str) -> Option<NamespaceLimits> {
        lock(&self.state).namespaces.get(namespace).cloned()
    }
}

fn not_running(id: &str) -> RuntimeError {
    RuntimeError::NotRunning(id.to_owned())
}

/// What a fake command prints and how it exits.
fn run(argv: &[String], stdin: &[u8]) -> (Vec<u8>, Vec<u8>, i32) {
    match argv.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["echo", rest @ ..] => (format!("{}\n", rest.join(" ")).into_bytes(), Vec::new(), 0),
        ["cat"] => (stdin.to_vec(), Vec::new(), 0),
        ["true"] => (Vec::new(), Vec::new(), 0),
        ["false"] => (Vec::new(), Vec::new(), 1),
        ["sh", "-c", script] if script.starts_with("exit ") => {
            (Vec::new(), Vec::new(), script["exit ".len()..].trim().parse().unwrap_or(2))
        }
        [program, ..] => (Vec::new(), format!("{program}: not found\n").into_bytes(), 127),
        [] => (Vec::new(), Vec::new(), 127),
    }
}

#[async_trait]
impl crate::Runtime for FakeRuntime {
    async fn ensure_namespace(&self, namespace: &str, limits: &NamespaceLimits) -> Result<()> {
        lock(&self.state).namespaces.insert(namespace.to_owned(), limits.clone());
        Ok(())
    }

    async fn remove_namespace(&self, namespace: &str) -> Result<()> {
        let mut state = lock(&self.state);
        if state.sandboxes.values().any(|s| s.spec.namespace == namespace) {
            return Err(RuntimeError::Busy(format!("namespace {namespace} still has sandboxes")));
        }
        state.namespaces.remove(namespace);
        Ok(())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<()> {
        let mut state = lock(&self.state);
        if !state.namespaces.contains_key(&spec.namespace) {
            return Err(RuntimeError::Unavailable(format!("namespace {} has no cgroup", spec.namespace)));
        }
        if state.sandboxes.contains_key(&spec.id) {
            return Err(RuntimeError::Busy(format!("sandbox {} exists", spec.id)));
        }
        let sandbox = FakeSandbox {
            spec: spec.clone(),
            files: BTreeMap::new(),
            commands: Vec::new(),
            egress: Arc::new(EgressCounters::default()),
        };
        state.sandboxes.insert(spec.id.clone(), sandbox);
        Ok(())
    }

    async fn exec(&self, id: &str, spec: ExecSpec, stdin: Vec<u8>) -> Result<ExecStream> {
        check_user(&spec.user)?;
        let (stdout, stderr, code) = {
            let mut state = lock(&self.state);
            let sandbox = state.sandboxes.get_mut(id).ok_or_else(|| not_running(id))?;
            sandbox.commands.push(spec.argv.clone());
            run(&spec.argv, &stdin)
        };
        let cap = usize::try_from(spec.max_output_bytes).unwrap_or(usize::MAX);
        let exit = Exit {
            exit_code: Some(code),
            signal: None,
            timed_out: false,
            stdout_truncated: stdout.len() > cap,
            stderr_truncated: stderr.len() > cap,
            duration_ms: 1,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for event in [
            (!stdout.is_empty()).then(|| ExecEvent::Stdout(stdout[..stdout.len().min(cap)].to_vec())),
            (!stderr.is_empty()).then(|| ExecEvent::Stderr(stderr[..stderr.len().min(cap)].to_vec())),
            Some(ExecEvent::Exit(exit)),
        ]
        .into_iter()
        .flatten()
        {
            // The channel holds all three.
            let _ = tx.try_send(Ok(event));
        }
        Ok(ExecStream::from_channel(rx))
    }

    async fn read_file(
        &self,
        id: &str,
        path: &std::path::Path,
        _user: Option<String>,
        max_bytes: u64,
    ) -> Result<FileStream> {
        let path = path.to_string_lossy();
        let path = path.as_ref();
        let data = {
            let state = lock(&self.state);
            let sandbox = state.sandboxes.get(id).ok_or_else(|| not_running(id))?;
            let data = sandbox.files.get(path).cloned().ok_or_else(|| {
                RuntimeError::File(Failure::new(FailureKind::NotFound, format!("{path}: no such file")))
            })?;
            if data.len() as u64 > max_bytes {
                return Err(RuntimeError::File(Failure::new(
                    FailureKind::TooLarge,
                    format!("{path}: larger than {max_bytes} bytes"),
                )));
            }
            data
        };
        // The supervisor's side of the protocol, over a socket pair: data frames, then done.
        let (ours, theirs) = tokio::net::UnixStream::pair().map_err(RuntimeError::io("socket pair"))?;
        let mut frames = Vec::new();
        for chunk in data.chunks(64 * 1024) {
            protocol::write_frame(&mut frames, protocol::kind::FILE_DATA, chunk).map_err(RuntimeError::io("frame"))?;
        }
        protocol::write_frame(&mut frames, protocol::kind::DONE, b"{}").map_err(RuntimeError::io("frame"))?;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut theirs = theirs;
            let _ = theirs.write_all(&frames).await;
        });
        crate::client::file_stream(ours, max_bytes).await
    }

    async fn write_file(
        &self,
        id: &str,
        path: &std::path::Path,
        mut data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        max_bytes: u64,
        _mode: Option<u32>,
        _user: Option<String>,
    ) -> Result<()> {
        let path = path.to_string_lossy();
        let path = path.as_ref();
        if !lock(&self.state).sandboxes.contains_key(id) {
            return Err(not_running(id));
        }
        let mut content = Vec::new();
        while let Some(chunk) = data.recv().await {
            let chunk = chunk.map_err(|e| RuntimeError::File(Failure::new(FailureKind::Io, e.to_string())))?;
            content.extend_from_slice(&chunk);
            if content.len() as u64 > max_bytes {
                return Err(RuntimeError::File(Failure::new(
                    FailureKind::TooLarge,
                    format!("{path}: more than {max_bytes} bytes"),
                )));
            }
        }
        let mut state = lock(&self.state);
        let sandbox = state.sandboxes.get_mut(id).ok_or_else(|| not_running(id))?;
        sandbox.files.insert(path.to_owned(), content);
        Ok(())
    }

    async fn list_dir(
        &self,
        id: &str,
        path: &std::path::Path,
        _user: Option<String>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<crate::DirPage> {
        let path = path.to_string_lossy();
        let path = path.as_ref();
        // The files written at `path/<name>`, as regular files.
        let state = lock(&self.state);
        let sandbox = state.sandboxes.get(id).ok_or_else(|| not_running(id))?;
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut entries: Vec<crate::DirEntry> = sandbox
            .files
            .iter()
            .filter_map(|(p, data)| {
                let name = p.strip_prefix(&prefix).filter(|n| !n.contains('/'))?;
                (after.as_deref().is_none_or(|a| name.as_bytes() > a)).then(|| crate::DirEntry {
                    name: name.to_owned(),
                    name_bytes: None,
                    file_type: crate::FileType::File,
                    size: data.len() as u64,
                    mode: 0o644,
                    mtime_ms: 0,
                    target: None,
                    target_bytes: None,
                })
            })
            .collect();
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        Ok(crate::DirPage { entries, more })
    }

    async fn delete(&self, _namespace: &str, id: &str) -> Result<()> {
        let mut state = lock(&self.state);
        state.sandboxes.remove(id);
        state.processes.remove(id);
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn list(&self) -> Result<Vec<HostSandbox>> {
        let state = lock(&self.state);
        Ok(state
            .sandboxes
            .values()
            .map(|s| HostSandbox {
                id: s.spec.id.clone(),
                namespace: Some(s.spec.namespace.clone()),
                running: true,
                owner: None,
            })
            .collect())
    }

    async fn namespaces(&self) -> Result<Vec<String>> {
        Ok(lock(&self.state).namespaces.keys().cloned().collect())
    }

    /// A sandbox of the fake has no init that could die: this waits for as long as it exists.
    async fn wait_init(&self, _namespace: &str, id: &str) -> Result<String> {
        if !lock(&self.state).sandboxes.contains_key(id) {
            return Err(not_running(id));
        }
        std::future::pending().await
    }

    async fn ping(&self, id: &str, _timeout: std::time::Duration) -> Result<()> {
        if lock(&self.state).sandboxes.contains_key(id) {
            Ok(())
        } else {
            Err(not_running(id))
        }
    }

    async fn stats(&self, _namespace: &str, id: &str) -> Result<SandboxStats> {
        let state = lock(&self.state);
        let sandbox = state.sandboxes.get(id).ok_or_else(|| not_running(id))?;
        // A sandbox of the fake uses a millisecond of CPU per command and a mebibyte.
        let commands = sandbox.commands.len() as u64;
        Ok(SandboxStats {
            cpu_usage_ns: commands * 1_000_000,
            memory_bytes: 1 << 20,
            pids: 1,
            egress: sandbox.egress.snapshot(),
            ..Default::default()
        })
    }

    async fn spawn_process(&self, sandbox: &str, spec: ProcessSpec) -> Result<ProcessInfo> {
        if spec.argv.is_empty() {
            return Err(RuntimeError::Invalid("cmd must not be empty".into()));
        }
        check_user(&spec.user)?;
        let mut state = lock(&self.state);
        let sbx = state.sandboxes.get_mut(sandbox).ok_or_else(|| not_running(sandbox))?;
        sbx.commands.push(spec.argv.clone());
        let table = state.processes.entry(sandbox.to_owned()).or_default();
        if table.contains_key(&spec.id) {
            return Err(RuntimeError::Busy(format!("process {} exists", spec.id)));
        }
        let info = ProcessInfo {
            id: spec.id.clone(),
            argv: spec.argv.clone(),
            pid: 2 + table.len() as i32,
            status: ProcessStatus::Running,
            exit_code: None,
            signal: None,
            timed_out: false,
            tty: spec.tty.is_some(),
            user: spec.user.clone(),
            started_at_ms: now_ms(),
            ended_at_ms: None,
        };
        let argv: Vec<&str> = spec.argv.iter().map(String::as_str).collect();
        let mut process = FakeProcess { info, events: Vec::new(), cat: argv == ["cat"] };
        if !process.cat && argv.first() != Some(&"sleep") {
            let (out, err, code) = run(&spec.argv, &[]);
            let (out_stream, err_stream) = if process.info.tty {
                (OutputStreamKind::Pty, OutputStreamKind::Pty)
            } else {
                (OutputStreamKind::Stdout, OutputStreamKind::Stderr)
            };
            process.push(out_stream, out);
            process.push(err_stream, err);
            process.finish(Some(code), None);
        }
        let info = process.info.clone();
        table.insert(spec.id, process);
        drop(state);
        self.changed.notify_waiters();
        Ok(info)
    }

    async fn processes(&self, sandbox: &str) -> Result<Vec<ProcessInfo>> {
        let state = lock(&self.state);
        state.sandboxes.get(sandbox).ok_or_else(|| not_running(sandbox))?;
        Ok(state.processes.get(sandbox).map(|t| t.values().map(|p| p.info.clone()).collect()).unwrap_or_default())
    }

    async fn process(&self, sandbox: &str, id: &str) -> Result<ProcessInfo> {
        self.with_process(sandbox, id, |p| Ok(p.info.clone()))
    }

    async fn process_output(&self, sandbox: &str, id: &str, after: u64) -> Result<ProcessOutput> {
        self.with_process(sandbox, id, |_| Ok(()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (runtime, sandbox, id) = (self.clone(), sandbox.to_owned(), id.to_owned());
        tokio::spawn(async move {
            let mut last = after;
            loop {
                let changed = runtime.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let snapshot = runtime.with_process(&sandbox, &id, |p| {
                    let new: Vec<_> = p.events.iter().filter(|e| e.0 > last).cloned().collect();
                    Ok((new, (p.info.status == ProcessStatus::Exited).then(|| p.info.clone())))
                });
                let (new, exited) = match snapshot {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for (seq, stream, data) in new {
                    last = seq;
                    if tx.send(Ok(ProcessEvent::Output { seq, stream, data })).await.is_err() {
                        return;
                    }
                }
                if let Some(info) = exited {
                    let _ = tx.send(Ok(ProcessEvent::Exit(info))).await;
                    return;
                }
                changed.await;
            }
        });
        Ok(ProcessOutput::from_channel(rx))
    }

    async fn process_stdin(
        &self,
        sandbox: &str,
        id: &str,
        mut data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
        eof: bool,
    ) -> Result<u64> {
        self.with_process(sandbox, id, |_| Ok(()))?;
        let mut written = 0u64;
        while let Some(chunk) = data.recv().await {
            let chunk = chunk.map_err(RuntimeError::io("read the stdin upload"))?;
            written += chunk.len() as u64;
            self.with_process(sandbox, id, |p| {
                if p.cat && p.info.status == ProcessStatus::Running {
                    p.push(p.stream(), chunk);
                }
                Ok(())
            })?;
            self.changed.notify_waiters();
        }
        if eof {
            self.with_process(sandbox, id, |p| {
                if p.cat && p.info.status == ProcessStatus::Running {
                    p.finish(Some(0), None);
                }
                Ok(())
            })?;
            self.changed.notify_waiters();
        }
        Ok(written)
    }

    async fn signal_process(&self, sandbox: &str, id: &str, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(RuntimeError::Invalid(format!("unknown signal {signal}")));
        }
        self.with_process(sandbox, id, |p| {
            if p.info.status == ProcessStatus::Running {
                p.finish(None, Some(signal));
            }
            Ok(())
        })?;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn resize_process(&self, sandbox: &str, id: &str, _size: TtySize) -> Result<()> {
        self.with_process(sandbox, id, |p| {
            if p.info.tty {
                Ok(())
            } else {
                Err(RuntimeError::Invalid(format!("process {id} has no terminal")))
            }
        })
    }
}

impl FakeRuntime {
    fn with_process<T>(&self, sandbox: &str, id: &str, f: impl FnOnce(&mut FakeProcess) -> Result<T>) -> Result<T> {
        let mut state = lock(&self.state);
        if !state.sandboxes.contains_key(sandbox) {
            return Err(not_running(sandbox));
        }
        let process = state
            .processes
            .get_mut(sandbox)
            .and_then(|t| t.get_mut(id))
            .ok_or_else(|| RuntimeError::ProcessNotFound(id.to_owned()))?;
        f(process)
    }
}

/// One filesystem of the fake storage: its size and its tree (directories and files).
#[derive(Debug, Clone, Default)]
struct Tree {
    size_bytes: u64,
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl Tree {
    fn used(&self) -> u64 {
        self.files.values().map(|f| f.len() as u64).sum()
    }

    fn is_dir(&self, rel: &Path) -> bool {
        rel.as_os_str().is_empty() || self.dirs.contains(rel)
    }

    /// Checks that every parent of `rel` is a directory or missing, and creates the missing.
    fn make_parents(&mut self, rel: &Path) -> std::result::Result<(), FileError> {
        let mut parents: Vec<&Path> = rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()).collect();
        parents.reverse();
        for p in parents {
            if self.files.contains_key(p) {
                return Err(FileError::NotADirectory(format!("path: {} is not a directory", p.display())));
            }
            self.dirs.insert(p.to_owned());
        }
        Ok(())
    }
}

/// A [`FilesystemStorage`] that keeps filesystems in memory. Usage counts file bytes only.
#[derive(Debug, Clone, Default)]
pub struct FakeStorage {
    trees: Arc<Mutex<HashMap<String, Tree>>>,
}

impl FakeStorage {
    pub fn new() -> FakeStorage {
        FakeStorage::default()
    }

    /// The content of the file `rel` of filesystem `id`, when there is one.
    pub fn file(&self, id: &str, rel: impl AsRef<Path>) -> Option<Vec<u8>> {
        lock(&self.trees).get(id)?.files.get(rel.as_ref()).cloned()
    }

    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Tree) -> std::result::Result<T, FileError>,
    ) -> std::result::Result<T, FileError> {
        let mut trees = lock(&self.trees);
        let tree = trees.get_mut(id).ok_or_else(|| FileError::Io(format!("open filesystem {id}: not mounted")))?;
        f(tree)
    }
}

fn entry(name: &std::ffi::OsStr, kind: Kind, size: u64) -> Entry {
    let mode = if kind == Kind::Dir { 0o755 } else { 0o644 };
    let file_type = if kind == Kind::Dir { crate::FileType::Directory } else { crate::FileType::File };
    Entry { name: name.to_owned(), kind, file_type, size, mode, modified: SystemTime::UNIX_EPOCH, target: None }
}

#[async_trait]
impl FilesystemStorage for FakeStorage {
    async fn create(&self, id: &str, size_bytes: u64, _owner: IdRange) -> Result<()> {
        let mut trees = lock(&self.trees);
        if trees.contains_key(id) {
            return Err(RuntimeError::Busy(format!("filesystem {id} exists")));
        }
        trees.insert(id.to_owned(), Tree { size_bytes, ..Default::default() });
        Ok(())
    }

    async fn mount(&self, id: &str) -> Result<bool> {
        Ok(lock(&self.trees).contains_key(id))
    }

    async fn grow(&self, id: &str, size_bytes: u64, _in_use: bool) -> Result<()> {
        let mut trees = lock(&self.trees);
        let tree = trees.get_mut(id).ok_or_else(|| RuntimeError::Busy(format!("filesystem {id} is not mounted")))?;
        tree.size_bytes = tree.size_bytes.max(size_bytes);
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        lock(&self.trees).remove(id);
        Ok(())
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        let trees = lock(&self.trees);
        let tree = trees.get(id).ok_or_else(|| RuntimeError::Busy(format!("filesystem {id} is not mounted")))?;
        Ok(Usage { used_bytes: tree.used(), total_bytes: tree.size_bytes })
    }

    fn mountpoint(&self, id: &str) -> PathBuf {
        PathBuf::from("/fake/filesystems").join(id)
    }

    fn data_dir(&self, id: &str) -> PathBuf {
        self.mountpoint(id).join("data")
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.trees).keys().cloned().collect();
        ids.sort();
        ids
    }

    fn list(
        &self,
        id: &str,
        rel: &Path,
        after: Option<&[u8]>,
        limit: usize,
    ) -> std::result::Result<(Vec<Entry>, bool), FileError> {
        self.with(id, |t| {
            if t.files.contains_key(rel) {
                return Err(FileError::NotADirectory(format!("path: {} is not a directory", rel.display())));
            }
            if !t.is_dir(rel) {
                return Err(FileError::NotFound(format!("path: {rel:?}: no such file or directory")));
            }
            let mut out: Vec<Entry> = Vec::new();
            for d in t.dirs.iter().filter(|d| d.parent() == Some(rel)) {
                out.push(entry(d.file_name().unwrap_or_default(), Kind::Dir, 4096));
            }
            for (f, data) in t.files.iter().filter(|(f, _)| f.parent() == Some(rel)) {
                out.push(entry(f.file_name().unwrap_or_default(), Kind::File, data.len() as u64));
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            out.retain(|e| after.is_none_or(|a| e.name.as_encoded_bytes() > a));
            let more = out.len() > limit;
            out.truncate(limit);
            Ok((out, more))
        })
    }

    fn open(&self, id: &str, rel: &Path, hash_max: u64) -> std::result::Result<Option<Download>, FileError> {
        self.with(id, |t| {
            if t.is_dir(rel) {
                return Err(FileError::IsADirectory(format!("path: {rel:?}: is a directory (list it with list=true)")));
            }
            let Some(data) = t.files.get(rel) else { return Ok(None) };
            let len = data.len() as u64;
            let etag = (len <= hash_max).then(|| files::etag_of_bytes(data));
            Ok(Some(Download { reader: Box::new(Cursor::new(data.clone())), len, etag }))
        })
    }

    fn check(&self, id: &str, rel: &Path, pre: &Preconditions, _hash_max: u64) -> std::result::Result<(), FileError> {
        self.with(id, |t| pre.check(t.files.get(rel).map(|d| files::etag_of_bytes(d)).as_deref()))
    }

    fn write(
        &self,
        id: &str,
        rel: &Path,
        data: &mut dyn Read,
        options: WriteOptions,
        pre: &Preconditions,
        serialize: files::Serialize,
    ) -> std::result::Result<Written, FileError> {
        let mut content = Vec::new();
        data.take(options.max_bytes + 1)
            .read_to_end(&mut content)
            .map_err(|_| FileError::Invalid("body: could not be read to the end".into()))?;
        if content.len() as u64 > options.max_bytes {
            return Err(FileError::TooLarge(format!("more than {} bytes", options.max_bytes)));
        }
        let _held = serialize();
        self.with(id, |t| {
            if t.is_dir(rel) {
                return Err(FileError::IsADirectory(format!("path: {} is a directory", rel.display())));
            }
            // As on disk: parents first, then the content (which may not fit), then the
            // condition, just before the replacement.
            t.make_parents(rel)?;
            let replaced = t.files.get(rel).map_or(0, |d| d.len() as u64);
            if t.used() - replaced + content.len() as u64 > t.size_bytes {
                return Err(FileError::NoSpace("the filesystem is full (its size_bytes)".into()));
            }
            pre.check(t.files.get(rel).map(|d| files::etag_of_bytes(d)).as_deref())?;
            let written = Written { bytes: content.len() as u64, etag: files::etag_of_bytes(&content) };
            t.files.insert(rel.to_owned(), content);
            Ok(written)
        })
    }

    fn remove(&self, id: &str, rel: &Path, pre: &Preconditions, _hash_max: u64) -> std::result::Result<(), FileError> {
        self.with(id, |t| {
            if pre.if_match.is_some() {
                pre.check(t.files.get(rel).map(|d| files::etag_of_bytes(d)).as_deref())?;
            }
            if t.files.remove(rel).is_some() {
                return Ok(());
            }
            if !t.dirs.contains(rel) {
                return Err(FileError::NotFound(format!("path: {rel:?}: no such file or directory")));
            }
            if t.dirs.iter().any(|d| d.parent() == Some(rel)) || t.files.keys().any(|f| f.parent() == Some(rel)) {
                return Err(FileError::NotEmpty);
            }
            t.dirs.remove(rel);
            Ok(())
        })
    }

    fn archive(&self, id: &str) -> std::result::Result<Box<dyn Read + Send>, FileError> {
        let tree = self.with(id, |t| Ok(t.clone()))?;
        let mut builder = tar::Builder::new(Vec::new());
        let io = |e: std::io::Error| FileError::Io(e.to_string());
        for d in &tree.dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            builder.append_data(&mut h, d, std::io::empty()).map_err(io)?;
        }
        for (f, data) in &tree.files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            builder.append_data(&mut h, f, data.as_slice()).map_err(io)?;
        }
        Ok(Box::new(Cursor::new(builder.into_inner().map_err(io)?)))
    }

    fn stage_archive(
        &self,
        id: &str,
        data: &mut dyn Read,
        _owner: IdRange,
        limits: archive::Limits,
    ) -> std::result::Result<Box<dyn StagedArchive>, FileError> {
        let size_bytes = self.with(id, |t| Ok(t.size_bytes))?;
        let mut staged = Tree { size_bytes, ..Default::default() };
        let mut stats = Stats::default();
        let corrupt = |e: std::io::Error| FileError::Invalid(format!("body: not a valid archive: {e}"));
        let mut tar = tar::Archive::new(data);
        for entry in tar.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let name = entry.path().map_err(corrupt)?.to_string_lossy().into_owned();
            let rel = files::relative(&name, false)
                .map_err(|_| FileError::Invalid(format!("archive entry {name:?}: not a plain relative path")))?;
            stats.entries += 1;
            if stats.entries > limits.max_entries {
                return Err(FileError::NoSpace(format!(
                    "the archive does not fit the filesystem: more than {} entries",
                    limits.max_entries
                )));
            }
            staged.make_parents(&rel).map_err(|e| FileError::Invalid(format!("archive entry {name:?}: {e}")))?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    staged.dirs.insert(rel);
                }
                tar::EntryType::Regular => {
                    let mut content = Vec::new();
                    entry.read_to_end(&mut content).map_err(corrupt)?;
                    stats.bytes += content.len() as u64;
                    if stats.bytes > limits.max_bytes {
                        return Err(FileError::NoSpace(format!(
                            "the archive does not fit the filesystem: more than {} bytes",
                            limits.max_bytes
                        )));
                    }
                    staged.files.insert(rel, content);
                }
                other => {
                    return Err(FileError::Invalid(format!("archive entry {name:?}: {other:?} entries are refused")));
                }
            }
        }
        Ok(Box::new(FakeStaged { storage: self.clone(), id: id.to_owned(), tree: staged, stats }))
    }
}

/// An archive extracted into memory, not yet swapped in.
struct FakeStaged {
    storage: FakeStorage,
    id: String,
    tree: Tree,
    stats: Stats,
}

impl StagedArchive for FakeStaged {
    fn stats(&self) -> Stats {
        self.stats
    }

    fn commit(self: Box<Self>) -> std::result::Result<Stats, FileError> {
        let FakeStaged { storage, id, tree, stats } = *self;
        storage.with(&id, move |t| {
            *t = tree;
            Ok(stats)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> IdRange {
        IdRange { host_start: 200_000, size: 65_536 }
    }

    fn write(s: &FakeStorage, rel: &str, data: &[u8]) -> std::result::Result<Written, FileError> {
        let options = WriteOptions { max_bytes: 1 << 20, hash_max: 1 << 20, mode: Some(0o644), owner: ids() };
        s.write("fs_a", Path::new(rel), &mut &data[..], options, &Preconditions::default(), Box::new(|| Box::new(())))
    }

    #[tokio::test]
    async fn a_fake_filesystem_is_full_at_its_size() {
        let s = FakeStorage::new();
        s.create("fs_a", 10, ids()).await.unwrap();
        write(&s, "a/b.txt", b"12345678").unwrap();
        assert!(matches!(write(&s, "c", b"123"), Err(FileError::NoSpace(_))));
        // Replacing a file counts its new size only.
        write(&s, "a/b.txt", b"1234567890").unwrap();
        assert_eq!(s.usage("fs_a").unwrap().used_bytes, 10);
        assert!(matches!(write(&s, "a/b.txt/c", b"x"), Err(FileError::NotADirectory(_))));
        assert!(matches!(s.remove("fs_a", Path::new("a"), &Preconditions::default(), 0), Err(FileError::NotEmpty)));
        assert!(matches!(s.open("fs_a", Path::new("nope"), 100), Ok(None)));
    }

    #[tokio::test]
    async fn an_archive_round_trips_through_a_fake_filesystem() {
        let s = FakeStorage::new();
        s.create("fs_a", 1 << 20, ids()).await.unwrap();
        write(&s, "src/main.rs", b"fn main() {}").unwrap();
        let mut tar = Vec::new();
        s.archive("fs_a").unwrap().read_to_end(&mut tar).unwrap();
        s.create("fs_b", 1 << 20, ids()).await.unwrap();
        let limits = archive::Limits { max_entries: 10, max_bytes: 1 << 20 };
        let staged = s.stage_archive("fs_b", &mut tar.as_slice(), ids(), limits).unwrap();
        assert_eq!(s.file("fs_b", "src/main.rs"), None, "nothing changes before the commit");
        assert_eq!(staged.commit().unwrap().bytes, 12);
        assert_eq!(s.file("fs_b", "src/main.rs").as_deref(), Some(&b"fn main() {}"[..]));
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;
    use crate::Runtime;

    fn sandbox_spec() -> SandboxSpec {
        SandboxSpec {
            id: "sbx_1".into(),
            namespace: "acme".into(),
            oci_runtime: "runc".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 28,
            pids: 64,
            tmp_bytes: 1 << 20,
            ids: IdRange { host_start: 100_000, size: 65_536 },
            env: vec![],
            workspace: None,
            agent_code: None,
            run_files: vec![],
            extra_ca_pem: None,
            root: crate::RootSpec::Host,
            pooled: false,
        }
    }

    fn process(id: &str, argv: &[&str]) -> ProcessSpec {
        ProcessSpec {
            id: id.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            user: None,
            tty: None,
            timeout_ms: None,
        }
    }

    #[tokio::test]
    async fn a_fake_process_echoes_stdin_until_eof() {
        let rt = FakeRuntime::new();
        let limits =
            NamespaceLimits { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 100, placement: Default::default() };
        rt.ensure_namespace("acme", &limits).await.unwrap();
        rt.create(&sandbox_spec()).await.unwrap();
        rt.spawn_process("sbx_1", process("prc_1", &["cat"])).await.unwrap();
        let mut out = rt.process_output("sbx_1", "prc_1", 0).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Ok(b"hello".to_vec())).await.unwrap();
        drop(tx);
        assert_eq!(rt.process_stdin("sbx_1", "prc_1", rx, true).await.unwrap(), 5);
        let first = out.next().await.unwrap().unwrap();
        assert_eq!(first, ProcessEvent::Output { seq: 1, stream: OutputStreamKind::Stdout, data: b"hello".to_vec() });
        match out.next().await.unwrap().unwrap() {
            ProcessEvent::Exit(info) => assert_eq!(info.exit_code, Some(0)),
            other => panic!("{other:?}"),
        }
        assert!(out.next().await.is_none());
        assert!(matches!(rt.process("sbx_1", "prc_x").await, Err(RuntimeError::ProcessNotFound(_))));
        assert!(matches!(rt.signal_process("sbx_1", "prc_1", 0).await, Err(RuntimeError::Invalid(_))));
        let mut bad_user = process("prc_2", &["true"]);
        bad_user.user = Some("mallory".into());
        assert!(
            matches!(rt.spawn_process("sbx_1", bad_user).await, Err(RuntimeError::Invalid(m)) if m.contains("mallory"))
        );
        assert_eq!(rt.processes("sbx_1").await.unwrap().len(), 1);
    }
}
