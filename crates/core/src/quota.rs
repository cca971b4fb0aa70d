//! Namespace quotas and their bounds. Every bound is far above any real host and far below
//! `i64::MAX`, so a quota always fits the store's integer columns and a sum of a thousand quotas
//! still does.

use crate::validate::FieldError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const TIB: u64 = 1024 * 1024 * MIB;
const PIB: u64 = 1024 * TIB;

/// One quota's name and inclusive bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub field: &'static str,
    pub min: u64,
    pub max: u64,
}

/// A namespace may use at most 1024 cores (in thousandths of a core).
pub const CPU_MILLIS: Bound = Bound { field: "cpu_millis", min: 1, max: 1024 * 1000 };
/// Below 4 MiB no sandbox can start; above 64 TiB is no host that exists.
pub const MEMORY_BYTES: Bound = Bound { field: "memory_bytes", min: 4 * MIB, max: 64 * TIB };
/// Zero is meaningful: a namespace that may hold no filesystem.
pub const DISK_BYTES: Bound = Bound { field: "disk_bytes", min: 0, max: 4 * PIB };
/// Zero is meaningful: a namespace whose compute is suspended.
pub const MAX_SANDBOXES: Bound = Bound { field: "max_sandboxes", min: 0, max: 100_000 };
/// The sandbox supervisor and one command need at least a few processes; Linux's `pid_max`
/// ceiling is 2^22.
pub const PIDS_PER_SANDBOX: Bound = Bound { field: "pids_per_sandbox", min: 4, max: 4_194_304 };
/// One second to one year.
pub const MAX_SANDBOX_TTL_SECONDS: Bound = Bound { field: "max_sandbox_ttl_seconds", min: 1, max: 366 * 24 * 3600 };
/// API requests per second of all the namespace's principals together (the burst is one
/// second's worth). Zero would lock the tenant out of its own namespace, so at least one; a
/// million is more than one server answers.
pub const API_REQUESTS_PER_SECOND: Bound = Bound { field: "api_requests_per_second", min: 1, max: 1_000_000 };
/// Commands running at once in the namespace (execs, streamed execs, background and terminal
/// processes), and, counted apart, sandbox creates in flight at once. At least one, or the
/// namespace could run nothing; 100,000 is far past what one host holds.
pub const MAX_CONCURRENT_EXECS: Bound = Bound { field: "max_concurrent_execs", min: 1, max: 100_000 };

/// `api_requests_per_second` of a namespace created without it.
pub const DEFAULT_API_REQUESTS_PER_SECOND: u64 = 1000;
/// `max_concurrent_execs` of a namespace created without it.
pub const DEFAULT_MAX_CONCURRENT_EXECS: u64 = 32;

/// The quotas of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub max_sandboxes: u64,
    pub pids_per_sandbox: u64,
    pub max_sandbox_ttl_seconds: u64,
    pub api_requests_per_second: u64,
    pub max_concurrent_execs: u64,
}

/// A partial update of quotas; `None` leaves a quota as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaPatch {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub max_sandboxes: Option<u64>,
    pub pids_per_sandbox: Option<u64>,
    pub max_sandbox_ttl_seconds: Option<u64>,
    pub api_requests_per_second: Option<u64>,
    pub max_concurrent_execs: Option<u64>,
}

fn check(bound: Bound, value: u64) -> Result<(), FieldError> {
    if value < bound.min || value > bound.max {
        return Err(FieldError::new(
            format!("quotas.{}", bound.field),
            format!("must be between {} and {}, got {value}", bound.min, bound.max),
        ));
    }
    Ok(())
}

impl Quotas {
    /// Quotas a new namespace gets from the CLI when none are given: one core, 1 GiB of memory,
    /// 10 GiB of disk, ten sandboxes of 256 processes, living at most a day; 1,000 API requests
    /// a second and 32 commands at once.
    pub const DEFAULT: Quotas = Quotas {
        cpu_millis: 1000,
        memory_bytes: 1024 * MIB,
        disk_bytes: 10 * 1024 * MIB,
        max_sandboxes: 10,
        pids_per_sandbox: 256,
        max_sandbox_ttl_seconds: 24 * 3600,
        api_requests_per_second: DEFAULT_API_REQUESTS_PER_SECOND,
        max_concurrent_execs: DEFAULT_MAX_CONCURRENT_EXECS,
    };

    /// Checks every quota against its bound; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), FieldError> {
        check(CPU_MILLIS, self.cpu_millis)?;
        check(MEMORY_BYTES, self.memory_bytes)?;
        check(DISK_BYTES, self.disk_bytes)?;
        check(MAX_SANDBOXES, self.max_sandboxes)?;
        check(PIDS_PER_SANDBOX, self.pids_per_sandbox)?;
        check(MAX_SANDBOX_TTL_SECONDS, self.max_sandbox_ttl_seconds)?;
        check(API_REQUESTS_PER_SECOND, self.api_requests_per_second)?;
        check(MAX_CONCURRENT_EXECS, self.max_concurrent_execs)
    }

    /// These quotas with `patch` applied, validated.
    pub fn apply(&self, patch: &QuotaPatch) -> Result<Quotas, FieldError> {
        let q = Quotas {
            cpu_millis: patch.cpu_millis.unwrap_or(self.cpu_millis),
            memory_bytes: patch.memory_bytes.unwrap_or(self.memory_bytes),
            disk_bytes: patch.disk_bytes.unwrap_or(self.disk_bytes),
            max_sandboxes: patch.max_sandboxes.unwrap_or(self.max_sandboxes),
            pids_per_sandbox: patch.pids_per_sandbox.unwrap_or(self.pids_per_sandbox),
            max_sandbox_ttl_seconds: patch.max_sandbox_ttl_seconds.unwrap_or(self.max_sandbox_ttl_seconds),
            api_requests_per_second: patch.api_requests_per_second.unwrap_or(self.api_requests_per_second),
            max_concurrent_execs: patch.max_concurrent_execs.unwrap_or(self.max_concurrent_execs),
        };
        q.validate()?;
        Ok(q)
    }
}

impl QuotaPatch {
    pub fn is_empty(&self) -> bool {
        *self == QuotaPatch::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Quotas::DEFAULT.validate().unwrap();
    }

    #[test]
    fn out_of_range_names_the_field() {
        let q = Quotas { memory_bytes: 1 << 63, ..Quotas::DEFAULT };
        let e = q.validate().unwrap_err();
        assert_eq!(e.field, "quotas.memory_bytes");
        let q = Quotas { cpu_millis: 0, ..Quotas::DEFAULT };
        assert_eq!(q.validate().unwrap_err().field, "quotas.cpu_millis");
        let q = Quotas { pids_per_sandbox: 0, ..Quotas::DEFAULT };
        assert_eq!(q.validate().unwrap_err().field, "quotas.pids_per_sandbox");
    }

    #[test]
    fn bounds_fit_the_store() {
        for b in [
            CPU_MILLIS,
            MEMORY_BYTES,
            DISK_BYTES,
            MAX_SANDBOXES,
            PIDS_PER_SANDBOX,
            MAX_SANDBOX_TTL_SECONDS,
            API_REQUESTS_PER_SECOND,
            MAX_CONCURRENT_EXECS,
        ] {
            assert!(b.max <= (i64::MAX as u64) / 1024, "{}", b.field);
        }
    }

    #[test]
    fn patch_applies_and_validates() {
        let p = QuotaPatch { max_sandboxes: Some(3), ..Default::default() };
        assert_eq!(Quotas::DEFAULT.apply(&p).unwrap().max_sandboxes, 3);
        let p = QuotaPatch { disk_bytes: Some(u64::MAX), ..Default::default() };
        assert!(Quotas::DEFAULT.apply(&p).is_err());
    }

    #[test]
    fn rate_limits_refuse_zero_and_huge() {
        for (patch, field) in [
            (QuotaPatch { api_requests_per_second: Some(0), ..Default::default() }, "quotas.api_requests_per_second"),
            (
                QuotaPatch { api_requests_per_second: Some(u64::MAX), ..Default::default() },
                "quotas.api_requests_per_second",
            ),
            (QuotaPatch { max_concurrent_execs: Some(0), ..Default::default() }, "quotas.max_concurrent_execs"),
            (QuotaPatch { max_concurrent_execs: Some(1 << 40), ..Default::default() }, "quotas.max_concurrent_execs"),
        ] {
            assert_eq!(Quotas::DEFAULT.apply(&patch).unwrap_err().field, field);
        }
        let p = QuotaPatch { api_requests_per_second: Some(5), max_concurrent_execs: Some(2), ..Default::default() };
        let q = Quotas::DEFAULT.apply(&p).unwrap();
        assert_eq!((q.api_requests_per_second, q.max_concurrent_execs), (5, 2));
    }
}
