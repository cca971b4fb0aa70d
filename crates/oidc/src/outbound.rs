//! The HTTP client for fetches a tenant directs (its identity provider's discovery document and
//! keys), and the check of every address it dials against the [`OutboundPolicy`].
//!
//! - A URL whose host is an IP address is checked by [`Outbound::check_url`] before each request
//!   (the connector dials such a host without asking a resolver).
//! - A name is resolved by hickory (the host's resolver configuration, or `--egress-dns`), and
//!   every address the lookup returns is checked before the connector sees it; refused ones are
//!   dropped, and a name left with none fails the request before any connection. This holds on
//!   every fetch and refetch, so a name that resolves to a public address when it is set and to
//!   loopback later is refused then.
//! - Redirects are not followed (OIDC discovery needs none); a redirect answer fails the fetch,
//!   so there is no second destination to check. Proxies from the environment are ignored: the
//!   address checked is the address dialled.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bulkhead_core::outbound::{OutboundPolicy, Refused};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use crate::provider::REQUEST_TIMEOUT;

/// How tenant-directed fetches leave the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundConfig {
    /// The address policy, with the operator's allowed ranges.
    pub policy: OutboundPolicy,
    /// The DNS server names are resolved with (UDP and TCP); `None`: the host's resolver
    /// configuration (`/etc/resolv.conf`, `/etc/hosts`).
    pub dns: Option<SocketAddr>,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("plain http is allowed only to an address in an --outbound-allow range, not to {0}")]
    PlainHttp(IpAddr),
    #[error("URL has no host")]
    NoHost,
}

/// The client for tenant-directed fetches, with its policy. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    http: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Outbound {
    /// A client that dials only what `config.policy` allows: rustls with the webpki roots, no
    /// redirects, no proxy, [`REQUEST_TIMEOUT`].
    pub fn new(config: OutboundConfig) -> reqwest::Result<Outbound> {
        let policy = Arc::new(config.policy);
        let resolver = Arc::new(GuardedResolver { resolver: resolver(config.dns), policy: policy.clone() });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .dns_resolver(resolver)
            .build()?;
        Ok(Outbound { http, policy })
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// Checks a URL about to be fetched: see [`check_url`].
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        check_url(&self.policy, url)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// What can be known of `url`'s destination before resolving: an IP host must pass `policy`, and
/// plain http must go to an address in a range the operator allowed. A name passes here; its
/// addresses are checked as they are resolved. `url` has passed the issuer URL rules (canonical
/// host).
pub fn check_url(policy: &OutboundPolicy, url: &Url) -> Result<(), OutboundError> {
    let host = url.host_str().ok_or(OutboundError::NoHost)?;
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip = literal.parse::<IpAddr>().ok();
    if let Some(ip) = ip {
        policy.check(ip)?;
    }
    if url.scheme() != "https" {
        match ip {
            Some(ip) if policy.is_allowed_range(ip) => {}
            Some(ip) => return Err(OutboundError::PlainHttp(ip)),
            // The issuer rules refuse plain http to a name; refuse here too.
            None => return Err(OutboundError::NoHost),
        }
    }
    Ok(())
}

fn resolver(dns: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    match dns {
        Some(addr) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            let config = ResolverConfig::from_parts(None, Vec::new(), servers);
            Ok(TokioResolver::builder_with_config(config, provider).build())
        }
        None => TokioResolver::builder(provider)
            .map(|b| b.build())
            .map_err(|e| format!("the host's resolver configuration: {e}")),
    }
}

/// Resolves names for reqwest and drops every address the policy refuses.
struct GuardedResolver {
    resolver: Result<TokioResolver, String>,
    policy: Arc<OutboundPolicy>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.resolver.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let resolver = resolver.map_err(BoxError::from)?;
            // Fully qualified: no search domains, so the name asked is the name checked.
            let fqdn = format!("{}.", name.as_str().trim_end_matches('.'));
            let found = resolver.lookup_ip(fqdn).await.map_err(|e| BoxError::from(e.to_string()))?;
            let mut allowed = Vec::new();
            let mut refused = Vec::new();
            for ip in found.iter() {
                match policy.check(ip) {
                    Ok(()) => allowed.push(SocketAddr::new(ip, 0)),
                    Err(e) => refused.push(e.to_string()),
                }
            }
            if allowed.is_empty() {
                let why = if refused.is_empty() { "no address".to_owned() } else { refused.join("; ") };
                return Err(BoxError::from(format!("{} is refused by the outbound policy: {why}", name.as_str())));
            }
            if !refused.is_empty() {
                tracing::warn!(
                    name = name.as_str(),
                    refused = refused.join("; "),
                    "dropped refused addresses of a name"
                );
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn literal_destinations_follow_the_policy() {
        let strict = OutboundPolicy::default();
        for s in
            ["http://127.0.0.1", "https://127.0.0.1", "https://[::1]", "https://169.254.169.254", "https://10.0.0.1"]
        {
            assert!(matches!(check_url(&strict, &url(s)), Err(OutboundError::Refused(_))), "{s}");
        }
        assert_eq!(check_url(&strict, &url("https://8.8.8.8")), Ok(()));
        assert_eq!(check_url(&strict, &url("https://idp.example.com")), Ok(()));
        // Plain http to a public address is not the operator's own network.
        assert!(matches!(check_url(&strict, &url("http://8.8.8.8")), Err(OutboundError::PlainHttp(_))));
        let dev = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(check_url(&dev, &url("http://127.0.0.1:8080/realm")), Ok(()));
        assert!(check_url(&dev, &url("http://[::1]")).is_err());
    }
}
