//! Filesystems from the inside: the kernel stops writes at the size, read-only mounts refuse
//! writes, data outlives sandboxes, quotas and projects hold, and another namespace cannot
//! reach a filesystem by any route.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::{assert_envelope, Harness};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

async fn filesystem(h: &Harness, ns: &str, token: &str, name: &str, size: u64, project: Option<&str>) -> String {
    let mut body = json!({"name": name, "size_bytes": size});
    if let Some(p) = project {
        body["project"] = json!(p);
    }
    let r = h.call(Method::POST, &format!("/v1/namespaces/{ns}/filesystems"), Some(token), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["size_bytes"], size);
    r.body["id"].as_str().unwrap().to_owned()
}

fn with_fs(id: &str, mode: &str) -> Value {
    json!({"memory_bytes": 128 * MIB, "filesystem": {"id": id, "mode": mode}})
}

#[tokio::test]
async fn writes_stop_at_the_size_and_siblings_keep_working() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let small = filesystem(&h, "alpha", &admin, "small", 16 * MIB, None).await;
    let sibling = filesystem(&h, "alpha", &admin, "sibling", 16 * MIB, None).await;
    let s1 = h.create_sandbox("alpha", &admin, with_fs(&small, "rw")).await;
    let s2 = h.create_sandbox("alpha", &admin, with_fs(&sibling, "rw")).await;
    let (code, _, err) =
        h.sh("alpha", &s1, &admin, "dd if=/dev/zero of=/workspace/big bs=1M count=64 2>&1 >/dev/null; sync").await;
    let (_, dd, _) = h.sh("alpha", &s1, &admin, "ls -l /workspace/big | awk '{print $5}'").await;
    let written: u64 = dd.trim().parse().unwrap();
    assert!(written < 16 * MIB, "wrote {written} bytes into a 16 MiB filesystem ({code} {err})");
    let (code, out, _) = h.sh("alpha", &s1, &admin, "dd if=/dev/zero of=/workspace/more bs=1M count=1 2>&1").await;
    assert_ne!(code, 0);
    assert!(out.contains("No space left"), "{out}");
    // The sibling filesystem is untouched and writable.
    let (code, out, err) = h
        .sh(
            "alpha",
            &s2,
            &admin,
            "dd if=/dev/zero of=/workspace/ok bs=1M count=4 2>/dev/null && ls /workspace && df -k /workspace | tail -1",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok\n"), "{out}");
    // The API reports the use the kernel counts.
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/filesystems/{small}"), Some(&admin), Value::Null).await;
    assert!(r.body["used_bytes"].as_u64().unwrap() > 8 * MIB, "{}", r.body);
    assert_eq!(r.body["mounted_by"], json!([s1]));
    let r = h.call(Method::GET, "/v1/namespaces/alpha", Some(&admin), Value::Null).await;
    assert_eq!(r.body["usage"]["disk_bytes"], 32 * MIB);
    assert_eq!(r.body["usage"]["sandboxes"], 2);
}

#[tokio::test]
async fn read_only_mounts_refuse_writes_and_data_outlives_sandboxes() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let fs = filesystem(&h, "alpha", &admin, "data", 16 * MIB, None).await;
    let writer = h.create_sandbox("alpha", &admin, with_fs(&fs, "rw")).await;
    let (code, _, err) = h.sh("alpha", &writer, &admin, "mkdir -p /workspace/src && echo persisted > /workspace/src/a.txt && id -u && stat -c %u /workspace/src/a.txt").await;
    assert_eq!(code, 0, "{err}");
    let r =
        h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{writer}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let reader = h.create_sandbox("alpha", &admin, with_fs(&fs, "ro")).await;
    let (code, out, _) = h.sh("alpha", &reader, &admin, "cat /workspace/src/a.txt").await;
    assert_eq!((code, out.as_str()), (0, "persisted\n"));
    let (code, _, err) = h.sh("alpha", &reader, &admin, "touch /workspace/x").await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only"), "{err}");
    // On the host the files belong to the namespace's mapped root, not to the host's root.
    let host = h.state.storage.data_dir(&fs).join("src/a.txt");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&host).unwrap());
    assert!(uid >= 1_000_000, "owned by host uid {uid}");
}

#[tokio::test]
async fn quotas_grow_shrink_and_delete_rules() {
    let h = Harness::new().await;
    let mut body = common::namespace_body("alpha");
    body["quotas"]["disk_bytes"] = json!(64 * MIB);
    assert_eq!(h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await.status, StatusCode::CREATED);
    let admin = h.admin.clone();
    let fs = filesystem(&h, "alpha", &admin, "a", 32 * MIB, None).await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/filesystems",
            Some(&admin),
            json!({"name": "b", "size_bytes": 48 * MIB}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(&r, "quota_exceeded");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("disk_bytes"));
    for (size, status) in [(MIB, 400), (48 * MIB, 200), (32 * MIB, 400), (128 * MIB, 429)] {
        let r = h
            .call(
                Method::PATCH,
                &format!("/v1/namespaces/alpha/filesystems/{fs}"),
                Some(&admin),
                json!({"size_bytes": size}),
            )
            .await;
        assert_eq!(r.status.as_u16(), status, "{size}: {}", r.body);
    }
    let sbx = h.create_sandbox("alpha", &admin, with_fs(&fs, "rw")).await;
    let (_, out, _) = h.sh("alpha", &sbx, &admin, "df -k /workspace | tail -1 | awk '{print $2}'").await;
    let kib: u64 = out.trim().parse().unwrap();
    assert!(kib > 40 * 1024, "the grown filesystem has {kib} KiB");
    let path = format!("/v1/namespaces/alpha/filesystems/{fs}");
    let r = h.call(Method::DELETE, &path, Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains(&sbx));
    let r = h.call(Method::DELETE, &format!("{path}?force=true"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{sbx}"), Some(&admin), Value::Null).await;
    assert_eq!(r.body["status"], "deleted");
    assert_eq!(r.body["reason"], "filesystem_deleted");
    let image = h.state.config.data_dir.join("filesystems/images").join(format!("{fs}.img"));
    assert!(!image.exists(), "deletion destroys the data");
    assert!(!h.state.storage.mountpoint(&fs).exists());
}

#[tokio::test]
async fn another_namespace_and_other_projects_cannot_reach_a_filesystem() {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    let admin = h.admin.clone();
    let (_, beta_dev) = h.create_key("beta", "dev", "developer").await;
    let fs = filesystem(&h, "alpha", &admin, "secret", 16 * MIB, None).await;
    // From beta, alpha's filesystem id is worth nothing, in beta's own namespace or in alpha's.
    for (method, path) in [
        (Method::GET, format!("/v1/namespaces/alpha/filesystems/{fs}")),
        (Method::GET, format!("/v1/namespaces/beta/filesystems/{fs}")),
        (Method::DELETE, format!("/v1/namespaces/beta/filesystems/{fs}")),
    ] {
        let r = h.call(method, &path, Some(&beta_dev), Value::Null).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = h.call(Method::POST, "/v1/namespaces/beta/sandboxes", Some(&beta_dev), with_fs(&fs, "ro")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // Projects: a key limited to project p1 sees and mounts p1's filesystems only.
    let r = h.call(Method::POST, "/v1/namespaces/alpha/projects", Some(&admin), json!({"name": "p1"})).await;
    let p1 = r.body["id"].as_str().unwrap().to_owned();
    let r = h.call(Method::POST, "/v1/namespaces/alpha/projects", Some(&admin), json!({"name": "p2"})).await;
    let p2 = r.body["id"].as_str().unwrap().to_owned();
    let in_p1 = filesystem(&h, "alpha", &admin, "one", 16 * MIB, Some(&p1)).await;
    let in_p2 = filesystem(&h, "alpha", &admin, "two", 16 * MIB, Some(&p2)).await;
    let scoped = h.create_project_key("alpha", "scoped", "developer", &[&p1]).await;
    let r = h.call(Method::GET, "/v1/namespaces/alpha/filesystems", Some(&scoped), Value::Null).await;
    let ids: Vec<&str> = r.body["items"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [in_p1.as_str()]);
    for other in [&in_p2, &fs] {
        let r =
            h.call(Method::GET, &format!("/v1/namespaces/alpha/filesystems/{other}"), Some(&scoped), Value::Null).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = h.call(Method::POST, "/v1/namespaces/alpha/sandboxes", Some(&scoped), with_fs(other, "rw")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    }
    let sbx = h.create_sandbox("alpha", &scoped, with_fs(&in_p1, "rw")).await;
    let (code, _, _) = h.sh("alpha", &sbx, &scoped, "echo ok > /workspace/f").await;
    assert_eq!(code, 0);
    // A project with filesystems cannot be deleted.
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/projects/{p2}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}
