//! What of Bulkhead is on this host: the basis of `bulkhead doctor` and of the leak check that
//! ends the test suite. A resource is Bulkhead's when it carries the server's names: the
//! cgroup prefix, the state dir, the supervisor's path.

use std::fs;
use std::path::Path;

/// One host resource of Bulkhead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResource {
    /// `mount`, `cgroup`, `netns`, `process`, `loop`, `dir`.
    pub kind: &'static str,
    pub name: String,
}

/// Processes whose command line is the sandbox supervisor.
pub fn supervisor_processes() -> Vec<HostResource> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if argv0 == crate::spec::SUPERVISOR_PATH.as_bytes() {
                out.push(HostResource {
                    kind: "process",
                    name: format!("pid {name} ({})", crate::spec::SUPERVISOR_PATH),
                });
            }
        }
    }
    out
}

/// Mounts whose source or target names `needle`.
pub fn mounts(needle: &str) -> Vec<HostResource> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(|l| HostResource { kind: "mount", name: l.split(' ').take(2).collect::<Vec<_>>().join(" on ") })
        .collect()
}

/// Named network namespaces whose name contains `needle`.
pub fn netns(needle: &str) -> Vec<HostResource> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .map(|name| HostResource { kind: "netns", name })
        .collect()
}

/// Loop devices whose backing file is under `dir`.
pub fn loop_devices(dir: &Path) -> Vec<HostResource> {
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(backing.trim()).starts_with(dir) {
                out.push(HostResource { kind: "loop", name: format!("/dev/{name} ({})", backing.trim()) });
            }
        }
    }
    out
}

/// Entries of a directory (sandbox bundles, OCI runtime state).
pub fn dir_entries(dir: &Path, kind: &'static str) -> Vec<HostResource> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| HostResource { kind, name: e.path().display().to_string() })
        .collect()
}
