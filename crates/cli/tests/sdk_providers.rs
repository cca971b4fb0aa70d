//! The agent-framework providers (`sdk/python-providers`: inspect-ai's sandbox environment and
//! mini-swe-agent's environment, both over the Python SDK) against the real `bulkhead serve`:
//! their pytest suite, inspect-ai's own sandbox conformance checks among it, runs in the venv
//! `scripts/sdk-deps --providers` makes, with a namespace and a developer key of this server in
//! its environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::Server;
use common::sdk::{pytest, venv_python};

#[test]
fn the_providers_suite_passes_against_a_real_server() {
    let python = venv_python("--providers");
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    // Room for inspect-ai's checks (a 50 MiB file and a 50 MiB stdin) and an eval beside them.
    server.ok(None, &["namespace", "create", "acme", "--cpu", "4", "--memory", "4GiB", "--disk", "2GiB"]);
    let dev = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = dev["token"].as_str().unwrap().to_owned();
    // inspect-ai and mini-swe-agent write their logs and configuration under the home given.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    pytest(
        &python,
        "sdk/python-providers/tests",
        &[
            ("HOME", home.as_ref()),
            ("BULKHEAD_URL", server.url.as_ref()),
            ("BULKHEAD_NAMESPACE", "acme".as_ref()),
            ("BULKHEAD_TOKEN", dev.as_ref()),
        ],
    );
}
