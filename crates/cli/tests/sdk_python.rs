//! The Python SDK (`sdk/python`) against the real `bulkhead serve`: its pytest suite runs in
//! the venv `scripts/sdk-deps` makes (pinned packages and the SDK installed from the repo), with
//! a namespace, a developer, a viewer and the platform admin of this server in its environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{text, Server};

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository")
}

/// The SDK venv's python, as `scripts/sdk-deps --python` installs and prints it.
fn sdk_python() -> PathBuf {
    let out = Command::new(repo().join("scripts/sdk-deps")).arg("--python").output().expect("scripts/sdk-deps runs");
    assert!(out.status.success(), "scripts/sdk-deps --python: {}", text(&out.stderr));
    let python = PathBuf::from(text(&out.stdout).trim());
    assert!(python.is_file(), "the SDK's python at {}", python.display());
    python
}

#[test]
fn the_python_sdk_suite_passes_against_a_real_server() {
    let python = sdk_python();
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let admin = server.first_token.clone().expect("the first start prints the admin token");
    server.ok(None, &["namespace", "create", "acme", "--cpu", "4", "--memory", "4GiB", "--disk", "2GiB"]);
    let key = |name: &str, role: &str| {
        let k = server.json(None, &["key", "create", "--ns", "acme", name, "--role", role]);
        k["token"].as_str().unwrap().to_owned()
    };
    let (dev, viewer) = (key("dev", "developer"), key("look", "viewer"));
    let bundle = dir.path().join("echo-py.tar");
    std::fs::write(&bundle, common::agents::echo_py()).unwrap();

    let out = Command::new(&python)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "sdk/python/tests"])
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BULKHEAD_URL", &server.url)
        .env("BULKHEAD_NAMESPACE", "acme")
        .env("BULKHEAD_TOKEN", &dev)
        .env("BULKHEAD_VIEWER_TOKEN", &viewer)
        .env("BULKHEAD_ADMIN_TOKEN", &admin)
        .env("BULKHEAD_TEST_AGENT_BUNDLE", &bundle)
        .output()
        .expect("python runs");
    let report = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the Python SDK's suite failed ({}):\n{report}", out.status);
    // The suite ran: pytest's summary names its passed tests and no failure.
    assert!(report.contains(" passed") && !report.contains(" failed"), "{report}");
}
