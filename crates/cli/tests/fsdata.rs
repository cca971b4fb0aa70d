//! A filesystem's contents through the API: archives in and out (atomic, hostile archives
//! refused with the previous content intact), single files with ETags and conditional writes,
//! and paths that never leave the tenant's data, whatever symlinks a sandbox planted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{assert_envelope, Harness, Reply};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

async fn setup(size: u64) -> (Harness, String) {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/filesystems",
            Some(&h.admin),
            json!({"name": "data", "size_bytes": size}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    (h, id)
}

async fn raw(h: &Harness, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {}", h.admin));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    h.send(b.body(Body::from(body)).unwrap()).await
}

/// Runs python3 to build an archive; `script` writes it to the path in sys.argv[1].
fn python_tar(dir: &Path, name: &str, script: &str) -> Vec<u8> {
    let out = dir.join(name);
    let status = Command::new("python3").args(["-c", script]).arg(&out).status().unwrap();
    assert!(status.success(), "building {name}");
    std::fs::read(out).unwrap()
}

fn tar_of(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test]
async fn archives_round_trip_in_every_compression() {
    let (h, fs) = setup(64 * MIB).await;
    let work = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("pkg/sub")).unwrap();
    std::fs::write(src.join("README.md"), "hello\n").unwrap();
    std::fs::write(src.join("pkg/sub/data.bin"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("sub/data.bin", src.join("pkg/link")).unwrap();
    let plain = tar_of(&src, &["-cf", "-", "."]);
    let gz = tar_of(&src, &["-czf", "-", "."]);
    let zst = tar_of(&src, &["--zstd", "-cf", "-", "."]);
    let base = format!("/v1/namespaces/alpha/filesystems/{fs}");
    for (name, body) in [("plain", plain), ("gzip", gz), ("zstd", zst)] {
        let r = raw(&h, Method::PUT, &format!("{base}/archive"), &[], body).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        assert_eq!(r.body["bytes"], 300_006, "{name}: {}", r.body);
        let r = h.call(Method::GET, &format!("{base}/archive"), Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::OK);
        let out = work.path().join(format!("out-{name}"));
        std::fs::create_dir_all(&out).unwrap();
        let mut child = Command::new("tar")
            .arg("-C")
            .arg(&out)
            .args(["-xf", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &r.raw).unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "{name}: the downloaded archive does not extract");
        assert_eq!(std::fs::read(out.join("pkg/sub/data.bin")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(std::fs::read_link(out.join("pkg/link")).unwrap(), Path::new("sub/data.bin"));
    }
    // A sandbox sees the uploaded content at /workspace.
    let sbx = h.create_sandbox("alpha", &h.admin, json!({"filesystem": {"id": fs, "mode": "ro"}})).await;
    let (code, out, _) =
        h.sh("alpha", &sbx, &h.admin, "cat /workspace/README.md; stat -c %s /workspace/pkg/link").await;
    assert_eq!(code, 0);
    assert!(out.starts_with("hello\n"), "{out}");
    // While mounted, a whole-content swap is refused.
    let r = raw(&h, Method::PUT, &format!("{base}/archive"), &[], tar_of(&src, &["-cf", "-", "."])).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
}

#[tokio::test]
async fn hostile_archives_are_refused_and_the_previous_content_stays() {
    let (h, fs) = setup(32 * MIB).await;
    let base = format!("/v1/namespaces/alpha/filesystems/{fs}");
    let r = raw(&h, Method::PUT, &format!("{base}/files?path=keep/me.txt"), &[], b"previous".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&r.raw));
    let work = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let header = concat!(
        "import tarfile, sys, io\n",
        "t = tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT)\n",
        "def add(name, kind=tarfile.REGTYPE, data=b'x', link='', mode=0o644):\n",
        "    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.mode = mode\n",
        "    i.size = len(data) if kind == tarfile.REGTYPE else 0\n",
        "    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)\n",
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("absolute", "add('/etc/evil')".into(), "/etc/evil"),
        ("dotdot", "add('ok.txt'); add('../escape')".into(), "../escape"),
        ("nested-dotdot", "add('a/../../escape')".into(), "a/../../escape"),
        // Symlinks are data (absolute and upward targets too); writing through one is refused.
        ("through-symlink-out", "add('link', tarfile.SYMTYPE, link='/etc'); add('link/evil')".into(), "link/evil"),
        ("through-symlink-up", "add('up', tarfile.SYMTYPE, link='../../..'); add('up/escape')".into(), "up/escape"),
        ("hardlink-out", "add('hl', tarfile.LNKTYPE, link='/etc/passwd')".into(), "hl"),
        ("device", "add('dev', tarfile.CHRTYPE)".into(), "dev"),
        ("fifo", "add('fifo', tarfile.FIFOTYPE)".into(), "fifo"),
        ("setuid", "add('suid', mode=0o4755)".into(), "suid"),
    ];
    for (name, body, entry) in cases {
        let data = python_tar(work.path(), name, &format!("{header}{body}\nt.close()\n"));
        let r = raw(&h, Method::PUT, &format!("{base}/archive"), &[], data).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(entry), "{name}: {message:?} does not name {entry:?}");
        let r = h.call(Method::GET, &format!("{base}/files?path=keep/me.txt"), Some(&h.admin), Value::Null).await;
        assert_eq!(r.raw, b"previous", "{name} changed the previous content");
    }
    // Too big for the filesystem: quota_exceeded, previous content intact.
    let big = work.path().join("big");
    std::fs::create_dir(&big).unwrap();
    let f = std::fs::File::create(big.join("zeros")).unwrap();
    f.set_len(40 * MIB).unwrap();
    let r = raw(&h, Method::PUT, &format!("{base}/archive"), &[], tar_of(&big, &["-czf", "-", "."])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_envelope(&r, "quota_exceeded");
    // Garbage and a truncated archive.
    let r = raw(
        &h,
        Method::PUT,
        &format!("{base}/archive"),
        &[],
        b"this is not a tar archive at all, not even close".repeat(20),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let small = work.path().join("small");
    std::fs::create_dir(&small).unwrap();
    std::fs::write(small.join("one"), vec![3u8; 1 << 20]).unwrap();
    let mut cut = tar_of(&small, &["-cf", "-", "."]);
    cut.truncate(100_000);
    let r = raw(&h, Method::PUT, &format!("{base}/archive"), &[], cut).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // A dropped connection half-way, after what already is a complete (empty) archive: the end
    // marker must not be taken for the end of the upload.
    // The failure comes late, after the extraction has had time to reach the end marker.
    let stream = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; 1024])), 1)),
            1 => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                Some((Err(std::io::Error::other("connection reset")), 2))
            }
            _ => None,
        }
    });
    let req = Request::builder()
        .method(Method::PUT)
        .uri(format!("{base}/archive"))
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::from_stream(stream))
        .unwrap();
    let r = h.send(req).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    let r = h.call(Method::GET, &format!("{base}/files?path=keep/me.txt"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.raw, b"previous");
    // Nothing staged is left on the filesystem.
    let leftovers: Vec<_> = std::fs::read_dir(h.state.storage.mountpoint(&fs))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "data" && n != "lost+found")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn files_etags_and_conditional_writes() {
    let (h, fs) = setup(16 * MIB).await;
    let files = |query: &str| format!("/v1/namespaces/alpha/filesystems/{fs}/files?{query}");
    let file = files("path=notes/today.md");
    let r = raw(&h, Method::PUT, &file, &[("if-none-match", "*")], b"v1".to_vec()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let etag1 = r.headers["etag"].to_str().unwrap().to_owned();
    let r = raw(&h, Method::PUT, &file, &[("if-none-match", "*")], b"again".to_vec()).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = h.call(Method::GET, &file, Some(&h.admin), Value::Null).await;
    assert_eq!(r.raw, b"v1");
    assert_eq!(r.headers["etag"].to_str().unwrap(), etag1);
    // Many writers race with the same If-Match: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let app = h.app.clone();
        let (file, etag, admin) = (file.clone(), etag1.clone(), h.admin.clone());
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method(Method::PUT)
                .uri(&file)
                .header("authorization", format!("Bearer {admin}"))
                .header("if-match", etag)
                .body(Body::from(format!("writer {i}")))
                .unwrap();
            tower::ServiceExt::oneshot(app, req).await.unwrap().status()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::NO_CONTENT).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::PRECONDITION_FAILED).count(), 7, "{statuses:?}");
    let r = h.call(Method::GET, &file, Some(&h.admin), Value::Null).await;
    assert!(r.raw.starts_with(b"writer "));
    // Listing, deleting, bad paths.
    let r = h.call(Method::GET, &files("path=notes&list=true"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.body["items"][0]["name"], "today.md", "{}", r.body);
    assert_eq!(r.body["items"][0]["type"], "file");
    let r = raw(&h, Method::DELETE, &file, &[("if-match", &etag1)], vec![]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = h.call(Method::DELETE, &file, Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(h.call(Method::GET, &file, Some(&h.admin), Value::Null).await.status, StatusCode::NOT_FOUND);
    for bad in ["/etc/passwd", "../x", "a/../../x", "", "a%00b"] {
        let r = h.call(Method::GET, &files(&format!("path={bad}")), Some(&h.admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    // Writing past the filesystem's size is a quota error, and the old file stays.
    let big = "/v1/namespaces/alpha/filesystems/{fs}/files?path=big".replace("{fs}", &fs);
    // The old file and the new one must both fit during an atomic replace: 2 × 9 MiB do not.
    let r = raw(&h, Method::PUT, &big, &[], vec![1u8; 9 * MIB as usize]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = raw(&h, Method::PUT, &big, &[], vec![2u8; 9 * MIB as usize]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let r = h.call(Method::GET, &big, Some(&h.admin), Value::Null).await;
    assert_eq!(r.raw.len(), 9 * MIB as usize);
    assert!(r.raw.iter().all(|b| *b == 1));
}

#[tokio::test]
async fn planted_symlinks_never_lead_outside_the_tenants_data() {
    let (h, fs) = setup(16 * MIB).await;
    let sbx = h.create_sandbox("alpha", &h.admin, json!({"filesystem": {"id": fs, "mode": "rw"}})).await;
    let (code, _, err) = h
        .sh("alpha", &sbx, &h.admin, "ln -s /etc/passwd /workspace/passwd && ln -s ../../../../../../etc /workspace/etc && ln -s / /workspace/root")
        .await;
    assert_eq!(code, 0, "{err}");
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    let base = format!("/v1/namespaces/alpha/filesystems/{fs}/files");
    for path in ["passwd", "etc/passwd", "root/etc/passwd", "root/etc/shadow"] {
        let r = h.call(Method::GET, &format!("{base}?path={path}"), Some(&h.admin), Value::Null).await;
        assert_ne!(r.raw, host_passwd, "{path} read the host's /etc/passwd");
        assert!(!r.status.is_success(), "{path}: {}", String::from_utf8_lossy(&r.raw));
    }
    // Writes through a planted symlink land inside the tenant's data, never on the host.
    let r = raw(&h, Method::PUT, &format!("{base}?path=etc/bulkhead-planted"), &[], b"x".to_vec()).await;
    assert!(!Path::new("/etc/bulkhead-planted").exists(), "a write escaped to the host");
    let _ = std::fs::remove_file("/etc/bulkhead-planted");
    assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
}
