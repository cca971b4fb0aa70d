//! Bearer tokens. A token is 256 random bits; the store keeps only a keyed hash of it
//! (HMAC-SHA-256 under a server secret), so a copy of the database alone cannot be used to test
//! guesses, and checking a token costs one hash, not a slow password hash per request.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{hex, random_bytes};

/// Prefix of namespace API key tokens.
pub const KEY_TOKEN_PREFIX: &str = "bhk_";
/// Prefix of the platform admin token.
pub const ADMIN_TOKEN_PREFIX: &str = "bha_";
/// Prefix of a sandbox's workload token.
pub const WORKLOAD_TOKEN_PREFIX: &str = "bhw_";

/// Longest token the server will hash; anything longer cannot be one of ours.
pub const MAX_TOKEN_LEN: usize = 256;

/// A fresh token: `prefix` and 64 hex digits.
pub fn generate(prefix: &str) -> String {
    format!("{prefix}{}", hex(&random_bytes::<32>()))
}

/// Hashes tokens under the server's token key.
#[derive(Clone)]
pub struct TokenHasher {
    key: [u8; 32],
}

impl TokenHasher {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The stored form of `token`: hex of HMAC-SHA-256(key, token).
    pub fn hash(&self, token: &str) -> String {
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(token.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_keyed_and_stable() {
        let t = generate(KEY_TOKEN_PREFIX);
        let a = TokenHasher::new([1; 32]);
        let b = TokenHasher::new([2; 32]);
        assert_eq!(a.hash(&t), a.hash(&t));
        assert_ne!(a.hash(&t), b.hash(&t));
        assert!(!a.hash(&t).contains(&t[4..]));
        assert_eq!(t.len(), 4 + 64);
    }
}
