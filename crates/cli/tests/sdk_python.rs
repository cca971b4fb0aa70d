//! The Python SDK (`sdk/python`) against the real `bulkhead serve`: its pytest suite runs in
//! the venv `scripts/sdk-deps` makes (pinned packages and the SDK installed from the repo), with
//! a namespace, a developer, a viewer and the platform admin of this server in its environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::Server;
use common::sdk::{pytest, venv_python};

#[test]
fn the_python_sdk_suite_passes_against_a_real_server() {
    let python = venv_python("--python");
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

    pytest(
        &python,
        "sdk/python/tests",
        &[
            ("BULKHEAD_URL", server.url.as_ref()),
            ("BULKHEAD_NAMESPACE", "acme".as_ref()),
            ("BULKHEAD_TOKEN", dev.as_ref()),
            ("BULKHEAD_VIEWER_TOKEN", viewer.as_ref()),
            ("BULKHEAD_ADMIN_TOKEN", admin.as_ref()),
            ("BULKHEAD_TEST_AGENT_BUNDLE", bundle.as_ref()),
        ],
    );
}
