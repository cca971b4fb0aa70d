//! Pulling an image from an OCI distribution registry (the OCI distribution spec, `spec.md`)
//! into an OCI image layout directory (the OCI image spec, `image-layout.md`), which
//! [`super::LayerStore::import`] then imports with [`super::ImportSource::LayoutDir`].
//!
//! The registry protocol (the `/v2/` API, basic auth and the bearer token exchange) is the
//! `oci-client` crate's; this module owns what reaches the disk. Every blob is streamed to
//! `blobs/sha256/<hex>.partial`, hashed as it arrives, bounded by its declared size, and renamed
//! to `blobs/sha256/<hex>` only when its sha256 matches; `oci-layout` and `index.json` are
//! written last, so a layout without an `index.json` is a pull that did not finish. A later pull
//! into the same directory keeps the blobs already there whole (re-hashed first) and resumes a
//! `.partial` with a range request.
//!
//! Where a pull may connect is the caller's decision: [`endpoint`] names the host and port a
//! reference dials, so the caller can check its addresses first; the client resolves the name
//! itself and follows redirects and bearer-token realms the registry names.
//!
//! Blobs are not fsynced: a blob torn by a crash fails its digest on the next pull (which
//! re-hashes what it finds) and on import (which verifies every blob again).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{linux_amd64_resolver, BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

use super::Digest;

/// The media types a manifest may have: OCI and Docker schema 2 image manifests, and the
/// indexes (manifest lists) that point at them.
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_MEDIA_TYPES: [&str; 4] = [MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST];

/// The largest manifest or index accepted (the distribution spec lets registries refuse
/// manifests over 4 MiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// How many blobs download at once.
const CONCURRENT_BLOBS: usize = 4;
/// Progress is reported at most once per this many bytes of a blob (and at its start and end).
const PROGRESS_STEP: u64 = 1 << 20;

/// What to pull and under which rules.
#[derive(Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// `registry/repository:tag` or `registry/repository@sha256:<hex>` (a reference without a
    /// registry means Docker Hub, as `docker pull` reads it; without a tag, `latest`).
    pub reference: String,
    /// Basic credentials `(user, password)`; the registry may take them directly or in
    /// exchange for a bearer token (its `WWW-Authenticate` challenge decides). `None` pulls
    /// anonymously.
    pub credentials: Option<(String, String)>,
    /// Talk plain http to the registry instead of https. The caller decides (the server's rule:
    /// only to a loopback registry, see [`is_loopback_registry`], or one the admin listed with
    /// `--insecure-registry`).
    pub insecure: bool,
    /// The most bytes the pull may write: the manifest and every blob it names, as declared by
    /// the manifest (checked before anything is fetched) and as received.
    pub max_bytes: u64,
    /// An HTTP proxy (`http://host:port`) every connection of the pull goes through, plain http
    /// and https (tunnelled) alike: the caller's way to decide each connection as it is made
    /// (redirects and token endpoints included). `None`: direct connections.
    pub proxy: Option<String>,
}

impl std::fmt::Debug for PullRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullRequest")
            .field("reference", &self.reference)
            .field("credentials", &self.credentials.as_ref().map(|(user, _)| (user, "<redacted>")))
            .field("insecure", &self.insecure)
            .field("max_bytes", &self.max_bytes)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// How far the download of one blob (the config or a layer) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// The blob's digest, `sha256:<hex>`.
    pub layer_digest: Digest,
    /// Bytes of it on disk so far (a blob already present counts whole at once).
    pub bytes_done: u64,
    /// Its size as the manifest declares it.
    pub bytes_total: u64,
}

/// A finished pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The digest of the image manifest (`sha256:<hex>`); for a multi-platform index, of the
    /// `linux/amd64` manifest it names (the index itself is not kept).
    pub manifest_digest: Digest,
    /// The OCI image layout directory (the `dest` of [`pull`]), its `index.json` naming exactly
    /// this manifest.
    pub layout_dir: PathBuf,
}

/// Why a pull failed. The API answers `TooLarge` with `payload_too_large`, `Io` with
/// `internal`, and everything the registry said or failed on (the other variants) with
/// `invalid_request` naming the registry: not `forbidden` or `not_found`, which speak of the
/// caller's own rights and resources.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference is not `registry/repository[:tag|@sha256:<hex>]`, or the registry sent
    /// something that is not a usable manifest (the message says what).
    #[error("{0}")]
    Invalid(String),
    /// The registry refused the credentials (or wants some).
    #[error("registry refused the credentials: {0}")]
    Unauthorized(String),
    /// No such repository, tag or manifest (or a blob the manifest names is missing).
    #[error("not found in the registry: {0}")]
    NotFound(String),
    /// A blob or manifest does not match its digest; nothing of it was kept.
    #[error("{what} does not match its digest {expected} (got {actual})")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    /// The image (as declared or as received) exceeds [`PullRequest::max_bytes`], or a blob
    /// is larger than its descriptor says.
    #[error("{0}")]
    TooLarge(String),
    /// Any other failure of the registry or the connection, with the registry's message.
    #[error("registry: {0}")]
    Registry(String),
    /// Reading or writing the layout directory failed (`what` names the path).
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// Whether `reference` names a registry on the loopback interface: its host is `localhost`,
/// an address in `127.0.0.0/8`, or `::1` (`[::1]:port`). A reference without a registry
/// part (Docker Hub) is not.
pub fn is_loopback_registry(reference: &str) -> bool {
    let Some((host_port, _)) = reference.split_once('/') else {
        return false;
    };
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, _)) => host,
            None => return false,
        }
    } else if host_port.matches(':').count() == 1 {
        host_port.split_once(':').map_or(host_port, |(host, _)| host)
    } else {
        host_port
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where a pull of a reference connects: the registry as the reference names it and the host
/// and port the client dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEndpoint {
    /// The registry part of the reference (`host[:port]`; `docker.io` for a reference without
    /// one): what `--insecure-registry` entries are compared with.
    pub registry: String,
    /// The host dialled: a DNS name, or an IP address (IPv6 without brackets); Docker Hub's
    /// `docker.io` is dialled as `index.docker.io`.
    pub host: String,
    /// The port dialled: the reference's, else 443 (https) or 80 (plain http).
    pub port: u16,
}

/// The registry a pull of `reference` (as [`PullRequest::reference`]) talks to, `insecure`
/// deciding the default port; [`PullError::Invalid`] when the reference does not parse or its
/// registry's port is not a port. Nothing is resolved or dialled.
pub fn endpoint(reference: &str, insecure: bool) -> Result<RegistryEndpoint, PullError> {
    let parsed: Reference =
        reference.parse().map_err(|e| PullError::Invalid(format!("image reference {reference:?}: {e}")))?;
    let dialled = parsed.resolve_registry();
    let bad = || PullError::Invalid(format!("image reference {reference:?}: registry {dialled:?} is not HOST[:PORT]"));
    let (host, port) = if let Some(rest) = dialled.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match dialled.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (dialled, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None if insecure => 80,
        None => 443,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(RegistryEndpoint { registry: parsed.registry().to_owned(), host: host.to_owned(), port })
}

/// Pulls `req.reference` into the OCI image layout directory `dest` (created if missing; it
/// may hold a previous, possibly interrupted, pull: whole blobs are re-hashed and kept, a
/// `.partial` is resumed). A multi-platform index resolves to its `linux/amd64` manifest. A
/// digest-pinned reference must match the manifest the registry sends. `progress` is called
/// for each blob as it downloads.
///
/// On success `dest` holds `oci-layout`, `index.json` (one entry: the manifest, annotated
/// with the tag when the reference has one) and every blob, each verified. On error, no blob
/// that failed verification is left (except as a `.partial` of a cut download, which is
/// resumed or checked by the next pull) and `index.json` is not written.
///
/// Errors: [`PullError::Invalid`] (bad reference, unusable manifest),
/// [`PullError::Unauthorized`], [`PullError::NotFound`], [`PullError::DigestMismatch`],
/// [`PullError::TooLarge`], [`PullError::Registry`] (other registry or transport failures),
/// [`PullError::Io`] (writing `dest`).
pub async fn pull(
    req: &PullRequest,
    dest: &Path,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<PulledImage, PullError> {
    let reference: Reference =
        req.reference.parse().map_err(|e| PullError::Invalid(format!("image reference {:?}: {e}", req.reference)))?;
    if let Some(pinned) = reference.digest() {
        check_digest_syntax(pinned)?;
    }
    let client = client(req.insecure, req.proxy.as_deref())?;
    let auth = match &req.credentials {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    client.auth(&reference, &auth, RegistryOperation::Pull).await.map_err(from_oci)?;

    // The manifest, through an index if the registry sends one.
    let (mut body, mut digest) = fetch_manifest(&client, &reference, &auth, req.max_bytes).await?;
    if let Some(pinned) = reference.digest() {
        check_manifest_digest(&body, pinned)?;
    }
    let mut manifest: Manifest = parse_manifest(&body)?;
    if let Some(entries) = manifest.manifests.take() {
        let entry = entries
            .iter()
            .find(|e| {
                e.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    && !MANIFEST_MEDIA_TYPES[2..].contains(&e.media_type.as_str())
            })
            .ok_or_else(|| PullError::Invalid("the image index has no linux/amd64 manifest".into()))?;
        check_digest_syntax(&entry.digest)?;
        let by_digest = Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            entry.digest.clone(),
        );
        (body, digest) = fetch_manifest(&client, &by_digest, &auth, req.max_bytes).await?;
        check_manifest_digest(&body, &entry.digest)?;
        manifest = parse_manifest(&body)?;
        if manifest.manifests.is_some() {
            return Err(PullError::Invalid("an image index names another index".into()));
        }
    }
    let media_type = manifest
        .media_type
        .clone()
        .filter(|m| MANIFEST_MEDIA_TYPES[..2].contains(&m.as_str()))
        .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_owned());
    let config = manifest.config.ok_or_else(|| PullError::Invalid("the manifest has no config".into()))?;
    let blobs: Vec<Descriptor> = std::iter::once(config).chain(manifest.layers).collect();
    let mut total = body.len() as u64;
    for blob in &blobs {
        check_digest_syntax(&blob.digest)?;
        total = total.saturating_add(blob.size);
    }
    if total > req.max_bytes {
        return Err(PullError::TooLarge(format!(
            "the image declares {total} bytes, more than the {} allowed",
            req.max_bytes
        )));
    }

    let blob_dir = dest.join("blobs").join("sha256");
    tokio::fs::create_dir_all(&blob_dir).await.map_err(io(&blob_dir))?;
    // An index left by an earlier pull would make this one look finished before it is.
    remove(&dest.join("index.json")).await?;
    let manifest_hex = digest.trim_start_matches("sha256:").to_owned();
    write_atomically(&blob_dir.join(&manifest_hex), body.to_vec()).await?;

    let mut seen = std::collections::HashSet::new();
    // Owned descriptors: a future of a closure over borrowed ones is not `Send` for every
    // lifetime, which a caller's spawned task needs.
    let unique: Vec<Descriptor> = blobs.iter().filter(|b| seen.insert(b.digest.as_str())).cloned().collect();
    let (client, reference, blob_dir) = (&client, &reference, &blob_dir);
    futures_util::stream::iter(unique)
        .map(|blob| async move { fetch_blob(client, reference, &blob, blob_dir, progress).await })
        .buffer_unordered(CONCURRENT_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;

    write_atomically(&dest.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()).await?;
    let mut entry = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": body.len(),
    });
    if let Some(tag) = reference.tag() {
        entry["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [entry],
    });
    write_atomically(&dest.join("index.json"), index.to_string().into_bytes()).await?;
    Ok(PulledImage { manifest_digest: digest, layout_dir: dest.to_owned() })
}

/// The parts of a manifest or index this module reads (OCI `manifest.md`, `image-index.md`;
/// Docker schema 2 has the same shape).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(serde::Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

fn parse_manifest(body: &[u8]) -> Result<Manifest, PullError> {
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| PullError::Invalid(format!("the registry's manifest: {e}")))?;
    if manifest.schema_version != 2 {
        return Err(PullError::Invalid(format!(
            "the registry's manifest has schemaVersion {} (only 2 is supported)",
            manifest.schema_version
        )));
    }
    Ok(manifest)
}

fn client(insecure: bool, proxy: Option<&str>) -> Result<Client, PullError> {
    // The workspace's TLS uses ring; the client's HTTP stack takes the process's default
    // provider, so make ring that default unless one is already set.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An Err means another thread installed one first: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let config = ClientConfig {
        protocol: if insecure { ClientProtocol::Http } else { ClientProtocol::Https },
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        https_proxy: proxy.map(str::to_owned),
        http_proxy: proxy.map(str::to_owned),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| PullError::Registry(format!("cannot set up the HTTP client: {e}")))
}

async fn fetch_manifest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    max_bytes: u64,
) -> Result<(Vec<u8>, Digest), PullError> {
    let (body, _) = client.pull_manifest_raw(reference, auth, &MANIFEST_MEDIA_TYPES).await.map_err(from_oci)?;
    let len = body.len() as u64;
    if len > MAX_MANIFEST_BYTES || len > max_bytes {
        return Err(PullError::TooLarge(format!("the manifest has {len} bytes")));
    }
    // The identity is the sha256 of the bytes received, whatever digest header came along.
    let digest = sha256_digest(&Sha256::digest(&body));
    Ok((body.to_vec(), digest))
}

fn check_manifest_digest(body: &[u8], expected: &str) -> Result<(), PullError> {
    check_digest_syntax(expected)?;
    let actual = sha256_digest(&Sha256::digest(body));
    if actual != expected {
        return Err(PullError::DigestMismatch { what: "the manifest".into(), expected: expected.to_owned(), actual });
    }
    Ok(())
}

/// Only `sha256:<64 lowercase hex>`: the digest becomes a file name.
fn check_digest_syntax(digest: &str) -> Result<(), PullError> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    if ok {
        Ok(())
    } else {
        Err(PullError::Invalid(format!("unsupported digest {digest:?} (only sha256 is accepted)")))
    }
}

fn sha256_digest(hash: &[u8]) -> Digest {
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Makes `blob_dir/<hex>` hold `blob` whole: keeps a matching file already there, resumes a
/// `.partial`, and downloads the rest.
async fn fetch_blob(
    client: &Client,
    reference: &Reference,
    blob: &Descriptor,
    blob_dir: &Path,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<(), PullError> {
    let hex = blob.digest.trim_start_matches("sha256:");
    let target = blob_dir.join(hex);
    let partial = blob_dir.join(format!("{hex}.partial"));
    let report =
        |done| progress(PullProgress { layer_digest: blob.digest.clone(), bytes_done: done, bytes_total: blob.size });

    // A blob already there counts if it is whole; otherwise it goes.
    if let Some((len, digest)) = hash_file(&target, u64::MAX).await? {
        if len == blob.size && digest == blob.digest {
            report(blob.size);
            return Ok(());
        }
        remove(&target).await?;
    }
    // An empty blob needs no request (and a range request for it may be refused).
    if blob.size == 0 {
        let actual = sha256_digest(&Sha256::digest(b""));
        if actual != blob.digest {
            return Err(PullError::DigestMismatch {
                what: format!("blob {}", blob.digest),
                expected: blob.digest.clone(),
                actual,
            });
        }
        write_atomically(&target, Vec::new()).await?;
        report(0);
        return Ok(());
    }
    // A `.partial` shorter than the blob is resumed from where it stopped; if the result does
    // not verify (it was not a prefix of this blob), the blob is fetched once more from zero.
    let resumable = match tokio::fs::metadata(&partial).await {
        Ok(meta) => meta.len() > 0 && meta.len() < blob.size,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(&partial)(e)),
    };
    if resumable {
        match download(client, reference, blob, &partial, true, &report).await {
            Ok(()) => return finish(&partial, &target).await,
            Err(PullError::DigestMismatch { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    download(client, reference, blob, &partial, false, &report).await?;
    finish(&partial, &target).await
}

async fn finish(partial: &Path, target: &Path) -> Result<(), PullError> {
    tokio::fs::rename(partial, target).await.map_err(io(target))
}

/// Streams `blob` into `partial` (appending to what is there when `resume`), hashing as it
/// goes; on success `partial` holds exactly the blob. On any failure but a transport one the
/// partial file is removed.
async fn download(
    client: &Client,
    reference: &Reference,
    blob: &Descriptor,
    partial: &Path,
    resume: bool,
    report: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), PullError> {
    // The hash of what the partial file already holds.
    let mut hasher = Sha256::new();
    let mut offset = 0;
    if resume {
        let path = partial.to_owned();
        let (h, len) = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, u64)> {
            let mut hasher = Sha256::new();
            let len = hash_into(&mut std::fs::File::open(&path)?, &mut hasher, u64::MAX)?;
            Ok((hasher, len))
        })
        .await
        .map_err(|e| PullError::Registry(format!("hashing task: {e}")))?
        .map_err(io(partial))?;
        (hasher, offset) = (h, len);
    }
    // Descriptors are passed without their `urls`: the blob comes from this registry only.
    let descriptor = OciDescriptor {
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size: i64::try_from(blob.size).unwrap_or(i64::MAX),
        urls: None,
        annotations: None,
        artifact_type: None,
    };
    let response = client.pull_blob_stream_partial(reference, &descriptor, offset, None).await.map_err(from_oci)?;
    let mut stream = match response {
        BlobResponse::Partial(stream) => stream,
        // The registry sent the whole blob: start over.
        BlobResponse::Full(stream) => {
            hasher = Sha256::new();
            offset = 0;
            stream
        }
    };
    if let Some(len) = stream.content_length {
        if offset.saturating_add(len) > blob.size {
            remove(partial).await?;
            return Err(PullError::TooLarge(too_large(blob, offset.saturating_add(len))));
        }
    }

    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(offset == 0)
        .append(offset > 0)
        .open(partial)
        .map_err(io(partial))?;
    if offset > 0 {
        // A partial that changed length under us is not resumed.
        let len = file.metadata().map_err(io(partial))?.len();
        if len != offset {
            drop(file);
            remove(partial).await?;
            return Err(PullError::DigestMismatch {
                what: format!("blob {}", blob.digest),
                expected: blob.digest.clone(),
                actual: "a changed partial file".into(),
            });
        }
    }

    // Hashing and writing run on a blocking thread, fed chunk by chunk.
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    let writer = spawn_writer(rx, file, hasher);
    let mut done = offset;
    let mut reported = offset;
    report(done);
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failure = Some(PullError::Registry(format!("reading blob {}: {}", blob.digest, error_chain(&e))));
                break;
            }
        };
        done = done.saturating_add(chunk.len() as u64);
        if done > blob.size {
            failure = Some(PullError::TooLarge(too_large(blob, done)));
            break;
        }
        if tx.send(chunk).await.is_err() {
            break; // The writer failed; its error is below.
        }
        if done - reported >= PROGRESS_STEP {
            reported = done;
            report(done);
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| PullError::Registry(format!("writing task: {e}")))?;
    let hasher = match (failure, written) {
        // A cut connection keeps the partial file for the next pull to resume.
        (Some(e @ PullError::Registry(_)), _) => return Err(e),
        (Some(e), _) => {
            remove(partial).await?;
            return Err(e);
        }
        (None, Err(e)) => return Err(io(partial)(e)),
        (None, Ok(hasher)) => hasher,
    };
    let actual = sha256_digest(&hasher.finalize());
    if done != blob.size || actual != blob.digest {
        remove(partial).await?;
        let actual = if done == blob.size { actual } else { format!("{actual} ({done} of {} bytes)", blob.size) };
        return Err(PullError::DigestMismatch {
            what: format!("blob {}", blob.digest),
            expected: blob.digest.clone(),
            actual,
        });
    }
    if reported != done {
        report(done);
    }
    Ok(())
}

/// Hashes and writes what arrives on `rx` to `file` on a blocking thread; returns the hash.
fn spawn_writer<B: AsRef<[u8]> + Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<B>,
    file: std::fs::File,
    mut hasher: Sha256,
) -> tokio::task::JoinHandle<std::io::Result<Sha256>> {
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(chunk.as_ref());
            out.write_all(chunk.as_ref())?;
        }
        out.flush()?;
        Ok(hasher)
    })
}

fn too_large(blob: &Descriptor, got: u64) -> String {
    format!("blob {} is larger than the {} bytes its descriptor declares ({got} bytes or more)", blob.digest, blob.size)
}

/// The length and sha256 digest of the file at `path`, `None` if there is none; reads at most
/// `limit` bytes.
async fn hash_file(path: &Path, limit: u64) -> Result<Option<(u64, Digest)>, PullError> {
    let owned = path.to_owned();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(u64, Digest)>> {
        let mut file = match std::fs::File::open(&owned) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut hasher = Sha256::new();
        let len = hash_into(&mut file, &mut hasher, limit)?;
        Ok(Some((len, sha256_digest(&hasher.finalize()))))
    })
    .await
    .map_err(|e| PullError::Registry(format!("hashing task: {e}")))?;
    result.map_err(io(path))
}

fn hash_into(file: &mut std::fs::File, hasher: &mut Sha256, limit: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    let mut reader = file.take(limit);
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(len);
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename.
async fn write_atomically(path: &Path, bytes: Vec<u8>) -> Result<(), PullError> {
    let tmp = path.with_extension("partial");
    tokio::fs::write(&tmp, bytes).await.map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, path).await.map_err(io(path))
}

async fn remove(path: &Path) -> Result<(), PullError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io { what: path.display().to_string(), source }
}

/// An error and its sources, `: `-separated (the client's errors often keep the cause in
/// their source only).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

fn from_oci(error: OciDistributionError) -> PullError {
    use oci_client::errors::DigestError;
    match error {
        OciDistributionError::UnauthorizedError { url } => PullError::Unauthorized(url),
        OciDistributionError::AuthenticationFailure(message) => PullError::Unauthorized(message),
        OciDistributionError::ImageManifestNotFoundError(message) => PullError::NotFound(message),
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            PullError::DigestMismatch { what: "the manifest".into(), expected, actual }
        }
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let message = error.to_string();
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                PullError::Unauthorized(message)
            } else if codes().any(|c| {
                matches!(
                    c,
                    OciErrorCode::NameUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                PullError::NotFound(message)
            } else if codes().any(|c| matches!(c, OciErrorCode::NameInvalid | OciErrorCode::TagInvalid)) {
                PullError::Invalid(message)
            } else {
                PullError::Registry(message)
            }
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => PullError::Unauthorized(error.to_string()),
        OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound(error.to_string()),
        other => PullError::Registry(error_chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost/a:b",
            "localhost:5000/a/b:c",
            "LOCALHOST:5000/a",
            "127.0.0.1:5000/test/img:latest",
            "127.8.9.10/x@sha256:00",
            "[::1]:5000/a:b",
            "[::1]/a",
            "::1/a",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "debian:12",
            "library/debian",
            "docker.io/library/debian:12",
            "localhost.example.com/a",
            "10.0.0.1:5000/a",
            "[::2]:5000/a",
            "128.0.0.1/a",
            "[::1/a",
            "",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
    }

    #[test]
    fn endpoints() {
        let e = endpoint("127.0.0.1:5000/test/img:latest", true).unwrap();
        assert_eq!((e.registry.as_str(), e.host.as_str(), e.port), ("127.0.0.1:5000", "127.0.0.1", 5000));
        let e = endpoint("registry.example.com/a/b@sha256:".to_owned().as_str(), false);
        assert!(e.is_err());
        let e = endpoint("registry.example.com/a/b:1", false).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("registry.example.com", 443));
        let e = endpoint("registry.example.com/a/b:1", true).unwrap();
        assert_eq!(e.port, 80);
        let e = endpoint("debian:12", false).unwrap();
        assert_eq!((e.registry.as_str(), e.host.as_str(), e.port), ("docker.io", "index.docker.io", 443));
        // The reference grammar has no IPv6 literals.
        for bad in ["Bad Ref", "host:99999/a:b", "host:0/a:b", "[::1]:5000/a:b"] {
            assert!(matches!(endpoint(bad, false), Err(PullError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn digest_syntax() {
        assert!(check_digest_syntax(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in ["sha256:../../etc", "sha512:aa", &format!("sha256:{}", "A".repeat(64)), "sha256:"] {
            assert!(matches!(check_digest_syntax(bad), Err(PullError::Invalid(_))), "{bad}");
        }
    }
}
