//! Field validation shared by every resource: names, and the error that says which field failed.

use std::fmt;

/// A rejected input field: which field and why. The server turns it into a 400 `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Longest name: a DNS label, so a namespace name can become a Kubernetes namespace or a hostname.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a resource name: `[a-z0-9-]{1,63}`, starting with a letter, not ending with a hyphen.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(FieldError::new(field, format!("must be at most {MAX_NAME_LEN} characters")));
    }
    if !value.as_bytes()[0].is_ascii_lowercase() {
        return Err(FieldError::new(field, "must start with a lowercase letter"));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(FieldError::new(field, format!("may contain only a-z, 0-9 and '-', found {c:?}")));
    }
    if value.ends_with('-') {
        return Err(FieldError::new(field, "must not end with '-'"));
    }
    Ok(())
}

/// True when `value` is a syntactically valid name. Used on path segments, where a bad name is
/// answered exactly like a name that does not exist.
pub fn is_name(value: &str) -> bool {
    name("name", value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "acme", "acme-2", "a0", &"a".repeat(63)] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "1acme", "-a", "a-", "Acme", "ac me", "ac_me", "a/b", "é", &"a".repeat(64), "a\0"] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}
