//! Bytes of a stream carried as JSON: UTF-8 text that never splits a character across two
//! pieces ([`Utf8Carry`]), or base64 of the exact bytes ([`encode`]).
//!
//! A command's output arrives in chunks cut wherever a pipe read ended, so a character of two to
//! four bytes can straddle two chunks. [`Utf8Carry`] holds such an incomplete trailing sequence
//! back and prepends it to the next chunk; only bytes that can never become UTF-8 are replaced
//! by U+FFFD when the text is decoded, and what is held back is given out at the end of the
//! stream (replaced then if it stayed incomplete).

use base64::Engine;
use bulkhead_api::Encoding;

/// Standard base64 with padding (RFC 4648 §4), the API's one base64.
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard base64 with padding; the error names nothing but the problem.
pub fn unbase64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| e.to_string())
}

/// `data` as the JSON string of `encoding`: base64 of the exact bytes, or text in which only
/// bytes that are not UTF-8 at all are replaced. Callers that stream text pass bytes cut on
/// character boundaries (by [`Utf8Carry`]).
pub fn encode(encoding: Encoding, data: &[u8]) -> String {
    match encoding {
        Encoding::Base64 => base64(data),
        Encoding::Utf8 => String::from_utf8_lossy(data).into_owned(),
    }
}

/// How many bytes at the end of `data` are the start of a UTF-8 sequence that more bytes could
/// complete (0 to 3).
pub fn incomplete_tail(data: &[u8]) -> usize {
    for i in 1..=data.len().min(3) {
        let b = data[data.len() - i];
        if (0x80..0xC0).contains(&b) {
            // A continuation byte: look further back for its lead byte.
            continue;
        }
        return match std::str::from_utf8(&data[data.len() - i..]) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => i,
            _ => 0,
        };
    }
    0
}

/// The longest prefix of `data`, at most `max` bytes, that does not end inside a character (a
/// sequence that could still be valid); at least one byte when `data` is not empty, so a
/// stream of invalid bytes still moves on.
pub fn boundary(data: &[u8], max: usize) -> usize {
    if data.len() <= max {
        return data.len();
    }
    let cut = max - incomplete_tail(&data[..max]);
    if cut == 0 {
        max.max(1)
    } else {
        cut
    }
}

/// Holds back an incomplete trailing UTF-8 sequence of one stream until the bytes that complete
/// it arrive.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The bytes of `chunk`, after what was held back, up to the last character boundary; the
    /// rest is held back. Concatenated with [`Utf8Carry::finish`], the pieces are exactly the
    /// input.
    pub fn push(&mut self, chunk: Vec<u8>) -> Vec<u8> {
        let mut data = if self.pending.is_empty() {
            chunk
        } else {
            let mut d = std::mem::take(&mut self.pending);
            d.extend_from_slice(&chunk);
            d
        };
        let tail = incomplete_tail(&data);
        self.pending = data.split_off(data.len() - tail);
        data
    }

    /// What is still held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cut_of_a_text_gives_whole_characters() {
        let text = "é😀中a\u{7ff}\u{ffff}".repeat(3);
        let bytes = text.as_bytes();
        for size in 1..bytes.len() {
            let mut carry = Utf8Carry::default();
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                let piece = carry.push(chunk.to_vec());
                let s = std::str::from_utf8(&piece).expect("whole characters");
                out.push_str(s);
            }
            out.push_str(std::str::from_utf8(&carry.finish()).expect("nothing left"));
            assert_eq!(out, text, "chunks of {size}");
        }
    }

    #[test]
    fn invalid_bytes_pass_and_are_the_only_ones_replaced() {
        let mut carry = Utf8Carry::default();
        let a = carry.push(b"a\xffb\xc3".to_vec());
        assert_eq!(a, b"a\xffb");
        assert_eq!(String::from_utf8_lossy(&a), "a\u{fffd}b");
        let b = carry.push(b"\xa9".to_vec());
        assert_eq!(b, "é".as_bytes());
        // An incomplete sequence at the very end is given out (and replaced when decoded).
        assert!(carry.push(b"\xe2\x82".to_vec()).is_empty());
        assert_eq!(carry.finish(), b"\xe2\x82");
        // A sequence that can never be valid is not held back.
        assert_eq!(incomplete_tail(b"x\xc0"), 0);
        assert_eq!(incomplete_tail(b"x\xed\xa0"), 0);
        assert_eq!(incomplete_tail(b"x\xf0\x9f\x98"), 3);
    }

    #[test]
    fn boundaries_of_records() {
        let text = "ééé".as_bytes();
        assert_eq!(boundary(text, 3), 2);
        assert_eq!(boundary(text, 4), 4);
        assert_eq!(boundary(text, 10), 6);
        assert_eq!(boundary(b"\xff\xff\xff", 1), 1);
        assert_eq!(boundary("😀".as_bytes(), 1), 1);
    }

    #[test]
    fn base64_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unbase64(&base64(&all)).expect("decodes"), all);
        assert!(unbase64("not base64!").is_err());
    }
}
