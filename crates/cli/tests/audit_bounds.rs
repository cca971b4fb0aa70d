//! Audit records are bounded and chains are retained behind checkpoints: an exec with a maximal
//! argv leaves a record of at most 4 KiB of details that carries each long argument's SHA-256,
//! and a chain past its retention is pruned from the start while `audit/verify` still checks
//! every record kept, from the checkpoint, and catches tampering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use bulkhead_core::audit::MAX_DETAIL_BYTES;
use common::Harness;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn records(h: &Harness, chain_path: &str) -> Vec<Value> {
    let r = h.call(Method::GET, &format!("{chain_path}?limit=1000"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["items"].as_array().unwrap().clone()
}

async fn verify(h: &Harness, chain_path: &str) -> Value {
    let r = h.call(Method::GET, &format!("{chain_path}/verify"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_with_a_maximal_argv_leaves_a_bounded_record_with_digests() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, dev) = h.create_key("acme", "dev", "developer").await;
    let sbx = h.create_sandbox("acme", &dev, json!({})).await;

    // A large argv: 16 arguments of 16,000 bytes.
    let args: Vec<String> = (0..16u8).map(|i| char::from(b'a' + i).to_string().repeat(16_000)).collect();
    let mut cmd = vec!["true".to_owned()];
    cmd.extend(args.iter().cloned());
    let path = format!("/v1/namespaces/acme/sandboxes/{sbx}/exec");
    let r = h.call(Method::POST, &path, Some(&dev), json!({ "cmd": cmd })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["exit_code"], 0);

    let all = records(&h, "/v1/namespaces/acme/audit").await;
    let exec = all.iter().rev().find(|r| r["action"] == "sandbox.exec").expect("an exec record");
    let detail_text = exec["detail"].as_str().unwrap();
    assert!(detail_text.len() <= MAX_DETAIL_BYTES, "{} bytes of detail", detail_text.len());
    let detail: Value = serde_json::from_str(detail_text).unwrap();
    assert_eq!(detail["argv"][0], "true", "{detail}");
    for (i, arg) in args.iter().enumerate() {
        let d = &detail["argv"][i + 1];
        assert_eq!(d["sha256"].as_str(), Some(sha256_hex(arg.as_bytes()).as_str()), "{d}");
        assert_eq!(d["bytes"].as_u64(), Some(16_000), "{d}");
    }
    assert_eq!(detail["exit_code"], 0);

    // Past the server's bound (here, more than ARG_MAX's 2 MiB of arguments), the record is
    // bounded too.
    let many: Vec<String> = (0..17u8).map(|i| char::from(b'a' + i).to_string().repeat(128_000)).collect();
    let r = h.call(Method::POST, &path, Some(&dev), json!({ "cmd": many })).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    for r in records(&h, "/v1/namespaces/acme/audit").await {
        assert!(r["detail"].as_str().unwrap().len() <= MAX_DETAIL_BYTES, "{r}");
    }
    assert_eq!(verify(&h, "/v1/namespaces/acme/audit").await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_behind_a_checkpoint_and_verification_still_holds() {
    let h = Harness::with_config("runc", |c| c.audit_retention_records = 5).await;
    for n in 0..8 {
        h.create_namespace(&format!("ns{n}")).await;
    }
    for p in 0..12 {
        let r = h
            .call(Method::POST, "/v1/namespaces/ns0/projects", Some(&h.admin), json!({ "name": format!("p{p}") }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    // The namespace's chain keeps its newest five records; the first links to the checkpoint.
    let kept = records(&h, "/v1/namespaces/ns0/audit").await;
    let seqs: Vec<u64> = kept.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![8, 9, 10, 11, 12], "{kept:?}");
    let v = verify(&h, "/v1/namespaces/ns0/audit").await;
    assert_eq!((v["ok"].as_bool(), v["records"].as_u64(), v["pruned"].as_u64()), (Some(true), Some(5), Some(7)), "{v}");
    assert!(v["pruned_at"].as_str().is_some(), "{v}");
    // The platform chain the same: eight namespace creates, five kept.
    let v = verify(&h, "/v1/audit").await;
    assert_eq!((v["ok"].as_bool(), v["records"].as_u64(), v["pruned"].as_u64()), (Some(true), Some(5), Some(3)), "{v}");
    assert_eq!(records(&h, "/v1/audit").await.len(), 5);

    // Tampering with a kept record, or with the checkpoint, still fails verification.
    let data = h.dir.path().join("data");
    let exec = |sql: &'static str| {
        let data = data.clone();
        async move { common::store_db::exec(&data, sql).await }
    };
    exec("UPDATE audit_records SET detail = '{\"name\":\"forged\"}' WHERE chain = 'ns0' AND seq = 10").await;
    let v = verify(&h, "/v1/namespaces/ns0/audit").await;
    assert_eq!((v["ok"].as_bool(), v["first_bad_seq"].as_u64()), (Some(false), Some(10)), "{v}");

    // Cutting the oldest kept record and moving the checkpoint without its hash is caught too.
    exec("DELETE FROM audit_records WHERE chain = '_platform' AND seq = 4").await;
    exec("UPDATE audit_checkpoints SET seq = 4 WHERE chain = '_platform'").await;
    let v = verify(&h, "/v1/audit").await;
    assert_eq!((v["ok"].as_bool(), v["first_bad_seq"].as_u64()), (Some(false), Some(5)), "{v}");
}
