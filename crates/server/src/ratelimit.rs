//! Per-namespace rate limits, so that one tenant's flood cannot starve another's API calls:
//!
//! - **Requests** ([`NamespaceLimits::charge`]): a token bucket per namespace whose rate is the
//!   namespace's `api_requests_per_second` and whose burst is one second's worth. Every
//!   authenticated request of a namespace's principal takes one token once it is authenticated
//!   and before its handler does any work, whatever the request is answered afterwards (a 403
//!   or a 404 cost the server its work too, and a request on another tenant's path is charged to
//!   the caller's own namespace, never to the path's). The platform admin is never charged nor
//!   refused by a tenant's bucket, so an operator can always change or delete a flooding
//!   namespace. An empty bucket is `429 rate_limited` with `Retry-After` (whole seconds, at
//!   least 1), answered after [`REFUSAL_PACE`].
//! - **Commands and creates** ([`NamespaceLimits::acquire`]): execs (one-shot and streamed) and
//!   background processes (terminals among them) running in the namespace at once are at most
//!   `max_concurrent_execs`; sandbox creates in flight at once are at most the same number,
//!   counted apart. One past it is `429 rate_limited`, never queued. A [`Slot`] is released when
//!   dropped: when an exec's answer (or stream) ends, or when a background process exits.
//!
//! The state is this server process's: one entry per namespace that has made a request or holds
//! a slot, dropped with the namespace ([`NamespaceLimits::forget`]). A bucket is a short
//! `std::sync::Mutex` section with no await inside; slots are atomic counters; the map's lock is
//! a read lock on every path but a namespace's first request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::limits::RateLimited;

/// Entries kept at most; past it, those that hold no slot are dropped (their buckets start
/// full again, which only ever lets a namespace through more than its rate once).
const MAX_ENTRIES: usize = 100_000;

/// How long a request refused by its namespace's bucket waits before its 429 leaves. A refusal
/// costs the server little, but a client that ignores `Retry-After` and sends again as soon as it
/// is answered would still keep a core busy with refusals; paced, each of its connections gets
/// at most 20 refusals a second, and the wait holds nothing but the connection (no thread, no
/// lock, no store connection).
pub const REFUSAL_PACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Seconds a client refused a command or a create slot is told to wait.
const SLOT_RETRY_AFTER_SECONDS: u64 = 1;

/// What a [`Slot`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A command running: an exec, a streamed exec, a background or terminal process.
    Exec,
    /// A sandbox create in flight.
    Create,
}

impl SlotKind {
    /// The limit's name in metrics: `execs` or `creates` (beside `requests`, the bucket's).
    pub fn label(self) -> &'static str {
        match self {
            SlotKind::Exec => "execs",
            SlotKind::Create => "creates",
        }
    }
}

/// A token bucket: `tokens` as of `at`, refilled at `rate` a second up to `rate`.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now` with the namespace's current `rate`; on refusal, the whole
    /// seconds until one is there (at least 1).
    fn take(&mut self, rate: u64, now: Instant) -> Result<(), u64> {
        let rate = rate.max(1);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let capacity = rate as f64;
        self.tokens = (self.tokens + elapsed * self.rate.max(1) as f64).min(capacity);
        if rate > self.rate {
            // A raised rate (the admin's PATCH) holds at once: a full second's burst of it.
            self.tokens = capacity;
        }
        self.rate = rate;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / capacity;
        Err((wait.ceil() as u64).max(1))
    }
}

#[derive(Debug)]
struct Entry {
    bucket: Mutex<Bucket>,
    execs: AtomicU64,
    creates: AtomicU64,
}

impl Entry {
    fn counter(&self, kind: SlotKind) -> &AtomicU64 {
        match kind {
            SlotKind::Exec => &self.execs,
            SlotKind::Create => &self.creates,
        }
    }
}

/// The rate limits of every namespace, as this server process counts them.
#[derive(Debug, Default)]
pub struct NamespaceLimits {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
}

/// A command or a create of a namespace in flight; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    entry: Arc<Entry>,
    kind: SlotKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.entry.counter(self.kind).fetch_sub(1, Ordering::SeqCst);
    }
}

impl NamespaceLimits {
    fn entry(&self, ns: &str, rate: u64) -> Arc<Entry> {
        if let Some(e) = self.entries.read().unwrap_or_else(|e| e.into_inner()).get(ns) {
            return e.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(ns) {
            entries.retain(|_, e| Arc::strong_count(e) > 1);
        }
        entries
            .entry(ns.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    bucket: Mutex::new(Bucket { rate: rate.max(1), tokens: rate.max(1) as f64, at: Instant::now() }),
                    execs: AtomicU64::new(0),
                    creates: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Charges one request to namespace `ns`, whose `api_requests_per_second` is `rate`.
    pub fn charge(&self, ns: &str, rate: u64) -> Result<(), RateLimited> {
        let entry = self.entry(ns, rate);
        let taken = entry.bucket.lock().unwrap_or_else(|e| e.into_inner()).take(rate, Instant::now());
        taken.map_err(|wait| RateLimited {
            message: format!("namespace {ns} is over its api_requests_per_second of {rate}; retry after {wait} s"),
            retry_after_seconds: wait,
        })
    }

    /// Takes a place for one command or create of namespace `ns`, of which at most `max` may be in
    /// flight at once.
    pub fn acquire(&self, ns: &str, kind: SlotKind, max: u64) -> Result<Slot, RateLimited> {
        let entry = self.entry(ns, DEFAULT_RATE);
        let taken =
            entry.counter(kind).fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
        match taken {
            Ok(_) => Ok(Slot { entry, kind }),
            Err(n) => {
                let what = match kind {
                    SlotKind::Exec => "commands running",
                    SlotKind::Create => "sandbox creates in flight",
                };
                Err(RateLimited {
                    message: format!(
                        "namespace {ns} has {n} {what}, the most its max_concurrent_execs allows; retry once one ends"
                    ),
                    retry_after_seconds: SLOT_RETRY_AFTER_SECONDS,
                })
            }
        }
    }

    /// Slots of `kind` that namespace `ns` holds now.
    pub fn in_flight(&self, ns: &str, kind: SlotKind) -> u64 {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(ns).map(|e| e.counter(kind).load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// Forgets namespace `ns` (it is deleted). Slots still held keep their own entry until they
    /// end; a namespace created again under the name starts afresh.
    pub fn forget(&self, ns: &str) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).remove(ns);
    }

    /// Namespaces with an entry now.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rate an entry made by a slot starts with, before its first request tells the real one.
const DEFAULT_RATE: u64 = bulkhead_core::quota::DEFAULT_API_REQUESTS_PER_SECOND;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_a_seconds_burst_then_refuses_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket { rate: 5, tokens: 5.0, at: t0 };
        for _ in 0..5 {
            b.take(5, t0).unwrap();
        }
        assert_eq!(b.take(5, t0), Err(1));
        // A fifth of a second gives one token back.
        b.take(5, t0 + Duration::from_millis(201)).unwrap();
        assert!(b.take(5, t0 + Duration::from_millis(201)).is_err());
        // Never more than one second's worth.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            b.take(5, later).unwrap();
        }
        assert!(b.take(5, later).is_err());
    }

    #[test]
    fn a_raised_rate_holds_at_once_and_a_lowered_one_caps_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket { rate: 1, tokens: 1.0, at: t0 };
        b.take(1, t0).unwrap();
        assert!(b.take(1, t0).is_err());
        for _ in 0..100 {
            b.take(100, t0).unwrap();
        }
        assert!(b.take(100, t0).is_err());
        let later = t0 + Duration::from_secs(5);
        b.take(2, later).unwrap();
        b.take(2, later).unwrap();
        assert!(b.take(2, later).is_err());
    }

    #[test]
    fn namespaces_have_their_own_buckets_and_the_retry_is_whole_seconds() {
        let limits = NamespaceLimits::default();
        limits.charge("a", 2).unwrap();
        limits.charge("a", 2).unwrap();
        let refused = limits.charge("a", 2).unwrap_err();
        assert!(refused.retry_after_seconds >= 1);
        assert!(refused.message.contains("api_requests_per_second"), "{}", refused.message);
        limits.charge("b", 2).unwrap();
        limits.forget("a");
        limits.charge("a", 2).unwrap();
        assert_eq!(limits.len(), 2);
    }

    #[test]
    fn slots_are_bounded_counted_apart_and_freed_on_drop() {
        let limits = NamespaceLimits::default();
        let one = limits.acquire("a", SlotKind::Exec, 2).unwrap();
        let _two = limits.acquire("a", SlotKind::Exec, 2).unwrap();
        let refused = limits.acquire("a", SlotKind::Exec, 2).unwrap_err();
        assert!(refused.message.contains("max_concurrent_execs"), "{}", refused.message);
        // Creates and other namespaces are counted apart.
        let _create = limits.acquire("a", SlotKind::Create, 2).unwrap();
        let _other = limits.acquire("b", SlotKind::Exec, 2).unwrap();
        assert_eq!(limits.in_flight("a", SlotKind::Exec), 2);
        drop(one);
        assert_eq!(limits.in_flight("a", SlotKind::Exec), 1);
        let _three = limits.acquire("a", SlotKind::Exec, 2).unwrap();
        // A raised bound holds at once.
        let _four = limits.acquire("a", SlotKind::Exec, 3).unwrap();
    }

    #[test]
    fn a_deleted_namespace_keeps_no_entry_once_its_slots_end() {
        let limits = NamespaceLimits::default();
        let slot = limits.acquire("a", SlotKind::Exec, 1).unwrap();
        limits.forget("a");
        assert!(limits.is_empty());
        // A namespace made again under the name starts afresh, beside the old slot.
        let _new = limits.acquire("a", SlotKind::Exec, 1).unwrap();
        drop(slot);
        assert_eq!(limits.in_flight("a", SlotKind::Exec), 1);
    }
}
