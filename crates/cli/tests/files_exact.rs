//! Both files APIs exactly as agents need them (root, real runc sandboxes, real filesystems):
//! special files refused at once with `not_a_regular_file` and no thread left behind in the
//! supervisor, directories `is_a_directory`, missing paths `not_found` naming them, modes kept
//! on overwrite and settable, parents created, listings with types, modes, mtimes and names that
//! are not UTF-8, a `user` whose permissions the kernel enforces, and a 200 MiB file through
//! both APIs compared by digest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{assert_envelope, Harness, Reply};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// A request that would block on a fifo never answers; this bounds the wait so that the test
/// fails instead of hanging. It is a deadline, not a measurement.
const DEADLINE: Duration = Duration::from_secs(30);

async fn send(h: &Harness, method: Method, path: &str, body: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::from(body))
        .unwrap();
    tokio::time::timeout(DEADLINE, h.send(req)).await.unwrap_or_else(|_| panic!("{method} {path} never answered"))
}

/// A namespace `alpha`, a filesystem of `size` and a sandbox that mounts it read-write:
/// (harness, filesystem id, sandbox id).
async fn setup(size: u64, tune: impl FnOnce(&mut bulkhead_server::ServerConfig)) -> (Harness, String, String) {
    let h = Harness::with_config("runc", tune).await;
    h.create_namespace("alpha").await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/filesystems",
            Some(&h.admin),
            json!({"name": "data", "size_bytes": size}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let fs = r.body["id"].as_str().unwrap().to_owned();
    let sbx = h.create_sandbox("alpha", &h.admin, json!({"filesystem": {"id": fs, "mode": "rw"}})).await;
    (h, fs, sbx)
}

fn sandbox_files(sbx: &str, query: &str) -> String {
    format!("/v1/namespaces/alpha/sandboxes/{sbx}/files?{query}")
}

fn fs_files(fs: &str, query: &str) -> String {
    format!("/v1/namespaces/alpha/filesystems/{fs}/files?{query}")
}

async fn sh(h: &Harness, sbx: &str, script: &str) -> String {
    let (code, out, err) = h.sh("alpha", sbx, &h.admin, script).await;
    assert_eq!(code, 0, "{script}: {err}");
    out
}

/// The supervisor's threads (PID 1 of the sandbox), counted from inside.
async fn supervisor_threads(h: &Harness, sbx: &str) -> usize {
    sh(h, sbx, "ls /proc/1/task | wc -l").await.trim().parse().unwrap()
}

fn assert_code(r: &Reply, status: StatusCode, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.raw));
    assert_envelope(r, code);
}

fn message(r: &Reply) -> String {
    r.body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn special_files_are_refused_at_once_on_both_apis_and_leave_no_thread() {
    let (h, fs, sbx) = setup(64 * MIB, |_| {}).await;
    // A fifo and a socket in the sandbox's /tmp and on the filesystem (/workspace). The socket
    // files stay after python exits. A filesystem is mounted nodev and a sandbox has no
    // CAP_MKNOD, so the device is the sandbox's own /dev/null, on the sandbox API only.
    sh(
        &h,
        &sbx,
        "mkfifo /tmp/p /workspace/p && python3 -c \"import socket\nfor p in ('/tmp/s', '/workspace/s'):\n \
         socket.socket(socket.AF_UNIX).bind(p)\" && test -S /tmp/s && test -S /workspace/s",
    )
    .await;
    let before = supervisor_threads(&h, &sbx).await;
    for round in 0..3 {
        for path in ["/tmp/p", "/tmp/s", "/dev/null", "/workspace/p", "/workspace/s"] {
            let r = send(&h, Method::GET, &sandbox_files(&sbx, &format!("path={path}")), vec![]).await;
            assert_code(&r, StatusCode::BAD_REQUEST, "not_a_regular_file", &format!("GET {path} ({round})"));
            assert!(message(&r).contains(path), "{}", message(&r));
        }
        for path in ["/tmp/p", "/tmp/s", "/dev/null"] {
            let r = send(&h, Method::PUT, &sandbox_files(&sbx, &format!("path={path}")), b"x".to_vec()).await;
            assert_code(&r, StatusCode::BAD_REQUEST, "not_a_regular_file", &format!("PUT {path} ({round})"));
        }
        for path in ["p", "s"] {
            let r = send(&h, Method::GET, &fs_files(&fs, &format!("path={path}")), vec![]).await;
            assert_code(&r, StatusCode::BAD_REQUEST, "not_a_regular_file", &format!("fs GET {path} ({round})"));
            let r = send(&h, Method::PUT, &fs_files(&fs, &format!("path={path}")), b"x".to_vec()).await;
            assert_code(&r, StatusCode::BAD_REQUEST, "not_a_regular_file", &format!("fs PUT {path} ({round})"));
        }
    }
    // Each request's thread ends with its answer; the count comes back to what it was (a
    // thread may still be finishing its exit when the answer arrives).
    let mut after = supervisor_threads(&h, &sbx).await;
    for _ in 0..50 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = supervisor_threads(&h, &sbx).await;
    }
    assert!(after <= before, "threads left in the supervisor: {after} now, {before} before");
    // Nothing was replaced.
    assert_eq!(sh(&h, &sbx, "test -p /tmp/p && test -S /tmp/s && test -p /workspace/p && echo ok").await, "ok\n");
}

#[tokio::test]
async fn directories_missing_paths_modes_and_parents() {
    let (h, fs, sbx) = setup(64 * MIB, |_| {}).await;
    // Sandbox API.
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/etc"), vec![]).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "is_a_directory", "GET /etc");
    assert!(message(&r).contains("/etc"), "{}", message(&r));
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/tmp"), b"x".to_vec()).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "is_a_directory", "PUT /tmp");
    assert!(message(&r).contains("/tmp"), "{}", message(&r));
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/nope/missing.txt"), vec![]).await;
    assert_code(&r, StatusCode::NOT_FOUND, "not_found", "GET missing");
    assert!(message(&r).contains("/nope/missing.txt"), "{}", message(&r));

    sh(&h, &sbx, "printf '#!/bin/sh\\necho old\\n' > /tmp/run.sh && chmod 0755 /tmp/run.sh").await;
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/tmp/run.sh"), b"#!/bin/sh\necho new\n".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(sh(&h, &sbx, "stat -c %a /tmp/run.sh && /tmp/run.sh").await, "755\nnew\n");
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/tmp/run.sh&mode=0700"), b"#!/bin/sh\n".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(sh(&h, &sbx, "stat -c %a /tmp/run.sh").await, "700\n");
    for bad in ["4755", "2755", "abc", "07777", ""] {
        let r =
            send(&h, Method::PUT, &sandbox_files(&sbx, &format!("path=/tmp/run.sh&mode={bad}")), b"x".to_vec()).await;
        assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", &format!("mode={bad}"));
    }
    assert_eq!(sh(&h, &sbx, "stat -c %a /tmp/run.sh && wc -c < /tmp/run.sh").await, "700\n10\n");
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/tmp/a/b/c/new.txt"), b"deep".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        sh(&h, &sbx, "cat /tmp/a/b/c/new.txt; echo; stat -c %a /tmp/a/b/c/new.txt /tmp/a/b").await,
        "deep\n644\n755\n"
    );

    // Filesystem API.
    let r = send(&h, Method::PUT, &fs_files(&fs, "path=bin/tool&mode=0755"), b"#!/bin/sh\necho tool\n".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = send(&h, Method::PUT, &fs_files(&fs, "path=bin/tool"), b"#!/bin/sh\necho tool 2\n".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(sh(&h, &sbx, "stat -c %a /workspace/bin/tool && /workspace/bin/tool").await, "755\ntool 2\n");
    let r = send(&h, Method::GET, &fs_files(&fs, "path=bin"), vec![]).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "is_a_directory", "fs GET bin");
    assert!(message(&r).contains("\"bin\""), "every file error names its path: {}", message(&r));
    let r = send(&h, Method::PUT, &fs_files(&fs, "path=bin"), b"x".to_vec()).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "is_a_directory", "fs PUT bin");
    assert!(message(&r).contains("\"bin\""), "{}", message(&r));
    let r = send(&h, Method::GET, &fs_files(&fs, "path=bin/none"), vec![]).await;
    assert_code(&r, StatusCode::NOT_FOUND, "not_found", "fs GET missing");
    assert!(message(&r).contains("bin/none"), "{}", message(&r));
    let r = send(&h, Method::GET, &fs_files(&fs, "path=bin&list=true"), vec![]).await;
    assert_eq!(r.body["items"][0]["mode"], "0755", "{}", r.body);
    let r = send(&h, Method::PUT, &fs_files(&fs, "path=bin/tool&mode=4755"), b"x".to_vec()).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", "fs mode=4755");
    // A filesystem has no users: refused, named.
    let r = send(&h, Method::GET, &fs_files(&fs, "path=bin/tool&user=nobody"), vec![]).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", "fs user");
    assert!(message(&r).contains("nobody"), "{}", message(&r));
}

#[tokio::test]
async fn listings_show_types_modes_mtimes_and_names_that_are_not_utf8() {
    let (h, fs, sbx) = setup(64 * MIB, |_| {}).await;
    let script = "for d in /tmp/l /workspace/l; do mkdir $d && cd $d && printf abc > file && chmod 0751 file && \
                  mkdir dir && ln -s /etc/passwd link && mkfifo fifo && touch \"$(printf 'n\\377')\" && \
                  touch -d @1700000000 file; done";
    sh(&h, &sbx, script).await;
    let check = |body: &Value, what: &str| {
        let items = body["items"].as_array().unwrap_or_else(|| panic!("{what}: {body}"));
        let names: Vec<&str> = items.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["dir", "fifo", "file", "link", "n\u{fffd}"], "{what}: {body}");
        let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["directory", "fifo", "file", "symlink", "file"], "{what}");
        assert_eq!((items[2]["mode"].as_str(), items[2]["size"].as_u64()), (Some("0751"), Some(3)), "{what}");
        assert_eq!(items[2]["modified_ms"].as_i64(), Some(1_700_000_000_000), "{what}");
        assert_eq!(items[2]["modified"], "2023-11-14T22:13:20.000Z", "{what}");
        assert_eq!(items[3]["target"], "/etc/passwd", "{what}");
        assert_eq!(items[4]["name_base64"], "bv8=", "{what}: the exact bytes n\\xff");
        assert!(items[0].get("name_base64").is_none(), "{what}");
    };
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/tmp/l&list=true"), vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    check(&r.body, "sandbox");
    assert!(r.body.get("next_cursor").is_none(), "{}", r.body);
    let r = send(&h, Method::GET, &fs_files(&fs, "path=l&list=true"), vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    check(&r.body, "filesystem");
    // Pages: two at a time, resumed by cursor, on both APIs.
    for base in [sandbox_files(&sbx, "path=/tmp/l&list=true"), fs_files(&fs, "path=l&list=true")] {
        let mut names = Vec::new();
        let mut cursor = String::new();
        for _ in 0..5 {
            let r = send(&h, Method::GET, &format!("{base}&limit=2{cursor}"), vec![]).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let items = r.body["items"].as_array().unwrap();
            assert!(items.len() <= 2);
            names.extend(items.iter().map(|e| e["name"].as_str().unwrap().to_owned()));
            match r.body["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(names, ["dir", "fifo", "file", "link", "n\u{fffd}"], "{base}");
        let r = send(&h, Method::GET, &format!("{base}&limit=0"), vec![]).await;
        assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", "limit=0");
    }
    // A name that is not UTF-8 is addressed by its exact bytes (`path_base64`) on the
    // filesystem API: read back, and a new one written, seen with its bytes from inside.
    sh(&h, &sbx, "printf odd > \"/workspace/l/$(printf 'n\\377')\"").await;
    let r = send(&h, Method::GET, &fs_files(&fs, "path_base64=bC9u%2Fw%3D%3D"), vec![]).await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, &b"odd"[..]), "{}", r.body);
    let r = send(&h, Method::PUT, &fs_files(&fs, "path_base64=bC93%2Fg%3D%3D"), b"new".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let names = sh(&h, &sbx, "cd /workspace/l && ls | od -An -c | tr -s ' '").await;
    assert!(names.contains("w 376"), "the exact bytes w\\xfe: {names}");
    assert_eq!(sh(&h, &sbx, "cat /workspace/l/w*").await, "new");
    // The same on the sandbox API: `/tmp/l/n\xff` read by its bytes, `/tmp/l/w\xfe` written.
    sh(&h, &sbx, "printf odd > \"/tmp/l/$(printf 'n\\377')\"").await;
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path_base64=L3RtcC9sL27%2F"), vec![]).await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, &b"odd"[..]), "{}", r.body);
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path_base64=L3RtcC9sL3f%2B"), b"new".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let names = sh(&h, &sbx, "cd /tmp/l && ls | od -An -c | tr -s ' '").await;
    assert!(names.contains("w 376"), "the exact bytes w\\xfe: {names}");
    assert_eq!(sh(&h, &sbx, "cat /tmp/l/w*").await, "new");
    // Both forms at once, bad base64 and a relative path are refused.
    for query in ["path=/tmp/x&path_base64=L3RtcC94", "path_base64=%25%25", "path_base64=dG1wL3g%3D"] {
        let r = send(&h, Method::GET, &sandbox_files(&sbx, query), vec![]).await;
        assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", query);
    }
    // A file is not a directory to list.
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/tmp/l/file&list=true"), vec![]).await;
    assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", "list of a file");
}

#[tokio::test]
async fn a_user_meets_the_sandboxs_own_permissions() {
    let (h, _fs, sbx) = setup(64 * MIB, |_| {}).await;
    sh(&h, &sbx, "echo secret > /tmp/secret && chmod 0600 /tmp/secret && mkdir /tmp/closed && chmod 0700 /tmp/closed")
        .await;
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/tmp/secret&user=nobody"), vec![]).await;
    assert_code(&r, StatusCode::FORBIDDEN, "permission_denied", "nobody reads a 0600 root file");
    assert!(message(&r).contains("/tmp/secret"), "{}", message(&r));
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/tmp/secret"), vec![]).await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, &b"secret\n"[..]));
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/tmp/closed/x&user=nobody"), b"x".to_vec()).await;
    assert_code(&r, StatusCode::FORBIDDEN, "permission_denied", "nobody writes into a 0700 root dir");
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/tmp/closed&list=true&user=65534"), vec![]).await;
    assert_code(&r, StatusCode::FORBIDDEN, "permission_denied", "nobody lists a 0700 root dir");
    // What the user creates is the user's.
    assert_eq!(sh(&h, &sbx, "stat -c %a /tmp").await, "1777\n", "/tmp is everyone's");
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/tmp/mine/f.txt&user=nobody"), b"mine".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(sh(&h, &sbx, "stat -c %u:%g /tmp/mine /tmp/mine/f.txt").await, "65534:65534\n65534:65534\n");
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/tmp/mine/f.txt&user=65534:65534"), vec![]).await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, &b"mine"[..]));
    // An unknown user is a 400 naming it.
    for (method, query) in [
        (Method::GET, "path=/tmp/secret&user=no-such-user"),
        (Method::PUT, "path=/tmp/x&user=no-such-user"),
        (Method::GET, "path=/tmp&list=true&user=no-such-user"),
    ] {
        let r = send(&h, method.clone(), &sandbox_files(&sbx, query), b"x".to_vec()).await;
        assert_code(&r, StatusCode::BAD_REQUEST, "invalid_request", &format!("{method} {query}"));
        assert!(message(&r).contains("no-such-user"), "{}", message(&r));
    }
    assert_eq!(sh(&h, &sbx, "test -e /tmp/x || echo absent").await, "absent\n");
}

/// Deterministic bytes that do not compress: xorshift64.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn a_200_mib_file_round_trips_through_both_apis_and_a_full_filesystem_keeps_the_old_content() {
    // The server's defaults: no ceiling on file bodies but the filesystem's space.
    let (h, fs, sbx) = setup(512 * MIB, |_| {}).await;
    let data = noise(200 * MIB as usize);
    let digest = Sha256::digest(&data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    // In through the sandbox, out through the filesystem.
    let r = send(&h, Method::PUT, &sandbox_files(&sbx, "path=/workspace/big.bin"), data.clone()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(sh(&h, &sbx, "sha256sum /workspace/big.bin | cut -d' ' -f1").await.trim(), hex);
    let r = send(&h, Method::GET, &fs_files(&fs, "path=big.bin"), vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(Sha256::digest(&r.raw), digest, "filesystem download");
    // In through the filesystem, out through the sandbox.
    let r = send(&h, Method::PUT, &fs_files(&fs, "path=big2.bin"), data.clone()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = send(&h, Method::GET, &sandbox_files(&sbx, "path=/workspace/big2.bin"), vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(Sha256::digest(&r.raw), digest, "sandbox download");
    // 400 MiB of 512 are used: 200 more do not fit. The kernel's ENOSPC is `quota_exceeded`
    // naming the path; the previous content stays and no temporary file is left.
    for (put, what) in
        [(sandbox_files(&sbx, "path=/workspace/small.txt"), "sandbox"), (fs_files(&fs, "path=small.txt"), "filesystem")]
    {
        let r = send(&h, Method::PUT, &put, b"old".to_vec()).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{what}: {}", r.body);
        let r = send(&h, Method::PUT, &put, data.clone()).await;
        assert_code(&r, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", what);
        assert!(message(&r).contains("small.txt"), "{what}: {}", message(&r));
        assert_eq!(
            sh(&h, &sbx, "cat /workspace/small.txt; ls -a /workspace | tr '\\n' ' '").await,
            "old. .. big.bin big2.bin small.txt "
        );
    }
}
