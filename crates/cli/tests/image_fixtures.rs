//! The image fixtures of the tests work (`common::images`, `common::registry`): the busybox
//! image is a valid OCI layout (skopeo reads it as a layout directory, a layout tar and a
//! `docker save` archive) and runs; layers hold exactly the records they were given, hostile
//! ones included; a tampered layout no longer matches its digests; images push to a registry
//! with and without auth, and a wrong or missing password is refused; the default image exists
//! and its index names one manifest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use common::images::{
    busybox_image, busybox_layer, default_image, sha256_digest, tamper, tamper_dir, write_layout_dir,
    write_multi_platform_dir, Compression, Layer, OciLayoutBuilder, RawEntry, BUSYBOX_TOOLS,
};
use common::registry::Registry;
use serde_json::Value;

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn skopeo_inspect(reference: &str, config: bool) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect");
    if config {
        cmd.arg("--config");
    }
    serde_json::from_str(&ok(cmd.arg(reference).output().unwrap())).unwrap()
}

/// (name bytes, type flag, mode, uid, gid, link bytes, data) of every record of `tar`.
type Record = (Vec<u8>, u8, u32, u64, u64, Vec<u8>, Vec<u8>);

fn records(tar: &[u8]) -> Vec<Record> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let name = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push((name, h.entry_type().as_byte(), h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), link, data));
    }
    out
}

#[test]
fn busybox_layout_is_a_valid_oci_image() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let image = busybox_image().user("agent").cmd(&["/bin/sh"]);
    let info = image.write_dir(&layout);

    let inspected = skopeo_inspect(&format!("oci:{}", layout.display()), false);
    assert_eq!(inspected["Digest"], info.manifest_digest);
    assert_eq!(inspected["Layers"], serde_json::json!(info.layers));
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");
    let config = skopeo_inspect(&format!("oci:{}", layout.display()), true);
    assert_eq!(config["config"]["User"], "agent");
    assert_eq!(config["config"]["WorkingDir"], "/");
    assert_eq!(config["config"]["Env"][0], "PATH=/usr/local/bin:/usr/bin:/bin");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(info.diff_ids));

    // Every blob is named by its digest.
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(sha256_digest(&bytes), format!("sha256:{}", entry.file_name().to_string_lossy()));
    }

    // The same image as one layout tar and as a `docker save` archive.
    let tar = dir.path().join("image.tar");
    assert_eq!(image.write_tar(&tar).manifest_digest, info.manifest_digest);
    assert_eq!(skopeo_inspect(&format!("oci-archive:{}", tar.display()), false)["Digest"], info.manifest_digest);
    let saved = dir.path().join("saved.tar");
    let saved_info = image.write_docker_save(&saved, "busybox:test");
    assert_eq!(saved_info.diff_ids, info.diff_ids);
    let config = skopeo_inspect(&format!("docker-archive:{}", saved.display()), true);
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(info.diff_ids));
    assert_eq!(config["config"]["User"], "agent");
}

#[test]
fn busybox_layer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let tar = busybox_layer().tar_bytes();
    let mut archive = tar::Archive::new(tar.as_slice());
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.unpack(&root).unwrap();
    for tool in BUSYBOX_TOOLS {
        assert_eq!(std::fs::read_link(root.join("bin").join(tool)).unwrap(), Path::new("busybox"));
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::metadata(root.join("home/agent")).unwrap().uid(), 1000);
    let out = ok(Command::new("/usr/sbin/chroot")
        .arg(&root)
        .args(["/bin/sh", "-c", "echo hello; id -un; id -u agent; cat /etc/group | wc -l; ls /bin/busybox"])
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .unwrap());
    assert_eq!(out, "hello\nroot\n1000\n2\n/bin/busybox\n");
}

#[test]
fn layers_hold_exactly_the_records_given() {
    let long = format!("{}/file", "d".repeat(150));
    let long_target = format!("/{}", "t".repeat(200));
    let layer = Layer::new()
        .dir("/etc", 0o755)
        .file_owned("/etc/owned", b"data", 0o640, 1000, 1001)
        .symlink("etc/link", "../owned")
        .hardlink("etc/hard", "etc/owned")
        .whiteout("/etc/gone")
        .whiteout("top")
        .opaque("/var/lib/")
        .file(&long, b"long", 0o644)
        .symlink("etc/far", &long_target)
        .raw(RawEntry::file(b"../x", b"escape"))
        .raw(RawEntry::file(b"/abs", b""))
        .raw(RawEntry::char_device(b"dev/null", 1, 3))
        .raw(RawEntry::block_device(b"dev/sda", 8, 0))
        .raw(RawEntry::fifo(b"fifo"))
        .raw(RawEntry::file(b"bin/su", b"").mode(0o4755))
        .raw(RawEntry::file(b"bad\xffname", b""))
        .raw(RawEntry::symlink(b"out", b"../../../../etc/shadow"))
        .raw(RawEntry::file(b"innocent", b"").pax("path", b"../pax-escape"));
    let records = records(&layer.tar_bytes());
    let names: Vec<&[u8]> = records.iter().map(|r| r.0.as_slice()).collect();
    assert_eq!(
        names,
        vec![
            b"etc/".as_slice(),
            b"etc/owned",
            b"etc/link",
            b"etc/hard",
            b"etc/.wh.gone",
            b".wh.top",
            b"var/lib/.wh..wh..opq",
            long.as_bytes(),
            b"etc/far",
            b"../x",
            b"/abs",
            b"dev/null",
            b"dev/sda",
            b"fifo",
            b"bin/su",
            b"bad\xffname",
            b"out",
            b"../pax-escape",
        ]
    );
    assert_eq!(records[1].1, b'0');
    assert_eq!((records[1].2, records[1].3, records[1].4), (0o640, 1000, 1001));
    assert_eq!(records[1].6, b"data");
    assert_eq!((records[2].1, records[2].5.as_slice()), (b'2', b"../owned".as_slice()));
    assert_eq!((records[3].1, records[3].5.as_slice()), (b'1', b"etc/owned".as_slice()));
    assert_eq!(records[8].5, long_target.as_bytes());
    assert_eq!(records[11].1, b'3');
    assert_eq!(records[12].1, b'4');
    assert_eq!(records[13].1, b'6');
    assert_eq!(records[14].2, 0o4755);

    let mut archive = tar::Archive::new(std::io::Cursor::new(layer.tar_bytes()));
    let dev = archive.entries().unwrap().nth(11).unwrap().unwrap();
    assert_eq!((dev.header().device_major().unwrap(), dev.header().device_minor().unwrap()), (Some(1), Some(3)));

    // A header claiming more than there is: the archive ends inside the entry.
    let short = Layer::new().raw(RawEntry::file(b"short", b"abc").claimed_size(1 << 20)).tar_bytes();
    assert!(short.len() < 1 << 20);
    let mut archive = tar::Archive::new(short.as_slice());
    let entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(entry.header().size().unwrap(), 1 << 20);
}

#[test]
fn multi_platform_and_uncompressed_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let amd64 = busybox_image().layer_with(&Layer::new().file("hello", b"hi", 0o644), Compression::None);
    let arm64 = OciLayoutBuilder::new().layer(&Layer::new().file("arm", b"", 0o644)).platform("linux", "arm64");

    // A multi-platform image: index.json names one image index of both manifests.
    let nested = dir.path().join("nested");
    let (index_digest, infos) = write_multi_platform_dir(&nested, &[&arm64, &amd64]);
    let inspected = skopeo_inspect(&format!("oci:{}", nested.display()), false);
    // skopeo names the image index's digest and chooses this host's platform from it.
    assert_eq!(inspected["Digest"], index_digest.as_str());
    assert_eq!(inspected["Layers"], serde_json::json!(infos[1].layers));
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2);
    let index: Value = serde_json::from_slice(&std::fs::read(nested.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], index_digest.as_str());
    let inner = std::fs::read(nested.join("blobs/sha256").join(index_digest.trim_start_matches("sha256:"))).unwrap();
    let inner: Value = serde_json::from_slice(&inner).unwrap();
    assert_eq!(inner["manifests"][0]["platform"]["architecture"], "arm64");
    assert_eq!(inner["manifests"][1]["digest"], infos[1].manifest_digest.as_str());

    // Two images side by side in index.json.
    let flat = dir.path().join("flat");
    let infos = write_layout_dir(&flat, &[&arm64.clone().ref_name("arm"), &amd64.clone().ref_name("amd")]);
    let index: Value = serde_json::from_slice(&std::fs::read(flat.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");
    let inspected = skopeo_inspect(&format!("oci:{}:amd", flat.display()), false);
    assert_eq!(inspected["Digest"], infos[1].manifest_digest);
}

#[test]
fn tampered_layouts_no_longer_match_their_digests() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    let info = busybox_image().write_tar(&tar);
    let tampered = tamper(&tar);
    let extracted = dir.path().join("x");
    std::fs::create_dir(&extracted).unwrap();
    tar::Archive::new(std::fs::File::open(&tampered).unwrap()).unpack(&extracted).unwrap();
    let layer_hex = info.layers[0].trim_start_matches("sha256:");
    let layer = std::fs::read(extracted.join("blobs/sha256").join(layer_hex)).unwrap();
    assert_ne!(sha256_digest(&layer), info.layers[0]);
    for other in [&info.manifest_digest, &info.config_digest] {
        let bytes = std::fs::read(extracted.join("blobs/sha256").join(other.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(&sha256_digest(&bytes), other);
    }
    // skopeo refuses to copy it (it verifies the blob).
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("oci-archive:{}", tampered.display()))
        .arg(format!("oci:{}", dir.path().join("copy").display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "skopeo copied a tampered image");

    let layout = dir.path().join("layout");
    busybox_image().write_dir(&layout);
    let blob = tamper_dir(&layout);
    assert_eq!(blob.file_name().unwrap().to_string_lossy(), layer_hex);
    assert_ne!(sha256_digest(&std::fs::read(&blob).unwrap()), info.layers[0]);
}

#[test]
fn pushes_to_an_open_registry() {
    let dir = tempfile::tempdir().unwrap();
    let info = busybox_image().write_dir(dir.path());
    let registry = Registry::start(None);
    let digest = registry.push(dir.path(), "tools/busybox:1");
    assert_eq!(digest, info.manifest_digest);
    let inspected = registry.inspect("tools/busybox:1");
    assert_eq!(inspected["Digest"], info.manifest_digest);
    // A layout tar and a `docker save` archive push too.
    let tar = dir.path().join("image.tar");
    let other = busybox_image().env("MORE=1");
    let tar_info = other.write_tar(&tar);
    assert_eq!(registry.push_archive(&tar, "tools/busybox:2"), tar_info.manifest_digest);
    let saved = dir.path().join("saved.tar");
    other.write_docker_save(&saved, "busybox:3");
    let pushed = registry.push_from(&format!("docker-archive:{}", saved.display()), "tools/busybox:3", None).unwrap();
    assert_eq!(registry.inspect("tools/busybox:3")["Digest"], pushed.as_str());
    let storage = registry.storage();
    assert!(storage.exists());
    drop(registry);
    assert!(!storage.exists(), "the registry's storage outlived it");
}

#[test]
fn pushes_to_a_registry_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let info = busybox_image().write_dir(dir.path());
    let registry = Registry::start(Some(("alice", "s3cret pass")));
    assert_eq!(registry.push(dir.path(), "private/busybox:latest"), info.manifest_digest);
    assert_eq!(registry.inspect("private/busybox:latest")["Digest"], info.manifest_digest);
    for creds in [Some(("alice", "wrong")), Some(("bob", "s3cret pass")), None] {
        let err =
            registry.push_as(dir.path(), "private/busybox:other", creds).expect_err("pushed without the password");
        assert!(err.to_lowercase().contains("unauthorized"), "{creds:?}: {err}");
    }
}

#[test]
fn the_default_image_is_a_layout_with_one_manifest() {
    let path = default_image();
    let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
    let mut index = None;
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        if name == "index.json" {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            index = Some(serde_json::from_slice::<Value>(&bytes).unwrap());
        }
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "oci-layout"), "{}: no oci-layout", path.display());
    let index = index.unwrap_or_else(|| panic!("{}: no index.json", path.display()));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let digest = manifests[0]["digest"].as_str().unwrap();
    assert!(names.contains(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))));
}
