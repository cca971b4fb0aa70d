//! The claims of a token whose signature has verified: the registered ones checked (`iss`, `aud`, `exp`,
//! `nbf`, `sub`), and the identity Bulkhead maps to a principal (`sub`, `email`, groups) read out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::VerifyError;

/// Longest `sub` accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 255;

/// The identity a verified token carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The subject: unique and stable per user within the issuer. Never empty, at most 255 bytes.
    pub sub: String,
    /// `email` if it is a string. Whether the provider verified it is `email_verified`.
    pub email: Option<String>,
    /// True only if the token says `"email_verified": true`. Do not match users by an unverified email.
    pub email_verified: bool,
    /// The groups claim as configured: an array of strings, or one string as one group; absent is empty.
    pub groups: Vec<String>,
    /// Every claim of the token, as sent.
    pub raw: Map<String, Value>,
}

/// What a token's claims must say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) audience: &'a str,
    pub(crate) groups_claim: &'a str,
    pub(crate) leeway: Duration,
}

/// The registered claims, read a second time through a struct so that a payload naming one of them twice
/// is refused rather than read as whichever copy a JSON map keeps.
#[derive(Deserialize)]
#[allow(dead_code)] // Fields exist for serde's duplicate detection; the values are read from the map.
struct Registered {
    iss: Option<Value>,
    sub: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    email: Option<Value>,
    email_verified: Option<Value>,
}

pub(crate) fn check(payload: &[u8], expected: Expected<'_>, now: SystemTime) -> Result<Claims, VerifyError> {
    let raw: Map<String, Value> =
        serde_json::from_slice(payload).map_err(|_| VerifyError::Malformed("payload is not a JSON object"))?;
    serde_json::from_slice::<Registered>(payload)
        .map_err(|_| VerifyError::Malformed("payload repeats a registered claim"))?;

    match raw.get("iss") {
        Some(Value::String(iss)) if iss == expected.issuer => {}
        Some(_) => return Err(VerifyError::Issuer),
        None => return Err(VerifyError::MissingClaim("iss")),
    }
    check_audience(raw.get("aud"), expected.audience)?;

    let now = unix_seconds(now);
    let leeway = i64::try_from(expected.leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = numeric_date(&raw, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
    if now > exp.saturating_add(leeway) {
        return Err(VerifyError::Expired);
    }
    if let Some(nbf) = numeric_date(&raw, "nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(VerifyError::NotYetValid);
        }
    }

    let sub = match raw.get("sub") {
        None => return Err(VerifyError::MissingClaim("sub")),
        Some(Value::String(sub)) if sub.is_empty() => {
            return Err(VerifyError::InvalidClaim { claim: "sub", reason: "is empty" });
        }
        Some(Value::String(sub)) if sub.len() > MAX_SUBJECT_BYTES => {
            return Err(VerifyError::InvalidClaim { claim: "sub", reason: "is longer than 255 bytes" });
        }
        Some(Value::String(sub)) => sub.clone(),
        Some(_) => return Err(VerifyError::InvalidClaim { claim: "sub", reason: "is not a string" }),
    };
    let email = raw.get("email").and_then(Value::as_str).map(str::to_owned);
    let email_verified = raw.get("email_verified") == Some(&Value::Bool(true));
    let groups = groups(&raw, expected.groups_claim)?;
    Ok(Claims { sub, email, email_verified, groups, raw })
}

fn check_audience(aud: Option<&Value>, audience: &str) -> Result<(), VerifyError> {
    let found = match aud {
        None => return Err(VerifyError::MissingClaim("aud")),
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => {
            if !auds.iter().all(Value::is_string) {
                return Err(VerifyError::InvalidClaim { claim: "aud", reason: "is not a string or string array" });
            }
            auds.iter().any(|a| a.as_str() == Some(audience))
        }
        Some(_) => {
            return Err(VerifyError::InvalidClaim { claim: "aud", reason: "is not a string or string array" });
        }
    };
    if found {
        Ok(())
    } else {
        Err(VerifyError::Audience)
    }
}

/// Seconds since the epoch; a NumericDate may be fractional (RFC 7519 section 2), and is floored.
fn numeric_date(raw: &Map<String, Value>, claim: &'static str) -> Result<Option<i64>, VerifyError> {
    let Some(value) = raw.get(claim) else {
        return Ok(None);
    };
    let invalid = VerifyError::InvalidClaim { claim, reason: "is not a NumericDate" };
    let Value::Number(number) = value else {
        return Err(invalid);
    };
    if let Some(seconds) = number.as_i64() {
        return Ok(Some(seconds));
    }
    match number.as_f64() {
        // Beyond ±2^53 seconds no date is meaningful; refuse rather than round.
        Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(Some(f.floor() as i64)),
        _ => Err(invalid),
    }
}

fn unix_seconds(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The configured groups claim: a top-level claim of that exact name (names like
/// `https://example.com/groups` contain dots), else a dotted path into nested objects
/// (`realm_access.roles`).
fn groups(raw: &Map<String, Value>, claim: &str) -> Result<Vec<String>, VerifyError> {
    let value = raw.get(claim).or_else(|| {
        let mut parts = claim.split('.');
        let first = raw.get(parts.next()?)?;
        parts.try_fold(first, |value, part| value.as_object()?.get(part))
    });
    let invalid = VerifyError::InvalidClaim { claim: "groups", reason: "is not a string or string array" };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(one)) => Ok(vec![one.clone()]),
        Some(Value::Array(many)) => {
            many.iter().map(|g| g.as_str().map(str::to_owned).ok_or_else(|| invalid.clone())).collect()
        }
        Some(_) => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn expected() -> Expected<'static> {
        Expected {
            issuer: "https://idp.example.com",
            audience: "bulkhead",
            groups_claim: "groups",
            leeway: Duration::from_secs(60),
        }
    }

    fn good() -> Value {
        json!({
            "iss": "https://idp.example.com",
            "aud": "bulkhead",
            "sub": "user-1",
            "exp": NOW + 300,
            "nbf": NOW - 10,
            "email": "a@example.com",
            "email_verified": true,
            "groups": ["dev", "ops"],
        })
    }

    fn with(changes: Value) -> Value {
        let mut claims = good();
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn check_at(claims: &Value, now: i64, expected: Expected<'_>) -> Result<Claims, VerifyError> {
        let now = UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap());
        check(claims.to_string().as_bytes(), expected, now)
    }

    fn check_json(claims: &Value) -> Result<Claims, VerifyError> {
        check_at(claims, NOW, expected())
    }

    #[test]
    fn good_claims_yield_the_identity() {
        let claims = check_json(&good()).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.email.as_deref(), Some("a@example.com"));
        assert!(claims.email_verified);
        assert_eq!(claims.groups, ["dev", "ops"]);
        assert_eq!(claims.raw["nbf"], json!(NOW - 10));
    }

    #[test]
    fn issuer_must_match_exactly() {
        assert_eq!(check_json(&with(json!({"iss": "https://idp.example.com/"}))), Err(VerifyError::Issuer));
        assert_eq!(check_json(&with(json!({"iss": "https://IDP.example.com"}))), Err(VerifyError::Issuer));
        assert_eq!(check_json(&with(json!({"iss": ["https://idp.example.com"]}))), Err(VerifyError::Issuer));
        assert_eq!(check_json(&with(json!({"iss": null}))), Err(VerifyError::MissingClaim("iss")));
    }

    #[test]
    fn audience_string_or_array_must_contain_ours() {
        assert!(check_json(&with(json!({"aud": ["other", "bulkhead"]}))).is_ok());
        assert_eq!(check_json(&with(json!({"aud": "other"}))), Err(VerifyError::Audience));
        assert_eq!(check_json(&with(json!({"aud": ["other"]}))), Err(VerifyError::Audience));
        assert_eq!(check_json(&with(json!({"aud": []}))), Err(VerifyError::Audience));
        assert_eq!(check_json(&with(json!({"aud": "Bulkhead"}))), Err(VerifyError::Audience));
        assert!(matches!(check_json(&with(json!({"aud": ["bulkhead", 7]}))), Err(VerifyError::InvalidClaim { .. })));
        assert_eq!(check_json(&with(json!({"aud": null}))), Err(VerifyError::MissingClaim("aud")));
    }

    #[test]
    fn expiry_and_not_before_honour_the_leeway() {
        let exp = with(json!({"exp": NOW}));
        assert!(check_at(&exp, NOW + 60, expected()).is_ok(), "now == exp + leeway is still valid");
        assert_eq!(check_at(&exp, NOW + 61, expected()), Err(VerifyError::Expired));
        let no_leeway = Expected { leeway: Duration::ZERO, ..expected() };
        assert_eq!(check_at(&exp, NOW + 1, no_leeway), Err(VerifyError::Expired));
        assert_eq!(check_json(&with(json!({"exp": null}))), Err(VerifyError::MissingClaim("exp")));
        assert!(matches!(check_json(&with(json!({"exp": "soon"}))), Err(VerifyError::InvalidClaim { .. })));
        assert!(check_json(&with(json!({"exp": (NOW + 10) as f64 + 0.5}))).is_ok(), "fractional NumericDate");
        assert!(matches!(check_json(&with(json!({"exp": 1e300}))), Err(VerifyError::InvalidClaim { .. })));

        let nbf = with(json!({"nbf": NOW + 60}));
        assert!(check_at(&nbf, NOW, expected()).is_ok(), "now + leeway == nbf is valid");
        assert_eq!(check_at(&nbf, NOW - 1, expected()), Err(VerifyError::NotYetValid));
        assert!(check_json(&with(json!({"nbf": null}))).is_ok(), "nbf is optional");
    }

    #[test]
    fn subject_is_required_and_bounded() {
        assert_eq!(check_json(&with(json!({"sub": null}))), Err(VerifyError::MissingClaim("sub")));
        assert!(matches!(check_json(&with(json!({"sub": ""}))), Err(VerifyError::InvalidClaim { claim: "sub", .. })));
        assert!(matches!(check_json(&with(json!({"sub": 42}))), Err(VerifyError::InvalidClaim { claim: "sub", .. })));
        assert!(check_json(&with(json!({"sub": "x".repeat(255)}))).is_ok());
        assert!(matches!(
            check_json(&with(json!({"sub": "x".repeat(256)}))),
            Err(VerifyError::InvalidClaim { claim: "sub", .. })
        ));
    }

    #[test]
    fn payload_must_be_one_unambiguous_object() {
        let check_text = |text: &str| check(text.as_bytes(), expected(), UNIX_EPOCH + Duration::from_secs(NOW as u64));
        assert!(matches!(check_text("[]"), Err(VerifyError::Malformed(_))));
        assert!(matches!(check_text("not json"), Err(VerifyError::Malformed(_))));
        let good = good().to_string();
        let twice = good.replacen('{', r#"{"sub":"admin","#, 1);
        assert_eq!(check_text(&twice), Err(VerifyError::Malformed("payload repeats a registered claim")));
    }

    #[test]
    fn groups_come_from_the_configured_claim() {
        let groups = |claims: Value, claim: &str| {
            check_at(&with(claims), NOW, Expected { groups_claim: claim, ..expected() }).map(|c| c.groups)
        };
        assert_eq!(groups(json!({"groups": "solo"}), "groups").unwrap(), ["solo"]);
        assert!(groups(json!({"groups": null}), "groups").unwrap().is_empty());
        assert!(groups(json!({}), "roles").unwrap().is_empty());
        assert!(groups(json!({"groups": [1]}), "groups").is_err());
        assert!(groups(json!({"groups": {"a": 1}}), "groups").is_err());
        assert_eq!(groups(json!({"realm_access": {"roles": ["admin"]}}), "realm_access.roles").unwrap(), ["admin"]);
        assert!(groups(json!({"realm_access": ["admin"]}), "realm_access.roles").unwrap().is_empty());
        assert_eq!(groups(json!({"https://example.com/groups": ["x"]}), "https://example.com/groups").unwrap(), ["x"]);
    }

    #[test]
    fn email_is_optional_and_verified_only_when_true() {
        let claims = check_json(&with(json!({"email": null, "email_verified": null}))).unwrap();
        assert_eq!(claims.email, None);
        assert!(!claims.email_verified);
        assert!(!check_json(&with(json!({"email_verified": "true"}))).unwrap().email_verified);
    }
}
