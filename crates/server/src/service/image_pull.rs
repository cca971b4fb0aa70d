//! Pulling an image from an OCI distribution registry (PRODUCT.md, *Images*): the outbound rule
//! checked before anything is dialled, the registry credentials opened from a secret of the
//! namespace, the pull into a spool directory under the data dir
//! ([`bulkhead_runtime::image::registry::pull`]), then the archive import's own path
//! ([`images::import`]: the same lock, verification, row and collection), the spool directory
//! removed whatever happens.
//!
//! The outbound rule (PRODUCT.md, *Network egress*): https only, except plain http to a loopback
//! registry or to one the operator lists with `--insecure-registry`; and every address the
//! registry's host resolves to (with the host's resolver, the one the pull client dials with)
//! must pass the server's outbound policy (`--outbound-allow`), so loopback, link-local,
//! metadata, private and documentation addresses are refused unless the operator allowed them.
//!
//! That check runs first, so a refused registry is refused before anything is dialled. Then every
//! connection the pull client makes goes through a proxy of the pull's own
//! ([`super::pull_proxy`]), which resolves and checks again at each connection and connects to
//! the address it checked: a name that resolves elsewhere since, the redirects a registry answers
//! with (blob downloads from storage) and the token endpoint its bearer challenge names are held
//! to the same rule, and plain http goes to the registry's own host only when the pull may talk
//! plain http to it.
//!
//! Errors: everything the registry says about the source (a bad reference, a refused
//! credential, a missing tag or blob, a blob that does not match its digest, a registry that
//! fails or cannot be reached) is `Invalid` (400) with a message that names the registry and
//! what it answered; not 403 (which would read as the caller's own rights), not 404 (which
//! names a missing namespace or secret here), never 5xx (the server did not fail). An image
//! larger than `--max-image-bytes` is `TooLarge` (413).
//!
//! **Invariant:** the secret's value goes to the pull client only; it is never logged, audited
//! or put in an answer.

use std::net::IpAddr;
use std::path::PathBuf;

use bulkhead_core::outbound::OutboundPolicy;
use bulkhead_runtime::image::registry::{self, PullError, PullRequest, RegistryEndpoint};
use bulkhead_runtime::image::ImportSource;

use super::images::{self, Import};
use super::{ServiceError, ServiceResult};
use crate::service::records::ImageRow;
use crate::state::AppState;

/// A pull: where the image goes (its `source` is the registry reference) and the secret of the
/// namespace holding the registry credentials, if any.
#[derive(Debug, Clone)]
pub struct Pull {
    pub import: Import,
    /// The name of a secret of the image's namespace (`user:password`, or the JSON
    /// `{"username", "password"}`); `None` pulls anonymously. Public pulls take none.
    pub secret: Option<String>,
}

/// Pulls `pull.import.source` and imports it as [`images::import`] does; the image recorded.
///
/// # Errors
/// `Invalid` for a refused destination, a malformed secret or anything the registry refused
/// or failed on (see the module's docs); `NotFound` for a missing secret; `TooLarge` past
/// `--max-image-bytes`; `Conflict` for a name taken meanwhile; `Internal` for the host's own
/// failures.
pub async fn pull(state: &AppState, pull: &Pull) -> ServiceResult<ImageRow> {
    let reference = pull.import.source.as_str();
    let endpoint = destination(&state.config.images.insecure_registries, reference)?;
    check_addresses(&state.config.outbound.policy, &endpoint).await?;
    let credentials = match (&pull.secret, pull.import.namespace.as_deref()) {
        (None, _) => None,
        (Some(name), Some(ns)) => Some(credentials(state, ns, name).await?),
        (Some(_), None) => {
            return Err(ServiceError::Invalid("credentials: public images are pulled anonymously".into()))
        }
    };
    let plain_http = if endpoint.insecure { vec![endpoint.target.registry.clone()] } else { Vec::new() };
    let proxy = super::pull_proxy::PullProxy::start(state.config.outbound.policy.clone(), plain_http)
        .await
        .map_err(|e| ServiceError::Internal(format!("starting the pull's proxy: {e}")))?;
    let request = PullRequest {
        reference: reference.to_owned(),
        credentials,
        insecure: endpoint.insecure,
        max_bytes: state.config.images.max_image_bytes,
        proxy: Some(proxy.url()),
    };
    let spool = SpoolDir::new(state)?;
    let started = std::time::Instant::now();
    let pulled = registry::pull(&request, &spool.path, &|_: registry::PullProgress| {}).await.map_err(|e| match proxy
        .refusal()
    {
        // What the proxy refused is why the pull failed, whatever the client made of it.
        Some(why) => ServiceError::Invalid(format!("source: registry {}: {why}", endpoint.target.registry)),
        None => pull_error(&endpoint.target, e),
    });
    drop(proxy);
    let fetched = started.elapsed();
    let row = match pulled {
        Ok(pulled) => images::import(state, &pull.import, ImportSource::LayoutDir(pulled.layout_dir)).await,
        Err(e) => Err(e),
    };
    if let Ok(row) = &row {
        tracing::info!(
            namespace = pull.import.namespace.as_deref().unwrap_or("(public)"),
            image = %row.id,
            source = %reference,
            digest = %row.digest,
            pull_ms = fetched.as_millis() as u64,
            import_ms = (started.elapsed() - fetched).as_millis() as u64,
            "pulled an image"
        );
    }
    spool.remove().await;
    row
}

/// Where a pull goes and how.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    target: RegistryEndpoint,
    /// Plain http.
    insecure: bool,
}

/// The registry `reference` names and whether it is talked to in plain http: a loopback
/// registry, or one `insecure_registries` lists (`host[:port]`, compared without regard to
/// case), is; any other takes https.
fn destination(insecure_registries: &[String], reference: &str) -> ServiceResult<Destination> {
    let invalid = |e: PullError| ServiceError::Invalid(format!("source: {e}"));
    let https = registry::endpoint(reference, false).map_err(invalid)?;
    let insecure = registry::is_loopback_registry(reference)
        || insecure_registries.iter().any(|r| r.eq_ignore_ascii_case(&https.registry));
    let target = if insecure { registry::endpoint(reference, true).map_err(invalid)? } else { https };
    Ok(Destination { target, insecure })
}

/// Every address of the registry's host must pass `policy`; a name that resolves to none, or to
/// one refused, is refused before any connection.
async fn check_addresses(policy: &OutboundPolicy, destination: &Destination) -> ServiceResult<()> {
    let target = &destination.target;
    let addresses: Vec<IpAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| ServiceError::Invalid(format!("source: registry {} does not resolve: {e}", target.registry)))?
            .map(|a| a.ip())
            .collect(),
    };
    if addresses.is_empty() {
        return Err(ServiceError::Invalid(format!("source: registry {} has no address", target.registry)));
    }
    for ip in addresses {
        policy.check(ip).map_err(|e| {
            ServiceError::Invalid(format!(
                "source: registry {} is refused by the server's outbound rule: {e} (the operator allows \
                 ranges with --outbound-allow)",
                target.registry
            ))
        })?;
    }
    Ok(())
}

/// The credentials secret `name` of `ns` holds.
async fn credentials(state: &AppState, ns: &str, name: &str) -> ServiceResult<(String, String)> {
    let row =
        state.store.get_secret(ns, name).await?.ok_or_else(|| {
            ServiceError::NotFound(format!("credentials.secret: namespace {ns} has no secret {name:?}"))
        })?;
    let value = crate::identity::open_secret(state, ns, name, &row.sealed)
        .await
        .map_err(|e| ServiceError::Internal(format!("opening the registry credentials: {e}")))?;
    parse_credentials(name, &value)
}

/// `user:password` (a trailing newline ignored) or `{"username": "...", "password": "..."}`.
/// The message of a refusal never quotes the value.
fn parse_credentials(name: &str, value: &[u8]) -> ServiceResult<(String, String)> {
    let bad = || {
        ServiceError::Invalid(format!(
            "credentials.secret: secret {name:?} must hold user:password or {{\"username\": ..., \"password\": ...}}"
        ))
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?.trim_end_matches(['\n', '\r']);
    let (user, password) = if text.trim_start().starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Json {
            username: String,
            password: String,
        }
        // serde's message may quote the value: not shown.
        let json: Json = serde_json::from_str(text).map_err(|_| bad())?;
        (json.username, json.password)
    } else {
        let (user, password) = text.split_once(':').ok_or_else(bad)?;
        (user.to_owned(), password.to_owned())
    };
    // Control characters would not make an Authorization header (and could split one).
    if user.is_empty() || user.contains(':') || format!("{user}{password}").chars().any(char::is_control) {
        return Err(bad());
    }
    Ok((user, password))
}

/// A pull's failure as the API answers it (see the module's docs); `target` names the registry.
fn pull_error(target: &RegistryEndpoint, e: PullError) -> ServiceError {
    let registry = &target.registry;
    match e {
        PullError::Invalid(m) => ServiceError::Invalid(format!("source: {m}")),
        PullError::Unauthorized(m) => ServiceError::Invalid(format!(
            "source: registry {registry} refused the credentials (none, or wrong ones, for this image): {m}"
        )),
        PullError::NotFound(m) => ServiceError::Invalid(format!("source: registry {registry} has no such image: {m}")),
        e @ PullError::DigestMismatch { .. } => ServiceError::Invalid(format!("source: registry {registry} sent {e}")),
        PullError::TooLarge(m) => ServiceError::TooLarge(format!("source: {m}")),
        PullError::Registry(m) => ServiceError::Invalid(format!("source: registry {registry} failed: {m}")),
        e @ PullError::Io { .. } => ServiceError::Internal(format!("pulling an image: {e}")),
    }
}

/// A pull's layout directory under the spool dir (mode 0700); removed by [`SpoolDir::remove`],
/// or on drop when the request ends before (and by [`images::sweep_spool`] at the next start
/// after a crash).
struct SpoolDir {
    path: PathBuf,
    armed: bool,
}

impl SpoolDir {
    fn new(state: &AppState) -> ServiceResult<SpoolDir> {
        use std::os::unix::fs::DirBuilderExt;
        let internal = |e: std::io::Error| ServiceError::Internal(format!("cannot make a pull's spool directory: {e}"));
        let dir = &state.layers.spool_dir;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(internal)?;
        let path = dir.join(bulkhead_core::ids::new_id("pull_"));
        std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(internal)?;
        Ok(SpoolDir { path, armed: true })
    }

    /// Removes the directory on a blocking thread (it may hold gigabytes of blobs).
    async fn remove(mut self) {
        self.armed = false;
        let path = self.path.clone();
        let removed = tokio::task::spawn_blocking(move || remove_tree(&path)).await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a pull's spool directory");
        }
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove_tree(&self.path);
        }
    }
}

fn remove_tree(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_or_listed_registries() {
        let listed = vec!["registry.internal:5000".to_owned()];
        let d = destination(&listed, "127.0.0.1:5000/a/b:1").unwrap();
        assert!(d.insecure);
        assert_eq!((d.target.host.as_str(), d.target.port), ("127.0.0.1", 5000));
        let d = destination(&listed, "Registry.Internal:5000/a:1").unwrap();
        assert!(d.insecure);
        let d = destination(&listed, "registry.internal:5001/a:1").unwrap();
        assert!(!d.insecure);
        let d = destination(&listed, "ghcr.io/a/b:1").unwrap();
        assert!(!d.insecure);
        assert_eq!(d.target.port, 443);
        assert!(
            matches!(destination(&listed, "Not A Reference"), Err(ServiceError::Invalid(m)) if m.starts_with("source:"))
        );
    }

    #[tokio::test]
    async fn refused_addresses_are_refused_before_any_connection() {
        let strict = OutboundPolicy::default();
        for reference in
            ["192.0.2.55:5000/a:b", "127.0.0.1:5000/a:b", "169.254.169.254/a:b", "10.1.2.3/a:b", "localhost:5000/a"]
        {
            let d = destination(&[], reference).unwrap();
            let refused = check_addresses(&strict, &d).await;
            assert!(
                matches!(&refused, Err(ServiceError::Invalid(m)) if m.contains("outbound rule")),
                "{reference}: {refused:?}"
            );
        }
        let dev = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let d = destination(&[], "127.0.0.1:5000/a:b").unwrap();
        assert!(check_addresses(&dev, &d).await.is_ok());
    }

    #[test]
    fn credentials_are_user_password_or_json_and_never_echoed() {
        assert_eq!(parse_credentials("s", b"alice:s3cr:et\n").unwrap(), ("alice".into(), "s3cr:et".into()));
        assert_eq!(
            parse_credentials("s", br#"{"username": "bob", "password": "pw"}"#).unwrap(),
            ("bob".into(), "pw".into())
        );
        for bad in [&b"no-colon-here"[..], b":pw", b"a:b\x01", b"\xff:x", br#"{"username": "bob", "pass": "hunter2"}"#]
        {
            match parse_credentials("s", bad) {
                Err(ServiceError::Invalid(m)) => {
                    assert!(m.contains("\"s\""), "{m}");
                    assert!(!m.contains("hunter2") && !m.contains("no-colon-here"), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
