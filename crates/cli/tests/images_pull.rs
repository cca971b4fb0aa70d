//! Pulling images from an OCI registry through the API and the CLI against the real
//! `bulkhead serve` and a real registry on loopback (Debian's `docker-registry`, filled by
//! `skopeo copy` from layouts the tests build): by tag and by digest, then booted (the image's
//! `Env` and `WorkingDir` apply); with credentials from a secret of the namespace (right, wrong,
//! missing, malformed); a blob tampered with in the registry's storage refused with nothing
//! recorded or unpacked; destinations the outbound rule refuses refused before any connection,
//! and so are the redirects and token endpoints a registry names;
//! another tenant neither sees nor uses the image; `bulkhead image pull`.
//!
//! Every server is started with `--outbound-allow 127.0.0.0/8`: the registries are on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::images::{busybox_image, OciLayoutBuilder};
use common::process::Server;
use common::registry::Registry;
use serde_json::{json, Value};

const NS: &str = "acme";
const OTHER: &str = "globex";

/// A server with namespaces [`NS`] and [`OTHER`], an [`NS`] developer's token and an [`OTHER`]
/// owner's.
struct World {
    _dir: tempfile::TempDir,
    server: Server,
    admin: String,
    dev: String,
    other: String,
    http: reqwest::Client,
}

impl World {
    fn start() -> World {
        World::start_allowing("127.0.0.0/8")
    }

    /// A world whose server allows the outbound range `allow` (`--outbound-allow`).
    fn start_allowing(allow: &str) -> World {
        let dir = common::tempdir();
        let data = dir.path().join("data");
        let server = Server::start_with_args(&data, common::process::runtime_names(), &["--outbound-allow", allow]);
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
        let (dev, other) = (token(NS, "dev", "developer"), token(OTHER, "boss", "owner"));
        World { _dir: dir, server, admin, dev, other, http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.server.url)).bearer_auth(token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let answer = r.send().await.expect("the server answers");
        let status = answer.status().as_u16();
        let bytes = answer.bytes().await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, token, None).await
    }

    /// `POST /v1/namespaces/{NS}/images` as the developer.
    async fn pull(&self, body: Value) -> (u16, Value) {
        self.post(&format!("/v1/namespaces/{NS}/images"), &self.dev, body).await
    }

    /// Sets secret `name` of [`NS`] to `value` (as the platform admin).
    async fn secret(&self, name: &str, value: &str) {
        let got = self
            .post(&format!("/v1/namespaces/{NS}/secrets"), &self.admin, json!({"name": name, "value": value}))
            .await;
        assert!(got.0 == 201 || got.0 == 200, "{got:?}");
    }

    /// The names of the images [`NS`]'s developer sees.
    async fn image_names(&self) -> Vec<String> {
        let (status, page) = self.get(&format!("/v1/namespaces/{NS}/images"), &self.dev).await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect()
    }

    /// What [`NS`]'s layer store and the server's spool dir hold.
    fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let list = |dir: PathBuf| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        let images = self.server.data_dir.join("images");
        (list(images.join("ns").join(NS).join("layers")), list(images.join("spool")))
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

/// The busybox image with an environment and working directory of its own.
fn tools_image() -> OciLayoutBuilder {
    busybox_image().env("GREETING=pulled").working_dir("/home/agent")
}

/// Writes [`tools_image`] as a layout directory under `work`, pushes it to `registry` as
/// `tools/busybox:1`, and returns the manifest digest and the layout's first layer digest.
fn push_tools(registry: &Registry, work: &Path) -> (String, String) {
    let layout = work.join("layout");
    let info = tools_image().write_dir(&layout);
    let digest = registry.push(&layout, "tools/busybox:1");
    assert_eq!(digest, info.manifest_digest);
    (digest, info.layers[0].clone())
}

#[tokio::test]
async fn pulls_by_tag_and_digest_boot_and_stay_the_namespaces_own() {
    let registry = Registry::start(None);
    let work = common::tempdir();
    let (digest, _) = push_tools(&registry, work.path());
    let w = World::start();
    let images = format!("/v1/namespaces/{NS}/images");

    // Bodies are checked strictly: an unknown field is named.
    let source = registry.source("tools/busybox:1");
    refused(&w.pull(json!({"name": "tools", "source": source, "colour": 1})).await, 400, "invalid_request", "colour");
    refused(&w.pull(json!({"name": "Tools", "source": source})).await, 400, "invalid_request", "name");
    // A build's shape is a build, checked as one: its fields, not a pull's.
    refused(
        &w.pull(json!({"name": "tools", "from": "default", "run": [["true"]], "source": source})).await,
        400,
        "invalid_request",
        "from",
    );
    refused(&w.pull(json!({"name": "tools", "from": "default", "run": []})).await, 400, "invalid_request", "run");
    refused(&w.pull(json!({"name": "tools", "source": "Not A Reference"})).await, 400, "invalid_request", "source");
    let missing = registry.source("tools/busybox:nope");
    refused(&w.pull(json!({"name": "tools", "source": missing})).await, 400, "invalid_request", "has no such image");

    // By tag.
    let (status, image) = w.pull(json!({"name": "tools", "source": source})).await;
    assert_eq!(status, 201, "{image}");
    assert_eq!((image["name"].as_str(), image["digest"].as_str()), (Some("tools"), Some(digest.as_str())));
    assert_eq!(image["config"]["working_dir"], "/home/agent", "{image}");
    assert_eq!(image["public"], false);
    refused(&w.pull(json!({"name": "tools", "source": source})).await, 409, "conflict", "already exists");

    // By digest: the same image.
    let pinned = registry.source(&format!("tools/busybox@{digest}"));
    let (status, again) = w.pull(json!({"name": "pinned", "source": pinned})).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["digest"], image["digest"]);
    // A digest the registry does not have.
    let absent = registry.source(&format!("tools/busybox@sha256:{}", "0".repeat(64)));
    refused(&w.pull(json!({"name": "absent", "source": absent})).await, 400, "invalid_request", "source");
    assert_eq!(w.leftovers().1, Vec::<String>::new(), "the spool dir is empty after every pull");

    // A sandbox of the pulled image runs with its Env and WorkingDir.
    let sandboxes = format!("/v1/namespaces/{NS}/sandboxes");
    let (status, sandbox) = w.post(&sandboxes, &w.dev, json!({"image": "pinned", "disk_bytes": 64u64 << 20})).await;
    assert_eq!(status, 201, "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let (status, out) = w
        .post(
            &format!("{sandboxes}/{id}/exec"),
            &w.dev,
            json!({"cmd": ["busybox", "sh", "-c", "busybox echo $GREETING; pwd"]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "pulled\n/home/agent\n", "{out}");
    assert_eq!(w.delete(&format!("{sandboxes}/{id}"), &w.dev).await.0, 204);

    // Another tenant neither sees nor uses it, nor pulls into the namespace.
    let other_images = format!("/v1/namespaces/{OTHER}/images");
    let (_, page) = w.get(&other_images, &w.other).await;
    assert!(page["items"].as_array().unwrap().iter().all(|i| i["name"] != "tools" && i["name"] != "pinned"), "{page}");
    refused(&w.get(&format!("{other_images}/tools"), &w.other).await, 404, "not_found", "tools");
    refused(
        &w.get(&format!("{other_images}/{}", image["id"].as_str().unwrap()), &w.other).await,
        404,
        "not_found",
        "image",
    );
    refused(&w.get(&format!("{images}/tools"), &w.other).await, 404, "not_found", NS);
    let got = w.post(&format!("/v1/namespaces/{OTHER}/sandboxes"), &w.other, json!({"image": "tools"})).await;
    refused(&got, 404, "not_found", "tools");
    refused(&w.post(&images, &w.other, json!({"name": "mine", "source": source})).await, 404, "not_found", NS);

    // The platform admin publishes a pulled image for every namespace; a namespace may not.
    refused(
        &w.post("/v1/images", &w.dev, json!({"name": "base", "source": source})).await,
        403,
        "forbidden",
        "platform.image.create",
    );
    let bad = json!({"name": "base", "source": source, "credentials": {"secret": "x"}});
    refused(&w.post("/v1/images", &w.admin, bad).await, 400, "invalid_request", "credentials");
    let (status, public) = w.post("/v1/images", &w.admin, json!({"name": "base", "source": source})).await;
    assert_eq!(status, 201, "{public}");
    assert_eq!((public["public"].as_bool(), public["digest"].as_str()), (Some(true), Some(digest.as_str())));
    let (_, page) = w.get(&other_images, &w.other).await;
    assert!(page["items"].as_array().unwrap().iter().any(|i| i["name"] == "base"), "{page}");
    let cli = w.server.json(None, &["image", "pull", "base-cli", &source, "--public"]);
    assert_eq!((cli["public"].as_bool(), cli["digest"].as_str()), (Some(true), Some(digest.as_str())));

    // A retried pull with the same Idempotency-Key answers the first one's image.
    let retry = |key: &'static str| {
        let (w, images, source) = (&w, &images, &source);
        async move {
            let answer = w
                .http
                .post(format!("{}{images}", w.server.url))
                .bearer_auth(&w.dev)
                .header("Idempotency-Key", key)
                .json(&json!({"name": "again", "source": source}))
                .send()
                .await
                .unwrap();
            (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
        }
    };
    let (first, second) = (retry("pull-1").await, retry("pull-1").await);
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!((second.0, &second.1["id"]), (201, &first.1["id"]));

    let audit = w.server.json(None, &["audit", "--ns", NS]);
    let pulls: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "image.create" && r["decision"] == "allow")
        .collect();
    assert!(pulls.iter().any(|r| r.to_string().contains(&digest)), "{audit:#}");
}

#[tokio::test]
async fn credentials_come_from_a_secret_of_the_namespace() {
    let registry = Registry::start(Some(("puller", "right-horse-battery")));
    let work = common::tempdir();
    let (digest, _) = push_tools(&registry, work.path());
    let w = World::start();
    let source = registry.source("tools/busybox:1");
    w.secret("reg-right", "puller:right-horse-battery").await;
    w.secret("reg-json", r#"{"username": "puller", "password": "right-horse-battery"}"#).await;
    w.secret("reg-wrong", "puller:wrong-staple").await;
    w.secret("reg-garbled", "no-colon-at-all").await;

    // No credentials, wrong ones: refused by the registry, nothing recorded or left behind.
    refused(
        &w.pull(json!({"name": "tools", "source": source})).await,
        400,
        "invalid_request",
        "refused the credentials",
    );
    let got = w.pull(json!({"name": "tools", "source": source, "credentials": {"secret": "reg-wrong"}})).await;
    refused(&got, 400, "invalid_request", "refused the credentials");
    assert!(!got.1.to_string().contains("wrong-staple"), "the password is never echoed: {}", got.1);
    let got = w.pull(json!({"name": "tools", "source": source, "credentials": {"secret": "reg-garbled"}})).await;
    refused(&got, 400, "invalid_request", "reg-garbled");
    assert!(!got.1.to_string().contains("no-colon-at-all"), "{}", got.1);
    refused(
        &w.pull(json!({"name": "tools", "source": source, "credentials": {"secret": "reg-none"}})).await,
        404,
        "not_found",
        "reg-none",
    );
    refused(
        &w.pull(json!({"name": "tools", "source": source, "credentials": {"secret": "reg-right", "user": "x"}})).await,
        400,
        "invalid_request",
        "user",
    );
    assert_eq!(w.image_names().await, ["default"]);
    assert_eq!(w.leftovers(), (vec![], vec![]), "nothing unpacked, nothing spooled");

    // The right ones, either form.
    let (status, image) =
        w.pull(json!({"name": "tools", "source": source, "credentials": {"secret": "reg-right"}})).await;
    assert_eq!(status, 201, "{image}");
    assert_eq!(image["digest"], digest.as_str());
    let (status, image) =
        w.pull(json!({"name": "tools2", "source": source, "credentials": {"secret": "reg-json"}})).await;
    assert_eq!(status, 201, "{image}");

    // Another tenant cannot use the namespace's secret: its own has none of that name.
    let got = w
        .post(
            &format!("/v1/namespaces/{OTHER}/images"),
            &w.other,
            json!({"name": "stolen", "source": source, "credentials": {"secret": "reg-right"}}),
        )
        .await;
    refused(&got, 404, "not_found", "reg-right");

    // The CLI: one request, the image printed.
    let pulled =
        w.server.json(Some(&w.dev), &["image", "pull", "cli-tools", &source, "--secret", "reg-right", "--ns", NS]);
    assert_eq!((pulled["name"].as_str(), pulled["digest"].as_str()), (Some("cli-tools"), Some(digest.as_str())));
    let failed =
        w.server.fails(Some(&w.dev), &["image", "pull", "cli-bad", &source, "--secret", "reg-wrong", "--ns", NS]);
    assert!(failed.contains("refused the credentials"), "{failed}");
    assert!(!failed.contains("wrong-staple"), "{failed}");
    // The audit names the secret, never its value.
    let audit = w.server.json(None, &["audit", "--ns", NS]).to_string();
    assert!(audit.contains("reg-right"), "{audit}");
    assert!(!audit.contains("right-horse-battery") && !audit.contains("wrong-staple"), "{audit}");
    let mut names = w.image_names().await;
    names.sort();
    assert_eq!(names, ["cli-tools", "default", "tools", "tools2"]);
}

#[tokio::test]
async fn a_tampered_blob_is_refused_and_nothing_is_kept() {
    let registry = Registry::start(None);
    let work = common::tempdir();
    let (_, layer) = push_tools(&registry, work.path());
    // Flip a byte of the layer blob in the registry's own storage (distribution's filesystem
    // driver keeps it at blobs/sha256/<2 hex>/<hex>/data and serves it as it is).
    let hex = layer.trim_start_matches("sha256:");
    let data = registry.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data");
    let mut bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();

    let w = World::start();
    let got = w.pull(json!({"name": "tools", "source": registry.source("tools/busybox:1")})).await;
    refused(&got, 400, "invalid_request", "does not match its digest");
    assert!(error(&got.1).1.contains(hex), "the message names the blob: {}", got.1);
    assert_eq!(w.image_names().await, ["default"]);
    refused(&w.get(&format!("/v1/namespaces/{NS}/images/tools"), &w.dev).await, 404, "not_found", "tools");
    assert_eq!(w.leftovers(), (vec![], vec![]), "no layer in the namespace's store, nothing spooled");
}

#[tokio::test]
async fn destinations_the_outbound_rule_refuses_are_refused_before_any_connection() {
    let w = World::start();
    // Documentation, metadata and private addresses are outside --outbound-allow 127.0.0.0/8:
    // refused by the address check, before any packet is sent.
    for (source, says) in [
        ("192.0.2.55:5000/tools/busybox:1", "192.0.2.55 is a documentation address"),
        ("169.254.169.254/latest/meta-data:1", "169.254.169.254 is a cloud metadata address"),
        ("10.11.12.13:5000/tools/busybox:1", "10.11.12.13 is a private address"),
    ] {
        let got = w.pull(json!({"name": "tools", "source": source})).await;
        refused(&got, 400, "invalid_request", says);
        assert!(error(&got.1).1.contains("outbound rule"), "{}", got.1);
    }
    // The admin's public pulls follow the same rule.
    let got =
        w.post("/v1/images", &w.admin, json!({"name": "base", "source": "192.0.2.55:5000/tools/busybox:1"})).await;
    refused(&got, 400, "invalid_request", "192.0.2.55 is a documentation address");
    // A loopback registry no one listens on: the rule lets it through, the connection fails,
    // and that is the source's fault, not the server's.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let got = w.pull(json!({"name": "tools", "source": format!("127.0.0.1:{port}/tools/busybox:1")})).await;
    refused(&got, 400, "invalid_request", &format!("registry 127.0.0.1:{port} failed"));
    assert_eq!(w.image_names().await, ["default"]);
    assert_eq!(w.leftovers(), (vec![], vec![]));
}

/// A registry in front of `backend` (a real one) that sends the pull elsewhere: `redirect`
/// answers every blob download with a 307 to `target`, `token` answers everything with a bearer
/// challenge whose token endpoint is `target`. Prints its port; killed on drop.
struct Front(std::process::Child, u16);

const FRONT: &str = r#"
import sys, http.server, urllib.request, urllib.error
mode, backend, target = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def answer(self, with_body):
        if mode == "token":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="%s/token",service="registry"' % target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "redirect" and "/blobs/" in self.path:
            self.send_response(307)
            self.send_header("Location", target + "/storage" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization")}
        req = urllib.request.Request(backend + self.path, headers=headers, method=self.command)
        try:
            with urllib.request.urlopen(req) as r:
                status, body, got = r.status, r.read(), r.getheaders()
        except urllib.error.HTTPError as e:
            status, body, got = e.code, e.read(), list(e.headers.items())
        self.send_response(status)
        for k, v in got:
            if k.lower() in ("content-type", "docker-content-digest", "www-authenticate"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)
    def do_GET(self):
        self.answer(True)
    def do_HEAD(self):
        self.answer(False)
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl Front {
    fn start(mode: &str, backend: &str, target: &str) -> Front {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-c", FRONT, mode, backend, target])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Front(child, line.trim().parse().unwrap())
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redirects_and_token_endpoints_a_registry_names_are_held_to_the_outbound_rule() {
    let registry = Registry::start(None);
    let work = common::tempdir();
    push_tools(&registry, work.path());
    // The server may reach 127.0.0.1 (the registry) but not 127.0.0.2, where a listener records
    // every connection that reaches it.
    let w = World::start_allowing("127.0.0.1/32");
    let elsewhere = common::Listener::bind("127.0.0.2:0".parse().unwrap());
    let backend = format!("http://{}", registry.host());
    for (mode, target) in [
        ("redirect", format!("https://{}", elsewhere.addr)),
        ("redirect", format!("http://{}", elsewhere.addr)),
        ("token", format!("https://{}", elsewhere.addr)),
    ] {
        let front = Front::start(mode, &backend, &target);
        let got = w.pull(json!({"name": "tools", "source": format!("127.0.0.1:{}/tools/busybox:1", front.1)})).await;
        let (code, message) = error(&got.1);
        assert_eq!((got.0, code), (400, "invalid_request"), "{mode} to {target}: {}", got.1);
        assert!(
            message.contains("127.0.0.2") && (message.contains("outbound rule") || message.contains("plain http")),
            "{mode} to {target}: {message}"
        );
        assert!(elsewhere.peers().is_empty(), "{mode} to {target}: the pull connected to {:?}", elsewhere.peers());
    }
    // Through the same front, with nothing sent elsewhere, the pull works: the proxy is no wall.
    let front = Front::start("pass", &backend, "unused");
    let got = w.pull(json!({"name": "tools", "source": format!("127.0.0.1:{}/tools/busybox:1", front.1)})).await;
    assert_eq!(got.0, 201, "{}", got.1);
    // Listed by id, which is random: compared as a set.
    let mut names = w.image_names().await;
    names.sort();
    assert_eq!(names, ["default", "tools"]);
    assert_eq!(w.leftovers().1, Vec::<String>::new(), "nothing spooled");
}
