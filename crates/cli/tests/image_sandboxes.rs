//! Sandboxes on the default image, from the inside: root may install packages (a local .deb
//! with apt-get, a local wheel with pip) and add users, all of it in the sandbox's own writable
//! layer, bounded by its size and gone with the sandbox; a snapshot keeps it as a template that
//! new sandboxes start from; nothing of the host or of the tenant shows in its mounts.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::{json, Value};

/// A .deb (built on the host with `dpkg-deb`) whose one file is `/usr/bin/bh-hello`.
fn hello_deb(dir: &std::path::Path) -> Vec<u8> {
    let root = dir.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: bh-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: Bulkhead tests <tests@example.com>\nDescription: says hello\n",
    )
    .unwrap();
    std::fs::write(root.join("usr/bin/bh-hello"), "#!/bin/sh\necho hello from a package\n").unwrap();
    let status = std::process::Command::new("chmod").arg("0755").arg(root.join("usr/bin/bh-hello")).status().unwrap();
    assert!(status.success());
    let out = dir.join("bh-hello.deb");
    let built = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(built.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&built.stderr));
    std::fs::read(out).unwrap()
}

/// A Python script that writes a wheel of package `bhpkg` to `/tmp/bhpkg-1.0-py3-none-any.whl`.
const MAKE_WHEEL: &str = r#"
import base64, hashlib, zipfile
files = {
    "bhpkg/__init__.py": b"GREETING = 'hello from a wheel'\n",
    "bhpkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: bhpkg\nVersion: 1.0\n",
    "bhpkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: bulkhead-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append("bhpkg-1.0.dist-info/RECORD,,")
files["bhpkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile("/tmp/bhpkg-1.0-py3-none-any.whl", "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
"#;

async fn put_file(h: &Harness, ns: &str, id: &str, token: &str, path: &str, data: Vec<u8>) {
    let req = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/namespaces/{ns}/sandboxes/{id}/files?path={path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::from(data))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&r.raw));
}

#[tokio::test]
async fn root_installs_packages_and_adds_users_in_its_own_layer_and_a_snapshot_keeps_them() {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    // A developer of the tenant: images are the tenant's work, not the platform admin's.
    let (_, admin) = h.create_key("alpha", "dev", "developer").await;
    let (_, beta_dev) = h.create_key("beta", "dev", "developer").await;
    let work = common::tempdir();
    let deb = hello_deb(work.path());

    let id = h
        .create_sandbox("alpha", &admin, json!({"disk_bytes": 256 << 20, "memory_bytes": 512 << 20, "cpu_millis": 500}))
        .await;
    let sandbox = h.call(Method::GET, &format!("/v1/namespaces/alpha/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(sandbox.body["image"]["name"], "default", "{}", sandbox.body);
    // The image's system is root's: a package manager, pip and adduser work.
    put_file(&h, "alpha", &id, &admin, "/tmp/bh-hello.deb", deb).await;
    let (code, out, err) = h
        .sh(
            "alpha",
            &id,
            &admin,
            "apt-get install -y /tmp/bh-hello.deb >/dev/null 2>&1 || dpkg -i /tmp/bh-hello.deb; bh-hello",
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "hello from a package\n"), "{err}");
    let script = format!("python3 - <<'EOF'\n{MAKE_WHEEL}\nEOF\npip install --no-index --quiet /tmp/bhpkg-1.0-py3-none-any.whl && python3 -c 'import bhpkg; print(bhpkg.GREETING)'");
    let (code, out, err) = h.sh("alpha", &id, &admin, &script).await;
    assert_eq!((code, out.trim_end()), (0, "hello from a wheel"), "{err}");
    let (code, out, err) =
        h.sh("alpha", &id, &admin, "adduser --disabled-password --gecos '' alice >/dev/null && id -u alice").await;
    assert_eq!(code, 0, "{err}");
    let alice_uid = out.trim().to_owned();
    let v = h.exec_with("alpha", &id, &admin, json!({"cmd": ["id", "-un"], "user": "alice"})).await.body;
    assert_eq!((v["exit_code"].as_i64(), v["stdout"].as_str()), (Some(0), Some("alice\n")), "{v}");
    // Remove a file of the image: the snapshot must carry the removal too.
    let (code, _, err) = h.sh("alpha", &id, &admin, "rm /etc/debian_version && echo kept > /opt/marker").await;
    assert_eq!(code, 0, "{err}");
    // The writable layer is bounded by the size asked for: ENOSPC inside, nothing else hurt.
    let (code, _, err) = h.sh("alpha", &id, &admin, "dd if=/dev/zero of=/var/tmp/big bs=1M count=400").await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
    let (code, _, _) = h.sh("alpha", &id, &admin, "rm -f /var/tmp/big").await;
    assert_eq!(code, 0);
    // Its root's mount names nothing of the host or the tenant.
    let (_, mounts, _) = h.sh("alpha", &id, &admin, "cat /proc/self/mountinfo").await;
    let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
    for word in ["alpha", "sbx_", "bulkhead", "/tmp/", "/var/", "/run/"] {
        assert!(!root.contains(word), "{word} in the root's mount: {root}");
    }

    // A snapshot: a template of the sandbox's changes.
    let r = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/alpha/sandboxes/{id}/snapshot"),
            Some(&admin),
            json!({"name": "tools"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!((r.body["public"].as_bool(), r.body["namespace"].as_str()), (Some(false), Some("alpha")), "{}", r.body);
    let again = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/alpha/sandboxes/{id}/snapshot"),
            Some(&admin),
            json!({"name": "tools"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let bad = h
        .call(
            Method::POST,
            &format!("/v1/namespaces/alpha/sandboxes/{id}/snapshot"),
            Some(&admin),
            json!({"name": "x", "colour": 1}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);

    // A new sandbox of the default image has none of it.
    let plain = h.create_sandbox("alpha", &admin, json!({"cpu_millis": 500})).await;
    let (code, out, _) = h.sh(
        "alpha",
        &plain,
        &admin,
        "command -v bh-hello; python3 -c 'import bhpkg' 2>/dev/null && echo wheel; id alice 2>/dev/null; cat /etc/debian_version >/dev/null && echo version",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "version\n"), "a fresh sandbox starts from the image alone");

    // One from the snapshot starts with all of it, the removal included.
    let from = h.create_sandbox("alpha", &admin, json!({"image": "tools", "cpu_millis": 500})).await;
    let (code, out, err) = h.sh(
        "alpha",
        &from,
        &admin,
        "bh-hello; python3 -c 'import bhpkg; print(bhpkg.GREETING)'; id -u alice; cat /opt/marker; test -e /etc/debian_version || echo removed",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, format!("hello from a package\nhello from a wheel\n{alice_uid}\nkept\nremoved\n").as_str()),
        "{err}"
    );
    // Another tenant neither sees nor starts it.
    let beta = h.call(Method::GET, "/v1/namespaces/beta/images/tools", Some(&beta_dev), Value::Null).await;
    assert_eq!(beta.status, StatusCode::NOT_FOUND, "{}", beta.body);
    let theirs = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/beta/images/{}", r.body["id"].as_str().unwrap()),
            Some(&beta_dev),
            Value::Null,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.body);
    let r = h.call(Method::POST, "/v1/namespaces/beta/sandboxes", Some(&beta_dev), json!({"image": "tools"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // The image may not go while a sandbox runs from it.
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha/images/tools", Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    for s in [&id, &plain, &from] {
        let r = h.call(Method::DELETE, &format!("/v1/namespaces/alpha/sandboxes/{s}"), Some(&admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    let r = h.call(Method::DELETE, "/v1/namespaces/alpha/images/tools", Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

/// Inside, `/proc/meminfo` is the sandbox's own (lxcfs): its limit, not the host's memory.
#[tokio::test]
async fn a_sandbox_sees_its_own_memory_limit() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 512 << 20})).await;
    let (code, out, err) = h.sh("alpha", &id, &admin, "free -b | awk '/^Mem:/ {print $2}'").await;
    assert_eq!((code, out.trim()), (0, (512u64 << 20).to_string().as_str()), "{err}");
}

/// A build: commands run in a sandbox of an image, its root saved; a failing command names
/// itself and leaves neither an image nor a sandbox.
#[tokio::test]
async fn an_image_is_built_by_running_commands_and_a_failing_one_leaves_nothing() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let (_, dev) = h.create_key("alpha", "dev", "developer").await;
    let body = json!({"name": "built", "from": "default", "run": [
        ["sh", "-c", "mkdir -p /opt/tool && echo built > /opt/tool/marker"],
        ["adduser", "--disabled-password", "--gecos", "", "builder"],
    ]});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/images", Some(&dev), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["name"], "built");
    let id = h.create_sandbox("alpha", &dev, json!({"image": "built"})).await;
    let (code, out, err) = h.sh("alpha", &id, &dev, "cat /opt/tool/marker; id -un builder").await;
    assert_eq!((code, out.as_str()), (0, "built\nbuilder\n"), "{err}");

    let failing =
        json!({"name": "broken", "from": "default", "run": [["true"], ["sh", "-c", "echo nope >&2; exit 3"]]});
    let r = h.call(Method::POST, "/v1/namespaces/alpha/images", Some(&dev), failing).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("run[1]") && message.contains("exited with 3") && message.contains("nope"), "{message}");
    let r = h.call(Method::GET, "/v1/namespaces/alpha/images/broken", Some(&dev), Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let sandboxes = h.call(Method::GET, "/v1/namespaces/alpha/sandboxes", Some(&dev), Value::Null).await;
    let running: Vec<&Value> =
        sandboxes.body["items"].as_array().unwrap().iter().filter(|s| s["status"] == "running").collect();
    assert_eq!(running.len(), 1, "only the sandbox of the built image runs: {running:?}");
    // Bodies are checked: an unknown field, no commands.
    for bad in [
        json!({"name": "x", "from": "default", "run": [["true"]], "colour": 1}),
        json!({"name": "x", "from": "default", "run": []}),
    ] {
        let r = h.call(Method::POST, "/v1/namespaces/alpha/images", Some(&dev), bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    }
}
