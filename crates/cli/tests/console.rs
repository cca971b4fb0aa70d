//! The web console (`/console/`) in a real browser: Debian's headless Chromium, driven through
//! playwright-core by `testsupport/console/drive.mjs`, against a real `bulkhead serve`. The
//! driver signs in with a key, creates a sandbox, types into its terminal and reads the output
//! back from the rendered terminal, uploads files, renders the usage chart, verifies the audit
//! chain, follows a task's messages, and checks that a viewer is offered no exec and refused
//! one, that markup in output and file names stays text, and that nothing leaves the machine.
//! This test checks the same server's answers at the HTTP level besides: the static files
//! without a token and with their headers, the API without one refused.
//!
//! Needs `/usr/bin/chromium` (`scripts/os-deps --test`) and `testsupport/console/node_modules`
//! (`scripts/sdk-deps --console`). With `BULKHEAD_CONSOLE_SCREENSHOTS=<dir>` the driver saves a
//! PNG of each view there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::process::Server;
use common::sdk::repo;

#[tokio::test]
async fn the_static_files_need_no_token_and_carry_a_strict_policy() {
    let dir = common::tempdir();
    let server = Server::start(&dir.path().join("data"));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let moved = http.get(format!("{}/console", server.url)).send().await.unwrap();
    assert_eq!(moved.status(), 308);
    assert_eq!(moved.headers()["location"], "/console/");

    for (path, content_type) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
        ("/console/vendor/xterm/xterm.mjs", "text/javascript; charset=utf-8"),
    ] {
        let r = http.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in ["default-src 'none'", "script-src 'self';", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
    }
    let page = http.get(format!("{}/console/", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="app.js"></script>"#), "{page}");

    // A file the console does not have, or a directory of it, is the usual 404.
    for path in ["/console/nothing.js", "/console/vendor/", "/console/vendor/xterm"] {
        let r = http.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    // Every answer under /console carries the console's headers: another method, a path that
    // is not UTF-8.
    for (method, path, status) in [
        (reqwest::Method::POST, "/console/", 405),
        (reqwest::Method::DELETE, "/console/app.js", 405),
        (reqwest::Method::GET, "/console/%ff%fe", 400),
    ] {
        let r = http.request(method.clone(), format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let h = r.headers();
        assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'none'"), "{method} {path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{method} {path}");
        assert_eq!(h["x-frame-options"], "DENY", "{method} {path}");
    }
    // What the console offers comes from the API's decisions: a viewer may not run commands.
    server.ok(None, &["namespace", "create", "perm"]);
    let key = |name: &str, role: &str| {
        let key = server.json(None, &["key", "create", "--ns", "perm", name, "--role", role]);
        key["token"].as_str().unwrap().to_owned()
    };
    for (token, role, execs) in [(key("d", "developer"), "developer", true), (key("v", "viewer"), "viewer", false)] {
        let r = http
            .get(format!("{}/v1/namespaces/perm/permissions", server.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let p: serde_json::Value = r.json().await.unwrap();
        assert_eq!(p["role"], role);
        let actions: Vec<&str> = p["actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(actions.contains(&"sandbox.get"), "{p}");
        assert_eq!(actions.contains(&"sandbox.exec"), execs, "{p}");
        assert!(!actions.contains(&"namespace.create"), "{p}");
    }
    // An owner may do everything in its namespace that is not the platform's: each action is
    // asked on a resource of the type it applies to (a delete of a policy, a secret's read, a
    // key's revoke, a pool's size).
    let r = http
        .get(format!("{}/v1/namespaces/perm/permissions", server.url))
        .bearer_auth(key("o", "owner"))
        .send()
        .await
        .unwrap();
    let p: serde_json::Value = r.json().await.unwrap();
    let actions: Vec<&str> = p["actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for action in ["policy.delete", "key.get", "key.revoke", "secret.delete", "project.delete", "pool.set"] {
        assert!(actions.contains(&action), "{action}: {p}");
    }
    // Secret values are never a key's to read, whatever its role.
    assert!(!actions.contains(&"secret.read"), "{p}");
    // Another namespace's permissions are a 404, as everything of it is.
    let other = http
        .get(format!("{}/v1/namespaces/nosuch/permissions", server.url))
        .bearer_auth(key("d2", "developer"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    // The API still needs a token, whoever serves the page.
    let r = http.get(format!("{}/v1/namespaces", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
}

#[test]
fn the_console_works_in_headless_chromium() {
    let driver = repo().join("testsupport/console");
    assert!(
        driver.join("node_modules/playwright-core").is_dir(),
        "{} is missing: run scripts/sdk-deps --console",
        driver.join("node_modules").display()
    );
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium is missing: scripts/os-deps --test");
    let dir = common::tempdir();
    let server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", "web", "--cpu", "2", "--memory", "2GiB", "--disk", "1GiB"]);
    let key = |name: &str, role: &str| {
        let key = server.json(None, &["key", "create", "--ns", "web", name, "--role", role]);
        key["token"].as_str().unwrap().to_owned()
    };
    let developer = key("dev", "developer");
    let viewer = key("watcher", "viewer");
    let admin = server.first_token.clone().unwrap();
    let bundle = dir.path().join("echo-py.tar");
    std::fs::write(&bundle, common::agents::echo_py()).unwrap();
    // The browser's profile: fresh, and removed with the temporary directory.
    let profile = dir.path().join("chromium");
    std::fs::create_dir(&profile).unwrap();

    let mut run = Command::new("node");
    run.arg(driver.join("drive.mjs"))
        .current_dir(&driver)
        .env("BULKHEAD_URL", &server.url)
        .env("BULKHEAD_NAMESPACE", "web")
        .env("BULKHEAD_TOKEN", &developer)
        .env("BULKHEAD_VIEWER_TOKEN", &viewer)
        .env("BULKHEAD_ADMIN_TOKEN", &admin)
        .env("BULKHEAD_AGENT_BUNDLE", &bundle)
        .env("CHROMIUM_USER_DATA_DIR", &profile)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    let out = run.output().expect("node runs");
    let report = format!("{}{}", common::process::text(&out.stdout), common::process::text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "the console's browser run failed ({}):\n{report}", out.status);
    // Every check ran and passed, in order.
    let passed: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    assert_eq!(
        passed,
        [
            "static files are served without a token, with a strict CSP",
            "the API refuses a call without a token",
            "sign in with a key",
            "create a sandbox",
            "type into the terminal and read its output",
            "leaving the terminal hangs up its shell",
            "upload a file and read it back through the API",
            "data that looks like markup is shown as text (XSS)",
            "a filesystem's file browser uploads, lists and downloads",
            "a usage chart renders",
            "the audit chain verifies",
            "agents and a task with its live messages",
            "a viewer sees no exec button, and the API refuses it",
            "the admin changes quotas, explains a decision and verifies both chains",
            "a revoked key's open page goes back to sign-in",
            "nothing executed, nothing was refused by the CSP, nothing left the machine",
        ],
        "{report}"
    );
}
