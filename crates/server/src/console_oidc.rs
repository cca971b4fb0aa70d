//! The console's sign-in through a namespace's OpenID Connect provider: the authorization code
//! flow with PKCE (RFC 7636, `S256`) for the public client `client_id` of the namespace's
//! identity settings. The exchange happens here, on the server: the page never calls the
//! provider (its CSP stays `connect-src 'self'`).
//!
//! - `GET /console/oidc/start?namespace=NS` (no token): when NS has identity settings with a
//!   `client_id`, a fresh [`Pending`] (code verifier, `state`, `nonce`) is kept for
//!   [`SIGN_IN_TTL`] in a map of at most [`MAX_SIGN_INS`] entries, at most
//!   [`MAX_SIGN_INS_PER_NAMESPACE`] of one namespace, and the answer is `302` to the provider's
//!   `authorization_endpoint`. The route needs no token, so anyone may flood it: a namespace at
//!   its share is refused (`busy`) before its provider is asked, and a full map makes room by
//!   dropping the oldest sign-in of the namespace that holds the most, so a flood aimed at one
//!   namespace never pushes out another's sign-ins. A namespace without console sign-in and one that does
//!   not exist get the same answer, `302` to the console's sign-in page with a message, so the
//!   route tells nobody which namespaces exist.
//! - `GET /console/oidc/callback?code&state`: the `state` is looked up and removed (single use),
//!   the code is exchanged at the provider's `token_endpoint` with the verifier, and the ID token
//!   is verified as an API bearer token is (issuer, audience, signature, expiry) plus its `nonce`.
//!   The answer is `303` to `/console/#sso?namespace=NS&token=ID_TOKEN`: the token travels in the
//!   URL fragment, which a browser never sends to a server, and the console moves it into the
//!   tab's sessionStorage and clears the fragment at once. The server logs request paths without
//!   their query, and never a token. Every failure ends on the console's sign-in page with a
//!   plain message (`/console/#signin-error=<reason>`), never a token or provider text.
//!
//! The callback URL is `<public URL>/console/oidc/callback`: the `--public-url` of `serve`, or
//! `http://<listen address>`; never derived from the request's `Host`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bulkhead_oidc::Pending;
use tokio::time::Instant;

use crate::state::AppState;

/// How long a started sign-in waits for the browser to come back.
pub const SIGN_IN_TTL: Duration = Duration::from_secs(300);
/// Sign-ins waiting at once, over all namespaces; when full, one more makes room
/// ([`SignIns::insert`]).
pub const MAX_SIGN_INS: usize = 10_000;
/// Sign-ins of one namespace waiting at once; one more is refused until some finish or expire.
pub const MAX_SIGN_INS_PER_NAMESPACE: usize = 1_000;

/// One started sign-in, kept until its `state` comes back or it expires.
struct SignIn {
    namespace: String,
    client_id: String,
    redirect_uri: String,
    pending: Pending,
    at: Instant,
}

/// The sign-ins waiting for their browser, by `state`.
#[derive(Default)]
pub struct SignIns {
    waiting: Mutex<Waiting>,
}

/// The map and how many of it each namespace holds.
#[derive(Default)]
struct Waiting {
    by_state: HashMap<String, SignIn>,
    per_namespace: HashMap<String, usize>,
}

impl Waiting {
    fn count(&self, namespace: &str) -> usize {
        self.per_namespace.get(namespace).copied().unwrap_or(0)
    }

    fn add(&mut self, s: SignIn) {
        *self.per_namespace.entry(s.namespace.clone()).or_default() += 1;
        if let Some(old) = self.by_state.insert(s.pending.state.clone(), s) {
            self.forget(&old.namespace);
        }
    }

    fn remove(&mut self, state: &str) -> Option<SignIn> {
        let s = self.by_state.remove(state)?;
        self.forget(&s.namespace);
        Some(s)
    }

    fn forget(&mut self, namespace: &str) {
        if let Some(n) = self.per_namespace.get_mut(namespace) {
            *n -= 1;
            if *n == 0 {
                self.per_namespace.remove(namespace);
            }
        }
    }

    /// Drops the expired sign-ins.
    fn drop_expired(&mut self) {
        let expired: Vec<String> =
            self.by_state.iter().filter(|(_, s)| s.at.elapsed() >= SIGN_IN_TTL).map(|(k, _)| k.clone()).collect();
        for state in expired {
            self.remove(&state);
        }
    }

    /// Drops the oldest sign-in of the namespace that holds the most.
    fn drop_one_of_the_largest(&mut self) {
        let Some(largest) = self.per_namespace.iter().max_by_key(|(_, n)| **n).map(|(ns, _)| ns.clone()) else {
            return;
        };
        let oldest = self
            .by_state
            .iter()
            .filter(|(_, s)| s.namespace == largest)
            .min_by_key(|(_, s)| s.at)
            .map(|(state, _)| state.clone());
        if let Some(state) = oldest {
            self.remove(&state);
        }
    }
}

impl SignIns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `s` (dropping the expired first); false when its namespace has
    /// [`MAX_SIGN_INS_PER_NAMESPACE`] waiting. With [`MAX_SIGN_INS`] waiting, the oldest
    /// sign-in of the namespace that holds the most goes to make room.
    fn insert(&self, s: SignIn) -> bool {
        let mut waiting = self.lock();
        if waiting.by_state.len() >= MAX_SIGN_INS || waiting.count(&s.namespace) >= MAX_SIGN_INS_PER_NAMESPACE {
            waiting.drop_expired();
        }
        if waiting.count(&s.namespace) >= MAX_SIGN_INS_PER_NAMESPACE {
            return false;
        }
        while waiting.by_state.len() >= MAX_SIGN_INS {
            waiting.drop_one_of_the_largest();
        }
        waiting.add(s);
        true
    }

    /// Whether `namespace` has [`MAX_SIGN_INS_PER_NAMESPACE`] waiting, the expired ones
    /// dropped first.
    fn refuses(&self, namespace: &str) -> bool {
        let mut waiting = self.lock();
        if waiting.count(namespace) >= MAX_SIGN_INS_PER_NAMESPACE {
            waiting.drop_expired();
        }
        waiting.count(namespace) >= MAX_SIGN_INS_PER_NAMESPACE
    }

    /// Takes the sign-in of `state` out: it can be used once, and not after [`SIGN_IN_TTL`].
    fn take(&self, state: &str) -> Option<SignIn> {
        self.lock().remove(state).filter(|s| s.at.elapsed() < SIGN_IN_TTL)
    }

    /// Sign-ins waiting now (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.lock().by_state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The routes `/console/oidc/start` and `/console/oidc/callback`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/console/oidc/start", get(start)).route("/console/oidc/callback", get(callback))
}

/// This server's URL as a browser reaches it, without a trailing slash.
pub fn public_url(state: &AppState) -> String {
    match state.identity.public_url.get() {
        Some(url) => url.clone(),
        None => format!("http://{}", state.config.listen),
    }
}

/// Checks a `--public-url`: http or https, a host, no query or fragment, no user. Returns it
/// without a trailing slash.
pub fn parse_public_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("{text:?}: a URL with a host and no query, fragment or user"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Why a sign-in ended on the sign-in page; the console shows a plain message for each.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// No such namespace, or no console sign-in for it (the same answer for both).
    Unavailable,
    /// Too many sign-ins are waiting.
    Busy,
    /// The provider could not be reached or answered something unusable.
    Provider,
    /// The `state` is unknown, expired or used.
    Expired,
    /// The user refused, or the provider did.
    Refused,
    /// The ID token did not verify (issuer, audience, signature, expiry, nonce).
    Token,
    /// The user is in no group that maps to a role of the namespace.
    NoRole,
}

impl Failure {
    fn code(self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::Busy => "busy",
            Failure::Provider => "provider",
            Failure::Expired => "expired",
            Failure::Refused => "refused",
            Failure::Token => "token",
            Failure::NoRole => "no_role",
        }
    }
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = status.into_response();
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => return fail(Failure::Provider),
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::console::secure(r)
}

fn fail(why: Failure) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    let location = format!("/console/#signin-error={}", why.code());
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    crate::console::secure(r)
}

async fn start(State(state): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(namespace) = q.get("namespace").filter(|ns| bulkhead_core::validate::is_name(ns)) else {
        return fail(Failure::Unavailable);
    };
    let identity = match crate::identity::provider(&state, namespace).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return fail(Failure::Unavailable),
        Err(e) => {
            tracing::warn!(namespace, error = %e, "console sign-in: cannot read the namespace's identity");
            return fail(Failure::Unavailable);
        }
    };
    let Some(client_id) = identity.config.client_id.clone() else {
        return fail(Failure::Unavailable);
    };
    // Refused before the provider is asked, so a flood of starts asks it nothing.
    if state.identity.sign_ins.refuses(namespace) {
        return fail(Failure::Busy);
    }
    let pending = match Pending::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "console sign-in");
            return fail(Failure::Provider);
        }
    };
    let redirect_uri = format!("{}/console/oidc/callback", public_url(&state));
    let url = match identity.provider.authorization_request(&client_id, &redirect_uri, &pending).await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(namespace, error = %e, "console sign-in: the namespace's identity provider failed");
            return fail(Failure::Provider);
        }
    };
    let sign_in = SignIn { namespace: namespace.clone(), client_id, redirect_uri, pending, at: Instant::now() };
    if !state.identity.sign_ins.insert(sign_in) {
        return fail(Failure::Busy);
    }
    redirect(StatusCode::FOUND, url.as_str())
}

async fn callback(State(state): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(sign_in) = q.get("state").and_then(|s| state.identity.sign_ins.take(s)) else {
        return fail(Failure::Expired);
    };
    let namespace = sign_in.namespace.as_str();
    let code = match (q.get("code"), q.get("error")) {
        (Some(code), None) if !code.is_empty() && code.len() <= 4096 => code,
        _ => {
            tracing::info!(namespace, "console sign-in: the identity provider did not sign the user in");
            return fail(Failure::Refused);
        }
    };
    // The settings of now: a provider changed or removed since the start is not used.
    let identity = match crate::identity::provider(&state, namespace).await {
        Ok(Some(identity)) if identity.config.client_id.as_deref() == Some(sign_in.client_id.as_str()) => identity,
        Ok(_) => return fail(Failure::Unavailable),
        Err(e) => {
            tracing::warn!(namespace, error = %e, "console sign-in: cannot read the namespace's identity");
            return fail(Failure::Unavailable);
        }
    };
    let redeemed = identity
        .provider
        .redeem(code, &sign_in.client_id, &sign_in.redirect_uri, &sign_in.pending, SystemTime::now())
        .await;
    let (token, claims) = match redeemed {
        Ok(r) => r,
        Err(e) if e.is_provider_failure() => {
            tracing::warn!(namespace, error = %e, "console sign-in: the code exchange failed");
            return fail(Failure::Provider);
        }
        Err(e) => {
            tracing::info!(namespace, error = %e, "console sign-in: refused the ID token");
            return fail(Failure::Token);
        }
    };
    let mappings: &BTreeMap<String, bulkhead_api::Role> = &identity.config.role_mappings;
    let Some(role) = crate::identity::role_for(mappings, &claims.groups) else {
        tracing::info!(namespace, sub = %claims.sub, "console sign-in: the user's groups map to no role");
        return fail(Failure::NoRole);
    };
    tracing::info!(namespace, sub = %claims.sub, role = ?role, "console sign-in through the identity provider");
    let Ok(mut fragment) = reqwest::Url::parse("fragment:") else {
        return fail(Failure::Provider);
    };
    fragment.query_pairs_mut().append_pair("namespace", namespace).append_pair("token", &token);
    let location = format!("/console/#sso?{}", fragment.query().unwrap_or_default());
    redirect(StatusCode::SEE_OTHER, &location)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_in(state: &str) -> SignIn {
        sign_in_of("acme", state)
    }

    fn sign_in_of(namespace: &str, state: &str) -> SignIn {
        let mut pending = Pending::new().unwrap();
        pending.state = state.to_owned();
        SignIn {
            namespace: namespace.into(),
            client_id: "console".into(),
            redirect_uri: "http://127.0.0.1:7070/console/oidc/callback".into(),
            pending,
            at: Instant::now(),
        }
    }

    #[test]
    fn a_sign_in_is_taken_once() {
        let waiting = SignIns::default();
        assert!(waiting.insert(sign_in("s1")));
        assert!(waiting.take("s2").is_none());
        assert_eq!(waiting.take("s1").unwrap().namespace, "acme");
        assert!(waiting.take("s1").is_none());
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_sign_in_expires_and_a_namespace_has_a_bounded_share() {
        // Started as long ago as a sign-in may wait: no clock needs to move.
        let aged = |state: &str| {
            let mut s = sign_in(state);
            s.at = Instant::now().checked_sub(SIGN_IN_TTL).expect("the clock is past the TTL");
            s
        };
        let waiting = SignIns::default();
        assert!(waiting.insert(aged("old")));
        assert!(waiting.take("old").is_none(), "expired");
        for i in 0..MAX_SIGN_INS_PER_NAMESPACE {
            assert!(waiting.insert(aged(&format!("s{i}"))));
        }
        // Its share full of expired ones: they are dropped to make room.
        assert!(!waiting.refuses("acme"));
        assert!(waiting.is_empty());
        for i in 0..MAX_SIGN_INS_PER_NAMESPACE {
            assert!(waiting.insert(sign_in(&format!("s{i}"))));
        }
        assert!(waiting.refuses("acme"));
        assert!(!waiting.insert(sign_in("one-more")));
        assert!(waiting.take("one-more").is_none());
        assert_eq!(waiting.len(), MAX_SIGN_INS_PER_NAMESPACE);
        // Another namespace is not refused.
        assert!(!waiting.refuses("other"));
        assert!(waiting.insert(sign_in_of("other", "o1")));
        assert!(waiting.take("o1").is_some());
    }

    /// A flood over many namespaces fills the map; each new sign-in then pushes out the oldest
    /// of the namespace holding the most, never a quiet namespace's.
    #[test]
    fn a_full_map_makes_room_from_the_namespace_that_holds_the_most() {
        let waiting = SignIns::default();
        assert!(waiting.insert(sign_in_of("quiet", "q1")));
        let flooders = MAX_SIGN_INS / MAX_SIGN_INS_PER_NAMESPACE;
        let mut n = 0;
        'fill: for f in 0..flooders {
            for i in 0..MAX_SIGN_INS_PER_NAMESPACE {
                if waiting.len() == MAX_SIGN_INS {
                    break 'fill;
                }
                assert!(waiting.insert(sign_in_of(&format!("flood{f}"), &format!("f{f}-{i}"))));
                n += 1;
            }
        }
        assert_eq!(waiting.len(), MAX_SIGN_INS, "{n} flood sign-ins");
        // Full: a sign-in of yet another namespace makes room, and the quiet one's stays.
        assert!(waiting.insert(sign_in_of("late", "l1")));
        assert_eq!(waiting.len(), MAX_SIGN_INS);
        // The room came from a flooding namespace at its full share: the last one filled had one
        // less from the start, and one more gave one up.
        let counts: Vec<usize> = (0..flooders).map(|f| waiting.lock().count(&format!("flood{f}"))).collect();
        let short = counts.iter().filter(|c| **c == MAX_SIGN_INS_PER_NAMESPACE - 1).count();
        assert_eq!(short, 2, "{counts:?}");
        assert!(waiting.take("q1").is_some(), "the quiet namespace's sign-in was pushed out");
        assert!(waiting.take("l1").is_some());
    }

    #[test]
    fn public_urls() {
        assert_eq!(parse_public_url("https://bulkhead.example.com/").unwrap(), "https://bulkhead.example.com");
        assert_eq!(parse_public_url("http://10.0.0.5:7070").unwrap(), "http://10.0.0.5:7070");
        assert_eq!(parse_public_url("https://example.com/bulkhead/").unwrap(), "https://example.com/bulkhead");
        for bad in [
            "ftp://example.com",
            "https://example.com/?x=1",
            "https://example.com/#f",
            "https://u@example.com",
            "example.com",
            "",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }
}
