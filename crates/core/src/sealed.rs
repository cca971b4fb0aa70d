//! Envelope encryption of secrets: AES-256-GCM with a fresh 96-bit nonce per seal. A value is
//! sealed under its namespace's data key; the data key is sealed under the server's master key.
//! The associated data names what a ciphertext is (`secret/<namespace>/<name>`,
//! `data-key/<namespace>`), so a sealed value moved to another row, namespace or purpose does
//! not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// A 256-bit key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a sealed value does not open: wrong key, wrong owner, or tampered")]
    Open,
    #[error("a key must be 32 bytes (64 hex digits)")]
    KeyLength,
    #[error("no randomness: {0}")]
    Random(String),
}

impl Key {
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, SealError> {
        Ok(Key(bytes.try_into().map_err(|_| SealError::KeyLength)?))
    }

    pub fn generate() -> Result<Key, SealError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(Key(k))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let cipher = Aes256Gcm::new_from_slice(&self.0).map_err(|_| SealError::KeyLength)?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let ct =
            cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad }).map_err(|_| SealError::Open)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SealError::Open);
        }
        let cipher = Aes256Gcm::new_from_slice(&self.0).map_err(|_| SealError::KeyLength)?;
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| SealError::Open)
    }
}

/// The associated data of a namespace's data key.
pub fn data_key_aad(namespace: &str) -> Vec<u8> {
    format!("data-key/{namespace}").into_bytes()
}

/// The associated data of a secret's value.
pub fn secret_aad(namespace: &str, name: &str) -> Vec<u8> {
    format!("secret/{namespace}/{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_owner() {
        let master = Key::generate().unwrap();
        let dek = Key::generate().unwrap();
        let wrapped = master.seal(dek.as_bytes(), &data_key_aad("acme")).unwrap();
        let unwrapped = Key::from_bytes(&master.open(&wrapped, &data_key_aad("acme")).unwrap()).unwrap();
        let sealed = unwrapped.seal(b"hunter2", &secret_aad("acme", "db")).unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(dek.open(&sealed, &secret_aad("acme", "db")).unwrap(), b"hunter2");
        // Another owner, another namespace, another key, a flipped bit: nothing opens.
        assert_eq!(dek.open(&sealed, &secret_aad("acme", "api")), Err(SealError::Open));
        assert_eq!(master.open(&wrapped, &data_key_aad("globex")), Err(SealError::Open));
        assert_eq!(Key::generate().unwrap().open(&sealed, &secret_aad("acme", "db")), Err(SealError::Open));
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert_eq!(dek.open(&bad, &secret_aad("acme", "db")), Err(SealError::Open));
        assert_eq!(dek.open(&sealed[..10], &secret_aad("acme", "db")), Err(SealError::Open));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(dek.seal(b"x", b"a").unwrap(), dek.seal(b"x", b"a").unwrap());
        assert_eq!(format!("{dek:?}"), "Key(..)");
    }
}
