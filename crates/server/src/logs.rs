//! Exec output retained per namespace. Every exec's stdout and stderr pass through
//! [`LogBook::record`], which never blocks the exec: a writer thread numbers the records, appends
//! them as JSON lines to `<data>/logs/<incarnation>/current.jsonl`, and hands them to live
//! subscribers. When the current segment reaches half the namespace's bound it becomes
//! `previous.jsonl` (replacing the one before), so a namespace keeps at most its bound on disk
//! and always its most recent output.
//!
//! A query first flushes what was recorded before it, so an exec's output is readable as soon
//! as the exec has answered. Output recorded in the last instant before a crash of the server
//! may be lost; the log is a debugging aid, not acknowledged data.
//!
//! **Invariant:** a namespace's log is keyed by its incarnation (`NamespaceRow::incarnation`),
//! never its name, and removed when the namespace is deleted: the `namespace` argument of every
//! function here is that incarnation.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bulkhead_api::{Encoding, LogRecord, LogStream};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::time::rfc3339;

/// Records waiting for the writer at most; past it new output is dropped (and counted) rather
/// than slowing execs down.
const QUEUE: usize = 16 * 1024;
/// Live subscribers may fall this many records behind before they are told they missed some.
const LIVE: usize = 4096;
/// Largest piece of output kept in one record; longer output is split.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One record: the exact bytes a command wrote, cut on character boundaries where the output
/// is UTF-8, so that each record decodes as text on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Entry {
    pub seq: u64,
    pub time_ms: i64,
    pub sandbox: String,
    pub request_id: String,
    pub stream: LogStream,
    pub data: Vec<u8>,
}

/// A record as a JSON line on disk: its bytes in base64 (`b64`). Lines written before logs kept
/// bytes hold text (`data`) instead, read as its UTF-8 bytes.
#[derive(Serialize, Deserialize)]
struct Stored {
    seq: u64,
    time_ms: i64,
    sandbox: String,
    request_id: String,
    stream: LogStream,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

impl From<Stored> for Entry {
    fn from(s: Stored) -> Entry {
        let data = match (s.b64, s.data) {
            (Some(b), _) => crate::text::unbase64(&b).unwrap_or_default(),
            (None, Some(text)) => text.into_bytes(),
            (None, None) => Vec::new(),
        };
        Entry { seq: s.seq, time_ms: s.time_ms, sandbox: s.sandbox, request_id: s.request_id, stream: s.stream, data }
    }
}

impl From<Entry> for Stored {
    fn from(e: Entry) -> Stored {
        Stored {
            seq: e.seq,
            time_ms: e.time_ms,
            sandbox: e.sandbox,
            request_id: e.request_id,
            stream: e.stream,
            b64: Some(crate::text::base64(&e.data)),
            data: None,
        }
    }
}

impl Entry {
    /// The record on the wire, its bytes as `encoding` carries them.
    pub fn to_wire(&self, encoding: Encoding) -> LogRecord {
        LogRecord {
            seq: self.seq,
            time: rfc3339(self.time_ms),
            sandbox: self.sandbox.clone(),
            request_id: self.request_id.clone(),
            stream: self.stream,
            data: crate::text::encode(encoding, &self.data),
        }
    }
}

/// A record of one namespace, as live subscribers receive it.
#[derive(Debug)]
pub struct Live {
    /// The namespace's incarnation.
    pub namespace: String,
    pub entry: Entry,
}

enum Msg {
    Append {
        namespace: String,
        entry: Entry,
    },
    Flush(oneshot::Sender<()>),
    /// Drops a namespace's log (its namespace was deleted or is new).
    Forget(String, oneshot::Sender<()>),
}

/// What a query selects.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub sandbox: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only records with a larger `seq`.
    pub after: Option<u64>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.sandbox.as_ref().is_none_or(|s| *s == e.sandbox)
            && self.since_ms.is_none_or(|t| e.time_ms >= t)
            && self.until_ms.is_none_or(|t| e.time_ms < t)
            && self.after.is_none_or(|a| e.seq > a)
    }
}

/// The server's handle on the logs.
pub struct LogBook {
    dir: PathBuf,
    tx: mpsc::Sender<Msg>,
    live: broadcast::Sender<Arc<Live>>,
    dropped: AtomicU64,
}

impl LogBook {
    /// Starts the writer thread; `bound` is the most a namespace keeps, in bytes.
    pub fn start(dir: PathBuf, bound: u64) -> std::io::Result<LogBook> {
        fs::create_dir_all(&dir)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(LIVE);
        let writer = Writer { dir: dir.clone(), segment_bytes: (bound / 2).max(4096), open: HashMap::new() };
        let sender = live.clone();
        std::thread::Builder::new().name("bulkhead-logs".into()).spawn(move || writer.run(rx, sender))?;
        Ok(LogBook { dir, tx, live, dropped: AtomicU64::new(0) })
    }

    /// Records a piece of exec output, its bytes as they are. Output longer than
    /// [`MAX_RECORD_BYTES`] is split into several records on character boundaries; callers pass
    /// pieces that end on one ([`crate::text::Utf8Carry`]). Never waits.
    pub fn record(&self, namespace: &str, sandbox: &str, request_id: &str, stream: LogStream, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let cut = crate::text::boundary(rest, MAX_RECORD_BYTES);
            let (chunk, tail) = rest.split_at(cut);
            rest = tail;
            let entry = Entry {
                seq: 0,
                time_ms: crate::time::now_ms(),
                sandbox: sandbox.to_owned(),
                request_id: request_id.to_owned(),
                stream,
                data: chunk.to_vec(),
            };
            let msg = Msg::Append { namespace: namespace.to_owned(), entry };
            if self.tx.try_send(msg).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything recorded before the call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Deletes a namespace's log.
    pub async fn forget(&self, namespace: &str) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Forget(namespace.to_owned(), done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Live records of every namespace; the subscriber filters.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Live>> {
        self.live.subscribe()
    }

    /// Up to `limit` records of `namespace` that match, oldest first, and whether more match.
    pub async fn query(&self, namespace: &str, filter: &Filter, limit: usize) -> std::io::Result<(Vec<Entry>, bool)> {
        self.flush().await;
        let dir = self.dir.join(namespace);
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || read(&dir, &filter, limit))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

fn segments(dir: &Path) -> [PathBuf; 2] {
    [dir.join("previous.jsonl"), dir.join("current.jsonl")]
}

/// Reads the segments oldest first. A line cut short by a concurrent append is skipped.
fn read(dir: &Path, filter: &Filter, limit: usize) -> std::io::Result<(Vec<Entry>, bool)> {
    let mut out = Vec::new();
    let mut last = 0u64;
    for path in segments(dir) {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            let Ok(e) = serde_json::from_str::<Entry>(&line?) else { continue };
            // A rotation between the two opens can show a record twice.
            if e.seq <= last || !filter.matches(&e) {
                continue;
            }
            last = e.seq;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(e);
        }
    }
    Ok((out, false))
}

struct Segment {
    file: File,
    bytes: u64,
    next_seq: u64,
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    open: HashMap<String, Segment>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>, live: broadcast::Sender<Arc<Live>>) {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Append { namespace, mut entry } => match self.append(&namespace, &mut entry) {
                    Ok(()) => {
                        let _ = live.send(Arc::new(Live { namespace, entry }));
                    }
                    Err(e) => tracing::warn!(namespace, error = %e, "cannot write exec log"),
                },
                Msg::Flush(done) => {
                    let _ = done.send(());
                }
                Msg::Forget(namespace, done) => {
                    self.open.remove(&namespace);
                    let dir = self.dir.join(&namespace);
                    if let Err(e) = fs::remove_dir_all(&dir) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(namespace, error = %e, "cannot remove exec log");
                        }
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    fn append(&mut self, namespace: &str, entry: &mut Entry) -> std::io::Result<()> {
        if !self.open.contains_key(namespace) {
            let segment = open_segment(&self.dir.join(namespace), None)?;
            self.open.insert(namespace.to_owned(), segment);
        }
        let Some(segment) = self.open.get_mut(namespace) else { return Ok(()) };
        entry.seq = segment.next_seq;
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if segment.bytes > 0 && segment.bytes + line.len() as u64 > self.segment_bytes {
            let dir = self.dir.join(namespace);
            let [previous, current] = segments(&dir);
            fs::rename(&current, &previous)?;
            let next = open_segment(&dir, Some(segment.next_seq))?;
            *segment = next;
        }
        // One write of whole lines: a reader sees a record entirely or not at all.
        segment.file.write_all(&line)?;
        segment.bytes += line.len() as u64;
        segment.next_seq += 1;
        Ok(())
    }
}

/// Opens a namespace's current segment for appending; the next sequence number follows the last
/// record on disk unless the caller knows it.
fn open_segment(dir: &Path, next_seq: Option<u64>) -> std::io::Result<Segment> {
    fs::create_dir_all(dir)?;
    let [previous, current] = segments(dir);
    let next_seq = match next_seq {
        Some(n) => n,
        None => last_seq(&current)?.or(last_seq(&previous)?).map_or(1, |s| s + 1),
    };
    let file = OpenOptions::new().create(true).append(true).open(&current)?;
    let bytes = file.metadata()?.len();
    Ok(Segment { file, bytes, next_seq })
}

fn last_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in BufReader::new(file).lines() {
        if let Ok(e) = serde_json::from_str::<Entry>(&line?) {
            last = Some(e.seq);
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_newest_output_within_the_bound_and_numbers_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = LogBook::start(dir.path().to_owned(), 64 * 1024).expect("start");
        let line = vec![b'x'; 1000];
        for _ in 0..300 {
            book.record("acme", "sbx_1", "req", LogStream::Stdout, &line);
        }
        book.record("globex", "sbx_2", "req", LogStream::Stderr, b"other tenant");
        let (all, more) = book.query("acme", &Filter::default(), 10_000).await.expect("query");
        assert!(!more);
        let on_disk: u64 =
            segments(&dir.path().join("acme")).iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
        assert!(on_disk <= 64 * 1024, "{on_disk} bytes kept");
        assert!(all.len() > 20 && all.len() < 300, "{} records kept", all.len());
        assert_eq!(all.last().map(|e| e.seq), Some(300), "the newest record is kept");
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert!(all.iter().all(|e| e.sandbox == "sbx_1"));
        let (other, _) = book.query("globex", &Filter::default(), 10).await.expect("query");
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].data, b"other tenant");

        // Paging with `after`, and a restart continues the numbering.
        let filter = Filter { after: Some(298), ..Default::default() };
        let (tail, _) = book.query("acme", &filter, 10).await.expect("query");
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![299, 300]);
        drop(book);
        let book = LogBook::start(dir.path().to_owned(), 64 * 1024).expect("restart");
        book.record("acme", "sbx_1", "req", LogStream::Stdout, b"again");
        let (tail, _) = book.query("acme", &Filter { after: Some(300), ..Default::default() }, 10).await.expect("q");
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![301]);

        book.forget("acme").await;
        let (gone, _) = book.query("acme", &Filter::default(), 10).await.expect("query");
        assert!(gone.is_empty());
        assert!(!dir.path().join("acme").exists());
    }

    #[tokio::test]
    async fn live_subscribers_see_records_with_their_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = LogBook::start(dir.path().to_owned(), 1 << 20).expect("start");
        let mut rx = book.subscribe();
        book.record("acme", "sbx_1", "req", LogStream::Stdout, b"hello");
        let live = rx.recv().await.expect("live record");
        assert_eq!(live.namespace, "acme");
        assert_eq!(live.entry.seq, 1);
        assert_eq!(live.entry.data, b"hello");
    }

    #[tokio::test]
    async fn keeps_bytes_and_cuts_long_output_between_characters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let book = LogBook::start(dir.path().to_owned(), 1 << 30).expect("start");
        let mut data = b"\x00\xff\xfe".to_vec();
        data.extend_from_slice("é".repeat(MAX_RECORD_BYTES).as_bytes());
        book.record("acme", "sbx_1", "req", LogStream::Stdout, &data);
        let (all, _) = book.query("acme", &Filter::default(), 100).await.expect("query");
        assert!(all.len() > 1);
        assert_eq!(all.iter().flat_map(|e| e.data.clone()).collect::<Vec<u8>>(), data, "the exact bytes");
        assert!(all[1..].iter().all(|e| std::str::from_utf8(&e.data).is_ok()), "records end between characters");
        assert_eq!(all[0].to_wire(Encoding::Base64).data, crate::text::base64(&all[0].data));
        assert!(all[0].to_wire(Encoding::Utf8).data.starts_with("\0\u{fffd}\u{fffd}é"));

        // A line written when logs kept text reads as its bytes.
        let old = r#"{"seq":9,"time_ms":1,"sandbox":"sbx_1","request_id":"r","stream":"stdout","data":"old é"}"#;
        let e: Entry = serde_json::from_str(old).expect("old line");
        assert_eq!(e.data, "old é".as_bytes());
    }
}
