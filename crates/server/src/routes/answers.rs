//! The error answers routes document in their OpenAPI `responses(...)`: the sets of
//! [`ErrorBody`] statuses that many routes share, each documented exactly as a
//! `(status = ..., body = ErrorBody)` entry would be.

use std::collections::BTreeMap;

use bulkhead_api::ErrorBody;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};

/// An `application/json` [`ErrorBody`] answer, without description, for each of `statuses`.
fn error_bodies(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build();
    let answer = ResponseBuilder::new().content("application/json", content).build();
    statuses.iter().map(|status| (status.to_string(), answer.clone().into())).collect()
}

macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal),+];)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                error_bodies(&[$($status),+])
            }
        }
    )+};
}

error_sets! {
    /// A read in a namespace any role may make: 401 unauthenticated, 404 no such namespace or thing.
    ReadErrors = [401, 404];
    /// A read or removal some roles may not make: [`ReadErrors`] and 403 forbidden.
    GuardedErrors = [401, 403, 404];
    /// A request whose input (body or query) is checked: [`GuardedErrors`] and 400 invalid.
    CheckedErrors = [400, 401, 403, 404];
    /// A change something may stand in the way of (a name or an `Idempotency-Key` in use, a
    /// state): [`CheckedErrors`] and 409 conflict.
    ConflictErrors = [400, 401, 403, 404, 409];
}
