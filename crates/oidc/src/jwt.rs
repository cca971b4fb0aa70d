//! Compact JWS parsing and signature checks. Exactly two algorithms exist here, RS256 and ES256; everything
//! else (`none`, the HMAC family, RSA-PSS, other curves) is refused while reading the header, before any key
//! is looked at or fetched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use serde::Deserialize;

use crate::jwks::{Key, Material};
use crate::{sanitize, VerifyError};

/// Longest bearer token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The signature algorithms Bulkhead accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256, the signature as the fixed 64-byte `r || s`.
    Es256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }

    /// Exact, case-sensitive match (RFC 7515 names are case-sensitive; `rs256` is not RS256).
    pub fn from_name(name: &str) -> Result<Algorithm, VerifyError> {
        match name {
            "RS256" => Ok(Algorithm::Rs256),
            "ES256" => Ok(Algorithm::Es256),
            other => Err(VerifyError::Algorithm(sanitize(other))),
        }
    }
}

/// Strict base64url: the URL-safe alphabet, no padding, no stray bits.
pub(crate) fn b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s)
}

#[cfg(test)]
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// The header fields we read. A duplicated `alg` or `kid` fails to parse (serde refuses duplicate fields),
/// so no two readers of the same header can disagree on them.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub(crate) struct Parsed<'t> {
    pub(crate) header: Header,
    /// `BASE64URL(header) "." BASE64URL(payload)`, the bytes the signature covers.
    pub(crate) signing_input: &'t [u8],
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(VerifyError::Malformed("not three dot-separated segments"));
    };
    let header_json = b64(header_b64).map_err(|_| VerifyError::Malformed("header is not base64url"))?;
    let raw: RawHeader = serde_json::from_slice(&header_json)
        .map_err(|_| VerifyError::Malformed("header is not a JSON object with a string alg"))?;
    let alg = Algorithm::from_name(&raw.alg)?;
    // RFC 7515 section 4.1.11: extensions we do not understand must be refused, and we understand none.
    if raw.crit.is_some() {
        return Err(VerifyError::Malformed("header has crit extensions"));
    }
    let payload = b64(payload_b64).map_err(|_| VerifyError::Malformed("payload is not base64url"))?;
    let signature = b64(signature_b64).map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
    if signature.is_empty() {
        return Err(VerifyError::Malformed("signature is empty"));
    }
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    Ok(Parsed { header: Header { alg, kid: raw.kid }, signing_input, payload, signature })
}

/// Checks the signature with `key`, which [`crate::jwks::KeySet::select`] chose for this algorithm.
pub(crate) fn verify_signature(parsed: &Parsed<'_>, key: &Key) -> Result<(), VerifyError> {
    let verified = match (parsed.header.alg, &key.material) {
        (Algorithm::Rs256, Material::Rsa { n, e }) => {
            RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, parsed.signing_input, &parsed.signature)
        }
        (Algorithm::Es256, Material::EcP256 { point }) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(parsed.signing_input, &parsed.signature)
        }
        (alg, _) => return Err(VerifyError::KeyUnusable(format!("key does not fit {}", alg.as_str()))),
    };
    verified.map_err(|_| VerifyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str, signature: &[u8]) -> String {
        format!("{}.{}.{}", b64_encode(header.as_bytes()), b64_encode(payload.as_bytes()), b64_encode(signature))
    }

    #[test]
    fn only_rs256_and_es256_are_accepted() {
        for refused in [
            "none", "None", "NONE", "", "HS256", "HS384", "HS512", "PS256", "RS384", "ES384", "ES512", "EdDSA",
            "rs256", "RS256 ", "ES256K",
        ] {
            let t = token(&format!(r#"{{"alg":{refused:?},"kid":"k"}}"#), "{}", b"sig");
            assert_eq!(parse(&t).unwrap_err(), VerifyError::Algorithm(refused.into()), "{refused:?}");
        }
        for accepted in ["RS256", "ES256"] {
            let t = token(&format!(r#"{{"alg":{accepted:?},"kid":"k"}}"#), "{}", b"sig");
            let parsed = parse(&t).unwrap();
            assert_eq!(parsed.header.alg.as_str(), accepted);
            assert_eq!(parsed.header.kid.as_deref(), Some("k"));
        }
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        // `alg: none` with the empty third segment, and without it.
        let t = format!("{}.{}.", b64_encode(br#"{"alg":"none"}"#), b64_encode(b"{}"));
        assert_eq!(parse(&t).unwrap_err(), VerifyError::Algorithm("none".into()));
        let t = format!("{}.{}", b64_encode(br#"{"alg":"none"}"#), b64_encode(b"{}"));
        assert!(matches!(parse(&t).unwrap_err(), VerifyError::Malformed(_)));
        // An accepted alg with no signature at all.
        let t = format!("{}.{}.", b64_encode(br#"{"alg":"RS256"}"#), b64_encode(b"{}"));
        assert_eq!(parse(&t).unwrap_err(), VerifyError::Malformed("signature is empty"));
    }

    #[test]
    fn structure_is_strict() {
        let good = token(r#"{"alg":"ES256"}"#, "{}", b"sig");
        assert!(parse(&good).is_ok());
        let malformed = |t: &str| matches!(parse(t), Err(VerifyError::Malformed(_)));
        assert!(malformed(""));
        assert!(malformed("a.b"));
        assert!(malformed(&format!("{good}.x")));
        assert!(malformed(&format!("{good}=")), "padding");
        assert!(malformed(&good.replacen('.', "=.", 1)), "padding in the header");
        assert!(malformed(&format!("{good} ")), "whitespace");
        assert!(malformed(&token(r#"{"alg":"ES256"}"#, "{}", b"s?>").replace('_', "/").replace('-', "+")));
        assert!(malformed(&format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(b"[\"ES256\"]"))));
        assert!(malformed(&token(r#"{"alg":"ES256","alg":"RS256"}"#, "{}", b"sig")), "duplicate alg");
        assert!(malformed(&token(r#"{"alg":"ES256","kid":5}"#, "{}", b"sig")));
        assert!(malformed(&token(r#"{"alg":"ES256","crit":["b64"],"b64":false}"#, "{}", b"sig")));
        // "AB" is one byte plus four bits that must be zero; `B` sets one of them.
        assert!(malformed(&format!("{}.e30.AB", b64_encode(br#"{"alg":"ES256"}"#))), "non-canonical trailing bits");
        let huge = token(r#"{"alg":"ES256"}"#, &"x".repeat(MAX_TOKEN_BYTES), b"sig");
        assert_eq!(parse(&huge).unwrap_err(), VerifyError::TooLarge);
    }

    #[test]
    fn signing_input_is_the_first_two_segments() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"sub":"x"}"#, b"sig");
        let parsed = parse(&t).unwrap();
        let dot = t.rfind('.').unwrap();
        assert_eq!(parsed.signing_input, &t.as_bytes()[..dot]);
        assert_eq!(parsed.payload, br#"{"sub":"x"}"#);
        assert_eq!(parsed.signature, b"sig");
    }
}
