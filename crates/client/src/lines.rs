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
