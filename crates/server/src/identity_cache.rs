//! What the identity layer keeps per process: the policy engine and, per namespace incarnation,
//! compiled policy sets, OpenID Connect providers and secrets' data keys, each in a map whose
//! entries expire after a few seconds. The lookups that fill it are in [`crate::identity`].

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bulkhead_api::OidcConfig;
use bulkhead_core::sealed::Key;
use bulkhead_oidc::{Provider, ProviderOptions};
use bulkhead_policy::{CompiledSet, Engine};

const CACHE_TTL: Duration = Duration::from_secs(5);

/// A small map whose entries expire.
#[derive(Debug)]
pub struct TtlMap<V> {
    entries: RwLock<HashMap<String, (V, Instant)>>,
}

impl<V> Default for TtlMap<V> {
    fn default() -> Self {
        Self { entries: RwLock::new(HashMap::new()) }
    }
}

impl<V: Clone> TtlMap<V> {
    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: &str, value: V) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= 100_000 {
            entries.clear();
        }
        entries.insert(key.to_owned(), (value, Instant::now()));
    }

    pub fn remove(&self, key: &str) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Removes every entry whose key starts with `prefix`.
    pub fn remove_prefix(&self, prefix: &str) {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).retain(|k, _| !k.starts_with(prefix));
    }
}

pub(crate) fn name_prefix(namespace: &str) -> String {
    format!("{namespace}/")
}

/// A namespace's single sign-on: its settings and the provider client that checks tokens.
#[derive(Clone)]
pub struct NamespaceIdentity {
    pub config: OidcConfig,
    pub provider: Provider,
}

/// What the identity layer keeps per process.
pub struct Identity {
    pub engine: Engine,
    pub(crate) builtin: CompiledSet,
    pub(crate) policies: TtlMap<CompiledSet>,
    pub(crate) providers: TtlMap<Option<NamespaceIdentity>>,
    pub(crate) data_keys: TtlMap<Key>,
    pub(crate) master: Key,
    /// Made on first use: most servers never talk to an identity provider.
    pub(crate) http: std::sync::OnceLock<bulkhead_oidc::Outbound>,
    pub provider_options: ProviderOptions,
    /// The console's sign-ins through namespaces' providers, waiting for their browser.
    pub sign_ins: crate::console_oidc::SignIns,
    /// This server's URL as browsers reach it (`serve --public-url`, else `http://<bound
    /// address>`), set once it listens; unset, `http://<configured listen address>`.
    pub public_url: std::sync::OnceLock<String>,
}

impl Identity {
    pub fn new(master: Key, provider_options: ProviderOptions) -> Result<Identity, String> {
        let engine = Engine::shared();
        let builtin = engine.builtin();
        let http = std::sync::OnceLock::new();
        Ok(Identity {
            engine,
            builtin,
            policies: TtlMap::default(),
            providers: TtlMap::default(),
            data_keys: TtlMap::default(),
            master,
            http,
            provider_options,
            sign_ins: crate::console_oidc::SignIns::default(),
            public_url: std::sync::OnceLock::new(),
        })
    }

    /// The built-in policies alone: what decides for the platform admin.
    pub fn builtin(&self) -> &CompiledSet {
        &self.builtin
    }

    /// Forgets everything cached of every incarnation of a namespace (its policies, identity or
    /// existence changed).
    pub fn forget(&self, namespace: &str) {
        let prefix = name_prefix(namespace);
        self.policies.remove_prefix(&prefix);
        self.providers.remove_prefix(&prefix);
        self.data_keys.remove_prefix(&prefix);
    }

    /// Forgets what is cached of every namespace (changes may have been missed).
    pub fn forget_all(&self) {
        self.policies.remove_prefix("");
        self.providers.remove_prefix("");
        self.data_keys.remove_prefix("");
    }

    pub fn forget_policies(&self, namespace: &str) {
        self.policies.remove_prefix(&name_prefix(namespace));
    }

    pub fn forget_provider(&self, namespace: &str) {
        self.providers.remove_prefix(&name_prefix(namespace));
    }
}
