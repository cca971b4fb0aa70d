//! Agent bundles for the tests: the test agents under `tests/agents/` with their vendored
//! dependencies (installed on the host by `scripts/agent-deps`, never fetched by a sandbox),
//! packed as the tar a push uploads.

use std::path::{Path, PathBuf};

/// The test agents' directory.
pub fn agents_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("agents")
}

/// The Python ACP SDK's site-packages for the default image's python, as `scripts/agent-deps`
/// installs it (and prints it); installed there when missing.
pub fn python_sdk() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/agent-deps");
    let out = std::process::Command::new(&script).output().expect("scripts/agent-deps runs");
    assert!(out.status.success(), "scripts/agent-deps: {}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout).expect("a path").trim().to_owned();
    let path = PathBuf::from(path);
    assert!(path.join(".complete").exists(), "the Python SDK at {}", path.display());
    path
}

/// A tar of `dir`'s files at the bundle's root, plus `extra` directories (source, name in the
/// bundle).
pub fn bundle(dir: &Path, extra: &[(&Path, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).expect("the agent's files");
    for (source, name) in extra {
        b.append_dir_all(name, source).expect("the vendored files");
    }
    b.into_inner().expect("a tar")
}

/// The echo-py agent with its SDK.
pub fn echo_py() -> Vec<u8> {
    let sdk = python_sdk();
    bundle(&agents_dir().join("echo-py"), &[(&sdk, "site-packages")])
}

/// A hostile agent of `tests/agents/hostile/`.
pub fn hostile(name: &str) -> Vec<u8> {
    bundle(&agents_dir().join("hostile").join(name), &[])
}
