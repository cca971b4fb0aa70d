//! One namespace's identity provider: OIDC discovery, the cached JWKS, and token verification against it.
//!
//! The JWKS is fetched lazily (first verify) or by [`Provider::discover`], reused for `jwks_ttl`, and
//! refetched early when a token names a key it lacks (the provider rotated) — but never more than once per
//! `min_refetch_interval`, however many such tokens arrive: tokens are attacker input, fetches are ours.

use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_LENGTH};
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::claims::{self, Claims, Expected};
use crate::issuer::{check_url, IssuerUrl, UrlRules, MAX_JWKS_URI_BYTES};
use crate::jwks::KeySet;
use crate::outbound::Outbound;
use crate::{jwt, VerifyError};

/// Largest discovery document or JWKS read.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Time allowed for one discovery or JWKS request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A namespace's identity settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    pub issuer: IssuerUrl,
    /// The value `aud` must be or contain (usually the client id registered at the provider).
    pub audience: String,
    /// The claim holding the user's groups; a dotted path (`realm_access.roles`) reaches into objects.
    pub groups_claim: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderOptions {
    /// How long a fetched JWKS is used before it is fetched again.
    pub jwks_ttl: Duration,
    /// The least time between two fetches caused by tokens (unknown `kid`, expired cache).
    pub min_refetch_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            jwks_ttl: Duration::from_secs(600),
            min_refetch_interval: Duration::from_secs(30),
            leeway: Duration::from_secs(60),
        }
    }
}

/// Verifies bearer tokens of one issuer. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Provider {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) settings: OidcSettings,
    pub(crate) outbound: Outbound,
    pub(crate) options: ProviderOptions,
    cache: RwLock<Cache>,
    /// Held while fetching, so concurrent verifies that need a fetch share one.
    fetching: Mutex<()>,
    jwks_fetches: AtomicU64,
    discovery_fetches: AtomicU64,
    /// The sign-in endpoints of the last discovery document fetched for a sign-in, and when.
    pub(crate) login_endpoints: Mutex<Option<(Arc<LoginEndpoints>, Instant)>>,
}

/// The endpoints of the authorization code flow, as the discovery document names them.
#[derive(Debug)]
pub(crate) struct LoginEndpoints {
    pub(crate) authorization_endpoint: Option<String>,
    pub(crate) token_endpoint: Option<String>,
}

#[derive(Default)]
struct Cache {
    keys: Option<Arc<Snapshot>>,
    jwks_uri: Option<(Url, Instant)>,
    last_attempt: Option<Instant>,
}

struct Snapshot {
    keys: KeySet,
    fetched_at: Instant,
    generation: u64,
}

#[derive(Deserialize)]
pub(crate) struct DiscoveryDocument {
    pub(crate) issuer: String,
    pub(crate) jwks_uri: String,
    /// Where a browser signs in (the authorization code flow); absent at a provider without one.
    #[serde(default)]
    pub(crate) authorization_endpoint: Option<String>,
    /// Where a code is exchanged for tokens.
    #[serde(default)]
    pub(crate) token_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Want {
    /// Any key set younger than the TTL.
    Fresh,
    /// A key set newer than the given generation: the token names a key the current one lacks.
    NewerThan(u64),
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("settings", &self.inner.settings)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// A provider that fetches through `outbound`, so every address it dials passes the outbound policy.
    pub fn new(settings: OidcSettings, outbound: Outbound, options: ProviderOptions) -> Provider {
        Provider {
            inner: Arc::new(Inner {
                settings,
                outbound,
                options,
                cache: RwLock::new(Cache::default()),
                fetching: Mutex::new(()),
                jwks_fetches: AtomicU64::new(0),
                discovery_fetches: AtomicU64::new(0),
                login_endpoints: Mutex::new(None),
            }),
        }
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.inner.settings
    }

    /// Fetches the discovery document and the JWKS now, whatever is cached (for example to check new
    /// settings before saving them). Only [`VerifyError::Discovery`] comes back.
    pub async fn discover(&self) -> Result<(), VerifyError> {
        let _fetching = self.inner.fetching.lock().await;
        self.inner.fetch(true).await.map(drop)
    }

    /// How many times the JWKS has been requested.
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::Relaxed)
    }

    /// How many times the discovery document has been requested.
    pub fn discovery_fetches(&self) -> u64 {
        self.inner.discovery_fetches.load(Ordering::Relaxed)
    }

    /// Verifies a bearer token at time `now` and returns its identity. The error never contains the token.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, VerifyError> {
        // Everything that needs no key first, so malformed tokens and refused algorithms cost no fetch.
        let parsed = jwt::parse(token)?;
        let (alg, kid) = (parsed.header.alg, parsed.header.kid.as_deref());
        let mut snapshot = self.inner.keys(Want::Fresh).await?;
        if let Err(VerifyError::UnknownKey { .. }) = snapshot.keys.select(alg, kid) {
            snapshot = self.inner.keys(Want::NewerThan(snapshot.generation)).await?;
        }
        let key = snapshot.keys.select(alg, kid)?;
        jwt::verify_signature(&parsed, key)?;
        let settings = &self.inner.settings;
        let expected = Expected {
            issuer: settings.issuer.as_str(),
            audience: &settings.audience,
            groups_claim: &settings.groups_claim,
            leeway: self.inner.options.leeway,
        };
        claims::check(&parsed.payload, expected, now)
    }
}

impl Inner {
    /// The key set to verify with, fetching one if `want` says the cached one will not do and the rate
    /// limit allows. When it does not allow, the cached set is returned and the caller's lookup decides.
    async fn keys(&self, want: Want) -> Result<Arc<Snapshot>, VerifyError> {
        if let Some(snapshot) = self.satisfying(want).await {
            return Ok(snapshot);
        }
        let _fetching = self.fetching.lock().await;
        // Another task may have fetched while this one waited for the lock.
        if let Some(snapshot) = self.satisfying(want).await {
            return Ok(snapshot);
        }
        let (cached, last_attempt) = {
            let cache = self.cache.read().await;
            (cache.keys.clone(), cache.last_attempt)
        };
        let rate_limited = last_attempt.is_some_and(|at| at.elapsed() < self.options.min_refetch_interval);
        match (rate_limited, cached) {
            (true, Some(cached)) => Ok(cached),
            (true, None) => Err(VerifyError::Discovery(
                "the last fetch of the issuer's keys failed moments ago; not retrying yet".into(),
            )),
            (false, cached) => match self.fetch(false).await {
                Ok(fresh) => Ok(fresh),
                Err(e) => match cached {
                    // A provider outage should not lock out every user at once: keep the keys we had.
                    Some(stale) => {
                        tracing::warn!(issuer = %self.settings.issuer, error = %e, "JWKS refresh failed; using the previous keys");
                        Ok(stale)
                    }
                    None => Err(e),
                },
            },
        }
    }

    async fn satisfying(&self, want: Want) -> Option<Arc<Snapshot>> {
        let cache = self.cache.read().await;
        let snapshot = cache.keys.as_ref()?;
        let ok = match want {
            Want::Fresh => snapshot.fetched_at.elapsed() < self.options.jwks_ttl,
            Want::NewerThan(generation) => snapshot.generation > generation,
        };
        ok.then(|| snapshot.clone())
    }

    /// Fetches the JWKS (after the discovery document, when that is unknown, old or `rediscover`). The
    /// caller holds `fetching`.
    async fn fetch(&self, rediscover: bool) -> Result<Arc<Snapshot>, VerifyError> {
        let started = Instant::now();
        let known_uri = {
            let mut cache = self.cache.write().await;
            cache.last_attempt = Some(started);
            cache.jwks_uri.clone()
        };
        let jwks_uri = match known_uri {
            Some((uri, at)) if !rediscover && at.elapsed() < self.options.jwks_ttl => uri,
            _ => {
                let uri = self.discover_jwks_uri().await?;
                self.cache.write().await.jwks_uri = Some((uri.clone(), Instant::now()));
                uri
            }
        };
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let body = match self.get(&jwks_uri).await {
            Ok(body) => body,
            Err(e) => {
                // Maybe the provider moved its keys: look the URI up again next time.
                self.cache.write().await.jwks_uri = None;
                return Err(e);
            }
        };
        let (keys, skipped) =
            KeySet::from_json(&body).map_err(|e| VerifyError::Discovery(format!("JWKS at {jwks_uri}: {e}")))?;
        let mut cache = self.cache.write().await;
        let generation = cache.keys.as_ref().map_or(0, |s| s.generation) + 1;
        tracing::info!(
            issuer = %self.settings.issuer, keys = keys.len(), skipped, generation,
            "fetched the issuer's JWKS"
        );
        let snapshot = Arc::new(Snapshot { keys, fetched_at: Instant::now(), generation });
        cache.keys = Some(snapshot.clone());
        Ok(snapshot)
    }

    async fn discover_jwks_uri(&self) -> Result<Url, VerifyError> {
        let document = self.discovery_document().await?;
        let issuer = &self.settings.issuer;
        let rules = UrlRules { max_bytes: MAX_JWKS_URI_BYTES, allow_query: true };
        let jwks_uri = check_url(&document.jwks_uri, rules)
            .map_err(|e| VerifyError::Discovery(format!("jwks_uri of {issuer}: {e}")))?;
        // Plain http is for an issuer on the operator's own network; an https issuer keeps its keys on https.
        if !issuer.is_plain_http() && jwks_uri.scheme() != "https" {
            return Err(VerifyError::Discovery(format!("jwks_uri of https issuer {issuer} is not https")));
        }
        Ok(jwks_uri)
    }

    /// The sign-in endpoints of the discovery document: fetched at most once per `jwks_ttl` (the
    /// lock makes concurrent sign-ins share one fetch), so sign-ins started by anyone cost the
    /// issuer few requests.
    pub(crate) async fn login_endpoints(&self) -> Result<Arc<LoginEndpoints>, VerifyError> {
        let mut cached = self.login_endpoints.lock().await;
        if let Some((endpoints, at)) = cached.as_ref() {
            if at.elapsed() < self.options.jwks_ttl {
                return Ok(endpoints.clone());
            }
        }
        let document = self.discovery_document().await?;
        let endpoints = Arc::new(LoginEndpoints {
            authorization_endpoint: document.authorization_endpoint,
            token_endpoint: document.token_endpoint,
        });
        *cached = Some((endpoints.clone(), Instant::now()));
        Ok(endpoints)
    }

    /// The issuer's discovery document, fetched now, whose `issuer` is exactly the configured one.
    pub(crate) async fn discovery_document(&self) -> Result<DiscoveryDocument, VerifyError> {
        let issuer = &self.settings.issuer;
        let url =
            issuer.discovery_url().map_err(|e| VerifyError::Discovery(format!("discovery URL of {issuer}: {e}")))?;
        self.discovery_fetches.fetch_add(1, Ordering::Relaxed);
        let body = self.get(&url).await?;
        let document: DiscoveryDocument = serde_json::from_slice(&body)
            .map_err(|e| VerifyError::Discovery(format!("discovery document at {url}: {e}")))?;
        if document.issuer != issuer.as_str() {
            return Err(VerifyError::Discovery(format!(
                "discovery document at {url} names issuer {:?}, expected exactly {:?}",
                crate::sanitize(&document.issuer),
                issuer.as_str()
            )));
        }
        Ok(document)
    }

    /// GET `url`, expecting 200 and at most [`MAX_RESPONSE_BYTES`]. The destination is checked against the
    /// outbound policy first (an IP host here, a name's addresses as they are resolved).
    async fn get(&self, url: &Url) -> Result<Vec<u8>, VerifyError> {
        self.send(url, "GET", None).await
    }

    /// `method` (GET, or POST with a form `body`) on `url`, expecting 200 and at most
    /// [`MAX_RESPONSE_BYTES`], the destination checked against the outbound policy first.
    pub(crate) async fn send(&self, url: &Url, method: &str, form: Option<String>) -> Result<Vec<u8>, VerifyError> {
        let fail = |what: String| VerifyError::Discovery(format!("{method} {url}: {what}"));
        self.outbound.check_url(url).map_err(|e| fail(e.to_string()))?;
        let request = match form {
            None => self.outbound.http().get(url.clone()),
            Some(body) => self
                .outbound
                .http()
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body),
        };
        let mut response = request
            .header(ACCEPT, "application/json")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| fail(error_chain(&e.without_url())))?;
        if response.url() != url {
            return Err(fail(format!("redirected to {}; redirects are not followed", response.url())));
        }
        if response.status() != reqwest::StatusCode::OK {
            return Err(fail(format!("status {}", response.status())));
        }
        let declared = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
            return Err(fail(format!("response is larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(error_chain(&e.without_url())))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(fail(format!("response is larger than {MAX_RESPONSE_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `error: source: source ...`, the way reqwest's Display alone does not show why a connection failed.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
