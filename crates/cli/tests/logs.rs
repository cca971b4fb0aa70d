//! Exec output retained per namespace: what an exec printed is queryable by sandbox and time,
//! a namespace sees only its own (another namespace's key gets 404), a viewer may read it, bad
//! queries are 400s, a live tail (server-sent events) delivers new output, and `bulkhead logs
//! [-f]` shows it through the real CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::process::Server;
use common::{assert_envelope, read_events, Harness};
use http_body_util::BodyExt;
use serde_json::{json, Value};

async fn logs(h: &Harness, ns: &str, token: &str, query: &str) -> Value {
    let r = h.call(Method::GET, &format!("/v1/namespaces/{ns}/logs{query}"), Some(token), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

fn datas(page: &Value) -> Vec<(String, String, String)> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["sandbox"].as_str().unwrap().to_owned(),
                r["stream"].as_str().unwrap().to_owned(),
                r["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn exec_output_is_retained_per_namespace_and_only_its_own_is_visible() {
    let h = Harness::with_namespaces(&["alpha", "bravo"]).await;
    let (_, a_dev) = h.create_key("alpha", "dev", "developer").await;
    let (_, a_viewer) = h.create_key("alpha", "look", "viewer").await;
    let (_, b_dev) = h.create_key("bravo", "dev", "developer").await;
    let a1 = h.create_sandbox("alpha", &a_dev, json!({})).await;
    let a2 = h.create_sandbox("alpha", &a_dev, json!({})).await;
    let b1 = h.create_sandbox("bravo", &b_dev, json!({})).await;

    h.sh("alpha", &a1, &a_dev, "echo alpha-one-out; echo alpha-one-err >&2").await;
    h.sh("alpha", &a2, &a_dev, "echo alpha-two").await;
    h.sh("bravo", &b1, &b_dev, "echo bravo-secret-output").await;
    // A streamed exec is logged as it streams.
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/namespaces/alpha/sandboxes/{a1}/exec"))
        .header("authorization", format!("Bearer {a_dev}"))
        .header("content-type", "application/json")
        .header("accept", "application/x-ndjson")
        .body(Body::from(json!({"cmd": ["echo", "alpha-streamed"]}).to_string()))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::OK);

    let all = datas(&logs(&h, "alpha", &a_dev, "").await);
    assert!(all.contains(&(a1.clone(), "stdout".into(), "alpha-one-out\n".into())), "{all:?}");
    assert!(all.contains(&(a1.clone(), "stderr".into(), "alpha-one-err\n".into())), "{all:?}");
    assert!(all.contains(&(a2.clone(), "stdout".into(), "alpha-two\n".into())), "{all:?}");
    assert!(all.contains(&(a1.clone(), "stdout".into(), "alpha-streamed\n".into())), "{all:?}");
    assert!(all.iter().all(|(_, _, d)| !d.contains("bravo")), "another namespace's output leaked: {all:?}");

    // By sandbox, and by time.
    let only = datas(&logs(&h, "alpha", &a_viewer, &format!("?sandbox={a2}")).await);
    assert_eq!(only, vec![(a2.clone(), "stdout".to_owned(), "alpha-two\n".to_owned())]);
    let future = datas(&logs(&h, "alpha", &a_dev, "?since=2999-01-01T00:00:00Z").await);
    assert!(future.is_empty());
    let past = datas(&logs(&h, "alpha", &a_dev, "?until=2000-01-01T00:00:00Z").await);
    assert!(past.is_empty());

    // Paging.
    let first = logs(&h, "alpha", &a_dev, "?limit=1").await;
    assert_eq!(first["records"].as_array().unwrap().len(), 1);
    let after = first["next_after"].as_u64().expect("more records");
    let rest = logs(&h, "alpha", &a_dev, &format!("?after={after}")).await;
    assert_eq!(rest["records"].as_array().unwrap().len(), all.len() - 1);

    // Another namespace's key, and another namespace's sandbox id.
    let r = h.call(Method::GET, "/v1/namespaces/alpha/logs", Some(&b_dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_envelope(&r, "not_found");
    let bravo = datas(&logs(&h, "bravo", &b_dev, "").await);
    assert_eq!(bravo, vec![(b1.clone(), "stdout".to_owned(), "bravo-secret-output\n".to_owned())]);
    // A sandbox of another namespace is, here, a sandbox that does not exist.
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/logs?sandbox={b1}"), Some(&a_dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_envelope(&r, "not_found");

    // Bad queries.
    for q in ["?sandbox=../../etc", "?limit=0", "?limit=10001", "?since=yesterday", "?after=-1", "?colour=red"] {
        let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/logs{q}"), Some(&a_dev), Value::Null).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.body);
        assert_envelope(&r, "invalid_request");
    }

    // A deleted namespace's output goes with it, and a namespace of the same name starts empty.
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha", Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    h.create_namespace("alpha").await;
    let fresh = datas(&logs(&h, "alpha", &h.admin, "").await);
    assert!(fresh.is_empty(), "{fresh:?}");
    for ns in ["alpha", "bravo"] {
        let r = h.call(Method::DELETE, &format!("/v1/namespaces/{ns}"), Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn a_live_tail_delivers_new_output_of_its_namespace_only() {
    let h = Harness::with_namespaces(&["alpha", "bravo"]).await;
    let (viewer_id, a_viewer) = h.create_key("alpha", "look", "viewer").await;
    let a = h.create_sandbox("alpha", &h.admin, json!({})).await;
    let b = h.create_sandbox("bravo", &h.admin, json!({})).await;
    h.sh("alpha", &a, &h.admin, "echo before-the-tail").await;

    let mut body = h.open_events("/v1/namespaces/alpha/logs?after=0", &a_viewer).await;
    // The retained record first (asked for with `after`).
    let first = read_events(&mut body, Duration::from_secs(20), |r| !r.is_empty()).await;
    assert_eq!(first[0]["data"], "before-the-tail\n");

    h.sh("bravo", &b, &h.admin, "echo bravo-must-not-show").await;
    h.sh("alpha", &a, &h.admin, "echo live-one; echo live-two >&2").await;
    let got = read_events(&mut body, Duration::from_secs(20), |r| r.len() >= 2).await;
    let data: Vec<&str> = got.iter().map(|v| v["data"].as_str().unwrap()).collect();
    assert_eq!(data, vec!["live-one\n", "live-two\n"], "{got:?}");
    let seqs: Vec<u64> = first.iter().chain(got.iter()).map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Revoking the key ends its open tail.
    let r =
        h.call(Method::DELETE, &format!("/v1/namespaces/alpha/keys/{viewer_id}"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                let text = String::from_utf8_lossy(&data.unwrap_or_default()).into_owned();
                assert!(!text.contains("data: "), "a revoked key's tail got a record: {text}");
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tail outlived its key by 20 s");
    drop(body);
    for ns in ["alpha", "bravo"] {
        let r = h.call(Method::DELETE, &format!("/v1/namespaces/{ns}"), Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
}

#[test]
fn bulkhead_logs_shows_and_follows_output_through_the_cli() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "look", "--role", "viewer"]);
    let viewer = key["token"].as_str().unwrap().to_owned();
    let s = server.json(None, &["sandbox", "create", "--ns", "acme"]);
    let id = s["id"].as_str().unwrap().to_owned();
    server.ok(None, &["exec", "--ns", "acme", &id, "--", "sh", "-c", "echo first-line"]);

    let out = server.ok(Some(&viewer), &["logs", "--ns", "acme", "--sandbox", &id]);
    assert_eq!(out, "first-line\n");
    let out = server.ok(Some(&viewer), &["logs", "--ns", "acme", "--since", "10m"]);
    assert_eq!(out, format!("[{id}] first-line\n"));

    // `-f`: the retained line, then a new one as it is produced.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["--url", &server.url, "--token", &viewer, "logs", "--ns", "acme", "--sandbox", &id, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first-line");
    server.ok(None, &["exec", "--ns", "acme", &id, "--", "sh", "-c", "echo followed-line"]);
    assert_eq!(lines.next().unwrap().unwrap(), "followed-line");
    follow.kill().unwrap();
    follow.wait().unwrap();

    server.ok(None, &["namespace", "delete", "acme"]);
    server.stop();
}
