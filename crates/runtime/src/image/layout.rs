//! Reading an image out of an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`,
//! OCI image spec `image-layout.md`) or a `docker save` archive (`manifest.json` naming the
//! config and layer files), unpacked in a directory: the index (nested indexes too, choosing
//! the `linux/amd64` manifest), the manifest and the config, each verified against its digest
//! before it is parsed, and every layer blob verified before it is unpacked.
//!
//! Files are opened only through [`confined::open_read`], so names in the input (a `docker
//! save` manifest's paths, symlinks of the archive) never lead outside the layout's directory.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::layer::digest_of;
use super::{ImageConfig, ImageError};
use crate::confined::{self, Root};

/// Largest index, manifest or config (JSON documents read into memory), in bytes.
pub(crate) const MAX_JSON: u64 = 8 << 20;
/// Most layers an image may have (overlayfs stacks at most 500 lower layers).
pub(crate) const MAX_LAYERS: usize = 128;
/// Most levels of indexes above a manifest.
const MAX_INDEX_DEPTH: usize = 4;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
#[cfg(test)]
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const INDEX_TYPES: &[&str] = &[OCI_INDEX, DOCKER_LIST];
const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST];
const CONFIG_TYPES: &[&str] = &[OCI_CONFIG, DOCKER_CONFIG];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// An OCI content descriptor (`descriptor.md`), the fields this module reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType")]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize, Serialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

/// The `config` object of an image config (`config.md`); Docker writes `null` for what is unset.
#[derive(Debug, Default, Deserialize)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A layer of an image, its blob verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layer {
    /// Its blob's digest.
    pub(crate) digest: String,
    /// The digest of its uncompressed tar (the config's `rootfs.diff_ids`).
    pub(crate) diff_id: String,
    /// Its blob, relative to the layout's directory.
    pub(crate) path: PathBuf,
}

/// An image read from a layout, every blob verified.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    /// The digest of its manifest (of a manifest made for it, for a `docker save` archive).
    pub(crate) digest: String,
    pub(crate) config: ImageConfig,
    /// Bottom first.
    pub(crate) layers: Vec<Layer>,
}

fn invalid(message: impl Into<String>) -> ImageError {
    ImageError::Invalid(message.into())
}

/// The hex of a `sha256:<64 lowercase hex>` digest; `what` names it in the error.
pub(crate) fn hex_of<'a>(digest: &'a str, what: &str) -> Result<&'a str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(hex),
        _ if digest.contains(':') && !digest.starts_with("sha256:") => {
            Err(invalid(format!("{what}: digest {digest:?} is not sha256 (the only algorithm accepted)")))
        }
        _ => Err(invalid(format!("{what}: malformed digest {digest:?}"))),
    }
}

fn blob_path(hex: &str) -> PathBuf {
    Path::new("blobs").join("sha256").join(hex)
}

/// Opens a file of the layout; `what` names it in the error.
fn open(root: &Root, rel: &Path, what: &str) -> Result<std::fs::File, ImageError> {
    match confined::open_read(root, rel) {
        Ok((file, _)) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(invalid(format!("{what}: {} is missing from the image", rel.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            Err(invalid(format!("{what}: {} is not a file of the image", rel.display())))
        }
        Err(source) => Err(ImageError::Io { what: format!("read {}", rel.display()), source }),
    }
}

/// Reads a whole file of at most [`MAX_JSON`] bytes; returns it and its digest.
fn read_small(root: &Root, rel: &Path, what: &str) -> Result<(Vec<u8>, String), ImageError> {
    let file = open(root, rel, what)?;
    let mut data = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut data)
        .map_err(|source| ImageError::Io { what: format!("read {}", rel.display()), source })?;
    if data.len() as u64 > MAX_JSON {
        return Err(ImageError::TooLarge(format!("{what}: larger than {MAX_JSON} bytes")));
    }
    let digest = digest_of(Sha256::new_with_prefix(&data));
    Ok((data, digest))
}

/// Checks a blob's content against its descriptor: digest first, then size.
fn check_blob(desc: &Descriptor, actual: String, len: u64, what: &str) -> Result<(), ImageError> {
    if actual != desc.digest {
        return Err(ImageError::DigestMismatch { expected: desc.digest.clone(), actual });
    }
    if len != desc.size {
        return Err(invalid(format!("{what}.size: says {} bytes, the blob has {len}", desc.size)));
    }
    Ok(())
}

/// Reads and verifies the JSON blob `desc` points to.
fn read_blob(root: &Root, desc: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
    let hex = hex_of(&desc.digest, &format!("{what}.digest"))?;
    if desc.size > MAX_JSON {
        return Err(ImageError::TooLarge(format!("{what}.size: {} bytes, more than {MAX_JSON}", desc.size)));
    }
    let (data, actual) = read_small(root, &blob_path(hex), what)?;
    check_blob(desc, actual, data.len() as u64, what)?;
    Ok(data)
}

fn parse<'a, T: Deserialize<'a>>(data: &'a [u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| invalid(format!("{what}: {e}")))
}

/// The digest and size of a (layer) file of the layout, read whole.
fn hash_file(root: &Root, rel: &Path, what: &str) -> Result<(String, u64), ImageError> {
    let mut file = open(root, rel, what)?;
    let mut hasher = Sha256::new();
    let len = io::copy(&mut file, &mut hasher)
        .map_err(|source| ImageError::Io { what: format!("read {}", rel.display()), source })?;
    Ok((digest_of(hasher), len))
}

/// Reads the image in the directory of `root`: an OCI image layout when it has an
/// `index.json`, else a `docker save` archive's `manifest.json`. A layer blob of an OCI layout
/// whose digest `present` says the store holds already (unpacked from a blob verified then) is
/// not read at all: it is not used.
pub(crate) fn read(root: &Root, present: &dyn Fn(&str) -> bool) -> Result<Image, ImageError> {
    match confined::open_read(root, "index.json") {
        Ok(_) => read_oci(root, present),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match confined::open_read(root, "manifest.json") {
            Ok(_) => read_docker(root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(invalid(
                "not an image: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            )),
            Err(source) => Err(ImageError::Io { what: "read manifest.json".into(), source }),
        },
        Err(source) => Err(ImageError::Io { what: "read index.json".into(), source }),
    }
}

/// The descriptor of `index` to follow: its `linux/amd64` entry, else its only one.
fn choose<'a>(index: &'a Index, what: &str) -> Result<(usize, &'a Descriptor), ImageError> {
    let amd64 = index
        .manifests
        .iter()
        .enumerate()
        .find(|(_, d)| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"));
    match (amd64, index.manifests.len()) {
        (Some(found), _) => Ok(found),
        (None, 1) => Ok((0, &index.manifests[0])),
        (None, 0) => Err(invalid(format!("{what}.manifests: empty"))),
        (None, n) => Err(invalid(format!("{what}.manifests: {n} entries and none for linux/amd64"))),
    }
}

fn read_oci(root: &Root, present: &dyn Fn(&str) -> bool) -> Result<Image, ImageError> {
    let (data, _) = read_small(root, Path::new("index.json"), "index.json")?;
    let mut what = "index.json".to_owned();
    let mut index: Index = parse(&data, &what)?;
    let mut depth = 0;
    let (manifest_desc, manifest) = loop {
        if index.schema_version != 2 {
            return Err(invalid(format!("{what}.schemaVersion: {} (only 2 is known)", index.schema_version)));
        }
        if let Some(t) = &index.media_type {
            if !INDEX_TYPES.contains(&t.as_str()) {
                return Err(invalid(format!("{what}.mediaType: {t:?} is not an image index")));
            }
        }
        let (i, desc) = choose(&index, &what)?;
        let desc = desc.clone();
        let here = format!("{what}.manifests[{i}]");
        if INDEX_TYPES.contains(&desc.media_type.as_str()) {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(invalid(format!("{here}: more than {MAX_INDEX_DEPTH} levels of nested indexes")));
            }
            let data = read_blob(root, &desc, &here)?;
            what = format!("index {}", desc.digest);
            index = parse(&data, &what)?;
            continue;
        }
        if !MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
            return Err(invalid(format!("{here}.mediaType: {:?} is not an image manifest", desc.media_type)));
        }
        let data = read_blob(root, &desc, &here)?;
        let manifest: Manifest = parse(&data, &format!("manifest {}", desc.digest))?;
        break (desc, manifest);
    };
    let what = format!("manifest {}", manifest_desc.digest);
    if manifest.schema_version != 2 {
        return Err(invalid(format!("{what}: schemaVersion {} (only 2 is known)", manifest.schema_version)));
    }
    if let Some(t) = &manifest.media_type {
        if *t != manifest_desc.media_type {
            return Err(invalid(format!("{what}: mediaType {t:?} is not its descriptor's")));
        }
    }
    if !CONFIG_TYPES.contains(&manifest.config.media_type.as_str()) {
        return Err(invalid(format!(
            "{what}: config.mediaType {:?} is not an image config",
            manifest.config.media_type
        )));
    }
    check_layer_list(manifest.layers.len(), &what)?;
    for (i, layer) in manifest.layers.iter().enumerate() {
        check_layer_type(&layer.media_type, &format!("{what}: layers[{i}].mediaType"))?;
        hex_of(&layer.digest, &format!("{what}: layers[{i}].digest"))?;
    }
    let config_data = read_blob(root, &manifest.config, &format!("{what}: config"))?;
    let (config, diff_ids) =
        read_config(&config_data, &format!("config {}", manifest.config.digest), manifest.layers.len())?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, (desc, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let hex = hex_of(&desc.digest, &format!("{what}: layers[{i}].digest"))?;
        let path = blob_path(hex);
        if !present(&desc.digest) {
            let (actual, len) = hash_file(root, &path, &format!("{what}: layers[{i}]"))?;
            check_blob(desc, actual, len, &format!("{what}: layers[{i}]"))?;
        }
        layers.push(Layer { digest: desc.digest.clone(), diff_id, path });
    }
    Ok(Image { digest: manifest_desc.digest, config, layers })
}

fn check_layer_list(count: usize, what: &str) -> Result<(), ImageError> {
    if count == 0 {
        return Err(invalid(format!("{what}: layers is empty")));
    }
    if count > MAX_LAYERS {
        return Err(invalid(format!("{what}: layers has {count} entries, more than {MAX_LAYERS}")));
    }
    Ok(())
}

fn check_layer_type(media_type: &str, what: &str) -> Result<(), ImageError> {
    if LAYER_TYPES.contains(&media_type) {
        return Ok(());
    }
    if media_type.contains("nondistributable") || media_type.contains("foreign") {
        return Err(invalid(format!("{what}: {media_type:?} is a foreign layer, which is not supported")));
    }
    Err(invalid(format!("{what}: {media_type:?} is not a supported layer type")))
}

/// The run config and the `rootfs.diff_ids` of a config, which must list `layers` layers.
fn read_config(data: &[u8], what: &str, layers: usize) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let config: Config = parse(data, what)?;
    if let Some(os) = &config.os {
        if os != "linux" {
            return Err(invalid(format!("{what}: os {os:?} (only linux images run here)")));
        }
    }
    if config.rootfs.kind != "layers" {
        return Err(invalid(format!("{what}: rootfs.type {:?} is not \"layers\"", config.rootfs.kind)));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(invalid(format!(
            "{what}: rootfs.diff_ids has {} entries for {layers} layers",
            config.rootfs.diff_ids.len()
        )));
    }
    for (i, d) in config.rootfs.diff_ids.iter().enumerate() {
        hex_of(d, &format!("{what}: rootfs.diff_ids[{i}]"))?;
    }
    let run = config.config.unwrap_or_default();
    let working_dir = run.working_dir.filter(|d| !d.is_empty());
    if let Some(dir) = &working_dir {
        if !dir.starts_with('/') {
            return Err(invalid(format!("{what}: config.WorkingDir {dir:?} is not absolute")));
        }
    }
    let image = ImageConfig {
        env: run.env.unwrap_or_default(),
        working_dir,
        user: run.user.filter(|u| !u.is_empty()),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
    };
    Ok((image, config.rootfs.diff_ids))
}

/// The digest a `docker save` file's name says it has: `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_in_name(name: &str) -> Option<String> {
    let hex = name.strip_prefix("blobs/sha256/").or_else(|| name.strip_suffix(".json"))?;
    let digest = format!("sha256:{hex}");
    hex_of(&digest, "").ok()?;
    Some(digest)
}

fn read_docker(root: &Root) -> Result<Image, ImageError> {
    let (data, _) = read_small(root, Path::new("manifest.json"), "manifest.json")?;
    let entries: Vec<DockerEntry> = parse(&data, "manifest.json")?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => return Err(invalid("manifest.json: lists no image")),
        many => return Err(invalid(format!("manifest.json: lists {} images, an import takes one", many.len()))),
    };
    let what = "manifest.json[0]";
    check_layer_list(entry.layers.len(), what)?;
    let (config_data, config_digest) = read_small(root, Path::new(&entry.config), &format!("{what}.Config"))?;
    if let Some(expected) = digest_in_name(&entry.config) {
        if expected != config_digest {
            return Err(ImageError::DigestMismatch { expected, actual: config_digest });
        }
    }
    let (config, diff_ids) = read_config(&config_data, &format!("config {config_digest}"), entry.layers.len())?;
    let mut layers = Vec::with_capacity(entry.layers.len());
    let mut descriptors = Vec::with_capacity(entry.layers.len());
    for (i, (name, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let path = PathBuf::from(name);
        let (digest, size) = hash_file(root, &path, &format!("{what}.Layers[{i}]"))?;
        if let Some(expected) = digest_in_name(name) {
            if expected != digest {
                return Err(ImageError::DigestMismatch { expected, actual: digest });
            }
        }
        let mut head = [0u8; 4];
        let got = open(root, &path, &format!("{what}.Layers[{i}]"))?
            .take(4)
            .read(&mut head)
            .map_err(|source| ImageError::Io { what: format!("read {name}"), source })?;
        let media_type = match crate::archive::detect(&head[..got]) {
            crate::archive::Compression::Plain => OCI_LAYER.to_owned(),
            crate::archive::Compression::Gzip => format!("{OCI_LAYER}+gzip"),
            crate::archive::Compression::Zstd => format!("{OCI_LAYER}+zstd"),
        };
        descriptors.push(Descriptor { media_type, digest: digest.clone(), size, platform: None });
        layers.push(Layer { digest, diff_id, path });
    }
    // The archive has no manifest: the image's identity is that of the OCI manifest that
    // describes the same config and layers.
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        config: Descriptor {
            media_type: OCI_CONFIG.to_owned(),
            digest: config_digest,
            size: config_data.len() as u64,
            platform: None,
        },
        layers: descriptors,
    };
    let made = serde_json::to_vec(&manifest).map_err(|e| invalid(format!("{what}: {e}")))?;
    Ok(Image { digest: digest_of(Sha256::new_with_prefix(&made)), config, layers })
}
