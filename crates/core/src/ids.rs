//! Resource ids and random secrets. An id is a prefix plus 128 random bits from the OS: never
//! guessable, never reused.

/// Fills `N` bytes from the operating system's CSPRNG.
///
/// # Panics
/// When the OS has no randomness to give, which leaves nothing safe to do.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Decodes lowercase or uppercase hex; `None` on any other input.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// Id prefixes of PRODUCT.md's resource model.
pub mod prefix {
    pub const KEY: &str = "key_";
    pub const PROJECT: &str = "prj_";
    pub const FILESYSTEM: &str = "fs_";
    pub const SANDBOX: &str = "sbx_";
    pub const SECRET: &str = "sec_";
    pub const POLICY: &str = "pol_";
    /// An image, private or public.
    pub const IMAGE: &str = "img_";
    /// An agent.
    pub const AGENT: &str = "agt_";
    /// An agent's version (an uploaded bundle).
    pub const VERSION: &str = "ver_";
    /// A task of an agent.
    pub const TASK: &str = "tsk_";
    pub const REQUEST: &str = "req_";
    /// A background process of a sandbox.
    pub const PROCESS: &str = "prc_";
    /// A namespace incarnation; `_` cannot occur in a name, so no incarnation is ever a name.
    pub const INCARNATION: &str = "nsi_";
}

/// A new namespace incarnation: made each time a namespace is created, never reused.
pub fn new_incarnation() -> String {
    new_id(prefix::INCARNATION)
}

/// A new id: `prefix` and 32 hex digits of fresh randomness.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", hex(&random_bytes::<16>()))
}

/// True when `id` has the shape of an id with `prefix`. A malformed id is answered like a
/// missing one, so this only spares the store a lookup.
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = new_id(prefix::KEY);
        let b = new_id(prefix::KEY);
        assert_ne!(a, b);
        assert!(is_id(prefix::KEY, &a));
        assert!(!is_id(prefix::SANDBOX, &a));
        assert!(!is_id(prefix::KEY, "key_../../etc"));
    }

    #[test]
    fn hex_round_trip() {
        let bytes = random_bytes::<32>();
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}
