//! Images for the tests: the platform's default image (built by `scripts/build-default-image`)
//! and small images built here, in Rust, entry by entry: [`Layer`]s of files, directories,
//! links, OCI whiteouts and raw (hostile) tar records, wrapped by [`OciLayoutBuilder`] into an
//! OCI image layout (a directory or one tar, OCI image spec v1.0 `image-layout.md`) or a
//! `docker save` archive. [`busybox_image`] is a runnable one: Debian's static busybox with a
//! shell and the usual tools, `root` and `agent` (1000:1000) users.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// Where the default image is when `BULKHEAD_TEST_DEFAULT_IMAGE` does not say.
pub const DEFAULT_IMAGE_CACHE: &str = "/var/tmp/bulkhead-images/default.tar";

/// The default image's OCI layout tar: `$BULKHEAD_TEST_DEFAULT_IMAGE` (CI sets it), else
/// [`DEFAULT_IMAGE_CACHE`]. Panics, naming the script that builds it, when it is missing: the
/// image tests need it and are never skipped.
pub fn default_image() -> PathBuf {
    let path = std::env::var_os("BULKHEAD_TEST_DEFAULT_IMAGE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_CACHE));
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() > 0 => path,
        _ => panic!(
            "the default image {} is missing: build it with `scripts/build-default-image` (as root; \
             it prints the path), or point BULKHEAD_TEST_DEFAULT_IMAGE at one",
            path.display()
        ),
    }
}

/// The default image as an OCI layout directory beside its tar (`<tar without .tar>.oci/`),
/// extracted once for the whole suite (under a lock, renamed into place whole): test servers
/// take `--default-image` as a directory, so a start reads the image's index, manifest and
/// config, not 200 MB of archive.
pub fn default_image_layout() -> PathBuf {
    // Named after the image's own file (the cache names it by its build's key), not the link
    // to the latest: a rebuilt image gets a layout of its own.
    let tar = std::fs::canonicalize(default_image()).expect("the default image's path");
    let dir = tar.with_extension("oci");
    if dir.join("index.json").is_file() {
        return dir;
    }
    let lock = std::fs::File::create(tar.with_extension("oci.lock")).expect("lock file");
    let locked = std::process::Command::new("flock")
        .arg("--exclusive")
        .arg(tar.with_extension("oci.lock"))
        .arg("sh")
        .arg("-c")
        .arg(r#"[ -f "$2/index.json" ] && exit 0; rm -rf "$2.tmp" && mkdir -p "$2.tmp" && tar -xf "$1" -C "$2.tmp" && mv "$2.tmp" "$2""#)
        .arg("extract")
        .arg(&tar)
        .arg(&dir)
        .status()
        .expect("run flock");
    drop(lock);
    assert!(
        locked.success() && dir.join("index.json").is_file(),
        "could not extract {} into {}",
        tar.display(),
        dir.display()
    );
    dir
}

/// Where test servers keep public images' layers: one store for the whole suite, so the default
/// image is unpacked once (a cache beside the image, like the build's target dir, named after
/// it: `scripts/build-default-image` removes it with its image).
pub fn shared_public_layers() -> PathBuf {
    std::fs::canonicalize(default_image()).expect("the default image's path").with_extension("layers")
}

/// The default image for test servers: its layout directory ([`default_image_layout`]) and
/// the suite's public layer store ([`shared_public_layers`]), into which the image is unpacked
/// here once (under a lock) before the first server starts, so that no server's start waits
/// for it.
pub fn default_image_prepared() -> (PathBuf, PathBuf) {
    static READY: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let layout = default_image_layout();
            let layers = shared_public_layers();
            std::fs::create_dir_all(&layers).expect("the public layer store");
            let lock = std::fs::File::create(layers.with_extension("lock")).expect("the layer store's lock");
            lock.lock().expect("lock the layer store");
            let store = bulkhead_runtime::image::LayerStore::open(&layers).expect("open the public layer store");
            let options =
                bulkhead_runtime::image::UnpackOptions { allow_setuid: true, max_bytes: 8 << 30, max_entries: 1 << 22 };
            store.import(&bulkhead_runtime::image::ImportSource::LayoutDir(layout.clone()), &options).unwrap_or_else(
                |e| panic!("import the default image {} into {}: {e}", layout.display(), layers.display()),
            );
            drop(lock);
            (layout, layers)
        })
        .clone()
}

/// `bulkhead serve`'s arguments that give a test server the default image (see
/// [`default_image_prepared`]).
pub fn default_image_args() -> Vec<String> {
    let (layout, layers) = default_image_prepared();
    vec!["--default-image".into(), layout.display().to_string(), "--public-layers".into(), layers.display().to_string()]
}

/// `sha256:<hex>` of `bytes`: an OCI digest.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The mtime of every entry the builders write (fixed, so the same image gives the same bytes).
pub const MTIME: u64 = 1_700_000_000;

/// One tar record as it goes into a layer, byte for byte: the name and link name are written
/// as given (no normalisation, no checks; longer than 100 bytes they go in a GNU long-name
/// record before it), `pax` records (key, value) in a PAX extended header before it.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: Vec<u8>,
    /// The tar type flag: `b'0'` file, `b'1'` hard link, `b'2'` symlink, `b'3'` character
    /// device, `b'4'` block device, `b'5'` directory, `b'6'` FIFO, or anything else.
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    /// Device major and minor numbers (devices only).
    pub device: (u32, u32),
    pub pax: Vec<(String, Vec<u8>)>,
    /// The size the header claims; `None` is `data.len()` (a lie here makes a truncated or
    /// overlong record).
    pub claimed_size: Option<u64>,
}

impl RawEntry {
    fn new(name: &[u8], typeflag: u8, mode: u32) -> RawEntry {
        RawEntry {
            name: name.to_vec(),
            typeflag,
            mode,
            uid: 0,
            gid: 0,
            link: Vec::new(),
            data: Vec::new(),
            device: (0, 0),
            pax: Vec::new(),
            claimed_size: None,
        }
    }

    /// A regular file (mode 0644) named exactly `name`, e.g. `b"../x"` or `b"/etc/x"`.
    pub fn file(name: &[u8], data: &[u8]) -> RawEntry {
        RawEntry { data: data.to_vec(), ..RawEntry::new(name, b'0', 0o644) }
    }

    /// A directory (mode 0755) named exactly `name`.
    pub fn dir(name: &[u8]) -> RawEntry {
        RawEntry::new(name, b'5', 0o755)
    }

    /// A symbolic link `name` → `target`, both verbatim.
    pub fn symlink(name: &[u8], target: &[u8]) -> RawEntry {
        RawEntry { link: target.to_vec(), ..RawEntry::new(name, b'2', 0o777) }
    }

    /// A hard link `name` → `target` (a name in the archive), both verbatim.
    pub fn hardlink(name: &[u8], target: &[u8]) -> RawEntry {
        RawEntry { link: target.to_vec(), ..RawEntry::new(name, b'1', 0o644) }
    }

    /// A character device node.
    pub fn char_device(name: &[u8], major: u32, minor: u32) -> RawEntry {
        RawEntry { device: (major, minor), ..RawEntry::new(name, b'3', 0o666) }
    }

    /// A block device node.
    pub fn block_device(name: &[u8], major: u32, minor: u32) -> RawEntry {
        RawEntry { device: (major, minor), ..RawEntry::new(name, b'4', 0o660) }
    }

    /// A FIFO.
    pub fn fifo(name: &[u8]) -> RawEntry {
        RawEntry::new(name, b'6', 0o644)
    }

    /// The same entry with this mode (permission and setuid/setgid/sticky bits).
    pub fn mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }

    /// The same entry owned by `uid:gid`.
    pub fn owner(mut self, uid: u64, gid: u64) -> RawEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The same entry with a PAX record (e.g. `("path", b"../y")`, `("SCHILY.xattr.user.k", v)`).
    pub fn pax(mut self, key: &str, value: &[u8]) -> RawEntry {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }

    /// The same entry with a header that claims `size` bytes whatever its data is.
    pub fn claimed_size(mut self, size: u64) -> RawEntry {
        self.claimed_size = Some(size);
        self
    }
}

/// Appends one record (`header` with `name`, then `data` padded to 512 bytes).
fn record(out: &mut Vec<u8>, typeflag: u8, name: &[u8], data: &[u8]) {
    let entry = RawEntry { data: data.to_vec(), ..RawEntry::new(name, typeflag, 0o644) };
    header(out, &entry, name, &[]);
    pad_data(out, data);
}

fn pad_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % 512;
    if rem != 0 {
        out.extend(std::iter::repeat_n(0u8, 512 - rem));
    }
}

/// Writes `entry`'s header with `name` and `link` in the fixed fields (truncated to 100 bytes).
fn header(out: &mut Vec<u8>, entry: &RawEntry, name: &[u8], link: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        old.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_mode(entry.mode);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    h.set_mtime(MTIME);
    h.set_size(entry.claimed_size.unwrap_or(entry.data.len() as u64));
    h.set_entry_type(tar::EntryType::new(entry.typeflag));
    if matches!(entry.typeflag, b'3' | b'4') {
        let _ = h.set_device_major(entry.device.0);
        let _ = h.set_device_minor(entry.device.1);
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

fn append_raw(out: &mut Vec<u8>, entry: &RawEntry) {
    if !entry.pax.is_empty() {
        let mut body = Vec::new();
        for (key, value) in &entry.pax {
            // "<len> <key>=<value>\n", where <len> counts itself.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while rest + len.to_string().len() != len {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        record(out, b'x', b"././@PaxHeader", &body);
    }
    if entry.link.len() > 100 {
        let mut long = entry.link.clone();
        long.push(0);
        record(out, b'K', b"././@LongLink", &long);
    }
    if entry.name.len() > 100 {
        let mut long = entry.name.clone();
        long.push(0);
        record(out, b'L', b"././@LongLink", &long);
    }
    header(out, entry, &entry.name, &entry.link);
    pad_data(out, &entry.data);
}

/// One layer: an uncompressed tar built from entries in the order they are added. Normal
/// entries take absolute or relative paths (a leading `/` is dropped; directories get a
/// trailing `/`), are owned by root unless `_owned`, and carry [`MTIME`]; parents are not
/// added implicitly.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<RawEntry>,
}

fn rel(path: &str) -> Vec<u8> {
    path.trim_start_matches('/').as_bytes().to_vec()
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    /// A regular file owned by root.
    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Layer {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// A regular file owned by `uid:gid`.
    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        self.entries.push(RawEntry::file(&rel(path), data).mode(mode).owner(uid, gid));
        self
    }

    /// A directory owned by root.
    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.dir_owned(path, mode, 0, 0)
    }

    /// A directory owned by `uid:gid`.
    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Layer {
        let mut name = rel(path);
        if !name.ends_with(b"/") {
            name.push(b'/');
        }
        self.entries.push(RawEntry::dir(&name).mode(mode).owner(uid, gid));
        self
    }

    /// A symbolic link `path` → `target` (target verbatim: relative or absolute).
    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        self.entries.push(RawEntry::symlink(&rel(path), target.as_bytes()));
        self
    }

    /// A hard link `path` → `target` (another entry of this layer).
    pub fn hardlink(mut self, path: &str, target: &str) -> Layer {
        self.entries.push(RawEntry::hardlink(&rel(path), &rel(target)));
        self
    }

    /// An OCI whiteout of `path` (removes it from the layers below): `dir/.wh.name`.
    pub fn whiteout(mut self, path: &str) -> Layer {
        let rel = path.trim_start_matches('/').trim_end_matches('/');
        let (dir, name) = match rel.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), rel),
        };
        self.entries.push(RawEntry::file(format!("{dir}.wh.{name}").as_bytes(), b""));
        self
    }

    /// An OCI opaque marker on directory `dir` (hides everything the layers below have in it):
    /// `dir/.wh..wh..opq`.
    pub fn opaque(mut self, dir: &str) -> Layer {
        let rel = dir.trim_start_matches('/').trim_end_matches('/');
        self.entries.push(RawEntry::file(format!("{rel}/.wh..wh..opq").as_bytes(), b""));
        self
    }

    /// Any record, byte for byte (see [`RawEntry`]).
    pub fn raw(mut self, entry: RawEntry) -> Layer {
        self.entries.push(entry);
        self
    }

    /// The layer's tar: its records, then the two zero blocks that end an archive.
    pub fn tar_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in &self.entries {
            append_raw(&mut out, entry);
        }
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

/// How a layer blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar`
    None,
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    Gzip,
}

#[derive(Clone, Debug)]
struct LayerBlob {
    /// The uncompressed tar (its sha256 is the diff id).
    tar: Vec<u8>,
    /// The blob as stored.
    blob: Vec<u8>,
    media_type: &'static str,
}

/// What a written image is made of (digests as `sha256:<hex>`).
#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// The manifest's digest: the image's identity.
    pub manifest_digest: String,
    pub config_digest: String,
    /// The layer blobs' digests, bottom first.
    pub layers: Vec<String>,
    /// The uncompressed layers' digests (`rootfs.diff_ids`), bottom first.
    pub diff_ids: Vec<String>,
}

/// A small OCI image built in memory: layers bottom first and the config's `Env`,
/// `WorkingDir`, `User`, `Entrypoint`, `Cmd`; `linux/amd64` unless told.
#[derive(Clone, Debug)]
pub struct OciLayoutBuilder {
    layers: Vec<LayerBlob>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    architecture: String,
    os: String,
    ref_name: String,
}

impl Default for OciLayoutBuilder {
    fn default() -> Self {
        OciLayoutBuilder::new()
    }
}

/// The pieces of a built image: blobs (digest, bytes) and the index.
struct Built {
    info: ImageInfo,
    blobs: Vec<(String, Vec<u8>)>,
    manifest_descriptor: Value,
    config: Vec<u8>,
}

impl OciLayoutBuilder {
    pub fn new() -> OciLayoutBuilder {
        OciLayoutBuilder {
            layers: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            user: None,
            entrypoint: None,
            cmd: None,
            architecture: "amd64".into(),
            os: "linux".into(),
            ref_name: "latest".into(),
        }
    }

    /// Adds `layer` on top, gzip-compressed.
    pub fn layer(self, layer: &Layer) -> OciLayoutBuilder {
        self.layer_with(layer, Compression::Gzip)
    }

    /// Adds `layer` on top, stored as `compression` says.
    pub fn layer_with(self, layer: &Layer, compression: Compression) -> OciLayoutBuilder {
        self.raw_layer(layer.tar_bytes(), compression)
    }

    /// Adds an uncompressed blob `tar` as a layer (any bytes: a truncated tar, garbage), stored
    /// as `compression` says; its diff id is the sha256 of `tar`.
    pub fn raw_layer(mut self, tar: Vec<u8>, compression: Compression) -> OciLayoutBuilder {
        let (blob, media_type) = match compression {
            Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&tar).expect("gzip in memory");
                (gz.finish().expect("gzip in memory"), "application/vnd.oci.image.layer.v1.tar+gzip")
            }
        };
        self.layers.push(LayerBlob { tar, blob, media_type });
        self
    }

    /// Appends `KEY=value` to the config's `Env`.
    pub fn env(mut self, entry: &str) -> OciLayoutBuilder {
        self.env.push(entry.to_string());
        self
    }

    pub fn working_dir(mut self, dir: &str) -> OciLayoutBuilder {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// The config's `User`: a name, `uid`, `uid:gid` or `name:group`.
    pub fn user(mut self, user: &str) -> OciLayoutBuilder {
        self.user = Some(user.to_string());
        self
    }

    pub fn entrypoint(mut self, argv: &[&str]) -> OciLayoutBuilder {
        self.entrypoint = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn cmd(mut self, argv: &[&str]) -> OciLayoutBuilder {
        self.cmd = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The platform in the config and the index (default `linux/amd64`).
    pub fn platform(mut self, os: &str, architecture: &str) -> OciLayoutBuilder {
        self.os = os.to_string();
        self.architecture = architecture.to_string();
        self
    }

    /// The index's `org.opencontainers.image.ref.name` (default `latest`).
    pub fn ref_name(mut self, name: &str) -> OciLayoutBuilder {
        self.ref_name = name.to_string();
        self
    }

    fn build(&self) -> Built {
        let mut run = serde_json::Map::new();
        run.insert("Env".into(), json!(self.env));
        if let Some(dir) = &self.working_dir {
            run.insert("WorkingDir".into(), json!(dir));
        }
        if let Some(user) = &self.user {
            run.insert("User".into(), json!(user));
        }
        if let Some(argv) = &self.entrypoint {
            run.insert("Entrypoint".into(), json!(argv));
        }
        if let Some(argv) = &self.cmd {
            run.insert("Cmd".into(), json!(argv));
        }
        let diff_ids: Vec<String> = self.layers.iter().map(|l| sha256_digest(&l.tar)).collect();
        let config = serde_json::to_vec(&json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config JSON");
        let config_digest = sha256_digest(&config);
        let layer_descriptors: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": sha256_digest(&l.blob), "size": l.blob.len()}))
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layer_descriptors,
        }))
        .expect("manifest JSON");
        let manifest_digest = sha256_digest(&manifest);
        let manifest_descriptor = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": self.architecture, "os": self.os},
            "annotations": {"org.opencontainers.image.ref.name": self.ref_name},
        });
        let mut blobs = vec![(config_digest.clone(), config.clone()), (manifest_digest.clone(), manifest)];
        for l in &self.layers {
            blobs.push((sha256_digest(&l.blob), l.blob.clone()));
        }
        Built {
            info: ImageInfo {
                manifest_digest,
                config_digest,
                layers: self.layers.iter().map(|l| sha256_digest(&l.blob)).collect(),
                diff_ids,
            },
            blobs,
            manifest_descriptor,
            config,
        }
    }

    /// The layout's files (relative path, bytes) for `images` under one index.
    fn layout_files(images: &[&OciLayoutBuilder]) -> (Vec<(String, Vec<u8>)>, Vec<ImageInfo>) {
        let mut files: Vec<(String, Vec<u8>)> =
            vec![("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())];
        let mut descriptors = Vec::new();
        let mut infos = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut blobs = Vec::new();
        for image in images {
            let built = image.build();
            descriptors.push(built.manifest_descriptor);
            for (digest, bytes) in built.blobs {
                if seen.insert(digest.clone()) {
                    blobs.push((format!("blobs/sha256/{}", &digest["sha256:".len()..]), bytes));
                }
            }
            infos.push(built.info);
        }
        let index = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descriptors,
        }))
        .expect("index JSON");
        files.push(("index.json".into(), index));
        files.extend(blobs);
        (files, infos)
    }

    /// Writes the image as an OCI image layout directory `dir` (created if missing).
    pub fn write_dir(&self, dir: &Path) -> ImageInfo {
        write_layout_dir(dir, &[self]).remove(0)
    }

    /// Writes the image as an OCI image layout in one tar file at `path`.
    pub fn write_tar(&self, path: &Path) -> ImageInfo {
        write_layout_tar(path, &[self]).remove(0)
    }

    /// Writes the image as a `docker save` archive at `path` (`manifest.json` naming
    /// `repo_tag`, the config as `<hex>.json`, each layer uncompressed as `<diff id hex>/layer.tar`).
    pub fn write_docker_save(&self, path: &Path, repo_tag: &str) -> ImageInfo {
        let built = self.build();
        let config_name = format!("{}.json", &built.info.config_digest["sha256:".len()..]);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut layer_names = Vec::new();
        for (layer, diff_id) in self.layers.iter().zip(&built.info.diff_ids) {
            let id = &diff_id["sha256:".len()..];
            files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
            files.push((format!("{id}/json"), serde_json::to_vec(&json!({"id": id})).expect("JSON")));
            files.push((format!("{id}/layer.tar"), layer.tar.clone()));
            layer_names.push(format!("{id}/layer.tar"));
        }
        files.push((config_name.clone(), built.config.clone()));
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_names,
        }]))
        .expect("JSON");
        files.push(("manifest.json".into(), manifest));
        write_tar_file(path, &files);
        built.info
    }
}

/// Writes `images` as one OCI image layout directory whose `index.json` names each image's
/// manifest (with its platform and ref name). Returns their infos, in order.
pub fn write_layout_dir(dir: &Path, images: &[&OciLayoutBuilder]) -> Vec<ImageInfo> {
    let (files, infos) = OciLayoutBuilder::layout_files(images);
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the layout's directories");
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    infos
}

/// Writes a multi-platform image as an OCI image layout directory: `index.json` names one image
/// index (`application/vnd.oci.image.index.v1+json`, a blob) whose manifests are `images`, each
/// with its platform. Returns the image index's digest and the images' infos, in order.
pub fn write_multi_platform_dir(dir: &Path, images: &[&OciLayoutBuilder]) -> (String, Vec<ImageInfo>) {
    let (files, infos) = OciLayoutBuilder::layout_files(images);
    let mut index_digest = String::new();
    for (name, bytes) in files {
        let (name, bytes) = if name == "index.json" {
            // The flat index becomes the blob the top-level index names.
            let mut inner: Value = serde_json::from_slice(&bytes).expect("index JSON");
            for m in inner["manifests"].as_array_mut().expect("manifests") {
                m.as_object_mut().expect("a descriptor").remove("annotations");
            }
            let inner = serde_json::to_vec(&inner).expect("index JSON");
            index_digest = sha256_digest(&inner);
            let blob = dir.join(blob_path(&index_digest));
            std::fs::create_dir_all(blob.parent().expect("a parent")).expect("create blobs/sha256");
            std::fs::write(&blob, &inner).expect("write the image index");
            let top = serde_json::to_vec_pretty(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": index_digest,
                    "size": inner.len(),
                    "annotations": {"org.opencontainers.image.ref.name": "latest"},
                }],
            }))
            .expect("index JSON");
            (name, top)
        } else {
            (name, bytes)
        };
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the layout's directories");
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    (index_digest, infos)
}

/// Writes `images` as one OCI image layout tar at `path` (see [`write_layout_dir`]).
pub fn write_layout_tar(path: &Path, images: &[&OciLayoutBuilder]) -> Vec<ImageInfo> {
    let (files, infos) = OciLayoutBuilder::layout_files(images);
    write_tar_file(path, &files);
    infos
}

/// Writes a plain tar of `files` (relative path, bytes; parents added as directories).
fn write_tar_file(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut layer = Layer::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (name, bytes) in files {
        let mut parent = Path::new(name).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if dirs.insert(p.to_path_buf()) {
                missing.push(p.to_string_lossy().into_owned());
            }
            parent = p.parent();
        }
        for dir in missing.iter().rev() {
            layer = layer.dir(dir, 0o755);
        }
        layer = layer.file(name, bytes, 0o644);
    }
    std::fs::write(path, layer.tar_bytes()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The uncompressed tar of a one-layer image holding Debian's static busybox (the host's
/// `/bin/busybox`, package `busybox-static`) at `/bin/busybox` with `/bin/<tool>` symlinks
/// to it, `/etc/passwd` and `/etc/group` with `root` and `agent` (uid and gid 1000, home
/// `/home/agent`), `/tmp` (1777), `/root`, `/home/agent` and empty `/proc`, `/sys`, `/dev`.
pub fn busybox_layer() -> Layer {
    let busybox = std::fs::read("/bin/busybox")
        .unwrap_or_else(|e| panic!("/bin/busybox: {e}; install Debian's busybox-static (scripts/image-deps)"));
    assert!(
        is_static_elf(&busybox),
        "/bin/busybox is not statically linked: install Debian's busybox-static (scripts/image-deps)"
    );
    let mut layer = Layer::new().dir("bin", 0o755).file("bin/busybox", &busybox, 0o755);
    for tool in BUSYBOX_TOOLS {
        layer = layer.symlink(&format!("bin/{tool}"), "busybox");
    }
    layer
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\nagent:x:1000:\n", 0o644)
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir_owned("home/agent", 0o755, 1000, 1000)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755)
}

/// The tools [`busybox_layer`] links to busybox in `/bin`.
pub const BUSYBOX_TOOLS: &[&str] = &[
    "sh", "ls", "cat", "echo", "id", "env", "pwd", "sleep", "dd", "df", "touch", "mkdir", "rm", "wc", "stat", "cp",
    "mv", "ln", "chmod", "head", "tail", "grep", "true", "false", "printf", "test", "readlink", "whoami", "uname",
    "find", "kill", "sync",
];

/// A runnable image: [`busybox_layer`] gzipped, `Env` `PATH=/bin` and `WorkingDir` `/`; add
/// layers or config on top.
pub fn busybox_image() -> OciLayoutBuilder {
    OciLayoutBuilder::new().layer(&busybox_layer()).env("PATH=/usr/local/bin:/usr/bin:/bin").working_dir("/")
}

/// Whether `elf` is a 64-bit ELF with no program interpreter (statically linked).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    // PT_INTERP = 3
    (0..phnum).all(|i| u32_at(phoff + i * phentsize) != Some(3))
}

/// The digest of the first layer of the first manifest of the layout whose `index.json` and
/// blobs `read` returns.
fn first_layer(read: &mut dyn FnMut(&str) -> Vec<u8>) -> String {
    let index: Value = serde_json::from_slice(&read("index.json")).expect("index.json is JSON");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("index names a manifest").to_string();
    let manifest: Value = serde_json::from_slice(&read(&blob_path(&manifest_digest))).expect("manifest is JSON");
    manifest["layers"][0]["digest"].as_str().expect("manifest names a layer").to_string()
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn flip_middle(bytes: &mut [u8]) {
    assert!(!bytes.is_empty(), "cannot tamper with an empty blob");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
}

/// A copy of the OCI layout tar `layout_tar` (beside it, `<stem>-tampered.tar`) whose first
/// layer blob has one byte flipped and keeps its name: its content no longer matches its digest.
pub fn tamper(layout_tar: &Path) -> PathBuf {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(layout_tar).expect("open the layout tar"));
    for entry in archive.entries().expect("read the layout tar") {
        let mut entry = entry.expect("a tar entry");
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().expect("a path").to_string_lossy().trim_start_matches("./").to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read an entry");
        files.push((name, bytes));
    }
    let layer = {
        let files = &files;
        first_layer(&mut |name| {
            files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone())
                .unwrap_or_else(|| panic!("{name} is not in the layout"))
        })
    };
    let target = blob_path(&layer);
    let blob = files.iter_mut().find(|(n, _)| *n == target).expect("the layer blob is in the layout");
    flip_middle(&mut blob.1);
    let stem = layout_tar.file_stem().expect("a file name").to_string_lossy();
    let out = layout_tar.with_file_name(format!("{stem}-tampered.tar"));
    write_tar_file(&out, &files);
    out
}

/// Flips a byte of the first layer blob of the OCI layout directory `dir` in place (keeping its
/// name); returns that blob's path.
pub fn tamper_dir(dir: &Path) -> PathBuf {
    let layer = first_layer(&mut |name| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
    });
    let path = dir.join(blob_path(&layer));
    let mut bytes = std::fs::read(&path).expect("read the layer blob");
    flip_middle(&mut bytes);
    std::fs::write(&path, bytes).expect("write the layer blob");
    path
}
