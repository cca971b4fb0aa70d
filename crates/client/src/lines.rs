//! Newline-terminated lines out of the chunks of a streamed answer (an exec's NDJSON, a log
//! tail's server-sent events), each at most a bound long.

/// Splits received bytes into newline-terminated lines of at most `max` bytes.
#[derive(Debug)]
pub(crate) struct Lines {
    /// Bytes received and not yet handed out; the next line starts at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Everything before this offset is known to hold no newline.
    scanned: usize,
    max: usize,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Lines {
        Lines { buf: Vec::new(), start: 0, scanned: 0, max }
    }

    /// Appends received bytes, first dropping the lines already handed out.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line without its newline; `None` until more bytes arrive; an error
    /// when the unfinished line is already longer than `max`.
    pub(crate) fn next_line(&mut self) -> std::result::Result<Option<&[u8]>, String> {
        if let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + i;
            let start = self.start;
            self.start = end + 1;
            self.scanned = self.start;
            return Ok(Some(&self.buf[start..end]));
        }
        self.scanned = self.buf.len();
        if self.buf.len() - self.start > self.max {
            return Err(format!("a line of the stream is over {} bytes", self.max));
        }
        Ok(None)
    }

    /// Whether nothing but whitespace is left after the last complete line.
    pub(crate) fn rest_is_blank(&self) -> bool {
        self.buf[self.start..].trim_ascii().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    /// Every way of cutting a stream into chunks gives the same lines.
    #[test]
    fn lines_across_chunks() {
        let text = b"{\"type\":\"stdout\",\"data\":\"a\"}\n\n{\"type\":\"exit\"}\nrest";
        for size in 1..text.len() {
            let mut lines = Lines::new(64);
            let mut got: Vec<Vec<u8>> = Vec::new();
            for chunk in text.chunks(size) {
                lines.push(chunk);
                while let Some(l) = lines.next_line().unwrap() {
                    got.push(l.to_vec());
                }
            }
            assert_eq!(
                got,
                vec![b"{\"type\":\"stdout\",\"data\":\"a\"}".to_vec(), vec![], b"{\"type\":\"exit\"}".to_vec()]
            );
            assert!(!lines.rest_is_blank());
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let mut lines = Lines::new(8);
        lines.push(b"12345678");
        assert_eq!(lines.next_line().unwrap(), None);
        lines.push(b"9");
        assert!(lines.next_line().is_err());
        let mut lines = Lines::new(8);
        lines.push(b"12345678\n12");
        assert_eq!(lines.next_line().unwrap(), Some(&b"12345678"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        assert!(!lines.rest_is_blank());
    }
}

/// The events of a streamed NDJSON answer (an exec's, a process's output), one JSON line at a
/// time. Lines are parsed across chunk boundaries; a line over [`crate::MAX_LINE_BYTES`], a
/// line that does not parse, or a stream cut mid-line is an error.
#[derive(Debug)]
pub struct EventStream<T> {
    answer: crate::Answer,
    lines: Lines,
    ended: bool,
    /// What the stream is, for the error of one cut mid-line.
    what: &'static str,
    _event: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> EventStream<T> {
    pub(crate) fn new(answer: crate::Answer, what: &'static str) -> EventStream<T> {
        EventStream {
            answer,
            lines: Lines::new(crate::MAX_LINE_BYTES),
            ended: false,
            what,
            _event: std::marker::PhantomData,
        }
    }

    /// The next event; `None` when the server ended the stream (for a process's output, after
    /// `exit`, or cut short: then resume with the last `seq` seen).
    pub async fn next(&mut self) -> crate::Result<Option<T>> {
        let status = self.answer.status();
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) if line.trim_ascii().is_empty() => continue,
                Ok(Some(line)) => {
                    return serde_json::from_slice(line).map(Some).map_err(|e| self.answer.call.decode(status, e))
                }
                Ok(None) => {}
                Err(detail) => return Err(self.answer.call.unexpected(status, detail)),
            }
            if self.ended {
                if self.lines.rest_is_blank() {
                    return Ok(None);
                }
                return Err(self.answer.call.unexpected(status, format!("the {} ended mid-line", self.what)));
            }
            match self.answer.chunk().await? {
                Some(chunk) => self.lines.push(&chunk),
                None => self.ended = true,
            }
        }
    }
}

/// One server-sent event: its `event` (`message` when it named none), its `id` when it had
/// one, and its `data` lines joined by newlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// The events of a `text/event-stream` answer, parsed as the HTML standard says: fields up to a
/// blank line make an event, comments (keep-alives) and events without data are skipped, and an
/// event cut off by the end of the body is dropped.
#[derive(Debug)]
pub(crate) struct SseEvents {
    pub answer: crate::Answer,
    lines: Lines,
    ended: bool,
}

impl SseEvents {
    pub(crate) fn new(answer: crate::Answer, max_line: usize) -> SseEvents {
        SseEvents { answer, lines: Lines::new(max_line), ended: false }
    }

    /// The next event; `None` when the body ended. A body that breaks off is
    /// [`crate::Error::Receive`].
    pub(crate) async fn next(&mut self) -> crate::Result<Option<SseEvent>> {
        let status = self.answer.status();
        let mut event = SseEvent { event: String::new(), id: None, data: String::new() };
        let mut has_data = false;
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => {
                    let line = String::from_utf8_lossy(line);
                    let line = line.strip_suffix('\r').unwrap_or(&line);
                    if line.is_empty() {
                        if has_data {
                            if event.event.is_empty() {
                                event.event.push_str("message");
                            }
                            return Ok(Some(event));
                        }
                        event = SseEvent { event: String::new(), id: None, data: String::new() };
                        continue;
                    }
                    let (field, value) = match line.split_once(':') {
                        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                        None => (line, ""),
                    };
                    match field {
                        "" => {} // A comment, such as a keep-alive.
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            has_data = true;
                        }
                        _ => {} // `retry` and unknown fields.
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

/// A request body that streams `source` in chunks of `chunk` bytes, read on a thread of its
/// own a few chunks ahead of the connection (never the whole of it in memory). The thread is
/// detached: it ends at the end of `source`, on its error (which ends the body), or once the
/// body is dropped and its next chunk has nowhere to go.
pub(crate) fn reader_body(source: Box<dyn std::io::Read + Send>, chunk: usize) -> reqwest::Body {
    reqwest::Body::wrap_stream(reader_stream(source, chunk))
}

/// The chunks of `source`, read as [`reader_body`] reads them, for a body that looks at each
/// chunk on its way (an upload that counts what it sent).
pub(crate) fn reader_stream(
    source: Box<dyn std::io::Read + Send>,
    chunk: usize,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut source = source;
        loop {
            let mut buf = vec![0u8; chunk];
            let n = match source.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            buf.truncate(n);
            if tx.blocking_send(Ok(buf)).is_err() {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
