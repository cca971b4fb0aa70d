//! The outbound address policy: which addresses the server may connect to when a tenant chooses
//! the destination (an identity provider's issuer URL today; the egress gateway later).
//!
//! Two checks, both without IO:
//! - [`parse_host`] reads the host of a URL as written and accepts only canonical forms: a
//!   dotted-quad IPv4 address with no leading zeros, a bracketed IPv6 address, or a lower-case DNS
//!   name. Anything a URL parser would read as a number in another form (`0x7f000001`,
//!   `2130706433`, `0177.0.0.1`, `127.1`, `127.0.0.1.`) is refused, so the address a check sees
//!   is the address a connector dials.
//! - [`OutboundPolicy::check`] refuses an address in a special-purpose range (loopback, private,
//!   shared, link-local, cloud metadata, unique-local, multicast, documentation, reserved, and
//!   the IPv6 forms that embed an IPv4 address) unless the operator allowed a range covering it.
//!   An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is judged as the IPv4 address it maps.
//!
//! A name is not resolved here: the caller resolves it and checks every address it would dial.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A range of addresses, such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not ADDRESS/PREFIX, such as 10.0.0.0/8 or fd00::/8")]
    Syntax(String),
    #[error("prefix /{prefix} is longer than the {max} bits of the address")]
    Prefix { prefix: u8, max: u8 },
    #[error("{0} has bits set past its prefix; write the network address")]
    HostBits(String),
}

impl Cidr {
    /// The range `addr/prefix`. `prefix` must not exceed the address's width.
    pub const fn new_v4(addr: Ipv4Addr, prefix: u8) -> Cidr {
        Cidr { addr: IpAddr::V4(addr), prefix }
    }

    /// The range `addr/prefix` of IPv6.
    pub const fn new_v6(addr: Ipv6Addr, prefix: u8) -> Cidr {
        Cidr { addr: IpAddr::V6(addr), prefix }
    }

    /// The range's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when every address of `other` lies in this range (same family, prefix no longer).
    pub fn covers(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4() && self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// True when `ip` lies in this range. An IPv4 range never contains an IPv6 address (map it
    /// first) and the other way round.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/PREFIX` with the host bits clear; a bare address is the range of that one address.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if prefix > max {
            return Err(CidrError::Prefix { prefix, max });
        }
        let cidr = Cidr { addr, prefix };
        let network = match addr {
            IpAddr::V4(a) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)))
            }
            IpAddr::V6(a) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)))
            }
        };
        if network != addr {
            return Err(CidrError::HostBits(s.to_owned()));
        }
        Ok(cidr)
    }
}

/// Why an address is refused: the special-purpose range it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Unspecified,
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`).
    Private,
    /// RFC 6598 carrier-grade NAT, `100.64/10`.
    Shared,
    LinkLocal,
    /// A cloud provider's instance metadata service (`169.254.169.254`, `fd00:ec2::254`).
    Metadata,
    /// IPv6 unique-local addresses, `fc00::/7`.
    UniqueLocal,
    Multicast,
    Broadcast,
    /// Documentation and benchmarking ranges (RFC 5737, RFC 3849, RFC 2544).
    Documentation,
    /// IETF protocol assignments and reserved space (`192.0.0/24`, `240/4`, `2001::/23`,
    /// discard-only `100::/64`, site-local `fec0::/10`).
    Reserved,
    /// IPv6 forms that carry an IPv4 address (IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`
    /// and `64:ff9b:1::/48`, 6to4 `2002::/16`): where they lead is not this address.
    Translated,
}

impl Special {
    fn describe(self) -> &'static str {
        match self {
            Special::Unspecified => "an unspecified address",
            Special::Loopback => "a loopback address",
            Special::Private => "a private address",
            Special::Shared => "a shared (carrier-grade NAT) address",
            Special::LinkLocal => "a link-local address",
            Special::Metadata => "a cloud metadata address",
            Special::UniqueLocal => "a unique-local address",
            Special::Multicast => "a multicast address",
            Special::Broadcast => "the broadcast address",
            Special::Documentation => "a documentation address",
            Special::Reserved => "a reserved address",
            Special::Translated => "an address that embeds an IPv4 address",
        }
    }
}

const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

const V4_RANGES: [(Cidr, Special); 17] = [
    (Cidr::new_v4(Ipv4Addr::new(0, 0, 0, 0), 8), Special::Unspecified),
    (Cidr::new_v4(Ipv4Addr::new(10, 0, 0, 0), 8), Special::Private),
    (Cidr::new_v4(Ipv4Addr::new(100, 64, 0, 0), 10), Special::Shared),
    (Cidr::new_v4(Ipv4Addr::new(127, 0, 0, 0), 8), Special::Loopback),
    (Cidr::new_v4(METADATA_V4, 32), Special::Metadata),
    (Cidr::new_v4(Ipv4Addr::new(169, 254, 0, 0), 16), Special::LinkLocal),
    (Cidr::new_v4(Ipv4Addr::new(172, 16, 0, 0), 12), Special::Private),
    (Cidr::new_v4(Ipv4Addr::new(192, 0, 0, 0), 24), Special::Reserved),
    (Cidr::new_v4(Ipv4Addr::new(192, 0, 2, 0), 24), Special::Documentation),
    (Cidr::new_v4(Ipv4Addr::new(192, 88, 99, 0), 24), Special::Reserved),
    (Cidr::new_v4(Ipv4Addr::new(192, 168, 0, 0), 16), Special::Private),
    (Cidr::new_v4(Ipv4Addr::new(198, 18, 0, 0), 15), Special::Documentation),
    (Cidr::new_v4(Ipv4Addr::new(198, 51, 100, 0), 24), Special::Documentation),
    (Cidr::new_v4(Ipv4Addr::new(203, 0, 113, 0), 24), Special::Documentation),
    (Cidr::new_v4(Ipv4Addr::new(224, 0, 0, 0), 4), Special::Multicast),
    (Cidr::new_v4(Ipv4Addr::new(255, 255, 255, 255), 32), Special::Broadcast),
    (Cidr::new_v4(Ipv4Addr::new(240, 0, 0, 0), 4), Special::Reserved),
];

const V6_RANGES: [(Cidr, Special); 14] = [
    (Cidr::new_v6(Ipv6Addr::UNSPECIFIED, 128), Special::Unspecified),
    (Cidr::new_v6(Ipv6Addr::LOCALHOST, 128), Special::Loopback),
    (Cidr::new_v6(Ipv6Addr::UNSPECIFIED, 96), Special::Translated),
    (Cidr::new_v6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96), Special::Translated),
    (Cidr::new_v6(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), Special::Translated),
    (Cidr::new_v6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), Special::Reserved),
    (Cidr::new_v6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), Special::Documentation),
    (Cidr::new_v6(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), Special::Reserved),
    (Cidr::new_v6(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), Special::Translated),
    (Cidr::new_v6(METADATA_V6, 128), Special::Metadata),
    (Cidr::new_v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), Special::UniqueLocal),
    (Cidr::new_v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), Special::LinkLocal),
    (Cidr::new_v6(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), Special::Reserved),
    (Cidr::new_v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), Special::Multicast),
];

/// `ip` as the policy judges it: an IPv4-mapped IPv6 address is its IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The special-purpose range `ip` lies in, if any (the first match, most specific first).
pub fn special(ip: IpAddr) -> Option<Special> {
    let ip = canonical_ip(ip);
    let table: &[(Cidr, Special)] = if ip.is_ipv4() { &V4_RANGES } else { &V6_RANGES };
    table.iter().find(|(range, _)| range.contains(ip)).map(|(_, s)| *s)
}

/// Why an address may not be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is {} and no --outbound-allow range covers it", .kind.describe())]
pub struct Refused {
    pub ip: IpAddr,
    pub kind: Special,
}

/// Which addresses the server may connect to on a tenant's behalf: every public address, and the
/// special-purpose ones the operator allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allow: Vec<Cidr>,
}

impl OutboundPolicy {
    /// The policy that also allows `allow` (the operator's `--outbound-allow` ranges).
    pub fn new(allow: Vec<Cidr>) -> OutboundPolicy {
        OutboundPolicy { allow }
    }

    /// The ranges the operator allowed.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allow
    }

    /// True when `ip` lies in a range the operator allowed (checked in both the mapped and the
    /// canonical form of an IPv4-mapped address).
    pub fn is_allowed_range(&self, ip: IpAddr) -> bool {
        let canonical = canonical_ip(ip);
        self.allow.iter().any(|r| r.contains(ip) || r.contains(canonical))
    }

    /// `Ok` when the server may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        match special(ip) {
            None => Ok(()),
            Some(_) if self.is_allowed_range(ip) => Ok(()),
            Some(kind) => Err(Refused { ip: canonical_ip(ip), kind }),
        }
    }
}

/// A URL's host, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name (lower case, no trailing dot); resolve it and check every address.
    Name(String),
}

/// Why a URL's host is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host {0:?} is a numeric address in a non-canonical form; write it as a dotted quad such as 192.0.2.1 or in brackets for IPv6")]
    NonCanonical(String),
    #[error("host {0:?} is not a valid DNS name")]
    BadName(String),
}

/// Longest DNS name, in bytes.
const MAX_NAME_BYTES: usize = 253;

/// Reads `raw`, the host part of a URL exactly as written (brackets kept for IPv6, no port).
pub fn parse_host(raw: &str) -> Result<Host, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let non_canonical = || HostError::NonCanonical(raw.to_owned());
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(non_canonical)?;
        // Lower-case hexadecimal only, no zone; std's parser refuses everything else odd.
        if inner.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(non_canonical());
        }
        let ip: Ipv6Addr = inner.parse().map_err(|_| non_canonical())?;
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    // A URL parser (WHATWG) reads the host as an IPv4 address when its last non-empty label is
    // a number in any base: decimal, `0x` hexadecimal or `0` octal. Such a host is accepted only
    // as the one canonical dotted quad.
    let last = raw.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
    if numeric || raw.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ip: Ipv4Addr = raw.parse().map_err(|_| non_canonical())?;
        if ip.to_string() != raw {
            return Err(non_canonical());
        }
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let bad = || HostError::BadName(raw.to_owned());
    if raw.len() > MAX_NAME_BYTES {
        return Err(bad());
    }
    for label in raw.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(Host::Name(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn non_canonical_numeric_hosts_are_refused() {
        for raw in [
            "0x7f000001",
            "0X7F000001",
            "2130706433",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
            "127.000.000.001",
            "0x7f.0.0.1",
            "0x7f.1",
            "017700000001",
            "1.2.3.4.5",
            "256.0.0.1",
            "0",
            "0x",
            "a.0x10",
            "evil.123",
            "[::FFFF:7F00:1]",
            "[::1",
            "[fe80::1%eth0]",
            "[127.0.0.1]",
        ] {
            assert!(
                matches!(parse_host(raw), Err(HostError::NonCanonical(_))),
                "{raw} accepted: {:?}",
                parse_host(raw)
            );
        }
    }

    #[test]
    fn canonical_hosts_parse() {
        assert_eq!(parse_host("127.0.0.1"), Ok(Host::Ip(ip("127.0.0.1"))));
        assert_eq!(parse_host("8.8.8.8"), Ok(Host::Ip(ip("8.8.8.8"))));
        assert_eq!(parse_host("[::1]"), Ok(Host::Ip(ip("::1"))));
        assert_eq!(parse_host("[::ffff:7f00:1]"), Ok(Host::Ip(ip("::ffff:127.0.0.1"))));
        assert_eq!(parse_host("idp.example.com"), Ok(Host::Name("idp.example.com".into())));
        assert_eq!(parse_host("0x7f.example"), Ok(Host::Name("0x7f.example".into())));
        assert_eq!(parse_host("127.0.0.1.nip.io"), Ok(Host::Name("127.0.0.1.nip.io".into())));
        for bad in ["IDP.example.com", "a..b", "-a.b", "a_b.c", "idp.example.com."] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_host(""), Err(HostError::Empty));
    }

    #[test]
    fn every_special_range_is_refused_by_default() {
        let policy = OutboundPolicy::default();
        let cases = [
            ("0.0.0.0", Special::Unspecified),
            ("0.1.2.3", Special::Unspecified),
            ("10.0.0.1", Special::Private),
            ("10.255.255.255", Special::Private),
            ("100.64.0.1", Special::Shared),
            ("100.127.255.255", Special::Shared),
            ("127.0.0.1", Special::Loopback),
            ("127.255.0.9", Special::Loopback),
            ("169.254.169.254", Special::Metadata),
            ("169.254.0.1", Special::LinkLocal),
            ("172.16.0.1", Special::Private),
            ("172.31.255.255", Special::Private),
            ("192.0.0.8", Special::Reserved),
            ("192.0.2.1", Special::Documentation),
            ("192.88.99.1", Special::Reserved),
            ("192.168.1.1", Special::Private),
            ("198.18.0.1", Special::Documentation),
            ("198.19.255.255", Special::Documentation),
            ("198.51.100.7", Special::Documentation),
            ("203.0.113.9", Special::Documentation),
            ("224.0.0.1", Special::Multicast),
            ("239.255.255.250", Special::Multicast),
            ("240.0.0.1", Special::Reserved),
            ("255.255.255.255", Special::Broadcast),
            ("::", Special::Unspecified),
            ("::1", Special::Loopback),
            ("::7f00:1", Special::Translated),
            ("64:ff9b::7f00:1", Special::Translated),
            ("64:ff9b:1::1", Special::Translated),
            ("100::1", Special::Reserved),
            ("2001:db8::1", Special::Documentation),
            ("2001::1", Special::Reserved),
            ("2002:7f00:1::1", Special::Translated),
            ("fd00:ec2::254", Special::Metadata),
            ("fc00::1", Special::UniqueLocal),
            ("fdff::1", Special::UniqueLocal),
            ("fe80::1", Special::LinkLocal),
            ("febf::1", Special::LinkLocal),
            ("fec0::1", Special::Reserved),
            ("ff02::1", Special::Multicast),
            // IPv4-mapped forms are judged as the IPv4 address.
            ("::ffff:127.0.0.1", Special::Loopback),
            ("::ffff:10.1.2.3", Special::Private),
            ("::ffff:169.254.169.254", Special::Metadata),
            ("::ffff:0.0.0.0", Special::Unspecified),
        ];
        for (addr, kind) in cases {
            assert_eq!(policy.check(ip(addr)).map_err(|r| r.kind), Err(kind), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = OutboundPolicy::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "169.253.255.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2a00:1450::1",
        ] {
            assert_eq!(policy.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn operator_ranges_allow_exactly_what_they_cover() {
        let policy = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("fd00:ec2::254")), Ok(()));
        assert!(policy.check(ip("::1")).is_err());
        assert!(policy.check(ip("10.0.0.1")).is_err());
        assert!(policy.check(ip("169.254.169.254")).is_err());
        let one = OutboundPolicy::new(vec!["10.1.2.3".parse().unwrap()]);
        assert_eq!(one.check(ip("10.1.2.3")), Ok(()));
        assert!(one.check(ip("10.1.2.4")).is_err());
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!("10.0.0.0/8".parse::<Cidr>().map(|c| c.to_string()), Ok("10.0.0.0/8".into()));
        assert_eq!("::/0".parse::<Cidr>().map(|c| c.to_string()), Ok("::/0".into()));
        assert!(matches!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits(_))));
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix { .. })));
        for bad in ["", "10.0.0.0/", "10.0.0.0/+8", "10/8", "0x7f000001/32", "10.0.0.0/8/8", "fd00::/1290"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("127.0.0.1")));
        assert!(!all.contains(ip("::1")));
    }

    #[test]
    fn refusals_name_the_range() {
        let e = OutboundPolicy::default().check(ip("::ffff:169.254.169.254")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "169.254.169.254 is a cloud metadata address and no --outbound-allow range covers it"
        );
    }
}
