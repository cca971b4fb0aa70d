//! The tamper-evident audit chain. Each namespace has its own chain and the platform has one.
//! A record's hash is SHA-256 over its canonical JSON form, which includes the previous record's
//! hash, so changing, removing or reordering any record breaks every hash after it. The hash is
//! unkeyed on purpose: a tenant can verify an exported chain without any secret of the server.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::ids::hex;

/// The chain of platform-level actions (namespace create, delete, failed authentication). Not a
/// valid namespace name, so it cannot collide with one.
pub const PLATFORM_CHAIN: &str = "_platform";

/// `prev_hash` of a chain's first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is placed in a chain. Never holds a secret or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub time_ms: i64,
    /// `admin`, `key:<id>` or `anonymous`.
    pub principal: String,
    pub action: String,
    /// What the action was on, such as `namespace:acme` or `key:key_…`.
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub status: u16,
    pub request_id: String,
    /// Extra facts as a JSON text (a new key's name and role, changed quotas); never secrets.
    pub detail: String,
}

/// A record in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub chain: String,
    pub seq: u64,
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    chain: &'a str,
    seq: u64,
    time_ms: i64,
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: &'a str,
    status: u16,
    request_id: &'a str,
    detail: &'a str,
    prev_hash: &'a str,
}

/// The hash of the record at `seq` in `chain` holding `event`, following `prev_hash`.
pub fn record_hash(chain: &str, seq: u64, event: &AuditEvent, prev_hash: &str) -> String {
    let canonical = Canonical {
        chain,
        seq,
        time_ms: event.time_ms,
        principal: &event.principal,
        action: &event.action,
        resource: &event.resource,
        decision: &event.decision,
        status: event.status,
        request_id: &event.request_id,
        detail: &event.detail,
        prev_hash,
    };
    // Serializing a struct of strings and integers cannot fail.
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex(&Sha256::digest(&bytes))
}

/// Builds the record that follows a chain whose head is `(last_seq, last_hash)`. The event is
/// [`bounded`] first, so no record, whoever built its event, exceeds the bounds.
pub fn seal(chain: &str, head: Option<(u64, &str)>, event: AuditEvent) -> AuditRecord {
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash.to_owned()),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let event = bounded(event);
    let hash = record_hash(chain, seq, &event, &prev_hash);
    AuditRecord { chain: chain.to_owned(), seq, event, prev_hash, hash }
}

/// Largest `detail` of a record, in bytes of its JSON text.
pub const MAX_DETAIL_BYTES: usize = 4096;
/// Largest principal, action, resource or request id of a record, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// Strings in a detail longer than this many bytes are replaced by their digest.
pub const MAX_INLINE_STRING_BYTES: usize = 256;
/// Arrays and objects in a detail with more items than this are replaced by their digest.
pub const MAX_INLINE_ITEMS: usize = 32;
/// Nesting in a detail deeper than this is replaced by its digest.
const MAX_INLINE_DEPTH: usize = 4;
/// Bytes of a long string kept in its digest object, for people.
const HEAD_BYTES: usize = 64;

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// At most `max` bytes of `s`, cut on a character boundary (never splits a UTF-8 sequence).
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The digest object that stands for `value` in a bounded detail:
/// - a string: `{"bytes": <length>, "head": <first 64 bytes>, "sha256": <hex of its UTF-8 bytes>}`;
/// - an array: `{"items": <count>, "sha256": <hex of its compact JSON text>}`;
/// - an object: `{"keys": <count>, "sha256": <hex of its compact JSON text>}`.
///
/// So whoever holds the original (an argv, a path) can check it against the record.
pub fn digest_value(value: &Value) -> Value {
    match value {
        Value::String(s) => serde_json::json!({
            "bytes": s.len(),
            "head": cut(s, HEAD_BYTES),
            "sha256": sha256_hex(s.as_bytes()),
        }),
        Value::Array(a) => serde_json::json!({ "items": a.len(), "sha256": sha256_hex(value.to_string().as_bytes()) }),
        Value::Object(o) => serde_json::json!({ "keys": o.len(), "sha256": sha256_hex(value.to_string().as_bytes()) }),
        other => other.clone(),
    }
}

/// `value` with every long string, long array or object, and deep nesting replaced by its
/// [`digest_value`].
fn shrink(value: &Value, depth: usize) -> Value {
    match value {
        Value::String(s) if s.len() > MAX_INLINE_STRING_BYTES => digest_value(value),
        Value::Array(a) if a.len() > MAX_INLINE_ITEMS || depth >= MAX_INLINE_DEPTH => digest_value(value),
        Value::Object(o) if o.len() > MAX_INLINE_ITEMS || depth >= MAX_INLINE_DEPTH => digest_value(value),
        Value::Array(a) => Value::Array(a.iter().map(|v| shrink(v, depth + 1)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shrink(v, depth + 1))).collect()),
        other => other.clone(),
    }
}

/// The JSON text of a record's `detail`, at most [`MAX_DETAIL_BYTES`] long.
///
/// Step by step, until it fits: long strings (over 256 bytes), arrays and objects of more than
/// 32 items and nesting deeper than 4 become their [`digest_value`]; then the largest top-level
/// values become their digest, one by one; if it still does not fit (very many keys), the whole
/// detail becomes `{"digest": <digest of the whole detail>}`.
pub fn bounded_detail(detail: &Map<String, Value>) -> String {
    let mut out: Map<String, Value> = detail.iter().map(|(k, v)| (k.clone(), shrink(v, 1))).collect();
    let mut text = Value::Object(out.clone()).to_string();
    while text.len() > MAX_DETAIL_BYTES {
        let largest = out
            .iter()
            .filter_map(|(k, v)| {
                let digest = digest_value(detail.get(k)?);
                let len = v.to_string().len();
                (*v != digest && digest.to_string().len() < len).then_some((k.clone(), len))
            })
            .max_by_key(|(_, len)| *len);
        let Some((key, _)) = largest else { break };
        let Some(original) = detail.get(&key) else { break };
        out.insert(key, digest_value(original));
        text = Value::Object(out.clone()).to_string();
    }
    if text.len() > MAX_DETAIL_BYTES {
        let whole = Value::Object(detail.clone());
        text = serde_json::json!({ "digest": digest_value(&whole) }).to_string();
    }
    text
}

/// `event` within the record bounds: principal, action, resource and request id at most
/// [`MAX_FIELD_BYTES`] (a longer one is cut and ends in `…sha256:<hex of the whole>`), and
/// a detail of at most [`MAX_DETAIL_BYTES`] (a longer text is replaced by
/// `{"digest": {"bytes", "head", "sha256"}}` of the text). Events the server builds are
/// bounded with [`bounded_detail`] before; this is the guarantee for every other path.
pub fn bounded(mut event: AuditEvent) -> AuditEvent {
    for field in [&mut event.principal, &mut event.action, &mut event.resource, &mut event.request_id] {
        if field.len() > MAX_FIELD_BYTES {
            let sum = sha256_hex(field.as_bytes());
            let keep = cut(field, MAX_FIELD_BYTES - 64 - "…sha256:".len()).to_owned();
            *field = format!("{keep}…sha256:{sum}");
        }
    }
    if event.detail.len() > MAX_DETAIL_BYTES {
        let digest = digest_value(&Value::String(std::mem::take(&mut event.detail)));
        event.detail = serde_json::json!({ "digest": digest }).to_string();
    }
    event
}

/// Where a pruned chain begins: the last pruned record's sequence number and hash. Records are
/// pruned from the start, so `seq` is also how many were pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last pruned record's sequence number.
    pub seq: u64,
    /// Its hash: the `prev_hash` of the first record kept.
    pub hash: String,
    /// When the chain was last pruned, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// The answer of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    /// Records checked (those kept).
    pub records: u64,
    pub first_bad_seq: Option<u64>,
    /// Records pruned before the checkpoint the walk began at.
    pub pruned: u64,
    /// When the chain was last pruned, if it was.
    pub pruned_at_ms: Option<i64>,
}

/// Walks a chain in order and checks every link; `head` is the chain head the store keeps
/// (last sequence number and hash), which catches records cut off the end.
pub struct Verifier<'a> {
    chain: &'a str,
    first_seq: u64,
    expected_seq: u64,
    prev_hash: String,
    first_bad: Option<u64>,
    records: u64,
    pruned_at_ms: Option<i64>,
}

impl<'a> Verifier<'a> {
    /// A walk from the chain's first record.
    pub fn new(chain: &'a str) -> Self {
        Self {
            chain,
            first_seq: 1,
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
            first_bad: None,
            records: 0,
            pruned_at_ms: None,
        }
    }

    /// A walk of a pruned chain: from the record after `checkpoint`, which must link to the
    /// checkpoint's hash.
    pub fn after(chain: &'a str, checkpoint: &Checkpoint) -> Self {
        let first = checkpoint.seq.saturating_add(1);
        Self {
            chain,
            first_seq: first,
            expected_seq: first,
            prev_hash: checkpoint.hash.clone(),
            first_bad: None,
            records: 0,
            pruned_at_ms: Some(checkpoint.time_ms),
        }
    }

    /// Checks the next record of the chain.
    pub fn push(&mut self, record: &AuditRecord) {
        self.records += 1;
        if self.first_bad.is_none() {
            let good = record.chain == self.chain
                && record.seq == self.expected_seq
                && record.prev_hash == self.prev_hash
                && record.hash == record_hash(self.chain, record.seq, &record.event, &record.prev_hash);
            if !good {
                self.first_bad = Some(self.expected_seq);
            }
        }
        self.expected_seq += 1;
        self.prev_hash.clone_from(&record.hash);
    }

    /// Ends the walk against the chain head the store recorded.
    pub fn finish(mut self, head: Option<(u64, &str)>) -> Verification {
        if self.first_bad.is_none() {
            let (head_seq, head_hash) = head.unwrap_or((0, GENESIS_HASH));
            if head_seq != self.expected_seq - 1 || head_hash != self.prev_hash {
                // Records were removed from the end (or the head was forged): the first missing
                // or mismatching position is where the chain stops being trustworthy.
                self.first_bad = Some(self.expected_seq.min(head_seq.max(self.first_seq)));
            }
        }
        Verification {
            ok: self.first_bad.is_none(),
            records: self.records,
            first_bad_seq: self.first_bad,
            pruned: self.first_seq - 1,
            pruned_at_ms: self.pruned_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            time_ms: n,
            principal: "admin".into(),
            action: "namespace.create".into(),
            resource: format!("namespace:n{n}"),
            decision: "allow".into(),
            status: 201,
            request_id: format!("req_{n}"),
            detail: "{}".into(),
        }
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let head = out.last().map(|r| (r.seq, r.hash.as_str()));
            let rec = seal("acme", head, event(i));
            out.push(rec);
        }
        out
    }

    fn verify(records: &[AuditRecord], head: Option<(u64, &str)>) -> Verification {
        let mut v = Verifier::new("acme");
        records.iter().for_each(|r| v.push(r));
        v.finish(head)
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = c.last().map(|r| (r.seq, r.hash.as_str()));
        let all = Verification { ok: true, records: 5, first_bad_seq: None, pruned: 0, pruned_at_ms: None };
        assert_eq!(verify(&c, head), all);
        assert!(verify(&[], None).ok);
    }

    #[test]
    fn edited_record_is_caught_at_its_seq() {
        let mut c = chain(5);
        let head = c.last().map(|r| (r.seq, r.hash.clone()));
        c[2].event.decision = "deny".into();
        let v = verify(&c, head.as_ref().map(|(s, h)| (*s, h.as_str())));
        assert_eq!(v.first_bad_seq, Some(3));
        assert!(!v.ok);
    }

    #[test]
    fn removed_records_are_caught() {
        let c = chain(5);
        let head = c.last().map(|r| (r.seq, r.hash.clone()));
        let head = head.as_ref().map(|(s, h)| (*s, h.as_str()));
        let mut middle = c.clone();
        middle.remove(1);
        assert_eq!(verify(&middle, head).first_bad_seq, Some(2));
        assert_eq!(verify(&c[..4], head).first_bad_seq, Some(5));
    }

    #[test]
    fn a_pruned_chain_verifies_from_its_checkpoint() {
        let c = chain(8);
        let head = c.last().map(|r| (r.seq, r.hash.clone()));
        let head = head.as_ref().map(|(s, h)| (*s, h.as_str()));
        let checkpoint = Checkpoint { seq: 3, hash: c[2].hash.clone(), time_ms: 77 };
        let walk = |records: &[AuditRecord], cp: &Checkpoint| {
            let mut v = Verifier::after("acme", cp);
            records.iter().for_each(|r| v.push(r));
            v.finish(head)
        };
        let v = walk(&c[3..], &checkpoint);
        assert_eq!(v, Verification { ok: true, records: 5, first_bad_seq: None, pruned: 3, pruned_at_ms: Some(77) });
        // A kept record edited, or the first kept record removed, still fails.
        let mut edited = c[3..].to_vec();
        edited[1].event.principal = "key:other".into();
        assert_eq!(walk(&edited, &checkpoint).first_bad_seq, Some(5));
        assert_eq!(walk(&c[4..], &checkpoint).first_bad_seq, Some(4));
        // A checkpoint that does not link to the first kept record fails at once.
        let forged = Checkpoint { hash: c[1].hash.clone(), ..checkpoint };
        assert_eq!(walk(&c[3..], &forged).first_bad_seq, Some(4));
    }

    fn long(n: usize, c: char) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    #[test]
    fn large_arguments_become_digests_within_the_bound() {
        let argv: Vec<Value> = (0..16).map(|i| Value::String(long(64 * 1024, char::from(b'a' + i)))).collect();
        let mut detail = Map::new();
        detail.insert("argv".into(), Value::Array(argv.clone()));
        detail.insert("exit_code".into(), 0.into());
        let text = bounded_detail(&detail);
        assert!(text.len() <= MAX_DETAIL_BYTES, "{}", text.len());
        let back: Value = serde_json::from_str(&text).unwrap_or_default();
        for (i, arg) in argv.iter().enumerate() {
            let Value::String(s) = arg else { unreachable!() };
            assert_eq!(back["argv"][i]["sha256"], sha256_hex(s.as_bytes()));
            assert_eq!(back["argv"][i]["bytes"], 64 * 1024);
        }
        assert_eq!(back["exit_code"], 0);
        // Small details are kept as they are.
        let mut small = Map::new();
        small.insert("argv".into(), serde_json::json!(["ls", "-l"]));
        assert_eq!(bounded_detail(&small), r#"{"argv":["ls","-l"]}"#);
    }

    #[test]
    fn every_shape_of_detail_stays_within_the_bound() {
        let shapes: Vec<Value> = vec![
            Value::Array((0..10_000).map(|i| Value::String(format!("a{i}"))).collect()),
            Value::Array((0..32).map(|_| Value::String(long(250, 'x'))).collect()),
            Value::Array((0..32).map(|_| Value::String(long(300, 'é'))).collect()),
            serde_json::json!([[[[[[[["deep"]]]]]]]]),
            Value::String(long(1 << 20, 'z')),
        ];
        for shape in shapes {
            let mut detail = Map::new();
            detail.insert("v".into(), shape.clone());
            detail.insert("w".into(), shape);
            let text = bounded_detail(&detail);
            assert!(text.len() <= MAX_DETAIL_BYTES, "{}", text.len());
            assert!(serde_json::from_str::<Value>(&text).is_ok());
        }
        let mut many = Map::new();
        for i in 0..2000 {
            many.insert(format!("key{i}"), Value::from(i));
        }
        let text = bounded_detail(&many);
        assert!(text.len() <= MAX_DETAIL_BYTES && text.starts_with(r#"{"digest":"#), "{text}");
    }

    #[test]
    fn sealed_records_are_bounded_whatever_the_event() {
        let mut e = event(1);
        e.principal = format!("user:{}", long(10_000, 'u'));
        e.detail = long(100_000, 'd');
        let r = seal("acme", None, e);
        assert!(r.event.principal.len() <= MAX_FIELD_BYTES);
        assert!(r.event.principal.starts_with("user:uuu"));
        assert!(r.event.detail.len() <= MAX_DETAIL_BYTES);
        assert_eq!(r.hash, record_hash("acme", 1, &r.event, GENESIS_HASH));
    }
}
