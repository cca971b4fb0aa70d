//! Signing a user in through the issuer: the authorization code flow with PKCE (RFC 7636, `S256`)
//! of OpenID Connect Core 1.0 §3.1, for a public client (no client secret).
//!
//! [`Provider::authorization_request`] builds the URL a browser is sent to, with a fresh
//! [`Pending`] (the code verifier, `state` and `nonce`) for the caller to keep until the browser
//! comes back; [`Provider::redeem`] exchanges the returned code at the issuer's token endpoint and
//! verifies the ID token exactly as [`Provider::verify`] verifies a bearer token, plus its `nonce`.
//! Endpoints come from the issuer's discovery document (fetched at most once per JWKS TTL), whose
//! `issuer` must match; they follow the same URL rules as the JWKS (https for an https issuer) and every request passes the outbound
//! policy.

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::Url;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::issuer::{check_url, UrlRules, MAX_JWKS_URI_BYTES};
use crate::{jwt, Claims, Provider, VerifyError};

/// Bytes of randomness in a code verifier, a `state` and a `nonce` (each 43 base64url characters).
const SECRET_BYTES: usize = 32;

/// What the caller keeps between sending the browser to the issuer and its return: all three are
/// secrets of this one sign-in, used once.
#[derive(Clone, PartialEq, Eq)]
pub struct Pending {
    /// The PKCE code verifier (RFC 7636 §4.1): 43 base64url characters.
    pub verifier: String,
    /// The `state` the browser brings back, the key to look this sign-in up by.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending { .. }")
    }
}

impl Pending {
    /// Three fresh random values from the system's generator.
    pub fn new() -> Result<Pending, VerifyError> {
        Ok(Pending { verifier: random()?, state: random()?, nonce: random()? })
    }

    /// The `S256` code challenge: BASE64URL(SHA-256(verifier)), without padding.
    pub fn challenge(&self) -> String {
        challenge(&self.verifier)
    }
}

/// The `S256` code challenge of `verifier` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()))
}

fn random() -> Result<String, VerifyError> {
    let mut bytes = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| VerifyError::Discovery("the system's random generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct NonceClaim {
    nonce: Option<serde_json::Value>,
}

impl Provider {
    /// The issuer's `authorization_endpoint` with the request of one sign-in (`response_type=code`,
    /// `scope=openid`, `client_id`, `redirect_uri`, `state`, `nonce`, `code_challenge`,
    /// `code_challenge_method=S256`), fetching the discovery document unless one younger than the
    /// JWKS TTL is known. Only
    /// [`VerifyError::Discovery`] comes back (the document, or its endpoint, is unusable).
    pub async fn authorization_request(
        &self,
        client_id: &str,
        redirect_uri: &str,
        pending: &Pending,
    ) -> Result<Url, VerifyError> {
        let endpoints = self.inner.login_endpoints().await?;
        let mut url = self.endpoint("authorization_endpoint", endpoints.authorization_endpoint.as_deref())?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("scope", "openid")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &pending.challenge())
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }

    /// Exchanges `code` at the issuer's token endpoint (with the verifier of `pending`, `client_id`
    /// and the same `redirect_uri`) and verifies the ID token it answers at time `now`: as
    /// [`Provider::verify`] does, and its `nonce` must be `pending.nonce`. Returns the ID token and its
    /// claims. A refusal by the issuer, or an unusable answer, is [`VerifyError::Discovery`]; the
    /// token's own faults are the other variants. No error contains the code or a token.
    pub async fn redeem(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        pending: &Pending,
        now: SystemTime,
    ) -> Result<(String, Claims), VerifyError> {
        let endpoints = self.inner.login_endpoints().await?;
        let url = self.endpoint("token_endpoint", endpoints.token_endpoint.as_deref())?;
        let mut form = Url::parse("form:").map_err(|e| VerifyError::Discovery(e.to_string()))?;
        form.query_pairs_mut()
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", client_id)
            .append_pair("code_verifier", &pending.verifier);
        let body = form.query().unwrap_or_default().to_owned();
        let answer = self.inner.send(&url, "POST", Some(body)).await?;
        let answer: TokenResponse = serde_json::from_slice(&answer)
            .map_err(|_| VerifyError::Discovery(format!("the answer of {url} is not a token response")))?;
        let token =
            answer.id_token.ok_or_else(|| VerifyError::Discovery(format!("the answer of {url} holds no id_token")))?;
        let claims = self.verify(&token, now).await?;
        let parsed = jwt::parse(&token)?;
        let nonce: NonceClaim =
            serde_json::from_slice(&parsed.payload).map_err(|_| VerifyError::Malformed("payload is not an object"))?;
        match nonce.nonce {
            None => Err(VerifyError::MissingClaim("nonce")),
            Some(serde_json::Value::String(n)) if n == pending.nonce => Ok((token, claims)),
            Some(_) => Err(VerifyError::InvalidClaim { claim: "nonce", reason: "is not this sign-in's" }),
        }
    }

    /// An endpoint of the discovery document, under the rules of the JWKS URI.
    fn endpoint(&self, name: &str, value: Option<&str>) -> Result<Url, VerifyError> {
        let issuer = &self.inner.settings.issuer;
        let value = value.ok_or_else(|| VerifyError::Discovery(format!("{issuer} publishes no {name}")))?;
        let rules = UrlRules { max_bytes: MAX_JWKS_URI_BYTES, allow_query: true };
        let url = check_url(value, rules).map_err(|e| VerifyError::Discovery(format!("{name} of {issuer}: {e}")))?;
        if !issuer.is_plain_http() && url.scheme() != "https" {
            return Err(VerifyError::Discovery(format!("{name} of https issuer {issuer} is not https")));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636s() {
        // RFC 7636 Appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pending::new().unwrap();
        assert_eq!(p.verifier.len(), 43);
        assert_ne!(p.verifier, p.state);
        assert_ne!(p.state, p.nonce);
        assert_eq!(format!("{p:?}"), "Pending { .. }");
    }
}
