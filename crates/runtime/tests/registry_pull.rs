//! Registry pulls against a real registry: Debian's `docker-registry` (the CNCF distribution
//! server) started on a free loopback port, filled by `skopeo copy` from OCI layouts built here.
//! Needs the Debian packages `docker-registry`, `skopeo` and `apache2-utils` (`htpasswd`).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use bulkhead_runtime::image::registry::{self, PullError, PullProgress, PullRequest, PulledImage};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(found, "`{program}` is missing: install the Debian package `{package}` (apt-get install -y {package})");
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A `docker-registry` on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    creds: Option<(String, String)>,
}

impl Registry {
    fn start(creds: Option<(&str, &str)>) -> Registry {
        require("docker-registry", "docker-registry");
        require("skopeo", "skopeo");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = creds {
            require("htpasswd", "apache2-utils");
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd runs");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry { child, port, dir, creds: creds.map(|(u, p)| (u.to_owned(), p.to_owned())) };
        // Ready once it accepts connections; it exiting first (or never listening, on a
        // machine far slower than any seen) is a failure with its log.
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = registry.child.try_wait().expect("wait registry") {
                panic!("docker-registry exited ({status}): {}", registry.log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "docker-registry does not listen on {port}: {}",
                registry.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the OCI layout `layout` (tag `latest`) as `<repo>:<tag>`; `all` pushes every
    /// manifest of an index.
    fn push(&self, layout: &Path, repo: &str, tag: &str, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some((user, password)) = &self.creds {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        cmd.arg(format!("oci:{}:latest", layout.display()));
        cmd.arg(format!("docker://{}/{repo}:{tag}", self.host()));
        let out = cmd.output().expect("skopeo runs");
        assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The digest the registry gives `<repo>:<tag>`'s manifest.
    fn digest(&self, repo: &str, tag: &str) -> String {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "inspect", "--tls-verify=false", "--raw"])
            .args(self.creds.as_ref().map(|(u, p)| format!("--creds={u}:{p}")))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .expect("skopeo runs");
        assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
        format!("sha256:{}", sha256_hex(&out.stdout))
    }

    /// The file in the registry's storage holding blob `digest`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    fn request(&self, reference: &str) -> PullRequest {
        PullRequest {
            reference: format!("{}/{reference}", self.host()),
            credentials: self.creds.clone(),
            insecure: true,
            max_bytes: 1 << 30,
            proxy: None,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A built image: its layout directory and the digests in it.
struct Image {
    layout: tempfile::TempDir,
    manifest: String,
    layers: Vec<String>,
    config: String,
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("blob dir");
    std::fs::write(dir.join(&hex), bytes).expect("write blob");
    format!("sha256:{hex}")
}

/// A tar of `files` (path → content).
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *content).expect("tar entry");
    }
    builder.into_inner().expect("tar")
}

fn gzip(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Writes a manifest (and its config) for `arch` with `layers` (tars, gzipped at `level`;
/// `Compression::none()` keeps large layers quick to build) into `layout`; returns (manifest
/// digest, size, layer digests, config digest).
fn write_manifest(
    layout: &Path,
    arch: &str,
    layers: &[Vec<u8>],
    level: flate2::Compression,
) -> (String, usize, Vec<String>, String) {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256_hex(l))).collect();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"], "WorkingDir": "/srv" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let config_digest = write_blob(layout, config.as_bytes());
    let mut descriptors = Vec::new();
    let mut layer_digests = Vec::new();
    for layer in layers {
        let (bytes, media_type) = (gzip(layer, level), "application/vnd.oci.image.layer.v1.tar+gzip");
        let digest = write_blob(layout, &bytes);
        descriptors.push(serde_json::json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() }));
        layer_digests.push(digest);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": descriptors,
    })
    .to_string();
    (write_blob(layout, manifest.as_bytes()), manifest.len(), layer_digests, config_digest)
}

fn write_index(layout: &Path, media_type: &str, digest: &str, size: usize) {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type, "digest": digest, "size": size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
}

/// A small single-platform image: two gzip layers with a couple of files.
fn small_image() -> Image {
    let layout = tempfile::tempdir().expect("temp dir");
    let layers = vec![
        tar_of(&[("etc/hostname", b"sandbox\n"), ("srv/hello.txt", b"hello from a layer\n")]),
        tar_of(&[("srv/second.txt", &[7u8; 100_000])]),
    ];
    let (manifest, size, layers, config) = write_manifest(layout.path(), "amd64", &layers, flate2::Compression::fast());
    write_index(layout.path(), "application/vnd.oci.image.manifest.v1+json", &manifest, size);
    Image { layout, manifest, layers, config }
}

/// Checks `dest` is a complete layout of `manifest`: every blob's name is its sha256, nothing
/// partial is left, and `skopeo inspect` reads it.
fn assert_layout(pulled: &PulledImage, dest: &Path, manifest: &str, blobs: &[&str]) {
    assert_eq!(pulled.manifest_digest, manifest);
    assert_eq!(pulled.layout_dir, dest);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).expect("index.json")).expect("index json");
    assert_eq!(index["manifests"][0]["digest"], manifest);
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
    assert!(dest.join("oci-layout").is_file());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dest.join("blobs/sha256")).expect("blobs") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".partial"), "left over: {name}");
        assert_eq!(sha256_hex(&std::fs::read(entry.path()).expect("blob")), name, "blob {name} does not verify");
        names.push(format!("sha256:{name}"));
    }
    for blob in blobs.iter().chain([&manifest]) {
        assert!(names.iter().any(|n| n == blob), "missing blob {blob}");
    }
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "inspect"])
        .arg(format!("oci:{}", dest.display()))
        .output()
        .expect("skopeo runs");
    assert!(out.status.success(), "skopeo inspect oci: {}", String::from_utf8_lossy(&out.stderr));
}

/// Records every progress report.
#[derive(Default)]
struct Progress(Mutex<Vec<PullProgress>>);

impl Progress {
    fn of(&self, digest: &str) -> Vec<PullProgress> {
        self.0.lock().expect("progress").iter().filter(|p| p.layer_digest == digest).cloned().collect()
    }
}

async fn pull(req: &PullRequest, dest: &Path) -> (Result<PulledImage, PullError>, Progress) {
    let progress = Progress::default();
    let result = registry::pull(req, dest, &|p| progress.0.lock().expect("progress").push(p)).await;
    (result, progress)
}

#[tokio::test]
async fn pulls_by_tag_and_by_digest() {
    let registry = Registry::start(None);
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);
    let pushed = registry.digest("test/img", "latest");
    assert_eq!(pushed, image.manifest, "skopeo kept the manifest as built");
    let blobs: Vec<&str> = image.layers.iter().map(String::as_str).chain([image.config.as_str()]).collect();

    let dest = tempfile::tempdir().expect("temp dir");
    let (pulled, progress) = pull(&registry.request("test/img:latest"), dest.path()).await;
    let pulled = pulled.expect("pull by tag");
    assert_layout(&pulled, dest.path(), &image.manifest, &blobs);
    for blob in &image.layers {
        let reports = progress.of(blob);
        let last = reports.last().expect("progress reported");
        assert_eq!(last.bytes_done, last.bytes_total, "{blob} reported whole");
    }

    let dest = tempfile::tempdir().expect("temp dir");
    let (pulled, _) = pull(&registry.request(&format!("test/img@{}", image.manifest)), dest.path()).await;
    assert_layout(&pulled.expect("pull by digest"), dest.path(), &image.manifest, &blobs);

    // A digest the registry does not have.
    let other = format!("sha256:{}", sha256_hex(b"no such manifest"));
    let (result, _) =
        pull(&registry.request(&format!("test/img@{other}")), tempfile::tempdir().expect("tmp").path()).await;
    assert!(matches!(result, Err(PullError::NotFound(_))), "{result:?}");
}

#[tokio::test]
async fn a_multi_platform_index_resolves_to_linux_amd64() {
    let registry = Registry::start(None);
    let layout = tempfile::tempdir().expect("temp dir");
    let (arm, arm_size, _, _) =
        write_manifest(layout.path(), "arm64", &[tar_of(&[("arch", b"arm64\n")])], flate2::Compression::fast());
    let (amd, amd_size, amd_layers, amd_config) =
        write_manifest(layout.path(), "amd64", &[tar_of(&[("arch", b"amd64\n")])], flate2::Compression::fast());
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": { "architecture": arch, "os": "linux" },
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&arm, arm_size, "arm64"), entry(&amd, amd_size, "amd64")],
    })
    .to_string();
    let index_digest = write_blob(layout.path(), index.as_bytes());
    write_index(layout.path(), "application/vnd.oci.image.index.v1+json", &index_digest, index.len());
    registry.push(layout.path(), "multi/img", "latest", true);

    let blobs: Vec<&str> = amd_layers.iter().map(String::as_str).chain([amd_config.as_str()]).collect();
    for reference in ["multi/img:latest".to_owned(), format!("multi/img@{index_digest}")] {
        let dest = tempfile::tempdir().expect("temp dir");
        let (pulled, _) = pull(&registry.request(&reference), dest.path()).await;
        assert_layout(&pulled.expect("pull an index"), dest.path(), &amd, &blobs);
    }
}

#[tokio::test]
async fn basic_auth() {
    let registry = Registry::start(Some(("alice", "s3cret pass")));
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);
    let blobs: Vec<&str> = image.layers.iter().map(String::as_str).chain([image.config.as_str()]).collect();

    let dest = tempfile::tempdir().expect("temp dir");
    let (pulled, _) = pull(&registry.request("test/img:latest"), dest.path()).await;
    assert_layout(&pulled.expect("pull with credentials"), dest.path(), &image.manifest, &blobs);

    let mut wrong = registry.request("test/img:latest");
    wrong.credentials = Some(("alice".into(), "wrong".into()));
    let dest = tempfile::tempdir().expect("temp dir");
    let (result, _) = pull(&wrong, dest.path()).await;
    assert!(matches!(result, Err(PullError::Unauthorized(_))), "{result:?}");
    assert!(!dest.path().join("index.json").exists());

    let mut none = registry.request("test/img:latest");
    none.credentials = None;
    let (result, _) = pull(&none, dest.path()).await;
    assert!(matches!(result, Err(PullError::Unauthorized(_))), "{result:?}");
}

#[tokio::test]
async fn missing_repository_or_tag_is_not_found() {
    let registry = Registry::start(None);
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);
    for reference in ["nope/nothing:latest", "test/img:no-such-tag"] {
        let dest = tempfile::tempdir().expect("temp dir");
        let (result, _) = pull(&registry.request(reference), dest.path()).await;
        assert!(matches!(result, Err(PullError::NotFound(_))), "{reference}: {result:?}");
        assert!(!dest.path().join("index.json").exists());
    }
}

#[tokio::test]
async fn a_tampered_blob_is_refused_and_not_kept() {
    let registry = Registry::start(None);
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);
    let layer = &image.layers[1];
    let file = registry.blob_file(layer);
    let mut bytes = std::fs::read(&file).expect("registry's blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).expect("tamper");

    // The destination holds an earlier, complete pull of another image: its index must not
    // make the failed pull look finished.
    let other = tempfile::tempdir().expect("temp dir");
    let (other_manifest, size, _, _) =
        write_manifest(other.path(), "amd64", &[tar_of(&[("other", b"other\n")])], flate2::Compression::fast());
    write_index(other.path(), "application/vnd.oci.image.manifest.v1+json", &other_manifest, size);
    registry.push(other.path(), "test/other", "latest", false);
    let dest = tempfile::tempdir().expect("temp dir");
    let (pulled, _) = pull(&registry.request("test/other:latest"), dest.path()).await;
    assert_eq!(pulled.expect("pull the other image").manifest_digest, other_manifest);

    let (result, _) = pull(&registry.request("test/img:latest"), dest.path()).await;
    match result {
        Err(PullError::DigestMismatch { expected, actual, .. }) => {
            assert_eq!(&expected, layer);
            assert_eq!(actual, format!("sha256:{}", sha256_hex(&bytes)));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    let hex = layer.trim_start_matches("sha256:");
    let blob_dir = dest.path().join("blobs/sha256");
    assert!(!blob_dir.join(hex).exists(), "the tampered blob was kept");
    assert!(!blob_dir.join(format!("{hex}.partial")).exists(), "the tampered blob's partial was kept");
    assert!(!dest.path().join("index.json").exists());
}

#[tokio::test]
async fn a_blob_longer_than_declared_is_cut_and_refused() {
    let registry = Registry::start(None);
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);
    let layer = &image.layers[0];
    let mut file = std::fs::OpenOptions::new().append(true).open(registry.blob_file(layer)).expect("registry's blob");
    file.write_all(&[0u8; 4096]).expect("lengthen");
    drop(file);

    let dest = tempfile::tempdir().expect("temp dir");
    let (result, _) = pull(&registry.request("test/img:latest"), dest.path()).await;
    assert!(matches!(result, Err(PullError::TooLarge(_))), "{result:?}");
    let hex = layer.trim_start_matches("sha256:");
    let blob_dir = dest.path().join("blobs/sha256");
    assert!(!blob_dir.join(hex).exists());
    assert!(!blob_dir.join(format!("{hex}.partial")).exists());
    assert!(!dest.path().join("index.json").exists());
}

#[tokio::test]
async fn a_tampered_manifest_is_refused() {
    let registry = Registry::start(None);
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);
    // Still a valid manifest, with one digit of the config's size changed.
    let file = registry.blob_file(&image.manifest);
    let text = std::fs::read_to_string(&file).expect("registry's manifest");
    let at = text.find(r#""size":"#).expect("a size") + r#""size":"#.len();
    let digit = text.as_bytes()[at];
    let swapped = if digit == b'9' { '0' } else { char::from(digit + 1) };
    let tampered = format!("{}{swapped}{}", &text[..at], &text[at + 1..]);
    std::fs::write(&file, &tampered).expect("tamper");

    for reference in ["test/img:latest".to_owned(), format!("test/img@{}", image.manifest)] {
        let dest = tempfile::tempdir().expect("temp dir");
        let (result, _) = pull(&registry.request(&reference), dest.path()).await;
        match result {
            Err(PullError::DigestMismatch { what, expected, actual }) => {
                assert_eq!(what, "the manifest");
                assert_eq!(expected, image.manifest);
                assert_eq!(actual, format!("sha256:{}", sha256_hex(tampered.as_bytes())));
            }
            other => panic!("{reference}: expected a digest mismatch, got {other:?}"),
        }
        assert!(!dest.path().join("index.json").exists());
        assert!(!dest.path().join("blobs").exists(), "nothing written");
    }
}

#[tokio::test]
async fn a_cut_pull_resumes_and_ends_verified() {
    let registry = Registry::start(None);
    let layout = tempfile::tempdir().expect("temp dir");
    // Layers large enough to be cut in the middle.
    let big: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    let layers = vec![tar_of(&[("data/big", &big)]), tar_of(&[("data/other", &big[..MIB as usize])])];
    let (manifest, size, layer_digests, config) =
        write_manifest(layout.path(), "amd64", &layers, flate2::Compression::none());
    write_index(layout.path(), "application/vnd.oci.image.manifest.v1+json", &manifest, size);
    registry.push(layout.path(), "test/big", "latest", false);
    let blobs: Vec<&str> = layer_digests.iter().map(String::as_str).chain([config.as_str()]).collect();

    let dest = tempfile::tempdir().expect("temp dir");
    let (pulled, _) = pull(&registry.request("test/big:latest"), dest.path()).await;
    assert_layout(&pulled.expect("first pull"), dest.path(), &manifest, &blobs);

    // Cut it: the first layer becomes a prefix of itself, the second a garbage partial, the
    // config's blob a corrupt whole file; no index.
    let blob_dir = dest.path().join("blobs/sha256");
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let first = blob_dir.join(hex(&layer_digests[0]));
    let first_bytes = std::fs::read(&first).expect("first layer");
    let cut = first_bytes.len() as u64 / 2;
    std::fs::write(blob_dir.join(format!("{}.partial", hex(&layer_digests[0]))), &first_bytes[..cut as usize])
        .expect("cut");
    std::fs::remove_file(&first).expect("remove first");
    let second = blob_dir.join(hex(&layer_digests[1]));
    std::fs::remove_file(&second).expect("remove second");
    std::fs::write(blob_dir.join(format!("{}.partial", hex(&layer_digests[1]))), vec![0xAB; 4096]).expect("garbage");
    std::fs::write(blob_dir.join(hex(&config)), b"{}").expect("corrupt config");
    std::fs::remove_file(dest.path().join("index.json")).expect("remove index");

    let (pulled, progress) = pull(&registry.request("test/big:latest"), dest.path()).await;
    assert_layout(&pulled.expect("resumed pull"), dest.path(), &manifest, &blobs);
    // The cut layer resumed where it stopped (a range request), not from zero.
    let reports = progress.of(&layer_digests[0]);
    assert_eq!(reports.first().map(|p| p.bytes_done), Some(cut), "{reports:?}");
    assert!(reports.iter().all(|p| p.bytes_done >= cut), "{reports:?}");
    // The garbage partial was tried, refused, and fetched whole.
    let reports = progress.of(&layer_digests[1]);
    assert_eq!(reports.first().map(|p| p.bytes_done), Some(4096), "{reports:?}");
    assert!(reports.iter().any(|p| p.bytes_done == 0), "{reports:?}");

    // A complete layout is not fetched again: every blob reports whole at once.
    let (pulled, progress) = pull(&registry.request("test/big:latest"), dest.path()).await;
    assert_layout(&pulled.expect("pull again"), dest.path(), &manifest, &blobs);
    for blob in &blobs {
        let reports = progress.of(blob);
        assert_eq!(reports.len(), 1, "{blob}: {reports:?}");
        assert_eq!(reports[0].bytes_done, reports[0].bytes_total);
    }
}

#[tokio::test]
async fn limits_and_rules() {
    let registry = Registry::start(None);
    let image = small_image();
    registry.push(image.layout.path(), "test/img", "latest", false);

    // Too small a budget: refused before any blob is fetched.
    let mut small = registry.request("test/img:latest");
    small.max_bytes = 1000;
    let dest = tempfile::tempdir().expect("temp dir");
    let (result, progress) = pull(&small, dest.path()).await;
    assert!(matches!(result, Err(PullError::TooLarge(_))), "{result:?}");
    assert!(progress.0.lock().expect("progress").is_empty());
    assert!(!dest.path().join("index.json").exists());

    // https unless insecure: this registry speaks plain http.
    let mut secure = registry.request("test/img:latest");
    secure.insecure = false;
    let (result, _) = pull(&secure, dest.path()).await;
    assert!(matches!(result, Err(PullError::Registry(_))), "{result:?}");

    let sha512 = format!("127.0.0.1:1/a@sha512:{}", "a".repeat(128));
    let upper = format!("127.0.0.1:1/a@sha256:{}", "A".repeat(64));
    for bad in ["", "127.0.0.1:1/a:b:c", "127.0.0.1:1/a b", "a@sha256:xyz", &sha512, &upper] {
        let mut req = registry.request("x");
        req.reference = bad.to_owned();
        let (result, _) = pull(&req, dest.path()).await;
        assert!(matches!(result, Err(PullError::Invalid(_))), "{bad:?}: {result:?}");
    }
    assert!(registry::is_loopback_registry(&registry.request("test/img:latest").reference));
}
