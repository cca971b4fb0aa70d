//! Network egress rules (PRODUCT.md, *Network egress*): the entries of a namespace's ceiling and
//! of a sandbox's `egress.allow`, how a destination matches them, whether a sandbox's entries stay
//! within its namespace's ceiling, brokered credentials, and the addresses no policy opens.
//!
//! An entry is one of
//! - a domain, `pypi.org`: that name exactly;
//! - a wildcard domain, `*.pythonhosted.org`: every name below it, at any depth, not the name
//!   itself;
//! - a CIDR, `203.0.113.0/24`, or a bare address (`/32`, `/128`): connections to an address in
//!   it; an IPv6 range with a port is written in brackets, `[2001:db8::/32]:443`;
//!
//! each with an optional `:port` or `:low-high` (1 to 65535, both ends included); no port is every
//! port. Names are compared in lower case, as the gateway reports them.
//!
//! A DNS query carries a name and no port: it matches a domain or wildcard entry of that name
//! whatever the entry's port (the port is judged when the sandbox connects). A CIDR entry never
//! matches a name alone: it allows connections by address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::outbound::{self, canonical_ip, Cidr, Special};

/// Most entries in one list (a ceiling's or a sandbox's `allow`).
pub const MAX_ENTRIES: usize = 256;
/// Longest entry, in bytes.
pub const MAX_ENTRY_BYTES: usize = 300;
/// Most brokered credentials of one sandbox.
pub const MAX_CREDENTIALS: usize = 32;
/// Longest credential header format, in bytes.
pub const MAX_FORMAT_BYTES: usize = 1024;

/// What an entry's host part names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One DNS name, lower case, no trailing dot.
    Domain(String),
    /// Every name strictly below this one (`*.` stripped).
    Wildcard(String),
    /// A range of addresses.
    Cidr(Cidr),
}

/// One egress entry: a host pattern and an optional inclusive port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub host: HostPattern,
    /// `None`: every port.
    pub ports: Option<(u16, u16)>,
}

/// Why an entry does not parse; its message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?}: {reason}")]
pub struct EntryError {
    /// The entry as given (cut to [`MAX_ENTRY_BYTES`]).
    pub entry: String,
    pub reason: String,
}

impl EntryError {
    fn new(entry: &str, reason: impl Into<String>) -> EntryError {
        let mut end = entry.len().min(MAX_ENTRY_BYTES);
        while !entry.is_char_boundary(end) {
            end -= 1;
        }
        EntryError { entry: entry[..end].to_owned(), reason: reason.into() }
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p > 0)
}

fn parse_ports(entry: &str, s: &str) -> Result<(u16, u16), EntryError> {
    let bad = || EntryError::new(entry, format!("port {s:?} is not a port (1-65535) or a range low-high"));
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (parse_port(lo).ok_or_else(bad)?, parse_port(hi).ok_or_else(bad)?),
        None => {
            let p = parse_port(s).ok_or_else(bad)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(EntryError::new(entry, format!("port range {s:?} ends before it starts")));
    }
    Ok((lo, hi))
}

fn parse_cidr(entry: &str, s: &str) -> Result<Cidr, EntryError> {
    s.parse::<Cidr>().map_err(|e| EntryError::new(entry, e.to_string()))
}

/// A DNS name as an entry or a credential's host may give it: lower case, no trailing dot.
fn parse_domain(entry: &str, s: &str) -> Result<String, EntryError> {
    match outbound::parse_host(s) {
        Ok(outbound::Host::Name(n)) => Ok(n),
        Ok(outbound::Host::Ip(_)) => Err(EntryError::new(entry, "an address is not a domain")),
        Err(_) => Err(EntryError::new(
            entry,
            "not a domain, *.domain or CIDR (domains are lower-case labels of a-z, 0-9 and -, with no trailing dot)",
        )),
    }
}

impl FromStr for Entry {
    type Err = EntryError;

    fn from_str(s: &str) -> Result<Entry, EntryError> {
        if s.is_empty() {
            return Err(EntryError::new(s, "an entry may not be empty"));
        }
        if s.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::new(s, format!("longer than {MAX_ENTRY_BYTES} bytes")));
        }
        // `[v6-cidr]` or `[v6-cidr]:ports`.
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) =
                rest.split_once(']').ok_or_else(|| EntryError::new(s, "a bracketed IPv6 range needs its closing ]"))?;
            let cidr = parse_cidr(s, inner)?;
            if cidr.addr().is_ipv4() {
                return Err(EntryError::new(s, "brackets are for IPv6 ranges only"));
            }
            let ports = match after {
                "" => None,
                p => Some(parse_ports(
                    s,
                    p.strip_prefix(':').ok_or_else(|| EntryError::new(s, "expected :port after ]"))?,
                )?),
            };
            return Ok(Entry { host: HostPattern::Cidr(cidr), ports });
        }
        // More than one colon and no brackets: an IPv6 range with no port.
        if s.matches(':').count() > 1 {
            return Ok(Entry { host: HostPattern::Cidr(parse_cidr(s, s)?), ports: None });
        }
        let (host, ports) = match s.split_once(':') {
            Some((h, p)) => (h, Some(parse_ports(s, p)?)),
            None => (s, None),
        };
        let host = if host.contains('/') || (!host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        {
            HostPattern::Cidr(parse_cidr(s, host)?)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Wildcard(parse_domain(s, suffix)?)
        } else if host.contains('*') {
            return Err(EntryError::new(s, "a wildcard is written *.domain, and only at the start"));
        } else {
            HostPattern::Domain(parse_domain(s, host)?)
        };
        Ok(Entry { host, ports })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = matches!(&self.host, HostPattern::Cidr(c) if c.addr().is_ipv6()) && self.ports.is_some();
        match &self.host {
            HostPattern::Domain(d) => f.write_str(d)?,
            HostPattern::Wildcard(w) => write!(f, "*.{w}")?,
            HostPattern::Cidr(c) if bracket => write!(f, "[{c}]")?,
            HostPattern::Cidr(c) => write!(f, "{c}")?,
        }
        match self.ports {
            None => Ok(()),
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}"),
            Some((lo, hi)) => write!(f, ":{lo}-{hi}"),
        }
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a sandbox tries to go, as the gateway found it (see the runtime's `ConnectRequest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest<'a> {
    /// The DNS name, lower case, when known.
    pub name: Option<&'a str>,
    /// The address really reached; `None` for a DNS query.
    pub addr: Option<IpAddr>,
    /// `None` for a DNS query: any port of the name.
    pub port: Option<u16>,
}

impl Dest<'_> {
    /// How the destination is named in refusals and audit records: its name when known, else its
    /// address. (The policies are asked about the name and the address each.)
    pub fn host(&self) -> String {
        match (self.name, self.addr) {
            (Some(n), _) => n.to_owned(),
            (None, Some(a)) => canonical_ip(a).to_string(),
            (None, None) => String::new(),
        }
    }
}

fn name_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

impl Entry {
    /// True when `dest` matches this entry (see the module's doc).
    pub fn matches(&self, dest: &Dest<'_>) -> bool {
        let port_ok = match (self.ports, dest.port) {
            (None, _) | (_, None) => true,
            (Some((lo, hi)), Some(p)) => lo <= p && p <= hi,
        };
        if !port_ok {
            return false;
        }
        match &self.host {
            HostPattern::Domain(d) => dest.name == Some(d.as_str()),
            HostPattern::Wildcard(w) => dest.name.is_some_and(|n| name_below(n, w)),
            HostPattern::Cidr(c) => dest.addr.is_some_and(|a| c.contains(a) || c.contains(canonical_ip(a))),
        }
    }

    /// True when everything this entry allows, `other` allows too.
    pub fn within(&self, other: &Entry) -> bool {
        let ports_ok = match (other.ports, self.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((olo, ohi)), Some((lo, hi))) => olo <= lo && hi <= ohi,
        };
        ports_ok
            && match (&self.host, &other.host) {
                (HostPattern::Domain(d), HostPattern::Domain(o)) => d == o,
                (HostPattern::Domain(d), HostPattern::Wildcard(w)) => name_below(d, w),
                (HostPattern::Wildcard(a), HostPattern::Wildcard(w)) => a == w || name_below(a, w),
                (HostPattern::Cidr(a), HostPattern::Cidr(c)) => c.covers(a),
                _ => false,
            }
    }

    /// True when this is a CIDR entry inside a private, shared (CGNAT) or unique-local range and
    /// containing `addr`: the admin naming such a range in a ceiling opens it. A wider range
    /// (`0.0.0.0/0`) names no private range and opens nothing.
    fn names_private(&self, addr: IpAddr) -> bool {
        let HostPattern::Cidr(c) = &self.host else { return false };
        let addr = canonical_ip(addr);
        let min_prefix = match outbound::special(c.addr()) {
            Some(Special::Private) => 8,
            Some(Special::Shared) => 10,
            Some(Special::UniqueLocal) => 7,
            _ => return false,
        };
        c.prefix() >= min_prefix && c.contains(addr) && outbound::special(addr) == outbound::special(c.addr())
    }
}

/// The first of `entries` that no entry of `ceiling` covers: what a create asking beyond its
/// namespace's ceiling is refused for.
pub fn first_beyond<'a>(entries: &'a [Entry], ceiling: &[Entry]) -> Option<&'a Entry> {
    entries.iter().find(|e| !ceiling.iter().any(|c| e.within(c)))
}

/// Parses a list of entries; the error names the first bad one and its position
/// (`allow[3]: "x y": ...`), under `field`.
pub fn parse_list(field: &str, entries: &[String]) -> Result<Vec<Entry>, crate::FieldError> {
    if entries.len() > MAX_ENTRIES {
        return Err(crate::FieldError::new(field, format!("at most {MAX_ENTRIES} entries")));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.parse::<Entry>().map_err(|err| crate::FieldError::new(format!("{field}[{i}]"), err.to_string()))
        })
        .collect()
}

/// A namespace's egress ceiling, set by the platform admin. The default is empty: no egress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ceiling {
    #[serde(default)]
    pub allow: Vec<Entry>,
    /// Shared by every connection of every sandbox of the namespace; `None` for no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_bytes_per_second: Option<u64>,
}

/// A header the gateway adds to a host's requests on a sandbox's behalf, from a secret of the
/// namespace (PRODUCT.md, *Brokered credentials*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// A DNS name (no wildcard, no port); it must be within the sandbox's `allow`.
    pub host: String,
    /// The name of a secret of the namespace.
    pub secret: String,
    /// The header's name, such as `Authorization`.
    pub header: String,
    /// The header's value with `{secret}` where the secret goes, such as `Bearer {secret}`.
    pub format: String,
}

impl Credential {
    /// Checks the shape of each field (not that the secret exists): `field` names the
    /// credential in errors.
    pub fn check(&self, field: &str) -> Result<(), crate::FieldError> {
        let err = |sub: &str, why: String| crate::FieldError::new(format!("{field}.{sub}"), why);
        parse_domain(&self.host, &self.host).map_err(|e| err("host", e.to_string()))?;
        crate::validate::name(&format!("{field}.secret"), &self.secret)?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if self.header.is_empty() || self.header.len() > 128 || !self.header.bytes().all(token) {
            return Err(err("header", format!("{:?} is not an HTTP header name", self.header)));
        }
        if ["host", "content-length", "transfer-encoding", "connection"]
            .contains(&self.header.to_ascii_lowercase().as_str())
        {
            return Err(err("header", format!("{:?} may not be brokered", self.header)));
        }
        if self.format.len() > MAX_FORMAT_BYTES || !self.format.contains("{secret}") {
            return Err(err("format", format!("must contain {{secret}}, at most {MAX_FORMAT_BYTES} bytes")));
        }
        if self.format.bytes().any(|b| b.is_ascii_control()) {
            return Err(err("format", "may not contain control characters".into()));
        }
        Ok(())
    }

    /// The header's value for `secret`: the format with `{secret}` replaced.
    pub fn header_value(&self, secret: &str) -> String {
        self.format.replace("{secret}", secret)
    }
}

/// What a sandbox asked for at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxEgress {
    #[serde(default)]
    pub allow: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
}

/// Why a destination is refused before any policy is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Never reachable, whatever a policy says: loopback, link-local, metadata, reserved,
    /// multicast, or a private/shared/unique-local address the ceiling does not name.
    AlwaysDenied(Special),
    /// No entry of the sandbox's `allow` matches.
    NotAllowed,
    /// No entry of the namespace's current ceiling matches.
    Ceiling,
}

impl Refusal {
    /// The rule's name, as `Verdict::Deny.policies` and explain report it: `always-denied`,
    /// `allow` or `ceiling`.
    pub fn rule(self) -> &'static str {
        match self {
            Refusal::AlwaysDenied(_) => "always-denied",
            Refusal::NotAllowed => "allow",
            Refusal::Ceiling => "ceiling",
        }
    }

    /// Why, in words.
    pub fn reason(self, dest: &Dest<'_>) -> String {
        let host = dest.host();
        match self {
            Refusal::AlwaysDenied(_) => {
                format!(
                    "{} is never reachable from a sandbox",
                    dest.addr.map(canonical_ip).map_or(host, |a| a.to_string())
                )
            }
            Refusal::NotAllowed => format!("{host} is not in the sandbox's egress.allow"),
            Refusal::Ceiling => format!("{host} is beyond the namespace's egress ceiling"),
        }
    }
}

/// The address classes that a ceiling's CIDR can open.
fn openable(kind: Special) -> bool {
    matches!(kind, Special::Private | Special::Shared | Special::UniqueLocal)
}

/// Whether `addr` is never reachable under `ceiling`: `Some` with its class for loopback,
/// link-local, metadata, unspecified, multicast, broadcast, reserved and translated addresses,
/// and for private, shared and unique-local ones unless a CIDR of the ceiling contains them.
/// Documentation ranges are reachable (tests use them).
pub fn always_denied(addr: IpAddr, ceiling: &[Entry]) -> Option<Special> {
    match outbound::special(addr)? {
        Special::Documentation => None,
        kind if openable(kind) && ceiling.iter().any(|e| e.names_private(addr)) => None,
        kind => Some(kind),
    }
}

/// The rules of egress before the policies: `dest` must not be always denied, must match the
/// sandbox's `allow`, and must match the namespace's current `ceiling` (so a narrowed ceiling
/// holds for running sandboxes).
pub fn check(dest: &Dest<'_>, allow: &[Entry], ceiling: &[Entry]) -> Result<(), Refusal> {
    if let Some(kind) = dest.addr.and_then(|a| always_denied(a, ceiling)) {
        return Err(Refusal::AlwaysDenied(kind));
    }
    if !allow.iter().any(|e| e.matches(dest)) {
        return Err(Refusal::NotAllowed);
    }
    if !ceiling.iter().any(|e| e.matches(dest)) {
        return Err(Refusal::Ceiling);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Entry {
        s.parse().unwrap_or_else(|err| panic!("{s}: {err}"))
    }

    fn dest<'a>(name: Option<&'a str>, addr: Option<&str>, port: Option<u16>) -> Dest<'a> {
        Dest { name, addr: addr.map(|a| a.parse().expect("address")), port }
    }

    #[test]
    fn entries_parse_and_print_back() {
        for s in [
            "pypi.org",
            "*.pythonhosted.org",
            "203.0.113.0/24:443",
            "203.0.113.7/32",
            "example.com:8000-8100",
            "2001:db8::/32",
            "[2001:db8::/32]:443",
            "api.example.com:443",
        ] {
            assert_eq!(e(s).to_string(), s);
        }
        assert_eq!(e("203.0.113.7").to_string(), "203.0.113.7/32");
        assert_eq!(e("*.pythonhosted.org").host, HostPattern::Wildcard("pythonhosted.org".into()));
        assert_eq!(e("a.b:1-65535").ports, Some((1, 65535)));
    }

    #[test]
    fn bad_entries_are_named() {
        for (s, needle) in [
            ("", "empty"),
            ("*", "wildcard"),
            ("*.", "not a domain"),
            ("foo.*.com", "wildcard"),
            ("Pypi.Org", "lower-case"),
            ("pypi.org.", "not a domain"),
            ("a b", "not a domain"),
            ("pypi.org:0", "port"),
            ("pypi.org:65536", "port"),
            ("pypi.org:443-80", "ends before"),
            ("pypi.org:", "port"),
            ("pypi.org:x", "port"),
            ("203.0.113.1/24", "bits set"),
            ("203.0.113.0/33", "prefix"),
            ("300.1.1.1", "ADDRESS/PREFIX"),
            ("[203.0.113.0/24]:1", "IPv6"),
            ("[2001:db8::/32", "closing"),
            ("[2001:db8::/32]443", "expected :port"),
            ("2001:db8::/32:443", "ADDRESS/PREFIX"),
        ] {
            let err = s.parse::<Entry>().expect_err(s);
            assert!(err.to_string().contains(needle), "{s}: {err}");
            assert!(err.to_string().contains(&format!("{s:?}")), "{s}: {err}");
        }
        let long = "a".repeat(10_000);
        assert!(long.parse::<Entry>().expect_err("long").to_string().len() < 400);
        let err = parse_list("egress.allow", &["ok.com".into(), "b@d".into()]).expect_err("bad");
        assert_eq!(err.field, "egress.allow[1]");
    }

    #[test]
    fn destinations_match() {
        assert!(e("pypi.org").matches(&dest(Some("pypi.org"), Some("203.0.113.5"), Some(443))));
        assert!(!e("pypi.org").matches(&dest(Some("evil.pypi.org"), None, Some(443))));
        assert!(e("*.pythonhosted.org").matches(&dest(Some("files.pythonhosted.org"), None, Some(443))));
        assert!(e("*.pythonhosted.org").matches(&dest(Some("a.b.pythonhosted.org"), None, Some(443))));
        assert!(!e("*.pythonhosted.org").matches(&dest(Some("pythonhosted.org"), None, Some(443))));
        assert!(!e("*.pythonhosted.org").matches(&dest(Some("evilpythonhosted.org"), None, Some(443))));
        let cidr = e("203.0.113.0/24:443");
        assert!(cidr.matches(&dest(None, Some("203.0.113.9"), Some(443))));
        assert!(cidr.matches(&dest(Some("x.test"), Some("203.0.113.9"), Some(443))));
        assert!(cidr.matches(&dest(None, Some("::ffff:203.0.113.9"), Some(443))));
        assert!(!cidr.matches(&dest(None, Some("203.0.113.9"), Some(80))));
        assert!(!cidr.matches(&dest(None, Some("198.51.100.9"), Some(443))));
        // A DNS query: the name, any port; a CIDR never matches a name alone.
        assert!(e("pypi.org:443").matches(&dest(Some("pypi.org"), None, None)));
        assert!(!cidr.matches(&dest(Some("x.test"), None, None)));
        assert!(e("a.test:8000-8100").matches(&dest(Some("a.test"), None, Some(8100))));
        assert!(!e("a.test:8000-8100").matches(&dest(Some("a.test"), None, Some(8101))));
    }

    #[test]
    fn entries_within_a_ceiling() {
        let ceiling = [e("*.example.com"), e("pypi.org:443"), e("203.0.113.0/24"), e("a.test:1000-2000")];
        for inside in [
            "api.example.com",
            "*.eu.example.com",
            "*.example.com:443",
            "pypi.org:443",
            "203.0.113.128/25:22",
            "a.test:1500-1600",
        ] {
            assert_eq!(first_beyond(&[e(inside)], &ceiling), None, "{inside}");
        }
        for beyond in ["example.com", "pypi.org", "pypi.org:80", "203.0.112.0/23", "*.com", "a.test:999-1500", "a.test"]
        {
            assert_eq!(first_beyond(&[e("pypi.org:443"), e(beyond)], &ceiling), Some(&e(beyond)), "{beyond}");
        }
        assert_eq!(first_beyond(&[e("pypi.org")], &[]), Some(&e("pypi.org")));
    }

    #[test]
    fn some_addresses_are_never_reachable() {
        let ceiling = [e("0.0.0.0/0"), e("*.test")];
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "169.254.1.1",
            "10.1.2.3",
            "100.64.0.2",
            "192.168.1.1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            let d = dest(Some("x.test"), Some(a), Some(443));
            assert!(matches!(check(&d, &ceiling, &ceiling), Err(Refusal::AlwaysDenied(_))), "{a}");
        }
        // Documentation ranges are ordinary destinations.
        assert_eq!(check(&dest(None, Some("198.51.100.7"), Some(80)), &ceiling, &ceiling), Ok(()));
        // A private range the admin names in the ceiling opens it; loopback never.
        let private = [e("10.0.0.0/8"), e("127.0.0.0/8")];
        assert_eq!(always_denied("10.1.2.3".parse().expect("ip"), &private), None);
        assert!(always_denied("172.16.0.1".parse().expect("ip"), &private).is_some());
        assert!(always_denied("127.0.0.1".parse().expect("ip"), &private).is_some());
    }

    #[test]
    fn check_names_the_rule() {
        let allow = [e("pypi.org")];
        let ceiling = [e("*.org")];
        assert_eq!(check(&dest(Some("pypi.org"), None, None), &allow, &ceiling), Ok(()));
        assert_eq!(check(&dest(Some("other.org"), None, None), &allow, &ceiling), Err(Refusal::NotAllowed));
        assert_eq!(check(&dest(Some("pypi.org"), None, None), &allow, &[]), Err(Refusal::Ceiling));
        assert_eq!(Refusal::Ceiling.rule(), "ceiling");
    }

    #[test]
    fn credentials_are_checked() {
        let ok = Credential {
            host: "api.example.com".into(),
            secret: "llm-key".into(),
            header: "Authorization".into(),
            format: "Bearer {secret}".into(),
        };
        ok.check("egress.credentials[0]").expect("valid");
        assert_eq!(ok.header_value("sk-1"), "Bearer sk-1");
        for (bad, field) in [
            (Credential { host: "*.example.com".into(), ..ok.clone() }, "host"),
            (Credential { secret: "A_B".into(), ..ok.clone() }, "secret"),
            (Credential { header: "X Y".into(), ..ok.clone() }, "header"),
            (Credential { header: "Host".into(), ..ok.clone() }, "header"),
            (Credential { format: "Bearer".into(), ..ok.clone() }, "format"),
            (Credential { format: "Bearer {secret}\r\nX: y".into(), ..ok.clone() }, "format"),
        ] {
            let err = bad.check("c").expect_err(field);
            assert!(err.field.ends_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn entries_round_trip_through_json() {
        let egress = SandboxEgress { allow: vec![e("pypi.org"), e("[2001:db8::/32]:443")], credentials: vec![] };
        let text = serde_json::to_string(&egress).expect("json");
        assert_eq!(text, r#"{"allow":["pypi.org","[2001:db8::/32]:443"]}"#);
        assert_eq!(serde_json::from_str::<SandboxEgress>(&text).expect("back"), egress);
        assert!(serde_json::from_str::<Ceiling>(r#"{"allow":["x y"]}"#).is_err());
    }
}
