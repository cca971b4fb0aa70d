//! Bounds on what one connection and one request may hold, each with a timeout and an owner it
//! is charged to.
//!
//! - **Connections** ([`ConnectionLimits`]): at most `max_connections` at once (the rest wait in
//!   the kernel's accept queue); a request's header must be complete within `header_timeout` of
//!   its first byte (or of the accept); a keep-alive connection with no request in flight is
//!   closed after `idle_timeout`; a connection whose peer does not take what the server writes
//!   for `stall_timeout` is closed, and a request body that delivers less than
//!   [`MIN_BODY_PROGRESS`] (without ending) within as long fails.
//!   [`ConnState`] tracks one connection, [`Watched`] its socket and [`watchdog`] closes it.
//! - **Long-running streams** ([`Streams`]): downloads (archives, files, streamed execs, live
//!   log tails) and uploads (archives, files) are counted per principal, per namespace and for
//!   the whole server, per direction, by a [`StreamGuard`] released when the stream's body is
//!   dropped; one past a bound is `429 rate_limited` with `Retry-After`.
//! - **Buffers**: a download is pulled chunk by chunk ([`reader_body`]: one blocking read of at
//!   most [`CHUNK`] bytes each time the client takes the previous one, so a client that does not
//!   read holds no thread and one chunk), an upload is pushed through a channel of
//!   [`UPLOAD_QUEUE`] chunks into a blocking writer ([`BodyReader`]). Memory per stream is a few
//!   chunks, whatever the size of the body.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use bulkhead_core::Principal;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a download reads from disk per step, and the most a non-reading client pins.
pub const CHUNK: usize = 64 * 1024;
/// Body chunks queued between an upload's connection and its blocking writer.
pub const UPLOAD_QUEUE: usize = 4;
/// Seconds a client is told to wait after `rate_limited`.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// Per-connection bounds of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen queue. Default 4096.
    pub max_connections: usize,
    /// From a connection's accept, or the first byte of a request on a kept-alive one, until
    /// the request's header is complete. Default 30 s.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this. Default 60 s.
    pub idle_timeout: Duration,
    /// A response the peer does not read, or a request body that sends nothing, for this long
    /// closes the connection and frees what the request held. Default 60 s.
    pub stall_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Long-running streams allowed at once, in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Per principal (an API key, a sandbox's workload token, a user, the admin). Default 50.
    pub per_principal: usize,
    /// Per namespace, all its principals together. Default 200.
    pub per_namespace: usize,
    /// For the whole server. Default 1000 downloads and 1000 uploads; each upload holds one
    /// blocking thread while it runs, so uploads are further bounded by the async runtime's
    /// blocking pool (512 threads).
    pub total: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits { per_principal: 50, per_namespace: 200, total: 1000 }
    }
}

/// Which way a stream's bulk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The server sends: archive and file downloads, streamed execs, live log tails.
    Download,
    /// The client sends: archive and file uploads.
    Upload,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Download => "downloads",
            Direction::Upload => "uploads",
        }
    }
}

type Counts = Arc<Mutex<HashMap<(Direction, String), usize>>>;

/// The long-running streams open now, counted per principal, namespace and server.
#[derive(Debug, Default)]
pub struct Streams {
    limits: StreamLimits,
    counts: Counts,
}

/// One open stream; dropping it releases its place. Keep it in the response body of a
/// download, or for the handler's whole run for an upload.
#[derive(Debug)]
pub struct StreamGuard {
    counts: Counts,
    keys: Vec<(Direction, String)>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(n) = counts.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
    }
}

/// The key a principal's streams are counted under: the same key from two namespaces is two
/// owners only for users (whose subject is their provider's).
fn principal_key(p: &Principal) -> String {
    match p {
        Principal::User { sub, namespace, .. } => format!("user:{namespace}:{sub}"),
        other => other.audit_name(),
    }
}

/// A stream refused because a bound is full: the API's 429 `rate_limited`, with a
/// `Retry-After` of `retry_after_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RateLimited {
    pub message: String,
    pub retry_after_seconds: u64,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Streams { limits, counts: Arc::default() }
    }

    /// Takes a place for one stream of `principal` in `namespace`, or fails with
    /// `rate_limited` naming the bound that is full.
    pub fn acquire(&self, principal: &Principal, namespace: &str, dir: Direction) -> Result<StreamGuard, RateLimited> {
        let wanted = [
            ((dir, format!("p:{}", principal_key(principal))), self.limits.per_principal, "this principal"),
            ((dir, format!("n:{namespace}")), self.limits.per_namespace, "this namespace"),
            ((dir, "*".to_owned()), self.limits.total, "the server"),
        ];
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (key, limit, whose) in &wanted {
            if counts.get(key).copied().unwrap_or(0) >= *limit {
                return Err(RateLimited {
                    message: format!("{whose} has {limit} {} open, the most allowed at once; retry later", dir.name()),
                    retry_after_seconds: RETRY_AFTER_SECONDS,
                });
            }
        }
        let keys: Vec<_> = wanted.into_iter().map(|(key, _, _)| key).collect();
        for key in &keys {
            *counts.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(StreamGuard { counts: self.counts.clone(), keys })
    }

    /// Streams open now in `dir` for the whole server.
    pub fn open(&self, dir: Direction) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&(dir, "*".to_owned())).copied().unwrap_or(0)
    }
}

/// A download body pulled from a blocking reader: each chunk is one blocking step of at most
/// [`CHUNK`] bytes, taken only when the client has taken the previous one, so a client that does
/// not read holds neither a thread nor more than one chunk. `guard` is released when the body
/// is dropped (finished, failed or abandoned). A read error cuts the stream, which the client
/// sees as a truncated body.
pub fn reader_body<R: Read + Send + 'static>(reader: R, guard: StreamGuard) -> Body {
    let stream = futures_util::stream::unfold(Some((reader, guard)), |state| async move {
        let (mut reader, guard) = state?;
        let step = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return (Err(e), reader),
                }
            }
            buf.truncate(filled);
            (Ok(buf), reader)
        })
        .await;
        match step {
            Ok((Ok(buf), _)) if buf.is_empty() => None,
            Ok((Ok(buf), reader)) => Some((Ok(Bytes::from(buf)), Some((reader, guard)))),
            Ok((Err(e), _)) => {
                tracing::warn!(error = %e, "download failed");
                Some((Err(e), None))
            }
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    Body::from_stream(stream)
}

/// A `Read` over an upload's body chunks, fed by [`pump_body`] on the async side.
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

/// The sending end of a [`BodyReader`].
pub type BodySender = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

impl BodyReader {
    /// A reader and its sender, with room for [`UPLOAD_QUEUE`] chunks between them.
    pub fn channel() -> (BodySender, BodyReader) {
        let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_QUEUE);
        (tx, BodyReader { rx, current: Bytes::new() })
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Why an upload's body did not arrive whole.
#[derive(Debug)]
pub enum PumpError {
    /// More than the bound.
    TooLarge,
    /// The connection broke or stalled.
    Interrupted,
}

/// Why [`spool_body`] failed.
#[derive(Debug)]
pub enum SpoolError {
    /// The body did not arrive whole.
    Body(PumpError),
    /// Writing it to its spool file failed (the message says how).
    Write(String),
}

/// Writes `body` (at most `max` bytes) to `file` as it arrives, on a blocking thread, and syncs
/// it; answers the bytes written. The spool of an upload that is read whole before it is used
/// (an image archive, an agent bundle).
pub async fn spool_body(body: Body, file: std::fs::File, max: u64) -> Result<u64, SpoolError> {
    let (tx, mut reader) = BodyReader::channel();
    let write = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut file = file;
        let n = std::io::copy(&mut reader, &mut file)?;
        file.sync_all()?;
        Ok(n)
    });
    let (pumped, written) = tokio::join!(pump_body(body, tx, max), write);
    pumped.map_err(SpoolError::Body)?;
    written
        .map_err(|e| SpoolError::Write(format!("the spooling task ended abnormally: {e}")))?
        .map_err(|e| SpoolError::Write(e.to_string()))
}

/// Forwards `body` to `tx` (as `Bytes`, or as whatever the reader takes, such as the runtime's
/// `Vec<u8>` chunks), at most `max` bytes. When the reader stops taking chunks (it
/// finished or failed), the rest of the body is still read and counted, so that the answer is
/// about the whole upload; nothing more is queued. The reader sees an error when the body is
/// cut or too large. Returns the bytes received.
pub async fn pump_body<T: From<Bytes>>(
    body: Body,
    tx: tokio::sync::mpsc::Sender<Result<T, std::io::Error>>,
    max: u64,
) -> Result<u64, PumpError> {
    use futures_util::StreamExt;
    let mut received = 0u64;
    let mut forwarding = true;
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        let bytes = match chunk {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(format!("upload interrupted: {e}")))).await;
                return Err(PumpError::Interrupted);
            }
        };
        received += bytes.len() as u64;
        if received > max {
            let _ = tx.send(Err(std::io::Error::other("upload too large"))).await;
            return Err(PumpError::TooLarge);
        }
        if forwarding && tx.send(Ok(T::from(bytes))).await.is_err() {
            forwarding = false;
        }
    }
    Ok(received)
}

/// One connection's activity, shared by its socket ([`Watched`]), the service that counts its
/// requests, and its [`watchdog`]. Times are milliseconds since the accept.
#[derive(Debug)]
pub struct ConnState {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// Whether a request header is being waited for (since `since_ms`): at accept, and once
    /// a byte arrived on an idle kept-alive connection.
    awaiting_head: AtomicBool,
    /// When the connection last became idle, or began awaiting a header.
    since_ms: AtomicU64,
    /// When a write last found the peer's window full and nothing went since; 0 when writes go.
    write_blocked_ms: AtomicU64,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            awaiting_head: AtomicBool::new(true),
            since_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
        }
    }
}

/// A request in flight on a connection; dropping it (when the response body is done or
/// abandoned) may make the connection idle.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        if state.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            state.since_ms.store(state.now_ms(), Ordering::SeqCst);
        }
    }
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request's header has arrived.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.awaiting_head.store(false, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 && !self.awaiting_head.swap(true, Ordering::SeqCst) {
            self.since_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    fn write_blocked(&self) {
        if self.write_blocked_ms.load(Ordering::SeqCst) == 0 {
            self.write_blocked_ms.store(self.now_ms().max(1), Ordering::SeqCst);
        }
    }

    fn wrote(&self) {
        self.write_blocked_ms.store(0, Ordering::SeqCst);
    }

    /// Why the connection must be closed now, if it must.
    pub fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        let now = self.now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let blocked = self.write_blocked_ms.load(Ordering::SeqCst);
        if blocked != 0 && now.saturating_sub(blocked) >= ms(limits.stall_timeout) {
            return Some("the peer read nothing of the response within the stall timeout");
        }
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = now.saturating_sub(self.since_ms.load(Ordering::SeqCst));
        if self.awaiting_head.load(Ordering::SeqCst) {
            (since >= ms(limits.header_timeout)).then_some("no complete request header within the header timeout")
        } else {
            (since >= ms(limits.idle_timeout)).then_some("idle past the keep-alive timeout")
        }
    }
}

/// Resolves when the connection has to go, with the reason.
pub async fn watchdog(state: Arc<ConnState>, limits: ConnectionLimits) -> &'static str {
    let shortest = limits.header_timeout.min(limits.idle_timeout).min(limits.stall_timeout);
    let tick = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(why) = state.expired(&limits) {
            return why;
        }
    }
}

/// A socket that reports reads and blocked writes to its [`ConnState`].
pub struct Watched<IO> {
    inner: IO,
    state: Arc<ConnState>,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, state: Arc<ConnState>) -> Self {
        Watched { inner, state }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read_some();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<IO> Watched<IO> {
    fn note(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Pending => self.state.write_blocked(),
            Poll::Ready(_) => self.state.wrote(),
        }
    }
}

/// Bytes a request body must deliver (or end) within every stall timeout while it is read: a
/// body that trickles a byte now and then makes no progress, so it cannot hold its handler and
/// connection for ever. With the default stall timeout of 60 s that is about 1 KiB/s.
pub const MIN_BODY_PROGRESS: usize = CHUNK;

/// A request body that fails when it delivers less than [`MIN_BODY_PROGRESS`] bytes (and does
/// not end) within `stall` while it is being read, so a client that sends nothing, or sends a
/// byte at a time, cannot hold a handler and its connection beyond the stall timeout; a body
/// smaller than that must arrive whole within it.
pub struct StallBody<B> {
    inner: B,
    stall: Duration,
    /// Runs from the first wait for data after the last progress.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes delivered since the timer started.
    progress: usize,
}

impl<B> StallBody<B> {
    pub fn new(inner: B, stall: Duration) -> Self {
        StallBody { inner, stall, timer: None, progress: 0 }
    }
}

impl<B> http_body::Body for StallBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, Bytes::len);
                this.progress = this.progress.saturating_add(bytes);
                if this.progress >= MIN_BODY_PROGRESS || this.timer.is_none() {
                    // Enough progress (or none awaited yet): the next wait starts a new window.
                    this.timer = None;
                    this.progress = 0;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(frame) => {
                this.timer = None;
                this.progress = 0;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let stall = this.stall;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    return Poll::Ready(Some(Err(
                        "the request body delivered too little within the stall timeout".into()
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, ns: &str) -> Principal {
        Principal::Key {
            id: id.to_owned(),
            namespace: ns.to_owned(),
            role: bulkhead_core::Role::Developer,
            projects: None,
        }
    }

    #[test]
    fn defaults_are_the_documented_numbers() {
        let c = ConnectionLimits::default();
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.stall_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 4096);
        let s = StreamLimits::default();
        assert_eq!((s.per_principal, s.per_namespace, s.total), (50, 200, 1000));
    }

    #[test]
    fn streams_are_bounded_per_principal_namespace_and_server_and_released_on_drop() {
        let streams = Streams::new(StreamLimits { per_principal: 2, per_namespace: 3, total: 4 });
        let a = key("key_a", "ns1");
        let g1 = streams.acquire(&a, "ns1", Direction::Download).unwrap();
        let _g2 = streams.acquire(&a, "ns1", Direction::Download).unwrap();
        let err = crate::error::ApiError::from(streams.acquire(&a, "ns1", Direction::Download).unwrap_err());
        assert_eq!(err.code(), "rate_limited");
        assert!(matches!(err, crate::error::ApiError::RateLimited { retry_after_seconds: RETRY_AFTER_SECONDS, .. }));
        // The other direction has its own count.
        let _u = streams.acquire(&a, "ns1", Direction::Upload).unwrap();
        // Another key of the namespace fills the namespace's bound.
        let b = key("key_b", "ns1");
        let _g3 = streams.acquire(&b, "ns1", Direction::Download).unwrap();
        assert!(streams.acquire(&b, "ns1", Direction::Download).is_err());
        // Another namespace fills the server's.
        let c = key("key_c", "ns2");
        let _g4 = streams.acquire(&c, "ns2", Direction::Download).unwrap();
        assert!(streams.acquire(&c, "ns2", Direction::Download).is_err());
        assert_eq!(streams.open(Direction::Download), 4);
        drop(g1);
        assert_eq!(streams.open(Direction::Download), 3);
        let _again = streams.acquire(&c, "ns2", Direction::Download).unwrap();
    }

    #[test]
    fn connection_state_times_headers_idleness_and_blocked_writes() {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_timeout: Duration::from_millis(0),
            idle_timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(3600),
        };
        let state = Arc::new(ConnState::default());
        // Accepted, nothing sent: the header clock runs.
        assert!(state.expired(&limits).is_some());
        let req = state.begin();
        assert_eq!(state.expired(&limits), None);
        drop(req);
        // Idle now: the idle clock (an hour) runs, not the header clock.
        assert_eq!(state.expired(&limits), None);
        state.read_some();
        assert!(state.expired(&limits).is_some());
        let _req = state.begin();
        state.write_blocked();
        let stalled = ConnectionLimits { stall_timeout: Duration::from_millis(0), ..limits };
        assert!(state.expired(&stalled).is_some());
        state.wrote();
        assert_eq!(state.expired(&stalled), None);
    }
}
