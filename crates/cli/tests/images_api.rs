//! Images through the API and the CLI against the real `bulkhead serve`: names and bodies
//! checked strictly, roles (a viewer reads, a developer imports and deletes, only the platform
//! admin publishes), another tenant's image answered exactly as a missing one, a server with no
//! default image saying so, `disk_bytes` within the sandbox's memory (the writable root is a
//! tmpfs charged to it); and, with the layer store
//! and the overlay root, the whole life of an image: an OCI layout the test builds (a static
//! busybox, a user, a working directory, an environment) imported, listed, shown, booted (its
//! `Env`, `User` and `WorkingDir` the commands' defaults), refused for deletion while a sandbox
//! uses it, and deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{text, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const NS: &str = "acme";
const OTHER: &str = "globex";

/// A server on a temporary data dir with namespaces [`NS`] and [`OTHER`], and tokens of an
/// [`NS`] developer, an [`NS`] viewer and an [`OTHER`] owner.
struct World {
    _dir: tempfile::TempDir,
    server: Server,
    admin: String,
    dev: String,
    viewer: String,
    other: String,
    http: reqwest::Client,
}

impl World {
    fn start(extra: &[&str]) -> World {
        let dir = common::tempdir();
        let data = dir.path().join("data");
        let server = Server::start_with_args(&data, common::process::runtime_names(), extra);
        let admin = server.first_token.clone().expect("first start prints the admin token");
        for ns in [NS, OTHER] {
            server.ok(None, &["namespace", "create", ns, "--cpu", "2", "--memory", "2GiB", "--disk", "4GiB"]);
        }
        let token = |ns: &str, name: &str, role: &str| {
            server.json(None, &["key", "create", "--ns", ns, name, "--role", role])["token"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let (dev, viewer, other) =
            (token(NS, "dev", "developer"), token(NS, "eyes", "viewer"), token(OTHER, "boss", "owner"));
        World { _dir: dir, server, admin, dev, viewer, other, http: reqwest::Client::new() }
    }

    /// `method path` as `token` with `body` (raw bytes; JSON when it parses as JSON): the status
    /// and the answer's JSON (`null` when it has none).
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.server.url)).bearer_auth(token);
        if let Some(body) = body {
            let json = serde_json::from_slice::<Value>(&body).is_ok();
            r = r.header("content-type", if json { "application/json" } else { "application/x-tar" }).body(body);
        }
        let answer = r.send().await.expect("the server answers");
        let status = answer.status().as_u16();
        let bytes = answer.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn put(&self, path: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, token, Some(body)).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body.to_string().into_bytes())).await
    }

    async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, token, None).await
    }
}

/// The error code of an answer, and its message.
fn error(answer: &Value) -> (&str, &str) {
    (answer["error"]["code"].as_str().unwrap_or(""), answer["error"]["message"].as_str().unwrap_or(""))
}

/// Asserts `(status, body)` is the error `status`/`code` whose message contains `says`.
fn refused(got: &(u16, Value), status: u16, code: &str, says: &str) {
    let (c, m) = error(&got.1);
    assert_eq!((got.0, c), (status, code), "{}", got.1);
    assert!(m.contains(says), "{m:?} should say {says:?}");
}

#[tokio::test]
async fn names_roles_and_tenants_are_checked_before_any_image_is_read() {
    let w = World::start(&["--root", "host"]);
    let ns_images = format!("/v1/namespaces/{NS}/images");

    // Bad names, in the path of an import: 400 naming the field, before the body is read.
    for bad in ["Python", "9lives", "a_b", &"x".repeat(64)] {
        let got = w.put(&format!("{ns_images}/{bad}/archive"), &w.dev, b"not a tar".to_vec()).await;
        refused(&got, 400, "invalid_request", "name");
    }
    // A missing image, by name or by id, and a malformed reference: all the same 404.
    for missing in ["nope", "img_0123456789abcdef0123456789abcdef", "Not-A-Name"] {
        let got = w.get(&format!("{ns_images}/{missing}"), &w.viewer).await;
        refused(&got, 404, "not_found", "image");
        let got = w.delete(&format!("{ns_images}/{missing}"), &w.dev).await;
        refused(&got, 404, "not_found", "image");
    }
    // Lists are paginated as every list is.
    let (status, page) = w.get(&ns_images, &w.viewer).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"], json!([]));
    refused(&w.get(&format!("{ns_images}?limit=0"), &w.viewer).await, 400, "invalid_request", "limit");
    refused(&w.get(&format!("{ns_images}?cursor=garbage"), &w.viewer).await, 400, "invalid_request", "cursor");
    refused(&w.get(&format!("{ns_images}?colour=red"), &w.viewer).await, 400, "invalid_request", "colour");

    // Roles: a viewer reads but never imports or deletes.
    refused(
        &w.put(&format!("{ns_images}/tools/archive"), &w.viewer, b"x".to_vec()).await,
        403,
        "forbidden",
        "image.create",
    );
    refused(&w.delete(&format!("{ns_images}/tools"), &w.viewer).await, 403, "forbidden", "image.delete");

    // Another tenant: exactly what a namespace that does not exist answers.
    let foreign = w.get(&ns_images, &w.other).await;
    let missing_ns = w.get("/v1/namespaces/nowhere/images", &w.other).await;
    assert_eq!(foreign.0, 404);
    assert_eq!(error(&foreign.1).0, error(&missing_ns.1).0);
    assert_eq!(error(&foreign.1).1.replace(NS, "X"), error(&missing_ns.1).1.replace("nowhere", "X"));
    refused(&w.put(&format!("{ns_images}/tools/archive"), &w.other, b"x".to_vec()).await, 404, "not_found", NS);

    // The public images are the operator's: a namespace's principals may not publish, list or
    // delete them there, whatever their role.
    for token in [&w.dev, &w.other] {
        refused(
            &w.put("/v1/images/tools/archive", token, b"x".to_vec()).await,
            403,
            "forbidden",
            "platform.image.create",
        );
        refused(&w.get("/v1/images", token).await, 403, "forbidden", "platform.image.list");
        refused(&w.delete("/v1/images/tools", token).await, 403, "forbidden", "platform.image.delete");
    }
    let (status, page) = w.get("/v1/images", &w.admin).await;
    assert_eq!((status, &page["items"]), (200, &json!([])), "{page}");
    refused(&w.delete("/v1/images/nope", &w.admin).await, 404, "not_found", "nope");
    refused(&w.put("/v1/images/Bad/archive", &w.admin, b"x".to_vec()).await, 400, "invalid_request", "name");

    // Under `--root host` (this server), sandboxes boot the host's base: naming an image, or a
    // writable root size, is refused as the server's configuration, and sandboxes show none.
    let sandboxes = format!("/v1/namespaces/{NS}/sandboxes");
    refused(&w.post(&sandboxes, &w.dev, json!({"image": "tools"})).await, 409, "conflict", "--root host");
    refused(&w.post(&sandboxes, &w.dev, json!({"disk_bytes": 1 << 30})).await, 409, "conflict", "--root host");
    refused(&w.post(&sandboxes, &w.dev, json!({"image": 7})).await, 400, "invalid_request", "image");
    refused(&w.post(&sandboxes, &w.dev, json!({"imag": "tools"})).await, 400, "invalid_request", "imag");
    let (status, sandbox) = w.post(&sandboxes, &w.dev, json!({})).await;
    assert_eq!(status, 201, "{sandbox}");
    assert_eq!(sandbox["image"], Value::Null, "{sandbox}");
    let id = sandbox["id"].as_str().unwrap();
    assert_eq!(w.delete(&format!("{sandboxes}/{id}"), &w.dev).await.0, 204);

    // The CLI: an empty table, a missing image as one line naming it, --ns or --public needed.
    let out = w.server.ok(Some(&w.viewer), &["image", "list", "--ns", NS]);
    assert!(out.starts_with("ID") && out.contains("DIGEST"), "{out}");
    assert_eq!(w.server.json(Some(&w.viewer), &["image", "list", "--ns", NS]), json!([]));
    let err = w.server.fails(Some(&w.viewer), &["image", "show", "nope", "--ns", NS]);
    assert!(err.contains("not_found") && err.contains("nope"), "{err}");
    let err = w.server.fails(Some(&w.dev), &["image", "import", "tools", "/nonexistent.tar", "--ns", NS]);
    assert!(err.contains("/nonexistent.tar"), "{err}");
    let out = w.server.cli(Some(&w.dev), &["image", "list"]);
    assert!(!out.status.success(), "image list without --ns or --public: {}", text(&out.stdout));

    // Every image route is in the OpenAPI document.
    let doc: Value = w.http.get(format!("{}/openapi.json", w.server.url)).send().await.unwrap().json().await.unwrap();
    for (path, method) in [
        ("/v1/namespaces/{ns}/images/{name}/archive", "put"),
        ("/v1/namespaces/{ns}/images", "get"),
        ("/v1/namespaces/{ns}/images/{name}", "get"),
        ("/v1/namespaces/{ns}/images/{name}", "delete"),
        ("/v1/images/{name}/archive", "put"),
        ("/v1/images", "get"),
        ("/v1/images/{name}", "delete"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not documented");
    }

    // The denied import is in the namespace's audit chain.
    let audit = w.server.json(None, &["audit", "--ns", NS]);
    let denied = audit.as_array().unwrap().iter().any(|r| r["action"] == "image.create" && r["decision"] != "allow");
    assert!(denied, "{audit:#}");
}

#[tokio::test]
async fn an_image_server_without_a_default_image_says_how_to_add_one() {
    let w = World::start(&["--root", "image", "--max-image-bytes", "64KiB"]);
    let sandboxes = format!("/v1/namespaces/{NS}/sandboxes");
    let got = w.post(&sandboxes, &w.dev, json!({})).await;
    refused(&got, 409, "conflict", "no default image");
    assert!(error(&got.1).1.contains("--default-image"), "{}", got.1);
    // A named image that is not there is a 404 naming it; another tenant's is the same.
    refused(&w.post(&sandboxes, &w.dev, json!({"image": "tools"})).await, 404, "not_found", "\"tools\"");
    refused(&w.post(&sandboxes, &w.dev, json!({"image": "Tools!"})).await, 400, "invalid_request", "image");
    // The writable root is memory: bounded by the sandbox's memory, and has a floor.
    let got = w.post(&sandboxes, &w.dev, json!({"disk_bytes": 5u64 << 30, "memory_bytes": 1u64 << 30})).await;
    refused(&got, 400, "invalid_request", "disk_bytes");
    assert!(error(&got.1).1.contains("memory_bytes"), "{}", got.1);
    refused(&w.post(&sandboxes, &w.dev, json!({"disk_bytes": 1024})).await, 400, "invalid_request", "disk_bytes");
    // An upload over the server's bound is a 413, whatever it holds, and leaves nothing behind.
    let big = vec![0u8; 65 << 10];
    let got = w.put(&format!("/v1/namespaces/{NS}/images/tools/archive"), &w.dev, big).await;
    refused(&got, 413, "payload_too_large", "bytes");
    let spool = w.server.data_dir.join("images").join("spool");
    let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "spooled uploads left in {}", spool.display());
    // Nothing was recorded.
    assert_eq!(w.get(&format!("/v1/namespaces/{NS}/images"), &w.dev).await.1["items"], json!([]));
}

// ---- With the layer store (and, for sandboxes, the overlay root) ----

/// Writes `data` as a blob of the OCI layout at `layout`; its descriptor's digest and size.
fn blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = format!("{:x}", Sha256::digest(data));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

fn tar(dir: &Path, out: &Path, entries: &[&str]) {
    let status = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(entries)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of {}", dir.display());
}

/// Builds an OCI image layout tar in `work`: one layer with a static busybox (`sh`, `id`, `pwd`,
/// `env`, `cat`), `/etc/passwd` with `app` (1000), and `/srv/hello.txt`; its config sets `Env`,
/// `User` `app` and `WorkingDir` `/srv`. `tamper` corrupts the layer blob after its digest is
/// taken. Returns the archive's path.
fn oci_image(work: &Path, tamper: bool) -> PathBuf {
    let root = work.join("rootfs");
    for d in ["bin", "etc", "srv", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("a static busybox on the host");
    for applet in ["sh", "id", "pwd", "env", "cat", "echo"] {
        let _ = std::fs::remove_file(root.join("bin").join(applet));
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n")
        .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    std::fs::write(root.join("srv/hello.txt"), "hello from the image\n").unwrap();
    let layer_tar = work.join("layer.tar");
    tar(&root, &layer_tar, &["bin", "etc", "srv", "tmp"]);
    let layout = work.join("layout");
    let mut layer = std::fs::read(&layer_tar).unwrap();
    let (layer_digest, layer_size) = blob(&layout, &layer);
    if tamper {
        let last = layer.len() - 1;
        layer[last - 2000] ^= 0xff;
        std::fs::write(layout.join("blobs/sha256").join(layer_digest.trim_start_matches("sha256:")), &layer).unwrap();
    }
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=from-the-image"], "User": "app", "WorkingDir": "/srv"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let out = work.join(if tamper { "tampered.tar" } else { "image.tar" });
    tar(&layout, &out, &["oci-layout", "index.json", "blobs"]);
    out
}

/// Needs the layer store: import, list, show, another tenant, a name taken, a tampered blob,
/// junk, public images, delete.
#[tokio::test]
async fn an_imported_image_is_listed_shown_hidden_from_other_tenants_and_deleted() {
    let w = World::start(&[]);
    let work = common::tempdir();
    let archive = oci_image(work.path(), false);
    let archive_arg = archive.to_str().unwrap();
    let ns_images = format!("/v1/namespaces/{NS}/images");

    let image = w.server.json(Some(&w.dev), &["image", "import", "tools", archive_arg, "--ns", NS]);
    let id = image["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("img_"), "{image}");
    assert_eq!(
        (image["name"].as_str(), image["namespace"].as_str(), &image["public"]),
        (Some("tools"), Some(NS), &json!(false))
    );
    assert!(image["digest"].as_str().unwrap().starts_with("sha256:"), "{image}");
    assert_eq!(image["layers"].as_array().unwrap().len(), 1, "{image}");
    assert_eq!(image["config"]["user"], "app");
    assert_eq!(image["config"]["working_dir"], "/srv");
    assert!(image["size_bytes"].as_u64().unwrap() > 0);

    // By name and by id, for any role of the namespace; never for another tenant.
    for path in [format!("{ns_images}/tools"), format!("{ns_images}/{id}")] {
        let (status, got) = w.get(&path, &w.viewer).await;
        assert_eq!((status, &got["id"]), (200, &json!(id)), "{got}");
    }
    let (status, page) = w.get(&ns_images, &w.viewer).await;
    assert_eq!(status, 200);
    let private =
        |page: &Value| page["items"].as_array().unwrap().iter().filter(|i| i["public"] == json!(false)).count();
    assert_eq!(private(&page), 1, "{page}");
    assert!(
        page["items"].as_array().unwrap().iter().any(|i| i["name"] == "default"),
        "the default image is listed: {page}"
    );
    let theirs = format!("/v1/namespaces/{OTHER}/images");
    assert_eq!(private(&w.get(&theirs, &w.other).await.1), 0);
    let hidden = w.get(&format!("{theirs}/{id}"), &w.other).await;
    let missing = w.get(&format!("{theirs}/img_0123456789abcdef0123456789abcdef"), &w.other).await;
    refused(&hidden, 404, "not_found", "image");
    assert_eq!(
        error(&hidden.1).1.replace(&id, "X"),
        error(&missing.1).1.replace("img_0123456789abcdef0123456789abcdef", "X")
    );
    // A namespace's policy may forbid an image: by name or by id it is then refused, and lists
    // leave it out.
    let forbid = json!({"name": "no-tools",
        "policy": "forbid(principal, action in [Bulkhead::Action::\"image.get\", Bulkhead::Action::\"image.list\"], resource == Bulkhead::Image::\"tools\");"});
    let (status, policy) = w.post(&format!("/v1/namespaces/{NS}/policies"), &w.admin, forbid).await;
    assert_eq!(status, 201, "{policy}");
    refused(&w.get(&format!("{ns_images}/tools"), &w.viewer).await, 403, "forbidden", "image.get");
    refused(&w.get(&format!("{ns_images}/{id}"), &w.viewer).await, 403, "forbidden", "image.get");
    assert_eq!(private(&w.get(&ns_images, &w.viewer).await.1), 0, "a forbidden image is not listed");
    let policy_path = format!("/v1/namespaces/{NS}/policies/{}", policy["id"].as_str().unwrap());
    assert_eq!(w.delete(&policy_path, &w.admin).await.0, 204);
    let shown = w.server.ok(Some(&w.viewer), &["image", "show", "tools", "--ns", NS]);
    assert!(shown.contains(&id) && shown.contains("/srv") && shown.contains("GREETING=from-the-image"), "{shown}");

    // A name taken is a 409 before the body is read; tampered and junk archives are 400s and
    // record nothing.
    refused(
        &w.put(&format!("{ns_images}/tools/archive"), &w.dev, std::fs::read(&archive).unwrap()).await,
        409,
        "conflict",
        "tools",
    );
    let tampered = oci_image(&work.path().join("t"), true);
    refused(
        &w.put(&format!("{ns_images}/bad/archive"), &w.dev, std::fs::read(&tampered).unwrap()).await,
        400,
        "invalid_request",
        "digest",
    );
    refused(
        &w.put(&format!("{ns_images}/junk/archive"), &w.dev, b"this is no tar at all".to_vec()).await,
        400,
        "invalid_request",
        "image",
    );
    // Its own image and the default image.
    assert_eq!(w.get(&ns_images, &w.dev).await.1["items"].as_array().unwrap().len(), 2);

    // A public image: every namespace sees it beside its own, none may delete it.
    let public = w.server.json(None, &["image", "import", "base", archive_arg, "--public"]);
    assert_eq!((&public["public"], &public["namespace"]), (&json!(true), &Value::Null), "{public}");
    for (ns, token, n) in [(NS, &w.dev, 3), (OTHER, &w.other, 2)] {
        let page = w.get(&format!("/v1/namespaces/{ns}/images"), token).await.1;
        assert_eq!(page["items"].as_array().unwrap().len(), n, "{page}");
    }
    refused(&w.delete(&format!("{ns_images}/base"), &w.dev).await, 403, "forbidden", "public");
    assert_eq!(w.get("/v1/images", &w.admin).await.1["items"].as_array().unwrap().len(), 2);

    // Deleted: gone by name and id; the import and the delete are audited.
    w.server.ok(Some(&w.dev), &["image", "rm", "tools", "--ns", NS]);
    refused(&w.get(&format!("{ns_images}/{id}"), &w.dev).await, 404, "not_found", "image");
    w.server.ok(None, &["image", "rm", "base", "--public"]);
    let left = w.get(&ns_images, &w.dev).await.1;
    assert_eq!(
        left["items"].as_array().unwrap().iter().map(|i| &i["name"]).collect::<Vec<_>>(),
        [&json!("default")],
        "{left}"
    );
    let audit = w.server.json(None, &["audit", "--ns", NS]);
    for action in ["image.create", "image.delete"] {
        assert!(
            audit.as_array().unwrap().iter().any(|r| r["action"] == action && r["decision"] == "allow"),
            "{action}: {audit:#}"
        );
    }
}

/// Needs the layer store and the overlay root: a sandbox of the image runs as its user in its
/// working directory with its environment under the request's; the image cannot be deleted
/// while the sandbox lives.
#[tokio::test]
async fn a_sandbox_boots_the_image_with_its_defaults_and_holds_it() {
    let w = World::start(&["--root", "image"]);
    let work = common::tempdir();
    let archive = oci_image(work.path(), false);
    let image = w.server.json(Some(&w.dev), &["image", "import", "tools", archive.to_str().unwrap(), "--ns", NS]);
    let sandboxes = format!("/v1/namespaces/{NS}/sandboxes");
    let (status, sandbox) = w
        .post(&sandboxes, &w.dev, json!({"image": "tools", "disk_bytes": 64u64 << 20, "env": {"EXTRA": "mine"}}))
        .await;
    assert_eq!(status, 201, "{sandbox}");
    assert_eq!(sandbox["image"], json!({"id": image["id"], "name": "tools", "digest": image["digest"]}));
    assert_eq!(sandbox["disk_bytes"], json!(64u64 << 20));
    let id = sandbox["id"].as_str().unwrap();
    let exec = |cmd: Value| {
        let w = &w;
        let path = format!("{sandboxes}/{id}/exec");
        async move { w.post(&path, &w.dev, cmd).await }
    };
    let (status, out) = exec(json!({"cmd": ["sh", "-c", "id -u; pwd; echo $GREETING $EXTRA; cat hello.txt"]})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "1000\n/srv\nfrom-the-image mine\nhello from the image\n", "{out}");
    // The request's user and cwd win over the image's.
    let (_, out) = exec(json!({"cmd": ["sh", "-c", "id -u; pwd"], "user": "root", "cwd": "/tmp"})).await;
    assert_eq!(out["stdout"], "0\n/tmp\n", "{out}");

    // A snapshot from the CLI: root wrote a file into the image's tree; a sandbox of the
    // snapshot has it, with the image's configuration.
    let (status, out) = exec(json!({"cmd": ["sh", "-c", "echo noted > /srv/note"], "user": "root"})).await;
    assert_eq!((status, &out["exit_code"]), (200, &json!(0)), "{out}");
    let snap = w.server.json(Some(&w.dev), &["sandbox", "snapshot", id, "tools-noted", "--ns", NS]);
    assert_eq!((&snap["name"], snap["layers"].as_array().unwrap().len()), (&json!("tools-noted"), 2), "{snap}");
    let (status, from) = w.post(&sandboxes, &w.dev, json!({"image": "tools-noted", "disk_bytes": 16u64 << 20})).await;
    assert_eq!(status, 201, "{from}");
    let path = format!("{sandboxes}/{}/exec", from["id"].as_str().unwrap());
    let (_, out) = w.post(&path, &w.dev, json!({"cmd": ["sh", "-c", "id -u; cat /srv/note; echo $GREETING"]})).await;
    assert_eq!(out["stdout"], "1000\nnoted\nfrom-the-image\n", "{out}");
    assert_eq!(w.delete(&format!("{sandboxes}/{}", from["id"].as_str().unwrap()), &w.dev).await.0, 204);
    assert_eq!(w.delete(&format!("/v1/namespaces/{NS}/images/tools-noted"), &w.dev).await.0, 204);
    // A build from the CLI: its commands run as the image's user; a failing one is the error.
    let built = w
        .server
        .json(Some(&w.dev), &["image", "build", "tools-built", "--from", "tools", "--run", "id -u", "--ns", NS]);
    assert_eq!((&built["name"], built["layers"].as_array().unwrap().len()), (&json!("tools-built"), 2), "{built}");
    let failed = w
        .server
        .fails(Some(&w.dev), &["image", "build", "tools-bad", "--from", "tools", "--run", "exit 7", "--ns", NS]);
    assert!(failed.contains("run[0]") && failed.contains("exited with 7"), "{failed}");
    assert_eq!(w.delete(&format!("/v1/namespaces/{NS}/images/tools-built"), &w.dev).await.0, 204);

    // In use: 409 naming the sandbox; free once it ended.
    let got = w.delete(&format!("/v1/namespaces/{NS}/images/tools"), &w.dev).await;
    refused(&got, 409, "conflict", id);
    assert_eq!(w.delete(&format!("{sandboxes}/{id}"), &w.dev).await.0, 204);
    assert_eq!(w.delete(&format!("/v1/namespaces/{NS}/images/tools"), &w.dev).await.0, 204);
}

/// Needs the layer store and the overlay root: `--default-image` is imported once as the public
/// image `default`, the image of a create that names none; a restart on an unchanged file keeps
/// it; a file that is missing is named in the refusal of such creates.
#[tokio::test]
async fn the_default_image_is_imported_at_start_and_kept_across_restarts() {
    let work = common::tempdir();
    let archive = oci_image(work.path(), false);
    let archive_arg = archive.to_str().unwrap().to_owned();
    let mut w = World::start(&["--root", "image", "--default-image", &archive_arg]);
    let sandboxes = format!("/v1/namespaces/{NS}/sandboxes");
    let (status, page) = w.get("/v1/images", &w.admin).await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!((&items[0]["name"], &items[0]["public"]), (&json!("default"), &json!(true)));
    let default_id = items[0]["id"].clone();
    let (status, sandbox) = w.post(&sandboxes, &w.dev, json!({})).await;
    assert_eq!(status, 201, "{sandbox}");
    assert_eq!(sandbox["image"]["name"], "default", "{sandbox}");
    let memory = sandbox["memory_bytes"].as_u64().unwrap();
    assert_eq!(sandbox["disk_bytes"], json!(memory.min(1u64 << 30)), "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let (_, out) = w.post(&format!("{sandboxes}/{id}/exec"), &w.dev, json!({"cmd": ["cat", "hello.txt"]})).await;
    assert_eq!(out["stdout"], "hello from the image\n", "{out}");
    // The public default cannot go while a sandbox uses it.
    refused(&w.delete("/v1/images/default", &w.admin).await, 409, "conflict", &id);
    assert_eq!(w.delete(&format!("{sandboxes}/{id}"), &w.dev).await.0, 204);

    // A restart on the same file keeps the image it recorded.
    let (data, names) = (w.server.data_dir.clone(), (w.server.state_dir.clone(), w.server.cgroup_prefix.clone()));
    w.server.stop();
    let registry = data.join("host-registry");
    let args = ["--root", "image", "--default-image", archive_arg.as_str()];
    w.server = Server::spawn(&data, names.clone(), &registry, &args).expect("restart");
    let (_, page) = w.get("/v1/images", &w.admin).await;
    assert_eq!(page["items"][0]["id"], default_id, "{page}");

    // Without the file, and with the recorded default deleted, creates say what is missing.
    assert_eq!(w.delete("/v1/images/default", &w.admin).await.0, 204);
    w.server.stop();
    let gone = work.path().join("gone.tar");
    let args = ["--root", "image", "--default-image", gone.to_str().unwrap()];
    w.server = Server::spawn(&data, names, &registry, &args).expect("restart");
    let got = w.post(&sandboxes, &w.dev, json!({})).await;
    refused(&got, 409, "conflict", "no default image");
    assert!(error(&got.1).1.contains("gone.tar"), "{}", got.1);
}

/// Needs the layer store: a public layer store the operator names may serve several servers,
/// so deleting a public image there leaves its layers for the others; a namespace's own store
/// is collected, and goes with the namespace.
#[tokio::test]
async fn a_shared_public_store_keeps_its_layers_and_a_namespace_store_is_collected() {
    let work = common::tempdir();
    let archive = oci_image(work.path(), false);
    let archive_arg = archive.to_str().unwrap().to_owned();
    let shared = work.path().join("public-layers");
    let w = World::start(&["--public-layers", shared.to_str().unwrap()]);
    let public = w.server.json(None, &["image", "import", "base", &archive_arg, "--public"]);
    let layer = public["layers"][0].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    assert!(shared.join("layers").join(&layer).is_dir(), "the public layer is unpacked in the shared store");
    w.server.ok(None, &["image", "rm", "base", "--public"]);
    assert!(shared.join("layers").join(&layer).is_dir(), "a shared store's layers stay");

    let own = w.server.data_dir.join("images/ns").join(NS);
    w.server.ok(Some(&w.dev), &["image", "import", "tools", &archive_arg, "--ns", NS]);
    assert!(own.join("layers").join(&layer).is_dir(), "the namespace's own store holds its layer");
    w.server.ok(Some(&w.dev), &["image", "rm", "tools", "--ns", NS]);
    assert!(!own.join("layers").join(&layer).exists(), "a layer no image names is collected");
    w.server.ok(Some(&w.dev), &["image", "import", "tools", &archive_arg, "--ns", NS]);
    w.server.ok(None, &["namespace", "delete", NS]);
    assert!(!own.exists(), "the namespace's store goes with it");
}
