//! The layering invariants of docs/ARCHITECTURE.md, checked on the workspace's manifests and
//! sources: only the runtime (and the supervisor inside the sandbox) is kernel-facing, the
//! server crate does not depend on `libc`, the core does no IO, and the HTTP routes reach the
//! store and the runtime only through the service layer. A change that breaks one of them fails
//! here, naming the file and the line.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

/// `cargo metadata` of the workspace's own packages.
fn packages() -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"].as_array().unwrap().clone()
}

/// The names of `package`'s normal (not dev) dependencies.
fn dependencies(package: &Value) -> Vec<String> {
    package["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every `.rs` file below `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out
}

/// The lines of the sources below `dir` that contain any of `needles`, as `path:line: text`,
/// comment lines left out.
fn offending(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for (path, text) in sources(dir) {
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let padded = format!(" {code}");
            if needles.iter().any(|needle| padded.contains(needle)) {
                let rel = path.strip_prefix(workspace()).unwrap_or(&path).display().to_string();
                hits.push(format!("{rel}:{}: {}", n + 1, code));
            }
        }
    }
    hits
}

#[test]
fn only_the_runtime_and_the_supervisor_depend_on_libc() {
    let mut users: Vec<String> = packages()
        .iter()
        .filter(|p| dependencies(p).iter().any(|d| d == "libc" || d == "nix" || d == "rustix"))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["bulkhead-runtime", "bulkhead-supervisor"], "crates depending on libc, nix or rustix");
}

#[test]
fn the_core_does_no_io() {
    let core = packages().into_iter().find(|p| p["name"] == "bulkhead-core").unwrap();
    for dep in dependencies(&core) {
        assert!(
            !["tokio", "reqwest", "hyper", "rusqlite", "axum", "libc", "nix", "rustix"].contains(&dep.as_str()),
            "bulkhead-core depends on {dep}"
        );
    }
    let hits = offending(
        &workspace().join("crates/core/src"),
        &["std::fs", "std::io::", "std::process", "std::net::Tcp", "std::net::Udp", "std::os::", "tokio"],
    );
    assert!(hits.is_empty(), "IO in bulkhead-core:\n{}", hits.join("\n"));
}

#[test]
fn kernel_calls_and_the_oci_runtime_are_the_runtimes() {
    let kernel = [
        " libc::",
        "(libc::",
        " nix::",
        " rustix::",
        "Command::new(\"runc\")",
        "Command::new(\"crun\")",
        "Command::new(\"mount\")",
        "Command::new(\"umount\")",
        "Command::new(\"losetup\")",
        "Command::new(\"mkfs",
    ];
    let crates = workspace().join("crates");
    for entry in std::fs::read_dir(&crates).unwrap() {
        let krate = entry.unwrap().path();
        let name = krate.file_name().unwrap().to_string_lossy().into_owned();
        if name == "runtime" || name == "supervisor" || !krate.join("src").is_dir() {
            continue;
        }
        let hits = offending(&krate.join("src"), &kernel);
        assert!(hits.is_empty(), "kernel-facing code outside the runtime:\n{}", hits.join("\n"));
    }
}

#[test]
fn routes_reach_the_store_and_the_runtime_only_through_services() {
    let hits = offending(&workspace().join("crates/server/src/routes"), &["bulkhead_store", "bulkhead_runtime"]);
    assert!(hits.is_empty(), "routes importing the store or the runtime:\n{}", hits.join("\n"));
}
