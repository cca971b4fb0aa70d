//! Bulkhead's OIDC bearer-token verification for a namespace's identity provider.
//!
//! A [`Provider`] is built from a namespace's [`OidcSettings`]; it discovers the issuer
//! (`/.well-known/openid-configuration`), caches its JWKS, and [`Provider::verify`] turns a bearer JWT into
//! [`Claims`] or a [`VerifyError`]. Every fetch goes through [`Outbound`], which dials only addresses the
//! outbound policy allows. We verify signatures ourselves with `ring` so that the accepted
//! algorithms are exactly RS256 (RSA of 2048 bits or more) and ES256 (P-256).
//!
//! **Invariant:** no error, log line or panic message of this crate contains a token, or a part of one
//! beyond its sanitized `alg` and `kid`.
//! **Invariant:** a key is only ever taken from the configured issuer's JWKS, never from the token
//! (`jwk`, `jku`, `x5u`, `x5c` headers are ignored).

mod claims;
mod issuer;
mod jwks;
mod jwt;
mod login;
pub mod outbound;
mod provider;

pub use claims::{Claims, MAX_SUBJECT_BYTES};
pub use issuer::{IssuerUrl, IssuerUrlError, MAX_ISSUER_BYTES};
pub use jwt::{Algorithm, MAX_TOKEN_BYTES};
pub use login::{challenge, Pending};
pub use outbound::{Outbound, OutboundConfig, OutboundError};
pub use provider::{OidcSettings, Provider, ProviderOptions, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT};

/// Why a token was refused. The server answers 401 to each; the variants are for logs, and no message
/// includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not accepted (only RS256 and ES256)")]
    Algorithm(String),
    #[error("token has no kid and the issuer publishes {0} keys")]
    MissingKeyId(usize),
    #[error("the issuer publishes no key with kid {kid:?}")]
    UnknownKey { kid: Option<String> },
    #[error("the token's key cannot be used: {0}")]
    KeyUnusable(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("token was issued by another issuer")]
    Issuer,
    #[error("token is not for this audience")]
    Audience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("claim {claim} {reason}")]
    InvalidClaim { claim: &'static str, reason: &'static str },
    /// The provider's discovery document or keys could not be had; not the token's fault.
    #[error("identity provider: {0}")]
    Discovery(String),
}

impl VerifyError {
    /// True when the identity provider, not the token, is at fault (it is down, or misconfigured).
    pub fn is_provider_failure(&self) -> bool {
        matches!(self, VerifyError::Discovery(_))
    }
}

/// Untrusted text for an error message: at most 64 characters; `{:?}` escapes the rest.
pub(crate) fn sanitize(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = s.chars().take(MAX_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
