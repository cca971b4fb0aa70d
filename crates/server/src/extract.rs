//! Input: JSON bodies parsed only after authorization, with errors that name the field; path
//! and query extractors whose rejections are ordinary `invalid_request` errors; pagination.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::HeaderMap;
pub use bulkhead_api::PageParams;
use bulkhead_core::ids::{hex, unhex};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;

/// Parses a JSON request body into `T`. Wrong content type is a 415, malformed JSON, bytes after
/// the value, or a wrong field a 400 naming the field (`quotas.memory_bytes: invalid type ...`).
/// Wherever `T` has an object (a struct), the body must have one: serde's derived structs also
/// take an array of their fields in order (`{"quotas": [1000, ...]}`), which the API refuses as
/// `<path>: must be a JSON object` ([`array_for_object`]).
pub fn json<T: DeserializeOwned + Serialize>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body must be application/json, got {:?}",
            if content_type.is_empty() { "nothing" } else { content_type }
        )));
    }
    // A whole body that is an array where `T` is a struct: refused before serde reads it as
    // the struct's fields in order (where it would fail, if at all, naming a position).
    if body.trim_ascii_start().first() == Some(&b'[') && is_struct::<T>() {
        return Err(ApiError::Invalid("body: must be a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::Invalid(format!("body: {inner}"))
        } else {
            ApiError::Invalid(format!("{path}: {inner}"))
        }
    })?;
    // One JSON value and nothing after it but whitespace.
    de.end().map_err(|e| ApiError::Invalid(format!("body: {e}")))?;
    if body.contains(&b'[') {
        let sent: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| ApiError::Invalid(format!("body: {e}")))?;
        let read = serde_json::to_value(&value).map_err(|e| ApiError::Internal(format!("re-reading a body: {e}")))?;
        if let Some(path) = array_for_object(&sent, &read, "") {
            let path = if path.is_empty() { "body".to_owned() } else { path };
            return Err(ApiError::Invalid(format!("{path}: must be a JSON object")));
        }
    }
    Ok(value)
}

/// Whether `T` deserializes as a struct (serde's derived `Deserialize` of a struct asks its
/// deserializer for one; a map, a sequence or a `serde_json::Value` asks for something else).
/// Found by asking a deserializer that holds no data and only notes what it was asked for.
fn is_struct<T: DeserializeOwned>() -> bool {
    use serde::de::{Deserializer, Error, Visitor};

    #[derive(Debug)]
    struct Asked;
    impl std::fmt::Display for Asked {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Asked {}
    impl Error for Asked {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Asked
        }
    }
    struct Probe<'a>(&'a mut bool);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Asked;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Asked> {
            Err(Asked)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Asked> {
            *self.0 = true;
            Err(Asked)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut asked = false;
    let _ = T::deserialize(Probe(&mut asked));
    asked
}

/// The path (`quotas`, `egress.credentials[0]`; empty for the whole body) of the first place
/// where the body as `sent` has an array and the value as it was `read` has an object: a struct
/// that serde took from its fields in order. `None` when there is none.
pub fn array_for_object(sent: &serde_json::Value, read: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match (sent, read) {
        (Value::Array(_), Value::Object(_)) => Some(at.to_owned()),
        (Value::Object(sent), Value::Object(read)) => sent.iter().find_map(|(key, value)| {
            let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
            read.get(key).and_then(|r| array_for_object(value, r, &path))
        }),
        (Value::Array(sent), Value::Array(read)) => {
            sent.iter().zip(read).enumerate().find_map(|(i, (s, r))| array_for_object(s, r, &format!("{at}[{i}]")))
        }
        _ => None,
    }
}

/// `axum::extract::Path` whose rejection is our `invalid_request`.
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParams(v)),
            Err(e) => Err(ApiError::Invalid(format!("path: {}", e.body_text()))),
        }
    }
}

/// `axum::extract::Query` whose rejection is our `invalid_request`.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryParams(v)),
            Err(e) => Err(ApiError::Invalid(format!("query: {}", e.body_text()))),
        }
    }
}

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// The server's reading of a list's `limit` and `cursor` (the wire type is
/// [`bulkhead_api::PageParams`]).
pub trait Paging {
    /// The page size: [`DEFAULT_LIMIT`] when absent; outside 1..=[`MAX_LIMIT`] an `invalid_request`.
    fn limit(&self) -> Result<u32, ApiError>;
    /// The position a cursor of `kind` stands for; a cursor of another list is an `invalid_request`.
    fn after(&self, kind: char) -> Result<Option<String>, ApiError>;
}

impl Paging for PageParams {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::Invalid(format!("limit: must be between 1 and {MAX_LIMIT}, got {n}"))),
        }
    }

    fn after(&self, kind: char) -> Result<Option<String>, ApiError> {
        let Some(cursor) = &self.cursor else { return Ok(None) };
        decode_cursor(kind, cursor)
            .map(Some)
            .ok_or_else(|| ApiError::Invalid("cursor: not a cursor of this list".into()))
    }
}

/// An opaque cursor: the kind of list and the last position, hex-encoded.
pub fn encode_cursor(kind: char, position: &str) -> String {
    hex(format!("{kind}:{position}").as_bytes())
}

fn decode_cursor(kind: char, cursor: &str) -> Option<String> {
    if cursor.len() > 512 {
        return None;
    }
    let text = String::from_utf8(unhex(cursor)?).ok()?;
    let rest = text.strip_prefix(kind)?.strip_prefix(':')?;
    Some(rest.to_owned())
}

/// A store row that stands in a paged list: the kind of its list's cursor and its place there.
pub trait Listed {
    /// The kind a cursor of this list carries (see [`encode_cursor`]).
    const CURSOR: char;
    /// The row's position: the next page starts after it.
    fn position(&self) -> String;
}

macro_rules! listed {
    ($($row:ty => $kind:literal by $field:ident),* $(,)?) => {$(
        impl Listed for $row {
            const CURSOR: char = $kind;
            fn position(&self) -> String {
                self.$field.clone()
            }
        }
    )*};
}

listed! {
    bulkhead_store::AgentRow => 'a' by id,
    bulkhead_store::VersionRow => 'v' by id,
    bulkhead_store::TaskRow => 't' by id,
    bulkhead_store::FilesystemRow => 'f' by id,
    bulkhead_store::ImageRow => 'i' by id,
    bulkhead_store::KeyRow => 'k' by id,
    bulkhead_store::PolicyRow => 'l' by id,
    bulkhead_store::ProjectRow => 'p' by id,
    bulkhead_store::SandboxRow => 's' by id,
    bulkhead_store::SecretRow => 's' by name,
}

/// The cursor for the page after `items`, when the page was full.
pub fn next_cursor<T>(items: &[T], limit: u32, kind: char, position: impl Fn(&T) -> String) -> Option<String> {
    if items.len() < limit as usize {
        return None;
    }
    items.last().map(|last| encode_cursor(kind, &position(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_foreign_kinds() {
        let c = encode_cursor('n', "acme");
        assert_eq!(decode_cursor('n', &c).as_deref(), Some("acme"));
        assert_eq!(decode_cursor('k', &c), None);
        assert_eq!(decode_cursor('n', "zz"), None);
    }

    #[test]
    fn structs_are_told_from_values_sequences_and_maps() {
        assert!(is_struct::<bulkhead_api::CreateNamespace>());
        assert!(is_struct::<bulkhead_api::UpdateNamespace>());
        assert!(!is_struct::<serde_json::Value>());
        assert!(!is_struct::<Vec<String>>());
        assert!(!is_struct::<std::collections::BTreeMap<String, u64>>());
        assert!(!is_struct::<Option<u64>>());
    }

    #[test]
    fn a_whole_array_body_for_a_struct_is_refused_whatever_its_fields() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        for body in [&b" [\"iron\", null, null, null, {}]"[..], b"[]", b"[1]", b"\n\t[{\"name\": \"x\"}]"] {
            let e = json::<bulkhead_api::UpdateNamespace>(&headers, body).unwrap_err();
            assert!(matches!(&e, ApiError::Invalid(m) if m == "body: must be a JSON object"), "{e:?}");
            let e = json::<bulkhead_api::CreateNamespace>(&headers, body).unwrap_err();
            assert!(matches!(&e, ApiError::Invalid(m) if m == "body: must be a JSON object"), "{e:?}");
        }
        // A body whose type takes any JSON takes an array.
        assert_eq!(json::<serde_json::Value>(&headers, b"[1, 2]").unwrap(), serde_json::json!([1, 2]));
    }
}
