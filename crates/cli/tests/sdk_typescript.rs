//! The TypeScript SDK (`sdk/typescript`) against the real server: its saved OpenAPI document is
//! the one the server serves, its generated types are what that document generates (so the SDK
//! cannot drift from the API), and its own suite (`npm test`: `tsc`, then `node --test`) passes
//! against a running `bulkhead serve`.
//!
//! Needs `sdk/typescript/node_modules` (`scripts/sdk-deps` installs it from the lock file).
//! With `BULKHEAD_UPDATE_SDK=1` the test rewrites the saved document and the generated types
//! instead of failing on a difference.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::Server;
use serde_json::Value;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/typescript").canonicalize().unwrap()
}

fn updating() -> bool {
    std::env::var_os("BULKHEAD_UPDATE_SDK").is_some_and(|v| v == "1")
}

/// `saved` holds `fresh`, or (when updating) is made to.
fn same_or_update(saved: &Path, fresh: &str, how: &str) {
    let old = std::fs::read_to_string(saved).unwrap_or_default();
    if old == fresh {
        return;
    }
    if updating() {
        std::fs::write(saved, fresh).unwrap();
        return;
    }
    panic!("{} differs from {how}; run this test with BULKHEAD_UPDATE_SDK=1 and commit the result", saved.display());
}

/// Runs `program args` in the SDK's directory with `env`, and answers its output; fails the
/// test with that output unless it succeeded.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(sdk_dir())
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", common::process::text(&out.stdout), common::process::text(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed ({}):\n{text}", out.status);
    text
}

#[tokio::test]
async fn the_typescript_sdk_is_generated_from_the_servers_document_and_passes_its_suite() {
    let sdk = sdk_dir();
    let tools = sdk.join("node_modules/.bin");
    assert!(tools.join("tsc").exists(), "{} is missing: run scripts/sdk-deps", tools.display());
    let dir = common::tempdir();
    let server = Server::start(&dir.path().join("data"));

    // The saved document is the server's, and the committed types are what it generates.
    let doc: Value = reqwest::get(format!("{}/openapi.json", server.url)).await.unwrap().json().await.unwrap();
    same_or_update(&sdk.join("openapi.json"), &(serde_json::to_string_pretty(&doc).unwrap() + "\n"), "/openapi.json");
    // `npm run generate` as package.json has it, writing elsewhere than src/schema.ts.
    let out = tempfile::tempdir().unwrap();
    let generated = out.path().join("schema.ts");
    let package: Value = serde_json::from_slice(&std::fs::read(sdk.join("package.json")).unwrap()).unwrap();
    let script = package["scripts"]["generate"].as_str().unwrap();
    let (program, args) = script.split_once(' ').unwrap();
    let args: Vec<&str> =
        args.split_whitespace().map(|a| if a == "src/schema.ts" { generated.to_str().unwrap() } else { a }).collect();
    assert!(args.contains(&generated.to_str().unwrap()), "the generate script writes src/schema.ts: {script}");
    run(sdk.join("node_modules/.bin").join(program).to_str().unwrap(), &args, &[]);
    same_or_update(
        &sdk.join("src/schema.ts"),
        &std::fs::read_to_string(&generated).unwrap(),
        "what `npm run generate` makes",
    );

    // A namespace with room for a few sandboxes and a 50 MiB file, a developer and a viewer.
    server.ok(None, &["namespace", "create", "sdk", "--cpu", "2", "--memory", "2GiB", "--disk", "4GiB"]);
    let key = |name: &str, role: &str| {
        let key = server.json(None, &["key", "create", "--ns", "sdk", name, "--role", role]);
        key["token"].as_str().unwrap().to_owned()
    };
    let developer = key("dev", "developer");
    let viewer = key("watcher", "viewer");
    let admin = server.first_token.clone().unwrap();
    // The test agent of the task tests, with its vendored ACP SDK.
    let bundle = out.path().join("echo-py.tar");
    std::fs::write(&bundle, common::agents::echo_py()).unwrap();
    let report = run(
        "npm",
        &["test", "--silent"],
        &[
            ("BULKHEAD_URL", &server.url),
            ("BULKHEAD_TOKEN", &developer),
            ("BULKHEAD_NAMESPACE", "sdk"),
            ("BULKHEAD_VIEWER_TOKEN", &viewer),
            ("BULKHEAD_ADMIN_TOKEN", &admin),
            ("BULKHEAD_AGENT_BUNDLE", bundle.to_str().unwrap()),
        ],
    );
    println!("{report}");
    // node's runner counts what ran: every test passed and none was skipped.
    assert!(report.contains("# fail 0") && report.contains("# skipped 0"), "{report}");
    assert!(!report.contains("# pass 0"), "no test ran:\n{report}");
}
