//! The shape of identity-provider URLs Bulkhead talks to: `https://`, or plain `http://` to an IP address
//! written literally; the host in canonical form only (see [`bulkhead_core::outbound::parse_host`]), so
//! `http://0x7f000001` or `http://127.1` never pass for another address. Applies to the configured issuer and
//! to the `jwks_uri` its discovery document names. Where such a URL may lead (which addresses, and plain http
//! only to ranges the operator allowed) is the outbound policy's to decide: see [`crate::outbound`].

use std::fmt;
use std::str::FromStr;

use bulkhead_core::outbound::{parse_host, Host, HostError};

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// Longest issuer URL accepted, in bytes.
pub const MAX_ISSUER_BYTES: usize = 512;
/// Longest `jwks_uri` accepted, in bytes.
pub(crate) const MAX_JWKS_URI_BYTES: usize = 2048;

/// Why a URL is not an acceptable identity-provider URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerUrlError {
    #[error("URL is empty")]
    Empty,
    #[error("URL is longer than {0} bytes")]
    TooLong(usize),
    #[error("URL contains whitespace, control, non-ASCII or backslash characters")]
    BadCharacters,
    #[error("URL must start with https:// (or http:// to an IP address the operator allowed)")]
    Scheme,
    #[error("URL must not contain a user name or password")]
    Userinfo,
    #[error("URL must not contain a query")]
    Query,
    #[error("URL must not contain a fragment")]
    Fragment,
    #[error("URL has no host")]
    NoHost,
    #[error("plain http is allowed only to an IP address written literally, not to the name {0}")]
    PlainHttpName(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("URL does not parse: {0}")]
    Invalid(String),
}

/// A validated OIDC issuer URL. Kept exactly as given: the OIDC rules compare issuers as strings, so
/// `https://idp.example` and `https://idp.example/` are different issuers.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IssuerUrl {
    raw: String,
    plain_http: bool,
}

impl IssuerUrl {
    /// Validates `issuer`: `https://`, or `http://` to a literal IP address; a canonical host; no user info,
    /// query or fragment; at most [`MAX_ISSUER_BYTES`]. Whether the address may be dialled is checked apart,
    /// against the outbound policy.
    pub fn parse(issuer: &str) -> Result<IssuerUrl, IssuerUrlError> {
        let checked = check_url(issuer, UrlRules { max_bytes: MAX_ISSUER_BYTES, allow_query: false })?;
        Ok(IssuerUrl { raw: issuer.to_owned(), plain_http: checked.scheme() == "http" })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True for an `http://` issuer (an address in a range the operator allowed: development and tests).
    pub fn is_plain_http(&self) -> bool {
        self.plain_http
    }

    /// `{issuer}/.well-known/openid-configuration`, with one trailing `/` of the issuer removed first
    /// (OpenID Connect Discovery 1.0, section 4).
    pub fn discovery_url(&self) -> Result<Url, IssuerUrlError> {
        let base = self.raw.strip_suffix('/').unwrap_or(&self.raw);
        Url::parse(&format!("{base}/.well-known/openid-configuration"))
            .map_err(|e| IssuerUrlError::Invalid(e.to_string()))
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerUrl({:?})", self.raw)
    }
}

impl FromStr for IssuerUrl {
    type Err = IssuerUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IssuerUrl::parse(s)
    }
}

impl TryFrom<String> for IssuerUrl {
    type Error = IssuerUrlError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        IssuerUrl::parse(&s)
    }
}

impl From<IssuerUrl> for String {
    fn from(issuer: IssuerUrl) -> String {
        issuer.raw
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct UrlRules {
    pub(crate) max_bytes: usize,
    pub(crate) allow_query: bool,
}

/// The URL rules, shared by the issuer and the `jwks_uri`.
pub(crate) fn check_url(s: &str, rules: UrlRules) -> Result<Url, IssuerUrlError> {
    if s.is_empty() {
        return Err(IssuerUrlError::Empty);
    }
    if s.len() > rules.max_bytes {
        return Err(IssuerUrlError::TooLong(rules.max_bytes));
    }
    // Refuse anything a URL parser might "fix up" (the WHATWG rules read `\` as `/` and drop tabs), so the
    // string we compare is the URL we fetch.
    if s.bytes().any(|b| !b.is_ascii_graphic() || b == b'\\') {
        return Err(IssuerUrlError::BadCharacters);
    }
    let (plain_http, rest) = if let Some(rest) = s.strip_prefix("https://") {
        (false, rest)
    } else if let Some(rest) = s.strip_prefix("http://") {
        (true, rest)
    } else {
        return Err(IssuerUrlError::Scheme);
    };
    if s.contains('#') {
        return Err(IssuerUrlError::Fragment);
    }
    if !rules.allow_query && s.contains('?') {
        return Err(IssuerUrlError::Query);
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(IssuerUrlError::NoHost);
    }
    if authority.contains('@') {
        return Err(IssuerUrlError::Userinfo);
    }
    let url = Url::parse(s).map_err(|e| IssuerUrlError::Invalid(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(IssuerUrlError::Userinfo);
    }
    // The host as written must be canonical, and exactly what the URL parser made of it: the string we
    // check is the address we dial.
    let written = raw_host(authority);
    let host = parse_host(written)?;
    if url.host_str() != Some(written) {
        return Err(IssuerUrlError::Host(HostError::NonCanonical(written.to_owned())));
    }
    if let (true, Host::Name(name)) = (plain_http, &host) {
        return Err(IssuerUrlError::PlainHttpName(name.clone()));
    }
    Ok(url)
}

/// The host of `authority` (no user info) as written: up to the port, brackets kept for IPv6.
fn raw_host(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> IssuerUrlError {
        match IssuerUrl::parse(s) {
            Ok(ok) => panic!("{s} accepted as {ok:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_https_and_literal_http() {
        for ok in [
            "https://idp.example.com",
            "https://idp.example.com/",
            "https://idp.example.com/realms/acme",
            "https://idp.example.com:8443/tenant/v2.0",
            "https://localhost",
            "https://10.0.0.1",
            "http://127.0.0.1:8080",
            "http://127.9.8.7/realm",
            "http://[::1]:9000",
            "http://10.0.0.1",
        ] {
            let issuer = IssuerUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(issuer.as_str(), ok, "kept exactly as given");
            assert_eq!(issuer.is_plain_http(), ok.starts_with("http://"));
        }
    }

    #[test]
    fn refuses_plain_http_to_names() {
        assert_eq!(err("http://localhost:8080"), IssuerUrlError::PlainHttpName("localhost".into()));
        assert_eq!(err("http://idp.example.com"), IssuerUrlError::PlainHttpName("idp.example.com".into()));
        // Looks like loopback, is a domain name under `.1.example`.
        assert!(matches!(err("http://127.0.0.1.example"), IssuerUrlError::PlainHttpName(_)));
    }

    #[test]
    fn refuses_non_canonical_hosts() {
        for s in [
            "http://0x7f000001",
            "http://0x7f000001:8080/realm",
            "https://2130706433",
            "http://0177.0.0.1",
            "http://127.1",
            "https://127.0.0.1.",
            "http://[::ffff:127.0.0.1]",
            "http://[0:0::1]",
            "https://IDP.example.com",
            "https://idp%2eexample.com",
        ] {
            assert!(matches!(err(s), IssuerUrlError::Host(_)), "{s}: {:?}", err(s));
        }
    }

    #[test]
    fn refuses_other_schemes_and_parts() {
        for (url, want) in [
            ("", IssuerUrlError::Empty),
            ("ftp://idp.example.com", IssuerUrlError::Scheme),
            ("HTTPS://idp.example.com", IssuerUrlError::Scheme),
            ("idp.example.com", IssuerUrlError::Scheme),
            ("https://user@idp.example.com", IssuerUrlError::Userinfo),
            ("https://u:p@idp.example.com/x", IssuerUrlError::Userinfo),
            ("http://evil.com@127.0.0.1", IssuerUrlError::Userinfo),
            ("https://idp.example.com/?a=b", IssuerUrlError::Query),
            ("https://idp.example.com/#x", IssuerUrlError::Fragment),
            ("https:///idp.example.com", IssuerUrlError::NoHost),
            ("https://idp.example.com/a b", IssuerUrlError::BadCharacters),
            ("https://idp.example.com\\@x", IssuerUrlError::BadCharacters),
            ("https://idp.exämple.com", IssuerUrlError::BadCharacters),
        ] {
            assert_eq!(err(url), want, "{url}");
        }
        assert!(matches!(err("https://[::1"), IssuerUrlError::Invalid(_)));
        let long = format!("https://idp.example.com/{}", "a".repeat(MAX_ISSUER_BYTES));
        assert_eq!(err(&long), IssuerUrlError::TooLong(MAX_ISSUER_BYTES));
    }

    #[test]
    fn messages_name_the_reason() {
        assert_eq!(
            err("http://localhost").to_string(),
            "plain http is allowed only to an IP address written literally, not to the name localhost"
        );
        assert_eq!(err("https://a/?q").to_string(), "URL must not contain a query");
    }

    #[test]
    fn discovery_url_drops_one_trailing_slash() {
        let with_path = IssuerUrl::parse("https://idp.example.com/realms/acme/").unwrap();
        assert_eq!(
            with_path.discovery_url().unwrap().as_str(),
            "https://idp.example.com/realms/acme/.well-known/openid-configuration"
        );
        let bare = IssuerUrl::parse("http://127.0.0.1:4000").unwrap();
        assert_eq!(bare.discovery_url().unwrap().as_str(), "http://127.0.0.1:4000/.well-known/openid-configuration");
    }

    #[test]
    fn serde_round_trip_validates() {
        let issuer: IssuerUrl = serde_json::from_str("\"https://idp.example.com\"").unwrap();
        assert_eq!(serde_json::to_string(&issuer).unwrap(), "\"https://idp.example.com\"");
        assert!(serde_json::from_str::<IssuerUrl>("\"http://localhost\"").is_err());
    }
}
