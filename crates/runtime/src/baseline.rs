//! The bare OCI runtime as a baseline: a container with exactly a sandbox's isolation (the
//! same bundle, spec, cgroup and id mapping) whose init process is a given command instead of
//! the supervisor, run in the foreground by the OCI runtime and timed from the spawn to the
//! first line of its output, the way a sandbox start is timed (create → first exec output).
//! What Bulkhead adds to a start is the difference between the two.
//!
//! Nothing in the server uses it; it exists so that measurements of Bulkhead against its OCI
//! runtime do not spawn the OCI runtime themselves (only this crate does).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::oci::{oci_command, OciConfig, OciRuntime};
use crate::spec::OciKind;
use crate::{Result, RuntimeError, SandboxSpec};

/// A prepared baseline container: the bundle of a sandbox spec with its own init command.
/// The bundle is removed when this is dropped; the view and cgroups it used are the state
/// dir's and the cgroup prefix's, removed with them (`oci::purge`).
pub struct RawContainer {
    runtime: OciRuntime,
    id: String,
    oci: String,
    bundle: PathBuf,
    runs: usize,
}

impl RawContainer {
    /// Writes the bundle of `spec` under `config`'s state dir with `argv` as its init process.
    /// `spec.oci_runtime` runs it. Errors: the OCI runtime is not installed, or the bundle
    /// cannot be written.
    pub fn prepare(config: OciConfig, spec: &SandboxSpec, argv: &[&str]) -> Result<RawContainer> {
        let runtime = OciRuntime::new(config)?;
        let bundle = runtime.raw_bundle(spec, argv)?;
        Ok(RawContainer { runtime, id: spec.id.clone(), oci: spec.oci_runtime.clone(), bundle, runs: 0 })
    }

    /// Runs the container once in the foreground (`run --no-new-keyring`, as a sandbox is
    /// started; under gVisor `run` with the flags a sandbox gets, loopback only) and returns
    /// the time from the spawn to the first line of its standard output, and that line without
    /// its newline. The container has exited and is gone on return. Errors: the OCI runtime
    /// failed (with what it wrote on stderr).
    pub fn run_to_first_line(&mut self) -> Result<(Duration, String)> {
        self.runs += 1;
        let fail = |detail: String| RuntimeError::Oci { runtime: self.oci.clone(), action: "run", detail };
        let run: &[&str] = match OciKind::of(&self.oci) {
            OciKind::Native => &["run", "--no-new-keyring", "--bundle"],
            OciKind::Gvisor => &["--host-uds=create", "--network=none", "run", "--bundle"],
        };
        let start = Instant::now();
        let mut child = oci_command(&self.oci)
            .arg("--root")
            .arg(self.runtime.oci_root())
            .args(run)
            .arg(&self.bundle)
            .arg(format!("raw{}", self.runs))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line).map_err(RuntimeError::io("read the container's output"))?;
        }
        let elapsed = start.elapsed();
        let status = child.wait().map_err(RuntimeError::io("wait for the OCI runtime"))?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(fail(format!("{status}: {}", err.trim())));
        }
        Ok((elapsed, line.trim_end_matches('\n').to_owned()))
    }
}

impl Drop for RawContainer {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.bundle);
        // An image root, when the spec had one.
        let _ = crate::rootfs::unmount_root(&self.runtime.image_root(&self.id));
    }
}
