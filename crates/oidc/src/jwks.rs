//! The issuer's JSON Web Key Set, parsed once per fetch into the key material `ring` verifies with, and the
//! rule that picks the one key a token may be checked against.

use serde::Deserialize;

use crate::jwt::{b64, Algorithm};
use crate::{sanitize, VerifyError};

/// Smallest RSA modulus accepted, in bits.
pub(crate) const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus `ring` verifies with, in bits.
const MAX_RSA_BITS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    kid: Option<String>,
    alg: Option<String>,
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    pub(crate) material: Material,
}

/// What a JWK holds, already decoded; a key Bulkhead will not verify with keeps the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Material {
    /// Big-endian modulus without leading zero bytes, and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `0x04 || x || y`.
    EcP256 {
        point: Vec<u8>,
    },
    Unusable(String),
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document. Entries that are not JWK objects at all are skipped (and counted in the
    /// returned number); keys of types we do not verify with are kept as unusable, so a token naming one
    /// gets a precise error instead of "unknown key".
    pub(crate) fn from_json(body: &[u8]) -> Result<(KeySet, usize), String> {
        let raw: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut skipped = 0;
        let mut keys = Vec::with_capacity(raw.keys.len());
        for value in raw.keys {
            match serde_json::from_value::<RawKey>(value) {
                Ok(raw_key) => keys.push(Key::from_raw(raw_key)),
                Err(_) => skipped += 1,
            }
        }
        Ok((KeySet { keys }, skipped))
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key a token with this header must verify against. [`VerifyError::UnknownKey`] (and only that)
    /// means a fresher key set might know the key.
    pub(crate) fn select(&self, alg: Algorithm, kid: Option<&str>) -> Result<&Key, VerifyError> {
        let Some(kid) = kid else {
            return match self.keys.as_slice() {
                [] => Err(VerifyError::UnknownKey { kid: None }),
                [only] => only.check_usable_for(alg).map(|()| only),
                _ => Err(VerifyError::MissingKeyId(self.keys.len())),
            };
        };
        let mut first_refusal = None;
        for key in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
            match key.check_usable_for(alg) {
                Ok(()) => return Ok(key),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        Err(first_refusal.unwrap_or_else(|| VerifyError::UnknownKey { kid: Some(sanitize(kid)) }))
    }
}

impl Key {
    fn from_raw(raw: RawKey) -> Key {
        let material = match raw.kty.as_str() {
            "RSA" => rsa_material(raw.n.as_deref(), raw.e.as_deref()),
            "EC" => ec_material(raw.crv.as_deref(), raw.x.as_deref(), raw.y.as_deref()),
            other => Material::Unusable(format!("key type {:?} is not supported", sanitize(other))),
        };
        Key { kid: raw.kid, alg: raw.alg, use_: raw.use_, key_ops: raw.key_ops, material }
    }

    fn check_usable_for(&self, alg: Algorithm) -> Result<(), VerifyError> {
        let refuse = |reason: String| Err(VerifyError::KeyUnusable(reason));
        if let Some(use_) = &self.use_ {
            if use_ != "sig" {
                return refuse(format!("key use is {:?}, not \"sig\"", sanitize(use_)));
            }
        }
        if let Some(ops) = &self.key_ops {
            if !ops.iter().any(|op| op == "verify") {
                return refuse("key_ops does not include \"verify\"".into());
            }
        }
        if let Some(key_alg) = &self.alg {
            if key_alg != alg.as_str() {
                return refuse(format!("key is for {:?}, the token says {}", sanitize(key_alg), alg.as_str()));
            }
        }
        match (&self.material, alg) {
            (Material::Rsa { .. }, Algorithm::Rs256) | (Material::EcP256 { .. }, Algorithm::Es256) => Ok(()),
            (Material::Unusable(reason), _) => refuse(reason.clone()),
            (Material::Rsa { .. }, _) => refuse(format!("an RSA key cannot verify {}", alg.as_str())),
            (Material::EcP256 { .. }, _) => refuse(format!("an EC P-256 key cannot verify {}", alg.as_str())),
        }
    }
}

fn rsa_material(n: Option<&str>, e: Option<&str>) -> Material {
    let (Some(n), Some(e)) = (n, e) else {
        return Material::Unusable("RSA key lacks n or e".into());
    };
    let (Ok(n), Ok(e)) = (b64(n), b64(e)) else {
        return Material::Unusable("RSA key n or e is not base64url".into());
    };
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let bits = bit_length(&n);
    if bits < MIN_RSA_BITS {
        return Material::Unusable(format!("RSA key of {bits} bits is under {MIN_RSA_BITS}"));
    }
    if bits > MAX_RSA_BITS {
        return Material::Unusable(format!("RSA key of {bits} bits is over {MAX_RSA_BITS}"));
    }
    if e.is_empty() {
        return Material::Unusable("RSA key exponent is zero".into());
    }
    Material::Rsa { n, e }
}

fn ec_material(crv: Option<&str>, x: Option<&str>, y: Option<&str>) -> Material {
    if crv != Some("P-256") {
        return Material::Unusable(format!("EC curve {:?} is not supported (only P-256)", crv.map(sanitize)));
    }
    let (Some(x), Some(y)) = (x, y) else {
        return Material::Unusable("EC key lacks x or y".into());
    };
    let (Ok(x), Ok(y)) = (b64(x), b64(y)) else {
        return Material::Unusable("EC key x or y is not base64url".into());
    };
    // RFC 7518 section 6.2.1.2: the full field length, leading zeros included.
    if x.len() != 32 || y.len() != 32 {
        return Material::Unusable("EC P-256 coordinates must be 32 bytes each".into());
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Material::EcP256 { point }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        None => 0,
        Some(first) => (big_endian.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::b64_encode;

    fn rsa_jwk(bits: usize, extra: serde_json::Value) -> serde_json::Value {
        let mut n = vec![0xC5u8; bits / 8];
        n[bits / 8 - 1] |= 1;
        let mut jwk = serde_json::json!({"kty": "RSA", "n": b64_encode(&n), "e": "AQAB"});
        if let (Some(jwk), Some(extra)) = (jwk.as_object_mut(), extra.as_object()) {
            jwk.extend(extra.clone());
        }
        jwk
    }

    fn set(keys: Vec<serde_json::Value>) -> KeySet {
        KeySet::from_json(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap().0
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let keys = set(vec![rsa_jwk(1024, serde_json::json!({"kid": "a"}))]);
        let err = keys.select(Algorithm::Rs256, Some("a")).unwrap_err();
        assert_eq!(err, VerifyError::KeyUnusable("RSA key of 1024 bits is under 2048".into()));
        let keys = set(vec![rsa_jwk(2048, serde_json::json!({"kid": "a"}))]);
        assert!(keys.select(Algorithm::Rs256, Some("a")).is_ok());
    }

    #[test]
    fn leading_zero_bytes_do_not_count_as_bits() {
        let mut n = vec![0u8; 1];
        n.extend(vec![0x01u8; 255]);
        let keys = set(vec![serde_json::json!({"kty": "RSA", "n": b64_encode(&n), "e": "AQAB"})]);
        // 255 bytes with a top byte of 0x01 is 2033 bits.
        assert_eq!(
            keys.select(Algorithm::Rs256, None).unwrap_err(),
            VerifyError::KeyUnusable("RSA key of 2033 bits is under 2048".into())
        );
    }

    #[test]
    fn key_type_alg_and_use_must_fit_the_token() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "ec", "x": b64_encode(&[1; 32]), "y": b64_encode(&[2; 32])});
        let keys = set(vec![
            rsa_jwk(2048, serde_json::json!({"kid": "enc", "use": "enc"})),
            rsa_jwk(2048, serde_json::json!({"kid": "ps", "alg": "PS256"})),
            rsa_jwk(2048, serde_json::json!({"kid": "ops", "key_ops": ["encrypt"]})),
            rsa_jwk(2048, serde_json::json!({"kid": "rsa", "alg": "RS256", "use": "sig"})),
            ec,
            serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"}),
            serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            serde_json::json!("not a key"),
        ]);
        assert_eq!(keys.len(), 7);
        let unusable = |kid, alg| match keys.select(alg, Some(kid)) {
            Err(VerifyError::KeyUnusable(reason)) => reason,
            other => panic!("{kid}: {other:?}"),
        };
        assert_eq!(unusable("enc", Algorithm::Rs256), "key use is \"enc\", not \"sig\"");
        assert_eq!(unusable("ps", Algorithm::Rs256), "key is for \"PS256\", the token says RS256");
        assert_eq!(unusable("ops", Algorithm::Rs256), "key_ops does not include \"verify\"");
        assert_eq!(unusable("rsa", Algorithm::Es256), "key is for \"RS256\", the token says ES256");
        assert_eq!(unusable("ec", Algorithm::Rs256), "an EC P-256 key cannot verify RS256");
        assert!(unusable("p384", Algorithm::Es256).contains("P-384"));
        assert_eq!(unusable("hmac", Algorithm::Rs256), "key type \"oct\" is not supported");
        assert!(keys.select(Algorithm::Rs256, Some("rsa")).is_ok());
        assert!(keys.select(Algorithm::Es256, Some("ec")).is_ok());
        assert_eq!(
            keys.select(Algorithm::Rs256, Some("nope")).unwrap_err(),
            VerifyError::UnknownKey { kid: Some("nope".into()) }
        );
        assert_eq!(keys.select(Algorithm::Rs256, None).unwrap_err(), VerifyError::MissingKeyId(7));
    }

    #[test]
    fn a_lone_key_serves_tokens_without_kid() {
        let keys = set(vec![rsa_jwk(2048, serde_json::json!({"kid": "only"}))]);
        assert!(keys.select(Algorithm::Rs256, None).is_ok());
        assert_eq!(set(vec![]).select(Algorithm::Rs256, None).unwrap_err(), VerifyError::UnknownKey { kid: None });
    }

    #[test]
    fn ec_coordinates_must_be_full_length() {
        let keys = set(vec![
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64_encode(&[1; 31]), "y": b64_encode(&[2; 32])}),
        ]);
        assert_eq!(
            keys.select(Algorithm::Es256, None).unwrap_err(),
            VerifyError::KeyUnusable("EC P-256 coordinates must be 32 bytes each".into())
        );
    }
}
