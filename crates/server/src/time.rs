//! Time on the wire and in the store: milliseconds since the Unix epoch, and RFC 3339 in UTC.

use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 UTC time (`2030-01-01T00:00:00Z`) into milliseconds since the epoch.
pub fn parse_rfc3339(field: &str, s: &str) -> Result<i64, bulkhead_core::FieldError> {
    let t = humantime::parse_rfc3339(s).map_err(|e| {
        bulkhead_core::FieldError::new(
            field,
            format!("must be an RFC 3339 time in UTC such as 2030-01-01T00:00:00Z ({e})"),
        )
    })?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bulkhead_core::FieldError::new(field, "must be after 1970"))?;
    i64::try_from(d.as_millis()).map_err(|_| bulkhead_core::FieldError::new(field, "out of range"))
}
