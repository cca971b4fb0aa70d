//! Images made from sandboxes: a snapshot saves a running sandbox's changes to its image (its
//! root's upper layer) as one new layer on top of the image's own, a template to start many
//! sandboxes from; a build starts a sandbox from an image, runs commands in it and snapshots it.
//!
//! A snapshot is a private image of the sandbox's namespace. Its layers are its base image's
//! (in the store the base was unpacked into: the namespace's own, or the public one for a
//! public base) and the new layer, unpacked into the namespace's store under the rules of any
//! layer (setuid and setgid bits dropped). Its `digest` is the sha256 of
//! `{"base": <the base's digest>, "layer": <the new layer's digest>}`: it names what the
//! snapshot is made of (a snapshot is never exported as an OCI manifest).

use std::io::Write;

use bulkhead_runtime::image::{snapshot, StoredImage, UnpackOptions};
use bulkhead_store::{ImageRow, NamespaceRow, SandboxRow, SandboxStatus};
use sha2::{Digest as _, Sha256};

use super::images::{image_error, Import};
use super::{ServiceError, ServiceResult};
use crate::state::AppState;

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest a build's command may run.
const BUILD_COMMAND_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// What a failed build's command says of itself: the end of its output.
const BUILD_OUTPUT_BYTES: u64 = 64 << 10;

/// The rest of a build once its sandbox runs: each command of `run` in order, as the image's
/// user in its working directory (at most 30 minutes each), then a [`snapshot`] as `name`; the
/// sandbox is deleted whatever happens. A command that fails (non-zero, killed, or past its
/// time) is `Invalid` naming it (`run[i]`), with the end of its output.
pub async fn run_and_snapshot(
    state: &AppState,
    ns: &NamespaceRow,
    sandbox: &SandboxRow,
    name: &str,
    run: &[Vec<String>],
) -> ServiceResult<ImageRow> {
    let built = async {
        let (user, cwd) = match &sandbox.image {
            Some(i) => (i.user.clone(), i.working_dir.clone().unwrap_or_else(|| "/".into())),
            None => (None, "/".into()),
        };
        for (i, argv) in run.iter().enumerate() {
            let spec = bulkhead_runtime::ExecSpec {
                argv: argv.clone(),
                env: Vec::new(),
                cwd: cwd.clone(),
                timeout_ms: BUILD_COMMAND_TIMEOUT_MS,
                max_output_bytes: BUILD_OUTPUT_BYTES,
                stdin: false,
                user: user.clone(),
            };
            let mut stream = state.runtime.exec(&sandbox.id, spec, Vec::new()).await?;
            let mut output = Vec::new();
            let exit = loop {
                match stream.next().await {
                    Some(Ok(bulkhead_runtime::ExecEvent::Stdout(b) | bulkhead_runtime::ExecEvent::Stderr(b))) => {
                        output.extend(b);
                        let excess = output.len().saturating_sub(BUILD_OUTPUT_BYTES as usize);
                        output.drain(..excess);
                    }
                    Some(Ok(bulkhead_runtime::ExecEvent::Exit(exit))) => break exit,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(ServiceError::Internal(format!("run[{i}]: the command's stream ended early"))),
                }
            };
            if exit.exit_code != Some(0) {
                let how = match (exit.exit_code, exit.signal) {
                    (Some(code), _) => format!("exited with {code}"),
                    (None, Some(signal)) => format!("was killed by signal {signal}"),
                    (None, None) => "ended abnormally".to_owned(),
                };
                let tail = String::from_utf8_lossy(&output);
                let tail: String = tail.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                return Err(ServiceError::Invalid(format!("run[{i}] {argv:?} {how}: {}", tail.trim_end())));
            }
        }
        snapshot(state, ns, sandbox, name).await
    }
    .await;
    if let Err(e) = super::sandboxes::destroy(state, sandbox, SandboxStatus::Deleted, "image build done").await {
        tracing::warn!(sandbox = %sandbox.id, error = %e, "a build's sandbox could not be deleted");
    }
    built
}

/// Saves running sandbox `sandbox` of `ns` as the private image `name` of `ns`. Errors: the
/// sandbox is not running or has no image root (`Conflict`), the name is taken (`Conflict`),
/// the changes are larger than the server's bound on an image (`TooLarge`).
pub async fn snapshot(
    state: &AppState,
    ns: &NamespaceRow,
    sandbox: &SandboxRow,
    name: &str,
) -> ServiceResult<ImageRow> {
    if sandbox.status != SandboxStatus::Running {
        return Err(ServiceError::Conflict(format!("sandbox {} is {}", sandbox.id, sandbox.status.as_str())));
    }
    let Some(image) = &sandbox.image else {
        return Err(ServiceError::Conflict(format!(
            "sandbox {} runs on the host's base (--root host), not an image: there is nothing to snapshot",
            sandbox.id
        )));
    };
    if super::images::exists(state, Some(&ns.name), name).await? {
        return Err(ServiceError::Conflict(format!("image {name:?} already exists")));
    }
    // The base: a sandbox that has not ended keeps its image from being deleted.
    let base = state
        .store
        .find_image(Some(&ns.name), &image.id)
        .await?
        .ok_or_else(|| ServiceError::Conflict(format!("the image of sandbox {} is gone", sandbox.id)))?;
    let upper = state
        .runtime
        .upper_dir(&sandbox.id)
        .ok_or_else(|| ServiceError::Conflict(format!("sandbox {} has no writable layer on this host", sandbox.id)))?;
    let ids = super::sandboxes::id_range(ns)?;
    let (spooled, file) = super::images::spool_file(state)
        .map_err(|e| ServiceError::Internal(format!("cannot spool a snapshot: {e}")))?;
    let max_bytes = state.config.images.max_image_bytes;
    // Frozen while its changes are read: a consistent layer, and no process of the sandbox can
    // swap a file for a link (to the host's files) between the reader's look and its open.
    state.runtime.freeze(&ns.name, &sandbox.id, true).await?;
    let written = tokio::task::spawn_blocking(move || {
        let mut out = Hashing { inner: std::io::BufWriter::new(file), hasher: Sha256::new() };
        let stats = snapshot::write_layer(&upper, ids, &mut out)?;
        out.flush()
            .map_err(|source| bulkhead_runtime::image::ImageError::Io { what: "write a snapshot".into(), source })?;
        Ok::<_, bulkhead_runtime::image::ImageError>((stats, format!("sha256:{}", hex(&out.hasher.finalize()))))
    })
    .await;
    if let Err(e) = state.runtime.freeze(&ns.name, &sandbox.id, false).await {
        tracing::warn!(sandbox = %sandbox.id, error = %e, "a sandbox could not be thawed after its snapshot");
    }
    let written = written.map_err(|e| ServiceError::Internal(format!("a snapshot ended abnormally: {e}")))?;
    let (stats, layer) = written.map_err(image_error)?;
    if stats.bytes > max_bytes {
        return Err(ServiceError::TooLarge(format!(
            "the sandbox's changes hold {} bytes, more than the bound on an image of {max_bytes}",
            stats.bytes
        )));
    }
    let store = state.layers.store(Some(&ns.name)).await.map_err(image_error)?;
    let options = UnpackOptions { allow_setuid: false, max_bytes, max_entries: state.config.images.max_image_entries };
    let import =
        Import { namespace: Some(ns.name.clone()), name: name.to_owned(), source: format!("snapshot:{}", sandbox.id) };
    let lock = state.layers.lock(Some(&ns.name));
    let _shared = lock.read().await;
    let added = {
        let (store, path, layer) = (store.clone(), spooled.0.clone(), layer.clone());
        tokio::task::spawn_blocking(move || store.add_layer(&path, &layer, &options))
            .await
            .map_err(|e| ServiceError::Internal(format!("a snapshot ended abnormally: {e}")))?
    };
    drop(spooled);
    added.map_err(image_error)?;
    let config = super::images::config_of(&base)?;
    let identity = serde_json::json!({"base": base.digest, "layer": layer}).to_string();
    let stored = StoredImage {
        digest: format!("sha256:{}", hex(&Sha256::digest(identity.as_bytes()))),
        config,
        layers: base.layers.iter().cloned().chain([layer]).collect(),
        size_bytes: base.size_bytes.saturating_add(stats.bytes),
    };
    let row = super::images::record(state, &import, &stored).await;
    if row.is_err() {
        drop(_shared);
        super::images::collect_quietly(state, Some(&ns.name)).await;
    }
    row
}
