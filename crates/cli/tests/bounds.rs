//! No tenant input exhausts the server's stack: policies that nest too deeply are refused with a
//! 400 naming the construct before Cedar sees them, a policy at the bounds works on the stack the
//! server runs on, a stored policy past the bounds fails its namespace's requests without taking
//! the server down, deeply nested JSON bodies are 400s, and a directory tree a sandbox nests deeper
//! than any stack is replaced by an upload without a crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_store::PolicyRow;
use common::{assert_envelope, Harness};
use serde_json::{json, Value};

/// Runs `test` on a thread with the stack the `bulkhead` binary gives its runtime's threads
/// (`bulkhead_policy::STACK_SIZE`), where requests are decided.
fn on_server_stack<F: Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
    let thread = std::thread::Builder::new().stack_size(bulkhead_policy::STACK_SIZE).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(test())
    });
    if let Err(panic) = thread.unwrap().join() {
        std::panic::resume_unwind(panic);
    }
}

async fn add_policy(h: &Harness, ns: &str, token: &str, policy: &str) -> common::Reply {
    h.call(Method::POST, &format!("/v1/namespaces/{ns}/policies"), Some(token), json!({"name": "p", "policy": policy}))
        .await
}

/// A permit of `key.list` for everyone under `cond`: viewers may not list keys otherwise.
fn key_list_when(cond: &str) -> String {
    format!(r#"permit(principal, action == Bulkhead::Action::"key.list", resource) when {{ {cond} }};"#)
}

async fn raw_post(h: &Harness, path: &str, token: &str, body: String) -> common::Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    h.send(req).await
}

#[test]
fn policies_that_nest_too_deeply_are_refused_and_the_server_keeps_answering() {
    on_server_stack(|| async {
        let h = Harness::with_namespaces(&["alpha"]).await;
        let (_, owner) = h.create_key("alpha", "boss", "owner").await;
        let (_, viewer) = h.create_key("alpha", "look", "viewer").await;

        let attacks = [
            (
                format!("permit(principal, action, resource) when {{ {}true{} }};", "(".repeat(150), ")".repeat(150)),
                "parentheses",
            ),
            (
                format!(
                    "permit(principal, action, resource) when {{ {}1{} == [1] }};",
                    "[".repeat(150),
                    "]".repeat(150)
                ),
                "sets or indexes",
            ),
            (key_list_when(&vec!["true"; 10_000].join(" && ")), "the policy text, in bytes,"),
            (key_list_when(&vec!["true"; 1_000].join("&&")), "a chain of binary operators"),
            (key_list_when(&format!("{}true{}", "{a: ".repeat(100), "}".repeat(100))), "records"),
            (key_list_when(&format!("{}true", "if true then ".repeat(100))), "if-then-else"),
            // What Cedar's lexer skips the scan skips too: a comment ends at a carriage return,
            // and every Unicode white space (a vertical tab, a no-break space) separates tokens,
            // so an index chain written with them is still a chain.
            (key_list_when(&format!("true // \r || {}true{}", "(".repeat(3000), ")".repeat(3000))), "parentheses"),
            (key_list_when(&format!("context{} == 1", "\u{b}[\"a\"]".repeat(1000))), "a chain of `.` accesses"),
            (key_list_when(&format!("context{} == 1", "\u{a0}[\"a\"]".repeat(900))), "a chain of `.` accesses"),
            // A `like` whose matching costs (n − m) × m steps on every request.
            (
                key_list_when(&format!("\"{}\" like \"*{}b\"", "a".repeat(10_500), "a".repeat(5_200))),
                "the work of the policy's `like` patterns",
            ),
        ];
        for (policy, named) in &attacks {
            let r = add_policy(&h, "alpha", &owner, policy).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{named}: {}", r.body);
            assert_envelope(&r, "invalid_request");
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(message.contains(named), "{message}");
            // The server still answers, and nothing was stored.
            let r = h.call(Method::GET, "/v1/namespaces/alpha/policies", Some(&owner), Value::Null).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body["items"], json!([]));
        }

        // At the bounds, a policy is accepted and decides on the server's stack: parentheses 32
        // deep, each with an operator on the path, and a chain inside (depth 72 in all).
        let deep = format!("{}{}{}", "(".repeat(32), ["true"; 8].join(" || "), ") && true".repeat(32));
        let r = add_policy(&h, "alpha", &owner, &key_list_when(&deep)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = h.call(Method::GET, "/v1/namespaces/alpha/keys", Some(&viewer), Value::Null).await;
        assert_eq!(r.status, StatusCode::OK, "the policy at the bounds decided: {}", r.body);
        let r = h.call(Method::GET, "/v1/namespaces/alpha", Some(&viewer), Value::Null).await;
        assert_eq!(r.status, StatusCode::OK);
    });
}

#[test]
fn a_stored_policy_past_the_bounds_fails_its_namespace_not_the_server() {
    on_server_stack(|| async {
        let h = Harness::with_namespaces(&["alpha", "beta"]).await;
        let (_, alpha) = h.create_key("alpha", "boss", "owner").await;
        let (_, beta) = h.create_key("beta", "boss", "owner").await;
        // Written straight to the store, as by an older server without the bounds.
        let row = PolicyRow {
            id: "pol_00000000000000000000000000".to_owned(),
            namespace: "alpha".to_owned(),
            name: "deep".to_owned(),
            text: format!("forbid(principal, action, resource) when {{ {}true{} }};", "(".repeat(150), ")".repeat(150)),
            created_at_ms: 0,
        };
        h.state.store.create_policy(&row, 1000).await.unwrap();
        // A forbid that cannot be read must not be skipped: alpha's requests fail, closed.
        let r = h.call(Method::GET, "/v1/namespaces/alpha", Some(&alpha), Value::Null).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
        assert_envelope(&r, "internal");
        // Everyone else is served.
        let r = h.call(Method::GET, "/v1/namespaces/beta", Some(&beta), Value::Null).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    });
}

#[tokio::test]
async fn deeply_nested_json_bodies_are_400s() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, owner) = h.create_key("alpha", "boss", "owner").await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_object = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    let cases = [
        ("/v1/namespaces/alpha/sandboxes", deep(100_000)),
        ("/v1/namespaces/alpha/sandboxes", format!(r#"{{"env": {}}}"#, deep_object(100_000))),
        ("/v1/namespaces/alpha/policies", format!(r#"{{"name": "p", "policy": {}}}"#, deep(100_000))),
        ("/v1/namespaces/alpha/authz/explain", format!(r#"{{"principal": {}}}"#, deep_object(50_000))),
        ("/v1/namespaces/alpha/filesystems", deep(100_000)),
    ];
    for (path, body) in cases {
        let r = raw_post(&h, path, &owner, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
        assert_envelope(&r, "invalid_request");
    }
    let r = h.call(Method::GET, "/v1/namespaces/alpha", Some(&owner), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn a_tree_nested_deeper_than_any_stack_is_replaced_by_an_upload() {
    on_server_stack(|| async {
        let h = Harness::with_namespaces(&["alpha"]).await;
        let admin = h.admin.clone();
        // Room for 20,000 directories: ext4 gives one inode per 16 KiB.
        let body = json!({"name": "data", "size_bytes": 512u64 << 20});
        let r = h.call(Method::POST, "/v1/namespaces/alpha/filesystems", Some(&admin), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let fs = r.body["id"].as_str().unwrap().to_owned();
        let sbx = h
            .create_sandbox(
                "alpha",
                &admin,
                json!({"memory_bytes": 256u64 << 20, "filesystem": {"id": fs, "mode": "rw"}}),
            )
            .await;
        // Deeper than a recursive removal survives on an 8 MiB stack (about 15,000 levels).
        let script =
            "import os\nos.chdir('/workspace')\nfor _ in range(20000):\n    os.mkdir('d')\n    os.chdir('d')\n\
                      open('bottom', 'w').close()\nprint('made')";
        let v =
            h.exec_with("alpha", &sbx, &admin, json!({"cmd": ["python3", "-c", script], "timeout_seconds": 300})).await;
        assert_eq!(v.status, StatusCode::OK, "{}", v.body);
        assert_eq!(v.body["exit_code"], 0, "{}", v.body);
        assert_eq!(v.body["stdout"], "made\n", "{}", v.body);
        let r =
            h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{sbx}"), Some(&admin), Value::Null).await;
        assert!(r.status.is_success(), "{}", r.body);

        // Replacing the content removes the deep tree.
        let src = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
        std::fs::write(src.path().join("hello.txt"), b"hello").unwrap();
        let out = std::process::Command::new("tar").arg("-C").arg(src.path()).args(["-cf", "-", "."]).output().unwrap();
        assert!(out.status.success());
        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("/v1/namespaces/alpha/filesystems/{fs}/archive"))
            .header("authorization", format!("Bearer {admin}"))
            .body(Body::from(out.stdout))
            .unwrap();
        let r = h.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = h
            .call(
                Method::GET,
                &format!("/v1/namespaces/alpha/filesystems/{fs}/files?path=.&list=true"),
                Some(&admin),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let listed = r.body.to_string();
        assert!(listed.contains("hello.txt") && !listed.contains("\"d\""), "{listed}");
    });
}
