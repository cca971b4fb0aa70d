//! Identity and permissions: each namespace's compiled Cedar policy set, its OpenID Connect
//! provider, and the envelope keys of its secrets. All three are cached per namespace
//! incarnation (name and incarnation id), so what a deleted namespace left in a cache, even put
//! there by a request that finished after the delete, is never used for a namespace created again
//! under its name; changes through this server drop the entries at once, and entries expire after
//! a few seconds so replicas sharing a store converge.

use bulkhead_api::{IdentityConfig, OidcConfig};
use bulkhead_core::outbound::OutboundPolicy;
use bulkhead_core::sealed::{self, Key};
use bulkhead_core::{Principal, Role};
use bulkhead_oidc::{IssuerUrl, OidcSettings, Provider};
use bulkhead_policy::CompiledSet;

use crate::error::{ApiError, ApiResult};
pub use crate::identity_cache::{Identity, NamespaceIdentity, TtlMap};
use crate::state::AppState;

/// Custom policies a namespace may hold.
pub const MAX_POLICIES: u32 = 1000;

/// The cache key of `namespace`'s identity state: `<name>/<incarnation>` of its current
/// incarnation, or `None` when it does not exist (then nothing is cached).
async fn cache_key(state: &AppState, namespace: &str) -> Option<String> {
    crate::state::tenant(state, namespace).await.map(|t| format!("{}/{}", t.name, t.incarnation))
}

/// The namespace's policy set: the built-ins and its own. A stored policy that no longer
/// compiles fails the request rather than being skipped, since skipping a `forbid` would widen
/// what is allowed.
pub async fn policies(state: &AppState, namespace: &str) -> ApiResult<CompiledSet> {
    // The key is read before the store: data read after it is never older than its incarnation.
    let key = cache_key(state, namespace).await;
    if let Some(set) = key.as_deref().and_then(|k| state.identity.policies.get(k)) {
        return Ok(set);
    }
    let rows = state.store.all_policies(namespace).await?;
    let set = if rows.is_empty() {
        state.identity.builtin.clone()
    } else {
        let custom: Vec<(String, String)> = rows.into_iter().map(|p| (p.id, p.text)).collect();
        state
            .identity
            .engine
            .compile(&custom)
            .map_err(|e| ApiError::Internal(format!("policies of {namespace}: {e}")))?
    };
    if let Some(k) = &key {
        state.identity.policies.put(k, set.clone());
    }
    Ok(set)
}

/// The namespace's identity settings as stored.
pub async fn identity_config(state: &AppState, namespace: &str) -> ApiResult<IdentityConfig> {
    match state.store.get_identity(namespace).await? {
        None => Ok(IdentityConfig::default()),
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| ApiError::Internal(format!("identity of {namespace}: {e}")))
        }
    }
}

/// The settings the OIDC client needs, or why `config` is not acceptable: the issuer URL's shape,
/// and, when its host is an address, the outbound policy.
pub fn oidc_settings(config: &OidcConfig, outbound: &OutboundPolicy) -> Result<OidcSettings, String> {
    let issuer = IssuerUrl::parse(&config.issuer).map_err(|e| format!("oidc.issuer: {e}"))?;
    let url = issuer.discovery_url().map_err(|e| format!("oidc.issuer: {e}"))?;
    bulkhead_oidc::outbound::check_url(outbound, &url).map_err(|e| format!("oidc.issuer: {e}"))?;
    Ok(OidcSettings { issuer, audience: config.audience.clone(), groups_claim: config.groups_claim.clone() })
}

/// The namespace's identity provider and settings, `None` when the namespace does not exist or
/// has none (or one the outbound policy now refuses).
pub(crate) async fn provider(state: &AppState, namespace: &str) -> ApiResult<Option<NamespaceIdentity>> {
    let Some(key) = cache_key(state, namespace).await else {
        return Ok(None);
    };
    if let Some(p) = state.identity.providers.get(&key) {
        return Ok(p);
    }
    let found = match identity_config(state, namespace).await?.oidc {
        None => None,
        Some(config) => {
            let settings = match oidc_settings(&config, &state.config.outbound.policy) {
                Ok(s) => s,
                Err(e) => {
                    // Stored before the policy (or the operator's ranges) changed: no sign-in.
                    tracing::warn!(namespace, error = %e, "the namespace's identity provider is refused");
                    state.identity.providers.put(&key, None);
                    return Ok(None);
                }
            };
            let http = match state.identity.http.get() {
                Some(c) => c.clone(),
                None => {
                    let c = bulkhead_oidc::Outbound::new(state.config.outbound.clone())
                        .map_err(|e| ApiError::Internal(format!("the outbound http client: {e}")))?;
                    state.identity.http.get_or_init(|| c).clone()
                }
            };
            let provider = Provider::new(settings, http, state.identity.provider_options);
            Some(NamespaceIdentity { config, provider })
        }
    };
    state.identity.providers.put(&key, found.clone());
    Ok(found)
}

/// The strongest role any of `groups` maps to.
pub fn role_for(mappings: &std::collections::BTreeMap<String, bulkhead_api::Role>, groups: &[String]) -> Option<Role> {
    groups.iter().filter_map(|g| mappings.get(g)).map(|r| crate::convert::role_in(*r)).min()
}

/// Signs a user of `namespace` in with a token of the namespace's identity provider. Any token
/// problem is the same 401 (the reason goes to the log, never the token), and so is an `email`
/// claim longer than `bulkhead_policy::bounds::MAX_ATTRIBUTE_BYTES`; a valid user whose groups
/// map to no role is a 403.
pub async fn authenticate_user(state: &AppState, namespace: &str, token: &str) -> ApiResult<Principal> {
    let invalid = || ApiError::Unauthenticated("invalid or expired token".into());
    if bulkhead_core::validate::name("namespace", namespace).is_err() {
        return Err(invalid());
    }
    let Some(identity) = provider(state, namespace).await? else {
        return Err(invalid());
    };
    let claims = match identity.provider.verify(token, std::time::SystemTime::now()).await {
        Ok(c) => c,
        Err(e) => {
            if e.is_provider_failure() {
                tracing::warn!(namespace, error = %e, "the namespace's identity provider failed");
            } else {
                tracing::info!(namespace, error = %e, "refused an identity token");
            }
            return Err(invalid());
        }
    };
    // The policies' `like` bound counts on attribute strings of at most this size.
    if claims.email.as_ref().is_some_and(|e| e.len() > bulkhead_policy::bounds::MAX_ATTRIBUTE_BYTES) {
        tracing::info!(namespace, "refused an identity token whose email is too long");
        return Err(invalid());
    }
    let Some(role) = role_for(&identity.config.role_mappings, &claims.groups) else {
        return Err(ApiError::Forbidden(format!(
            "user:{} is in no group that maps to a role of namespace {namespace}",
            claims.sub
        )));
    };
    Ok(Principal::User {
        sub: claims.sub,
        namespace: namespace.to_owned(),
        role,
        email: claims.email,
        groups: claims.groups,
    })
}

/// The namespace's data key, made and stored (wrapped by the master key) on first use.
pub(crate) async fn data_key(state: &AppState, namespace: &str) -> ApiResult<Key> {
    let cache = cache_key(state, namespace).await;
    if let Some(k) = cache.as_deref().and_then(|c| state.identity.data_keys.get(c)) {
        return Ok(k);
    }
    let seal_err = |e: sealed::SealError| ApiError::Internal(format!("the data key of {namespace}: {e}"));
    let aad = sealed::data_key_aad(namespace);
    let fresh = Key::generate().map_err(seal_err)?;
    let wrapped = state.identity.master.seal(fresh.as_bytes(), &aad).map_err(seal_err)?;
    let stored = state.store.data_key(namespace, &wrapped).await?;
    let key = Key::from_bytes(&state.identity.master.open(&stored, &aad).map_err(seal_err)?).map_err(seal_err)?;
    if let Some(c) = &cache {
        state.identity.data_keys.put(c, key.clone());
    }
    Ok(key)
}

/// Seals a secret's value for storage.
pub async fn seal_secret(state: &AppState, namespace: &str, name: &str, value: &[u8]) -> ApiResult<Vec<u8>> {
    let key = data_key(state, namespace).await?;
    key.seal(value, &sealed::secret_aad(namespace, name))
        .map_err(|e| ApiError::Internal(format!("sealing a secret: {e}")))
}

/// Opens a stored secret's value.
pub async fn open_secret(state: &AppState, namespace: &str, name: &str, sealed_value: &[u8]) -> ApiResult<Vec<u8>> {
    let key = data_key(state, namespace).await?;
    key.open(sealed_value, &sealed::secret_aad(namespace, name))
        .map_err(|e| ApiError::Internal(format!("opening secret {name}: {e}")))
}
