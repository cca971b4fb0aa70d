//! The tamper-evident audit chain. Each namespace has its own chain and the platform has one.
//! A record's hash is SHA-256 over its canonical JSON form, which includes the previous record's
//! hash, so changing, removing or reordering any record breaks every hash after it. The hash is
//! unkeyed on purpose: a tenant can verify an exported chain without any secret of the server.

use serde::Serialize;
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

/// Builds the record that follows a chain whose head is `(last_seq, last_hash)`.
pub fn seal(chain: &str, head: Option<(u64, &str)>, event: AuditEvent) -> AuditRecord {
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash.to_owned()),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let hash = record_hash(chain, seq, &event, &prev_hash);
    AuditRecord { chain: chain.to_owned(), seq, event, prev_hash, hash }
}

/// The answer of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub ok: bool,
    pub records: u64,
    pub first_bad_seq: Option<u64>,
}

/// Walks a chain in order and checks every link; `head` is the chain head the store keeps
/// (last sequence number and hash), which catches records cut off the end.
pub struct Verifier<'a> {
    chain: &'a str,
    expected_seq: u64,
    prev_hash: String,
    first_bad: Option<u64>,
    records: u64,
}

impl<'a> Verifier<'a> {
    pub fn new(chain: &'a str) -> Self {
        Self { chain, expected_seq: 1, prev_hash: GENESIS_HASH.to_owned(), first_bad: None, records: 0 }
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
                self.first_bad = Some(self.expected_seq.min(head_seq.max(1)));
            }
        }
        Verification { ok: self.first_bad.is_none(), records: self.records, first_bad_seq: self.first_bad }
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
        assert_eq!(verify(&c, head), Verification { ok: true, records: 5, first_bad_seq: None });
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
}
