//! The agent-framework providers (`sdk/python-providers`: inspect-ai's sandbox environment and
//! mini-swe-agent's environment, both over the Python SDK) against the real `bulkhead serve`:
//! their pytest suite, inspect-ai's own sandbox conformance checks among it, runs in the venv
//! `scripts/sdk-deps --providers` makes, with a namespace and a developer key of this server in
//! its environment. `PYTEST_ADDOPTS` passes through (to run a part while working on it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{text, Server};

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository")
}

/// The providers venv's python, as `scripts/sdk-deps --providers` installs and prints it.
fn providers_python() -> PathBuf {
    let out = Command::new(repo().join("scripts/sdk-deps")).arg("--providers").output().expect("scripts/sdk-deps runs");
    assert!(out.status.success(), "scripts/sdk-deps --providers: {}", text(&out.stderr));
    let python = PathBuf::from(text(&out.stdout).trim());
    assert!(python.is_file(), "the providers' python at {}", python.display());
    python
}

#[test]
fn the_providers_suite_passes_against_a_real_server() {
    let python = providers_python();
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    // Room for inspect-ai's checks (a 50 MiB file and a 50 MiB stdin) and an eval beside them.
    server.ok(None, &["namespace", "create", "acme", "--cpu", "4", "--memory", "4GiB", "--disk", "2GiB"]);
    let dev = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = dev["token"].as_str().unwrap().to_owned();
    // inspect-ai writes its eval logs and caches under the home it is given.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let mut pytest = Command::new(&python);
    pytest
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "sdk/python-providers/tests"])
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BULKHEAD_URL", &server.url)
        .env("BULKHEAD_NAMESPACE", "acme")
        .env("BULKHEAD_TOKEN", &dev);
    if let Some(opts) = std::env::var_os("PYTEST_ADDOPTS") {
        pytest.env("PYTEST_ADDOPTS", opts);
    }
    let out = pytest.output().expect("python runs");
    let report = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the providers' suite failed ({}):\n{report}", out.status);
    // The suite ran: pytest's summary names its passed tests and no failure.
    assert!(report.contains(" passed") && !report.contains(" failed"), "{report}");
}
