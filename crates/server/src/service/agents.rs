//! Agents and their versions. A version is an uploaded bundle (a tar of the agent's code with an
//! `agent.json` at its root), unpacked once under the archive rules into a directory of its own
//! under `<data-dir>/agents/`, owned by the namespace's root id so that the agent's sandbox reads
//! it as its own, and mounted read-only at `/agent` in each of its tasks' sandboxes. The
//! directory's name is a keyed hash of the namespace and the bundle's digest: it names no tenant
//! or resource (it shows in the sandbox's mount table), and no namespace learns whether another
//! holds the same bundle.

use std::io::Read;
use std::path::{Path, PathBuf};

use bulkhead_api::AgentManifest;
use bulkhead_runtime::archive::{self, Limits};
use bulkhead_runtime::confined::{Owner, Root};
use bulkhead_store::{AgentRow, VersionRow};
use sha2::{Digest, Sha256};

use super::{ServiceError, ServiceResult};
use crate::service::records::NamespaceRow;
use crate::state::AppState;
use crate::time::now_ms;

/// The largest bundle upload, in bytes (compressed or not, as sent).
pub const MAX_BUNDLE_BYTES: u64 = 512 << 20;
/// The most bytes of file data a bundle unpacks to.
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;
/// The most entries a bundle holds.
pub const MAX_BUNDLE_ENTRIES: u64 = 200_000;
/// The largest `agent.json`.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;
/// An agent's deploy history keeps this many entries (rollbacks reach that far back).
pub const MAX_DEPLOYS: usize = 100;
/// Default seconds without a prompt in flight before a task's sandbox stops.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 300;

/// Where the unpacked bundles live.
fn bundles_root(state: &AppState) -> PathBuf {
    state.config.data_dir.join("agents")
}

/// The directory of namespace `ns`'s bundle `digest`.
pub fn bundle_dir(state: &AppState, ns: &str, digest: &str) -> PathBuf {
    bundles_root(state).join(state.hasher.hash(&format!("agent-bundle/{ns}/{digest}")))
}

/// A spool file for an upload, removed when dropped.
pub struct Spool(pub PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A new spool file for a bundle upload, and the file to write it to.
pub fn spool(state: &AppState) -> std::io::Result<(Spool, std::fs::File)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = bundles_root(state).join(".spool");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let path = dir.join(bulkhead_core::ids::new_id("upload_"));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    Ok((Spool(path), file))
}

/// Removes what an interrupted upload or unpack left behind (at start).
pub fn sweep(state: &AppState) {
    let root = bundles_root(state);
    let _ = std::fs::remove_dir_all(root.join(".spool"));
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Creates agent `name` of `ns`; 409 when the name is taken.
pub async fn create(state: &AppState, ns: &str, name: &str) -> ServiceResult<AgentRow> {
    let now = now_ms();
    let row = AgentRow {
        id: bulkhead_core::ids::new_id(bulkhead_core::ids::prefix::AGENT),
        namespace: ns.to_owned(),
        name: name.to_owned(),
        deploys: Vec::new(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    match state.store.insert_agent(&row).await {
        Err(bulkhead_store::StoreError::Conflict(_)) => {
            Err(ServiceError::Conflict(format!("agent {name:?} already exists")))
        }
        other => other.map(|()| row).map_err(Into::into),
    }
}

/// Deletes an agent, its versions and its ended tasks: 409 while a task of it has not ended.
/// The bundles no other version of the namespace names are removed.
pub async fn delete(state: &AppState, agent: &AgentRow) -> ServiceResult<()> {
    let before = bundle_dirs(state, &agent.namespace).await?;
    match state.store.delete_agent(&agent.namespace, &agent.id).await {
        Ok(_) => {}
        Err(bulkhead_store::StoreError::Conflict(what)) => {
            return Err(ServiceError::Conflict(format!("agent {} is in use by {what}", agent.name)))
        }
        Err(e) => return Err(e.into()),
    }
    let kept = bundle_dirs(state, &agent.namespace).await?;
    let gone: Vec<PathBuf> = before.into_iter().filter(|d| !kept.contains(d)).collect();
    remove_bundles(&gone).await;
    Ok(())
}

/// The bundle directories of namespace `ns`'s versions.
pub async fn bundle_dirs(state: &AppState, ns: &str) -> ServiceResult<Vec<PathBuf>> {
    let digests = state.store.version_digests(ns).await?;
    Ok(digests.iter().map(|d| bundle_dir(state, ns, d)).collect())
}

/// Removes bundle directories (a failure is logged: what is left is swept by nothing else, so
/// it is worth a warning).
pub async fn remove_bundles(dirs: &[PathBuf]) {
    let dirs = dirs.to_vec();
    let _ = tokio::task::spawn_blocking(move || {
        for d in dirs {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %d.display(), error = %e, "an agent bundle could not be removed");
                }
            }
        }
    })
    .await;
}

/// Agent `name_or_id` of `ns`.
pub async fn find(state: &AppState, ns: &str, name_or_id: &str) -> ServiceResult<Option<AgentRow>> {
    Ok(state.store.find_agent(ns, name_or_id).await?)
}

/// The version `id` of `agent`, or 404 naming it.
pub async fn version_of(state: &AppState, agent: &AgentRow, id: &str) -> ServiceResult<VersionRow> {
    state
        .store
        .get_version(&agent.namespace, id)
        .await?
        .filter(|v| v.agent_id == agent.id)
        .ok_or_else(|| ServiceError::NotFound(format!("version {id:?} of agent {} not found", agent.name)))
}

/// The manifest a version was stored with.
pub fn manifest_of(version: &VersionRow) -> ServiceResult<AgentManifest> {
    serde_json::from_str(&version.manifest)
        .map_err(|e| ServiceError::Internal(format!("version {}'s stored manifest: {e}", version.id)))
}

/// Stores the bundle in `spooled` as a version of `agent`: its digest computed, unpacked under
/// the archive rules (once per namespace and digest), its `agent.json` validated (400 naming the
/// field). The same bundle pushed again answers the version it already is (`false`: not new).
pub async fn push(
    state: &AppState,
    ns: &NamespaceRow,
    agent: &AgentRow,
    spooled: &Path,
    digest: String,
) -> ServiceResult<(VersionRow, bool)> {
    let owner = super::sandboxes::id_range(ns)?;
    let owner = Owner { uid: owner.host_start, gid: owner.host_start };
    let size = std::fs::metadata(spooled).map(|m| m.len()).unwrap_or(0);
    // The namespace's bundles together stay within its disk quota (a bundle already stored is
    // not counted twice).
    // What a bundle takes is what it unpacks to: it may unpack to what the quota leaves.
    let used = state.store.version_bytes(&ns.name).await?;
    let left = ns.quotas.disk_bytes.saturating_sub(used);
    let over = || {
        ServiceError::QuotaExceeded(format!(
            "quota disk_bytes exceeded by agent bundles: limit {}, bundles {used}, this one more than {left} unpacked",
            ns.quotas.disk_bytes
        ))
    };
    if left == 0 {
        return Err(over());
    }
    let dir = bundle_dir(state, &ns.name, &digest);
    let (root, file, target) = (bundles_root(state), spooled.to_owned(), dir.clone());
    let max_bytes = MAX_UNPACKED_BYTES.min(left);
    let (manifest, unpacked) = tokio::task::spawn_blocking(move || unpack(&root, &file, &target, owner, max_bytes))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
        .map_err(|e| match e {
            ServiceError::TooLarge(_) if max_bytes < MAX_UNPACKED_BYTES => over(),
            other => other,
        })?;
    let size = size.max(unpacked);
    let row = VersionRow {
        id: bulkhead_core::ids::new_id(bulkhead_core::ids::prefix::VERSION),
        namespace: ns.name.clone(),
        agent_id: agent.id.clone(),
        digest,
        manifest: serde_json::to_string(&manifest).map_err(|e| ServiceError::Internal(e.to_string()))?,
        size_bytes: size,
        created_at_ms: now_ms(),
    };
    let stored = state.store.insert_version(&row).await?;
    let new = stored.id == row.id;
    Ok((stored, new))
}

/// The digest of a spooled bundle: `sha256:<hex>`.
pub async fn digest(spooled: &Path) -> ServiceResult<String> {
    let file = spooled.to_owned();
    tokio::task::spawn_blocking(move || digest_of(&file))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
        .map_err(|e| ServiceError::Internal(format!("reading the spooled bundle: {e}")))
}

fn digest_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// Unpacks `bundle` into `target` (unless it is there already) and answers its validated
/// manifest. The unpack goes to a staging directory renamed into place whole.
fn unpack(
    root: &Path,
    bundle: &Path,
    target: &Path,
    owner: Owner,
    max_bytes: u64,
) -> ServiceResult<(AgentManifest, u64)> {
    use std::os::unix::fs::DirBuilderExt;
    if target.is_dir() {
        return Ok((read_manifest(target)?, 0));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .map_err(|e| ServiceError::Internal(format!("creating the bundle store: {e}")))?;
    let staging = root.join(bulkhead_core::ids::new_id(".staging-"));
    let result = (|| {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&staging)
            .map_err(|e| ServiceError::Internal(format!("creating a bundle's staging directory: {e}")))?;
        std::os::unix::fs::chown(&staging, Some(owner.uid), Some(owner.gid))
            .map_err(|e| ServiceError::Internal(format!("owning a bundle's staging directory: {e}")))?;
        let dir = Root::open(&staging).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let file = std::fs::File::open(bundle).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let limits = Limits { max_entries: MAX_BUNDLE_ENTRIES, max_bytes };
        let stats = archive::extract(std::io::BufReader::new(file), &dir, owner, limits).map_err(|e| match e {
            archive::ArchiveError::TooLarge { .. } => ServiceError::TooLarge(format!("bundle: {e}")),
            archive::ArchiveError::NoSpace => ServiceError::Internal(format!("bundle: {e}")),
            other => ServiceError::Invalid(format!("bundle: {other}")),
        })?;
        let manifest = read_manifest(&staging)?;
        match std::fs::rename(&staging, target) {
            Ok(()) => Ok((manifest, stats.bytes)),
            // Another push of the same bundle won the race: its copy is the same.
            Err(_) if target.is_dir() => Ok((manifest, stats.bytes)),
            Err(e) => Err(ServiceError::Internal(format!("storing a bundle: {e}"))),
        }
    })();
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Reads and validates `agent.json` at the root of an unpacked bundle.
fn read_manifest(dir: &Path) -> ServiceResult<AgentManifest> {
    let path = dir.join("agent.json");
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|_| ServiceError::Invalid("bundle: agent.json: missing at the bundle's root".into()))?;
    if !meta.file_type().is_file() {
        return Err(ServiceError::Invalid("bundle: agent.json: not a regular file".into()));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(ServiceError::Invalid(format!("bundle: agent.json: larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    let bytes = std::fs::read(&path).map_err(|e| ServiceError::Internal(format!("reading agent.json: {e}")))?;
    parse_manifest(&bytes)
}

/// Parses and validates an `agent.json`: 400 naming the field and why.
pub fn parse_manifest(bytes: &[u8]) -> ServiceResult<AgentManifest> {
    let m: AgentManifest = serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::Invalid(format!("agent.json: {}", shorten(&e.to_string(), 300))))?;
    let bad = |field: &str, why: String| ServiceError::Invalid(format!("agent.json: {field}: {why}"));
    if m.command.is_empty() || m.command.len() > 64 {
        return Err(bad("command", "1 to 64 arguments".into()));
    }
    for (i, arg) in m.command.iter().enumerate() {
        if arg.len() > 4096 || arg.contains('\0') || (i == 0 && arg.is_empty()) {
            return Err(bad(
                &format!("command[{i}]"),
                "a non-empty first argument, each at most 4096 bytes, no NUL".into(),
            ));
        }
    }
    if m.protocol != "acp" {
        return Err(bad(
            "protocol",
            format!("{:?} is not supported: \"acp\" (the Agent Client Protocol)", shorten(&m.protocol, 40)),
        ));
    }
    if let Some(image) = &m.image {
        let is_id = bulkhead_core::ids::is_id(bulkhead_core::ids::prefix::IMAGE, image);
        if !is_id {
            bulkhead_core::validate::name("agent.json: image", image)?;
        }
    }
    if let Some(r) = &m.resources {
        for (field, v) in [
            ("resources.cpu_millis", r.cpu_millis),
            ("resources.memory_bytes", r.memory_bytes),
            ("resources.disk_bytes", r.disk_bytes),
            ("resources.ttl_seconds", r.ttl_seconds),
        ] {
            if v == Some(0) || v.is_some_and(|v| v > 1 << 50) {
                return Err(bad(field, "at least 1, at most 2^50".into()));
            }
        }
    }
    if let Some(e) = &m.egress {
        bulkhead_core::egress::parse_list("agent.json: egress.allow", &e.allow)?;
        if e.credentials.len() > bulkhead_core::egress::MAX_CREDENTIALS {
            return Err(bad("egress.credentials", format!("at most {}", bulkhead_core::egress::MAX_CREDENTIALS)));
        }
        for (i, c) in e.credentials.iter().enumerate() {
            let c = bulkhead_core::egress::Credential {
                host: c.host.clone(),
                secret: c.secret.clone(),
                header: c.header.clone(),
                format: c.format.clone(),
            };
            c.check(&format!("agent.json: egress.credentials[{i}]"))?;
        }
    }
    if let Some(secrets) = &m.secrets {
        if secrets.len() > 64 {
            return Err(bad("secrets", "at most 64".into()));
        }
        for (i, s) in secrets.iter().enumerate() {
            bulkhead_core::validate::name(&format!("agent.json: secrets[{i}].name"), &s.name)?;
            if s.env.is_some() == s.path.is_some() {
                return Err(bad(&format!("secrets[{i}]"), "exactly one of env and path".into()));
            }
        }
    }
    if let Some(env) = &m.env {
        if env.len() > 128 {
            return Err(bad("env", "at most 128 variables".into()));
        }
        for (k, v) in env {
            let ok = !k.is_empty()
                && k.len() <= 255
                && !k.as_bytes()[0].is_ascii_digit()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(bad("env", format!("{:?} is not a variable name", shorten(k, 40))));
            }
            if v.len() > 32 << 10 || v.contains('\0') {
                return Err(bad(&format!("env.{k}"), "at most 32 KiB, no NUL".into()));
            }
        }
    }
    if let Some(mode) = &m.filesystem_mode {
        if mode != "rw" && mode != "ro" {
            return Err(bad("filesystem_mode", "\"rw\" or \"ro\"".into()));
        }
    }
    if let Some(t) = m.idle_timeout_seconds {
        if !(1..=86_400).contains(&t) {
            return Err(bad("idle_timeout_seconds", "1 to 86400".into()));
        }
    }
    if m.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(bad("description", "at most 1024 bytes".into()));
    }
    Ok(m)
}

/// Makes `version` the agent's active one (a deploy).
pub async fn deploy(state: &AppState, agent: &AgentRow, version: &VersionRow) -> ServiceResult<AgentRow> {
    let mut deploys = agent.deploys.clone();
    if deploys.last() != Some(&version.id) {
        deploys.push(version.id.clone());
    }
    if deploys.len() > MAX_DEPLOYS {
        deploys.drain(..deploys.len() - MAX_DEPLOYS);
    }
    swap(state, agent, deploys).await
}

/// Returns the agent to the version deployed before the active one (409 when there is none).
pub async fn rollback(state: &AppState, agent: &AgentRow) -> ServiceResult<AgentRow> {
    if agent.deploys.len() < 2 {
        return Err(ServiceError::Conflict(format!("agent {} has no previous version to roll back to", agent.name)));
    }
    let mut deploys = agent.deploys.clone();
    deploys.pop();
    swap(state, agent, deploys).await
}

async fn swap(state: &AppState, agent: &AgentRow, deploys: Vec<String>) -> ServiceResult<AgentRow> {
    let now = now_ms();
    if !state.store.set_deploys(&agent.id, &agent.deploys, &deploys, now).await? {
        return Err(ServiceError::Conflict(format!(
            "agent {} was deployed or rolled back meanwhile; read it and retry",
            agent.name
        )));
    }
    Ok(AgentRow { deploys, updated_at_ms: now, ..agent.clone() })
}

/// At most `max` bytes of `s` (cut at a character boundary), marked when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
