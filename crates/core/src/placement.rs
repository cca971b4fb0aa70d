//! A namespace's placement: whether its sandboxes share the host's cores with every other
//! tenant (`shared`, under cgroup quotas) or run on cores and memory no other tenant's sandbox
//! may use (`dedicated`). What the kernel makes of a dedicated placement (an exclusive cpuset
//! partition and `memory.min` on cgroup v2; disjoint cpusets and admission on v1) is the
//! runtime's; this module holds the request, its bounds, and the admission arithmetic.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// At most this many cores per dedicated namespace (the bound of the `cpus` field).
pub const MAX_CPUS: u32 = 1024;

/// Where a namespace's sandboxes run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Placement {
    /// The host's shared cores (every core no dedicated namespace holds), under the quotas.
    #[default]
    Shared,
    /// Cores of its own and a memory reservation.
    Dedicated(Dedicated),
}

/// A dedicated placement as admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dedicated {
    /// Cores asked for.
    pub cpus: u32,
    /// Memory reserved for the namespace, in bytes.
    pub memory_bytes: u64,
    /// The host cores it holds (CPU numbers as the kernel counts them), `cpus` of them.
    pub cpuset: CpuSet,
}

impl Placement {
    /// The dedicated part, if any.
    pub fn dedicated(&self) -> Option<&Dedicated> {
        match self {
            Placement::Shared => None,
            Placement::Dedicated(d) => Some(d),
        }
    }
}

/// A set of CPU numbers, written in the kernel's list format (`0-2,5`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct CpuSet(BTreeSet<u32>);

impl CpuSet {
    pub fn new(cpus: impl IntoIterator<Item = u32>) -> CpuSet {
        CpuSet(cpus.into_iter().collect())
    }

    /// Parses the kernel's list format (`cpuset.cpus`, `/sys/devices/system/cpu/online`):
    /// comma-separated numbers and inclusive ranges; empty is the empty set. Numbers above
    /// 65,535 are refused (no kernel counts that many CPUs).
    pub fn parse(text: &str) -> Result<CpuSet, String> {
        let mut out = BTreeSet::new();
        for part in text.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let num = |s: &str| match s.parse::<u32>() {
                Ok(n) if n <= 65_535 => Ok(n),
                _ => Err(format!("{s:?} is not a CPU number")),
            };
            let (low, high) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if low > high {
                return Err(format!("{part:?} is an empty range"));
            }
            out.extend(low..=high);
        }
        Ok(CpuSet(out))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The CPUs of `self` that are not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.union(&other.0).copied().collect())
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl fmt::Display for CpuSet {
    /// The kernel's list format, ranges folded: `{0, 1, 2, 5}` is `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(low) = iter.next() {
            let mut high = low;
            while iter.peek() == Some(&(high + 1)) {
                high = iter.next().unwrap_or(high);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

impl From<CpuSet> for String {
    fn from(c: CpuSet) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for CpuSet {
    type Error = String;
    fn try_from(s: String) -> Result<CpuSet, String> {
        CpuSet::parse(&s)
    }
}

/// What the host can give dedicated namespaces: its cores and memory, less what the control
/// plane and the shared tenants keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapacity {
    /// The cores this server may use (its own CPU affinity at start).
    pub cpus: CpuSet,
    /// The host's memory, in bytes.
    pub memory_bytes: u64,
}

/// Cores always left to the control plane and the shared namespaces.
pub const SHARED_CPUS_KEPT: usize = 1;

impl HostCapacity {
    /// Memory never reserved: the greater of 1 GiB and a tenth of the host's, for the control
    /// plane, the page cache and the shared namespaces.
    pub fn memory_kept(&self) -> u64 {
        (self.memory_bytes / 10).max(1 << 30)
    }

    /// Admits a dedicated placement of `cpus` cores and `memory_bytes` for one namespace beside
    /// `others` (every other namespace's dedicated placement): the cores it gets, the
    /// highest-numbered free ones (so the control plane keeps the low cores, where the host's
    /// interrupts usually land), or `current` when it still fits. `Err` names what is missing: the cores or the memory, with what is left.
    pub fn admit<'a>(
        &self,
        cpus: u32,
        memory_bytes: u64,
        current: Option<&CpuSet>,
        others: impl IntoIterator<Item = &'a Dedicated>,
    ) -> Result<CpuSet, String> {
        let mut taken = CpuSet::default();
        let mut reserved = 0u64;
        for d in others {
            taken = taken.union(&d.cpuset);
            reserved = reserved.saturating_add(d.memory_bytes);
        }
        let free = self.cpus.difference(&taken);
        let usable = free.len().saturating_sub(SHARED_CPUS_KEPT);
        if cpus as usize > usable {
            return Err(format!(
                "placement.cpus: {cpus} dedicated cores asked, {usable} left (this host has {} for Bulkhead, \
                 {} dedicated to other namespaces, and keeps {SHARED_CPUS_KEPT} for the control plane and the \
                 shared namespaces)",
                self.cpus.len(),
                self.cpus.len() - free.len(),
            ));
        }
        let memory_left = self.memory_bytes.saturating_sub(self.memory_kept()).saturating_sub(reserved);
        if memory_bytes > memory_left {
            return Err(format!(
                "placement.memory_bytes: {memory_bytes} bytes asked, {memory_left} left to reserve on this host"
            ));
        }
        if let Some(current) = current {
            if current.len() == cpus as usize && current.is_subset(&free) {
                return Ok(current.clone());
            }
        }
        Ok(CpuSet::new(free.iter().rev().take(cpus as usize)))
    }

    /// What is wrong with standing dedicated placements (`(namespace, placement)`, as stored)
    /// on this host as it is now: cores this server may not run on (it was restarted with a
    /// narrower CPU affinity, or on a smaller host), a core held by two namespaces, fewer than
    /// [`SHARED_CPUS_KEPT`] cores left shared, reservations beyond the host's memory. One line
    /// each, naming the namespace and the figures; empty when all is well. The placements stay
    /// as they are (their sandboxes keep their cores): this is for the operator to act on.
    pub fn standing_conflicts<'a>(&self, dedicated: impl IntoIterator<Item = (&'a str, &'a Dedicated)>) -> Vec<String> {
        let mut out = Vec::new();
        let mut taken = CpuSet::default();
        let mut reserved = 0u64;
        for (ns, d) in dedicated {
            let outside = d.cpuset.difference(&self.cpus);
            if !outside.is_empty() {
                out.push(format!(
                    "namespace {ns} is dedicated cores {outside}, outside the cores this server may use ({})",
                    self.cpus
                ));
            }
            let twice = CpuSet::new(d.cpuset.iter().filter(|c| taken.contains(*c)));
            if !twice.is_empty() {
                out.push(format!("namespace {ns} is dedicated cores {twice}, which another namespace holds too"));
            }
            taken = taken.union(&d.cpuset);
            reserved = reserved.saturating_add(d.memory_bytes);
        }
        let shared = self.cpus.difference(&taken).len();
        if !taken.is_empty() && shared < SHARED_CPUS_KEPT {
            out.push(format!(
                "{shared} of this server's cores ({}) are left to the control plane and the shared namespaces;                  {SHARED_CPUS_KEPT} should be",
                self.cpus
            ));
        }
        let reservable = self.memory_bytes.saturating_sub(self.memory_kept());
        if reserved > reservable {
            out.push(format!(
                "{reserved} bytes of memory are reserved by dedicated namespaces, {reservable} reservable on this host"
            ));
        }
        out
    }

    /// The cores of the shared namespaces: the host's, less every dedicated namespace's.
    pub fn shared<'a>(&self, dedicated: impl IntoIterator<Item = &'a Dedicated>) -> CpuSet {
        dedicated.into_iter().fold(self.cpus.clone(), |left, d| left.difference(&d.cpuset))
    }
}

/// Checks a dedicated request's own bounds (before admission): 1 to [`MAX_CPUS`] cores, and a
/// reservation of at least 4 MiB and at most the namespace's memory quota.
pub fn check_request(cpus: u32, memory_bytes: u64, memory_quota: u64) -> Result<(), FieldError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(FieldError::new("placement.cpus", format!("between 1 and {MAX_CPUS}")));
    }
    if memory_bytes < 4 << 20 {
        return Err(FieldError::new("placement.memory_bytes", "at least 4 MiB"));
    }
    if memory_bytes > memory_quota {
        return Err(FieldError::new(
            "placement.memory_bytes",
            format!(
                "at most the namespace's memory quota ({memory_quota} bytes): a reservation above it is never used"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpus: &str) -> HostCapacity {
        HostCapacity { cpus: CpuSet::parse(cpus).unwrap(), memory_bytes: 24 << 30 }
    }

    fn dedicated(cpuset: &str, memory_bytes: u64) -> Dedicated {
        let cpuset = CpuSet::parse(cpuset).unwrap();
        Dedicated { cpus: cpuset.len() as u32, memory_bytes, cpuset }
    }

    #[test]
    fn list_format_round_trips_and_refuses_garbage() {
        for (text, shown) in [("0-2,5", "0-2,5"), ("5,0,1,2", "0-2,5"), ("", ""), (" 3 ", "3"), ("1-1", "1")] {
            assert_eq!(CpuSet::parse(text).unwrap().to_string(), shown, "{text:?}");
        }
        for bad in ["a", "1-", "-1", "3-1", "70000", "1,,x", "18446744073709551616"] {
            assert!(CpuSet::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn standing_placements_are_checked_against_the_host_as_it_is_now() {
        let one = dedicated("1", 1 << 30);
        assert!(host("0-1").standing_conflicts([("acme", &one)]).is_empty());
        assert!(host("0").standing_conflicts([]).is_empty());
        // Restarted under a narrower affinity: core 1 is outside, and nothing is left shared
        // only if the dedicated cores cover what is left.
        let narrow = host("0").standing_conflicts([("acme", &one)]);
        assert_eq!(narrow.len(), 1, "{narrow:?}");
        assert!(narrow[0].contains("namespace acme is dedicated cores 1, outside the cores this server may use (0)"));
        let all = host("1").standing_conflicts([("acme", &one)]);
        assert!(all.iter().any(|l| l.starts_with("0 of this server's cores (1)")), "{all:?}");
        // Two namespaces on one core (a store copied between hosts), and memory beyond the host.
        let also = dedicated("1-2", 30 << 30);
        let lines = host("0-3").standing_conflicts([("acme", &one), ("beta", &also)]);
        assert!(lines.iter().any(|l| l == "namespace beta is dedicated cores 1, which another namespace holds too"));
        assert!(lines.iter().any(|l| l.contains("reservable on this host")), "{lines:?}");
    }

    #[test]
    fn two_cores_dedicate_one_and_keep_one() {
        let h = host("0-1");
        assert_eq!(h.admit(1, 1 << 30, None, []).unwrap().to_string(), "1");
        let one = dedicated("1", 1 << 30);
        let err = h.admit(1, 1 << 30, None, [&one]).unwrap_err();
        assert!(err.starts_with("placement.cpus: 1 dedicated cores asked, 0 left"), "{err}");
        assert!(h.admit(2, 1 << 30, None, []).unwrap_err().starts_with("placement.cpus"));
        assert_eq!(h.shared([&one]).to_string(), "0");
        assert_eq!(h.shared([]).to_string(), "0-1");
    }

    #[test]
    fn memory_is_admitted_against_what_is_left() {
        let h = host("0-7");
        let big = dedicated("7", 20 << 30);
        let err = h.admit(1, 2 << 30, None, [&big]).unwrap_err();
        assert!(err.starts_with("placement.memory_bytes"), "{err}");
        assert!(h.admit(1, (24 << 30) - h.memory_kept() - (20 << 30), None, [&big]).is_ok());
    }

    #[test]
    fn a_change_keeps_its_cores_when_they_fit() {
        let h = host("0-7");
        let other = dedicated("7", 1 << 30);
        let current = CpuSet::parse("3-4").unwrap();
        assert_eq!(h.admit(2, 1 << 30, Some(&current), [&other]).unwrap(), current);
        // Growing takes fresh cores from the top.
        assert_eq!(h.admit(3, 1 << 30, Some(&current), [&other]).unwrap().to_string(), "4-6");
    }

    #[test]
    fn the_wire_form_is_tagged_by_mode() {
        let p = Placement::Dedicated(dedicated("2-3", 1 << 30));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"mode":"dedicated","cpus":2,"memory_bytes":1073741824,"cpuset":"2-3"}"#);
        assert_eq!(serde_json::from_str::<Placement>(&json).unwrap(), p);
        assert_eq!(serde_json::to_string(&Placement::Shared).unwrap(), r#"{"mode":"shared"}"#);
    }

    #[test]
    fn request_bounds() {
        assert!(check_request(1, 1 << 30, 1 << 30).is_ok());
        for (cpus, mem, quota, field) in [
            (0, 1 << 30, 1 << 30, "placement.cpus"),
            (MAX_CPUS + 1, 1 << 30, 1 << 30, "placement.cpus"),
            (1, 1, 1 << 30, "placement.memory_bytes"),
            (1, 2 << 30, 1 << 30, "placement.memory_bytes"),
        ] {
            assert_eq!(check_request(cpus, mem, quota).unwrap_err().field, field);
        }
    }
}
