//! Images built here with the tar crate (OCI layouts and `docker save` archives, plain, gzip
//! and zstd-free), imported into a real store in a temporary directory. Runs as root (the store
//! keeps the layers' ids and makes whiteout devices).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::*;

const OPTIONS: UnpackOptions = UnpackOptions { allow_setuid: false, max_bytes: 64 << 20, max_entries: 10_000 };
const MTIME: u64 = 1_600_000_000;

fn sha(data: &[u8]) -> String {
    layer::digest_of(Sha256::new_with_prefix(data))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A tar written header by header, so that hostile names go in as they are.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    #[allow(clippy::too_many_arguments)]
    fn entry_full(mut self, name: &[u8], kind: EntryType, mode: u32, ids: (u64, u64), link: &[u8], data: &[u8]) -> Tar {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_entry_type(kind);
        h.set_mtime(MTIME);
        h.set_uid(ids.0);
        h.set_gid(ids.1);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }
    fn dir(self, name: &str, mode: u32, ids: (u64, u64)) -> Tar {
        self.entry_full(name.as_bytes(), EntryType::Directory, mode, ids, b"", b"")
    }
    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.entry_full(name.as_bytes(), EntryType::Regular, 0o644, (0, 0), b"", data)
    }
    fn symlink(self, name: &str, target: &str) -> Tar {
        self.entry_full(name.as_bytes(), EntryType::Symlink, 0o777, (0, 0), target.as_bytes(), b"")
    }
    fn hard_link(self, name: &str, target: &str) -> Tar {
        self.entry_full(name.as_bytes(), EntryType::Link, 0o644, (0, 0), target.as_bytes(), b"")
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// Files of an image layout (or any tree), path → content, as a tar or a directory.
#[derive(Default, Clone)]
struct Files(Vec<(String, Vec<u8>)>);

impl Files {
    fn put(&mut self, path: &str, data: Vec<u8>) {
        self.0.retain(|(p, _)| p != path);
        self.0.push((path.to_owned(), data));
    }
    /// Adds a blob; returns its descriptor.
    fn blob(&mut self, media_type: &str, data: Vec<u8>) -> serde_json::Value {
        let digest = sha(&data);
        let size = data.len();
        self.put(&format!("blobs/sha256/{}", &digest[7..]), data);
        json!({"mediaType": media_type, "digest": digest, "size": size})
    }
    fn get_mut(&mut self, path: &str) -> &mut Vec<u8> {
        &mut self.0.iter_mut().find(|(p, _)| p == path).unwrap().1
    }
    fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = HashSet::new();
        for (path, data) in &self.0 {
            let mut parent = Path::new(path).parent();
            let mut missing = Vec::new();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                if dirs.insert(p.to_owned()) {
                    missing.push(p.to_owned());
                }
                parent = p.parent();
            }
            for dir in missing.iter().rev() {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, dir, &[][..]).unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }
    /// [`Files::tar`] with symlinks `(name, target)` after the files.
    fn tar_with_links(&self, links: &[(&str, &str)]) -> Vec<u8> {
        let mut out = self.tar();
        out.truncate(out.len() - 1024);
        let mut tail = Tar::default();
        for (name, target) in links {
            tail = tail.symlink(name, target);
        }
        out.extend_from_slice(&tail.finish());
        out
    }
    fn write_to(&self, dir: &Path) {
        for (path, data) in &self.0 {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
    }
}

/// What an image's config says, for the tests.
fn run_config(cmd: &str) -> serde_json::Value {
    json!({
        "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        "WorkingDir": "/home/u",
        "User": "1000:1000",
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": [cmd],
    })
}

/// Adds an image (manifest, config and layers, each `(tar, gzip?)`) to `files`; returns the
/// manifest's descriptor.
fn add_image(files: &mut Files, layers: &[(Vec<u8>, bool)], cmd: &str) -> serde_json::Value {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, gz) in layers {
        diff_ids.push(sha(tar));
        descs.push(if *gz {
            files.blob(layout::OCI_LAYER_GZIP, gzip(tar))
        } else {
            files.blob(layout::OCI_LAYER, tar.clone())
        });
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": run_config(cmd),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = files.blob(layout::OCI_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": layout::OCI_MANIFEST,
        "config": config,
        "layers": descs,
    });
    files.blob(layout::OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap())
}

/// An OCI image layout of one image with `layers`; returns it and the manifest's digest.
fn layout_of(layers: &[(Vec<u8>, bool)]) -> (Files, String) {
    let mut files = Files::default();
    let manifest = add_image(&mut files, layers, "true");
    set_index(&mut files, vec![manifest.clone()]);
    (files, manifest["digest"].as_str().unwrap().to_owned())
}

fn set_index(files: &mut Files, manifests: Vec<serde_json::Value>) {
    files.put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let index = json!({"schemaVersion": 2, "mediaType": layout::OCI_INDEX, "manifests": manifests});
    files.put("index.json", serde_json::to_vec(&index).unwrap());
}

/// A store in a temporary directory and a place for inputs.
struct Scene {
    dir: tempfile::TempDir,
    store: LayerStore,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(&dir.path().join("store")).unwrap();
        Scene { dir, store }
    }
    /// Writes `data` as an input file; returns its path.
    fn input(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, data).unwrap();
        path
    }
    fn import_archive(&self, data: &[u8], options: &UnpackOptions) -> Result<StoredImage, ImageError> {
        let path = self.input("image.tar", data);
        self.store.import(&ImportSource::Archive(path), options)
    }
    /// Nothing but the empty `layers/` in the store: no layer, no staging directory.
    fn assert_empty(&self, case: &str) {
        let root = self.store.root();
        let names: Vec<_> = fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["layers"], "{case}");
        assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), 0, "{case}");
    }
    fn layer(&self, digest: &str, rel: &str) -> PathBuf {
        self.store.layer_path(digest).join(rel)
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: NUL-terminated strings and a buffer of the length passed.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(len).ok().map(|len| buf[..len].to_vec())
}

fn base_layer() -> Vec<u8> {
    Tar::default()
        .dir("./", 0o755, (0, 0))
        .dir("etc/", 0o755, (0, 0))
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .dir("home/", 0o755, (0, 0))
        .dir("home/u/", 0o750, (1000, 1000))
        .entry_full(b"home/u/notes", EntryType::Regular, 0o600, (1000, 1001), b"", b"mine")
        .dir("tmp/", 0o1777, (0, 0))
        .symlink("bin", "usr/bin")
        .symlink("abs", "/etc/passwd")
        .dir("opq/", 0o755, (0, 0))
        .file("opq/old", b"old")
        .finish()
}

fn top_layer() -> Vec<u8> {
    Tar::default()
        .file("etc/.wh.passwd", b"")
        .dir("opq/", 0o755, (0, 0))
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new")
        .file("home/u/first", b"linked")
        .hard_link("home/u/second", "home/u/first")
        .finish()
}

#[test]
fn a_two_layer_image_round_trips_with_whiteouts_ids_and_modes() {
    let scene = Scene::new();
    let (base, top) = (base_layer(), top_layer());
    let (files, manifest) = layout_of(&[(base.clone(), false), (top.clone(), true)]);
    let image = scene.import_archive(&gzip(&files.tar()), &OPTIONS).unwrap();
    assert_eq!(image.digest, manifest);
    let d1 = sha(&base);
    let d2 = sha(&gzip(&top));
    assert_eq!(image.layers, [d1.clone(), d2.clone()]);
    assert_eq!(
        image.config,
        ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
            working_dir: Some("/home/u".into()),
            user: Some("1000:1000".into()),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["true".into()],
        }
    );
    assert_eq!(scene.store.layers().unwrap(), {
        let mut l = vec![d1.clone(), d2.clone()];
        l.sort();
        l
    });

    // The base: ids, modes, times and symlinks as the layer says.
    let notes = fs::symlink_metadata(scene.layer(&d1, "home/u/notes")).unwrap();
    assert_eq!((notes.uid(), notes.gid(), notes.mode() & 0o7777), (1000, 1001, 0o600));
    assert_eq!(notes.mtime(), MTIME as i64);
    assert_eq!(fs::read(scene.layer(&d1, "home/u/notes")).unwrap(), b"mine");
    let home = fs::symlink_metadata(scene.layer(&d1, "home/u")).unwrap();
    assert_eq!((home.uid(), home.mode() & 0o7777, home.mtime()), (1000, 0o750, MTIME as i64));
    assert_eq!(fs::symlink_metadata(scene.layer(&d1, "tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(fs::read_link(scene.layer(&d1, "bin")).unwrap(), Path::new("usr/bin"));
    assert_eq!(fs::read_link(scene.layer(&d1, "abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(fs::symlink_metadata(scene.store.layer_path(&d1)).unwrap().mode() & 0o7777, 0o755);

    // The top: a whiteout is a 0:0 character device, an opaque directory has the attribute.
    let wh = fs::symlink_metadata(scene.layer(&d2, "etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!scene.layer(&d2, "etc/.wh.passwd").exists());
    assert_eq!(xattr(&scene.layer(&d2, "opq"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(!scene.layer(&d2, "opq/.wh..wh..opq").exists());
    assert_eq!(xattr(&scene.layer(&d1, "opq"), "trusted.overlay.opaque"), None);
    assert_eq!(fs::read(scene.layer(&d2, "opq/new")).unwrap(), b"new");
    let (first, second) = (
        fs::metadata(scene.layer(&d2, "home/u/first")).unwrap(),
        fs::metadata(scene.layer(&d2, "home/u/second")).unwrap(),
    );
    assert_eq!(first.ino(), second.ino());
    // Parents the layer did not list are root's.
    assert_eq!(fs::metadata(scene.layer(&d2, "home/u")).unwrap().uid(), 0);
    let expected_size = (26 + 4 + 3) + (3 + 6);
    assert_eq!(image.size_bytes, expected_size);

    // Again: the same image, nothing new, nothing left over.
    let again = scene.import_archive(&files.tar(), &OPTIONS).unwrap();
    assert_eq!(again, image);
    assert_eq!(scene.store.layers().unwrap().len(), 2);
    let names: Vec<_> = fs::read_dir(scene.store.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["layers"]);

    // Collecting keeps what is asked.
    let keep: HashSet<String> = [d1.clone()].into();
    assert_eq!(scene.store.collect(&keep).unwrap(), 1);
    assert_eq!(scene.store.layers().unwrap(), std::slice::from_ref(&d1));
    assert!(!scene.store.has_layer(&d2));
    assert_eq!(scene.store.collect(&HashSet::new()).unwrap(), 1);
    scene.assert_empty("after collecting everything");
}

#[test]
fn a_layout_directory_imports_and_open_cleans_up() {
    let scene = Scene::new();
    let (files, manifest) = layout_of(&[(base_layer(), true)]);
    let dir = scene.dir.path().join("layout");
    files.write_to(&dir);
    let image = scene.store.import(&ImportSource::LayoutDir(dir), &OPTIONS).unwrap();
    assert_eq!(image.digest, manifest);
    assert!(scene.store.has_layer(&image.layers[0]));
    // What an interrupted import leaves goes at the next open; the root is 0700.
    let root = scene.store.root().to_path_buf();
    fs::create_dir_all(root.join("layers/.tmp-dead/x")).unwrap();
    fs::create_dir_all(root.join(".tmp-dead2")).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    // One that an import holds (of another process sharing the store) stays.
    fs::create_dir_all(root.join("layers/.tmp-busy/x")).unwrap();
    let busy = lock_dir(&root.join("layers/.tmp-busy"), true).unwrap().unwrap();
    let store = LayerStore::open(&root).unwrap();
    assert!(root.join("layers/.tmp-busy/x").exists());
    drop(busy);
    let store = {
        drop(store);
        LayerStore::open(&root).unwrap()
    };
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(store.layers().unwrap(), image.layers);
    let names: Vec<_> = fs::read_dir(root.join("layers")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [image.layers[0].trim_start_matches("sha256:")]);
    assert!(!root.join(".tmp-dead2").exists());
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_stored() {
    let (files, _) = layout_of(&[(base_layer(), false), (top_layer(), true)]);
    let manifest_path = files.0.iter().rev().find(|(p, _)| p.starts_with("blobs/")).unwrap().0.clone();
    let blobs: Vec<String> = files.0.iter().filter(|(p, _)| p.starts_with("blobs/")).map(|(p, _)| p.clone()).collect();
    // Each blob in turn (base layer, top layer, config, manifest), one byte changed.
    for path in &blobs {
        let scene = Scene::new();
        let mut bad = files.clone();
        let data = bad.get_mut(path);
        let at = data.len() / 2;
        data[at] ^= 1;
        match scene.import_archive(&bad.tar(), &OPTIONS) {
            Err(ImageError::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, format!("sha256:{}", path.rsplit('/').next().unwrap()));
                assert_ne!(actual, expected);
            }
            other => panic!("{path}: {other:?}"),
        }
        scene.assert_empty(path);
    }
    assert!(blobs.contains(&manifest_path));

    // A config whose diff_id does not match the layer's uncompressed content.
    let scene = Scene::new();
    let mut files = Files::default();
    let layer = files.blob(layout::OCI_LAYER_GZIP, gzip(&base_layer()));
    let wrong = sha(b"something else");
    let config = json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [wrong]}});
    let config = files.blob(layout::OCI_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({"schemaVersion": 2, "mediaType": layout::OCI_MANIFEST, "config": config, "layers": [layer]});
    let manifest = files.blob(layout::OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    set_index(&mut files, vec![manifest]);
    match scene.import_archive(&files.tar(), &OPTIONS) {
        Err(ImageError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, sha(&base_layer()));
        }
        other => panic!("{other:?}"),
    }
    scene.assert_empty("wrong diff_id");
}

/// Imports an image of a good layer and then `hostile` (gzip); asserts the error and that
/// nothing was stored.
fn refused(hostile: Vec<u8>, options: &UnpackOptions, case: &str) -> ImageError {
    let scene = Scene::new();
    let (files, _) = layout_of(&[(base_layer(), false), (hostile, true)]);
    // A layout directory: the limits of an archive do not come first.
    let dir = scene.dir.path().join("layout");
    files.write_to(&dir);
    let e = scene.store.import(&ImportSource::LayoutDir(dir), options).expect_err(case);
    scene.assert_empty(case);
    e
}

fn assert_invalid(e: ImageError, needle: &str, case: &str) {
    match e {
        ImageError::Invalid(m) => assert!(m.contains(needle), "{case}: {m}"),
        other => panic!("{case}: {other:?}"),
    }
}

#[test]
fn hostile_layers_are_refused_whole() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dot-dot", Tar::default().file("a", b"x").file("../x", b"x").finish(), "`..`"),
        ("absolute", Tar::default().file("/abs", b"x").finish(), "absolute"),
        (
            "through a symlink",
            Tar::default().symlink("l", "/tmp").file("l/f", b"x").finish(),
            "goes through the symlink",
        ),
        (
            "through a symlink to a directory",
            Tar::default().dir("d/", 0o755, (0, 0)).symlink("l", "d").file("l/f", b"x").finish(),
            "goes through the symlink",
        ),
        (
            "character device",
            Tar::default().entry_full(b"dev/null", EntryType::Char, 0o666, (0, 0), b"", b"").finish(),
            "character device",
        ),
        (
            "block device",
            Tar::default().entry_full(b"sda", EntryType::Block, 0o660, (0, 6), b"", b"").finish(),
            "block device",
        ),
        ("fifo", Tar::default().entry_full(b"p", EntryType::Fifo, 0o644, (0, 0), b"", b"").finish(), "fifo"),
        ("whiteout of ../x", Tar::default().file("../.wh.x", b"").finish(), "`..`"),
        ("whiteout of ..", Tar::default().dir("d/", 0o755, (0, 0)).file("d/.wh..", b"").finish(), "whiteout"),
        ("whiteout of .", Tar::default().file(".wh..", b"").file(".wh.", b"").finish(), "whiteout"),
        ("aufs whiteout", Tar::default().file(".wh..wh.plnk", b"").finish(), "unsupported whiteout"),
        (
            "whiteout through a symlink",
            Tar::default().symlink("l", "/etc").file("l/.wh.passwd", b"").finish(),
            "goes through the symlink",
        ),
        ("setuid", Tar::default().entry_full(b"su", EntryType::Regular, 0o4755, (0, 0), b"", b"#!").finish(), "setuid"),
        (
            "setgid file",
            Tar::default().entry_full(b"sg", EntryType::Regular, 0o2755, (0, 0), b"", b"#!").finish(),
            "setgid",
        ),
        ("hard link to nothing", Tar::default().hard_link("l", "missing").finish(), "hard link target"),
        ("hard link outside", Tar::default().hard_link("l", "../../etc/passwd").finish(), "`..`"),
        (
            "hard link to a directory",
            Tar::default().dir("d/", 0o755, (0, 0)).hard_link("l", "d").finish(),
            "hard link target",
        ),
        (
            "hard link through a symlink",
            Tar::default().symlink("s", "/etc").hard_link("l", "s/passwd").finish(),
            "hard link target",
        ),
        ("through a file", Tar::default().file("f", b"x").file("f/x", b"y").finish(), "Not a directory"),
        (
            "a file over a directory that is not empty",
            Tar::default().file("d/x", b"x").file("d", b"y").finish(),
            "not empty",
        ),
        ("not a tar", b"this is no tar archive at all, only text that goes on".repeat(20), "layer"),
    ];
    for (case, layer, needle) in cases {
        assert_invalid(refused(layer, &OPTIONS, case), needle, case);
    }
}

#[test]
fn limits_hold_across_layers_and_against_bombs() {
    // Ten MiB of zeros gzip to a few KiB: refused at the limit, not after writing it.
    let bomb = Tar::default().file("zeros", &vec![0u8; 10 << 20]).finish();
    let small = UnpackOptions { max_bytes: 1 << 20, ..OPTIONS };
    match refused(bomb, &small, "bomb") {
        ImageError::TooLarge(m) => assert!(m.contains("zeros"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The limits count both layers: the base has 11 entries and 33 bytes.
    let few = UnpackOptions { max_entries: 12, ..OPTIONS };
    let two = Tar::default().file("a", b"1").file("b", b"2").finish();
    assert!(matches!(refused(two.clone(), &few, "entries"), ImageError::TooLarge(_)));
    let tight = UnpackOptions { max_bytes: 34, ..OPTIONS };
    assert!(matches!(refused(two.clone(), &tight, "bytes"), ImageError::TooLarge(_)));
    // A tar padded after its end with far more than a record.
    let mut padded = two.clone();
    padded.extend_from_slice(&vec![0u8; 4 << 20]);
    assert!(matches!(refused(padded, &OPTIONS, "padding"), ImageError::TooLarge(_)));
    // The archive itself is bounded too.
    let scene = Scene::new();
    let (files, _) = layout_of(&[(Tar::default().file("big", &vec![7u8; 2 << 20]).finish(), false)]);
    match scene.import_archive(&files.tar(), &small) {
        Err(ImageError::TooLarge(_)) => {}
        other => panic!("{other:?}"),
    }
    scene.assert_empty("archive");
}

#[test]
fn setuid_files_are_kept_where_allowed() {
    let scene = Scene::new();
    let layer = Tar::default()
        .entry_full(b"su", EntryType::Regular, 0o4755, (0, 0), b"", b"#!")
        .entry_full(b"wall", EntryType::Regular, 0o2755, (0, 5), b"", b"#!")
        .dir("var/", 0o755, (0, 0))
        .dir("var/mail/", 0o2775, (0, 8))
        .finish();
    let (files, _) = layout_of(&[(layer.clone(), false)]);
    let allowed = UnpackOptions { allow_setuid: true, ..OPTIONS };
    let image = scene.import_archive(&files.tar(), &allowed).unwrap();
    let d = &image.layers[0];
    assert_eq!(fs::metadata(scene.layer(d, "su")).unwrap().mode() & 0o7777, 0o4755);
    let wall = fs::metadata(scene.layer(d, "wall")).unwrap();
    assert_eq!((wall.mode() & 0o7777, wall.gid()), (0o2755, 5));
    // A setgid directory grants nothing: allowed everywhere.
    let scene = Scene::new();
    let layer = Tar::default().dir("var/", 0o755, (0, 0)).dir("var/mail/", 0o2775, (0, 8)).finish();
    let (files, _) = layout_of(&[(layer, false)]);
    let image = scene.import_archive(&files.tar(), &OPTIONS).unwrap();
    let mail = fs::metadata(scene.layer(&image.layers[0], "var/mail")).unwrap();
    assert_eq!((mail.mode() & 0o7777, mail.gid()), (0o2775, 8));
}

#[test]
fn a_docker_save_archive_imports() {
    let scene = Scene::new();
    let (base, top) = (base_layer(), top_layer());
    let diff_ids = [sha(&base), sha(&top)];
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": run_config("docker"),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", &sha(&config)[7..]);
    let mut files = Files::default();
    // The legacy layout (a directory per layer) and the newer one (blobs) side by side.
    files.put("0a1b/layer.tar", base.clone());
    files.put(&format!("blobs/sha256/{}", &sha(&top)[7..]), top.clone());
    files.put(&config_name, config.clone());
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["example:latest"],
        "Layers": ["0a1b/layer.tar", format!("blobs/sha256/{}", &sha(&top)[7..])],
    }]);
    files.put("manifest.json", serde_json::to_vec(&manifest).unwrap());
    let image = scene.import_archive(&files.tar(), &OPTIONS).unwrap();
    assert_eq!(image.layers, diff_ids);
    assert_eq!(image.config.cmd, ["docker"]);
    // Older versions of docker save a layer that repeats as a symlink to the first copy.
    let scene_links = Scene::new();
    let mut linked = files.clone();
    let config3 =
        json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_ids[0], diff_ids[1], diff_ids[0]]}});
    let config3 = serde_json::to_vec(&config3).unwrap();
    let config3_name = format!("{}.json", &sha(&config3)[7..]);
    linked.put(&config3_name, config3);
    let manifest = json!([{
        "Config": config3_name,
        "Layers": ["0a1b/layer.tar", format!("blobs/sha256/{}", &sha(&top)[7..]), "ffff/layer.tar"],
    }]);
    linked.put("manifest.json", serde_json::to_vec(&manifest).unwrap());
    let three = scene_links
        .import_archive(&linked.tar_with_links(&[("ffff/layer.tar", "../0a1b/layer.tar")]), &OPTIONS)
        .unwrap();
    assert_eq!(three.layers, [diff_ids[0].clone(), diff_ids[1].clone(), diff_ids[0].clone()]);
    assert_eq!(scene_links.store.layers().unwrap().len(), 2);
    // One that leads out of the archive leads nowhere.
    let scene_out = Scene::new();
    let out = linked.tar_with_links(&[("ffff/layer.tar", "/etc/passwd")]);
    assert_invalid(scene_out.import_archive(&out, &OPTIONS).unwrap_err(), "Layers[2]", "symlink out");
    scene_out.assert_empty("symlink out");
    assert!(image.digest.starts_with("sha256:"));
    assert!(scene.layer(&image.layers[1], "etc/passwd").exists());
    // The same archive is the same image.
    assert_eq!(scene.import_archive(&files.tar(), &OPTIONS).unwrap().digest, image.digest);

    // A config that is not what its name says, a layer path out of the archive.
    let scene = Scene::new();
    let mut bad = files.clone();
    bad.get_mut(&config_name).push(b' ');
    assert!(matches!(scene.import_archive(&bad.tar(), &OPTIONS), Err(ImageError::DigestMismatch { .. })));
    let mut bad = files.clone();
    let manifest = json!([{"Config": config_name, "Layers": ["../0a1b/layer.tar", "0a1b/layer.tar"]}]);
    bad.put("manifest.json", serde_json::to_vec(&manifest).unwrap());
    assert_invalid(scene.import_archive(&bad.tar(), &OPTIONS).unwrap_err(), "Layers[0]", "docker ..");
    let manifest = json!([{"Config": config_name, "Layers": ["0a1b/layer.tar"]}]);
    bad.put("manifest.json", serde_json::to_vec(&manifest).unwrap());
    assert_invalid(scene.import_archive(&bad.tar(), &OPTIONS).unwrap_err(), "diff_ids", "docker count");
    scene.assert_empty("docker");
}

#[test]
fn a_multi_platform_index_gives_the_amd64_image() {
    let scene = Scene::new();
    let mut files = Files::default();
    let mut arm = add_image(&mut files, &[(Tar::default().file("arm", b"a").finish(), true)], "arm64");
    arm["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let mut amd = add_image(&mut files, &[(Tar::default().file("amd", b"x").finish(), true)], "amd64");
    amd["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let nested = json!({"schemaVersion": 2, "mediaType": layout::OCI_INDEX, "manifests": [arm.clone(), amd.clone()]});
    let nested = files.blob(layout::OCI_INDEX, serde_json::to_vec(&nested).unwrap());
    set_index(&mut files, vec![nested]);
    let image = scene.import_archive(&files.tar(), &OPTIONS).unwrap();
    assert_eq!(image.digest, amd["digest"].as_str().unwrap());
    assert_eq!(image.config.cmd, ["amd64"]);
    assert_eq!(scene.store.layers().unwrap().len(), 1, "only the chosen platform's layers");

    // Two manifests and neither for linux/amd64: refused, naming the field.
    let scene = Scene::new();
    let mut only_arm = files.clone();
    let mut other = arm.clone();
    other["platform"] = json!({"architecture": "s390x", "os": "linux"});
    set_index(&mut only_arm, vec![arm, other]);
    assert_invalid(scene.import_archive(&only_arm.tar(), &OPTIONS).unwrap_err(), "index.json.manifests", "no amd64");
    scene.assert_empty("no amd64");
}

#[test]
fn manifests_and_configs_are_validated() {
    let layer = gzip(&Tar::default().file("f", b"x").finish());
    let diff_id = sha(&Tar::default().file("f", b"x").finish());
    // (case, layer media type, diff_ids, config media type, expected words)
    let cases: Vec<(&str, &str, Vec<String>, &str, &str)> = vec![
        (
            "foreign layer",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            vec![diff_id.clone()],
            layout::OCI_CONFIG,
            "layers[0].mediaType",
        ),
        ("unknown layer", "text/plain", vec![diff_id.clone()], layout::OCI_CONFIG, "layers[0].mediaType"),
        ("diff_ids count", layout::OCI_LAYER_GZIP, vec![], layout::OCI_CONFIG, "rootfs.diff_ids"),
        ("config type", layout::OCI_LAYER_GZIP, vec![diff_id.clone()], "application/json", "config.mediaType"),
        ("bad diff_id", layout::OCI_LAYER_GZIP, vec!["md5:abc".into()], layout::OCI_CONFIG, "not sha256"),
    ];
    for (case, layer_type, diff_ids, config_type, needle) in cases {
        let scene = Scene::new();
        let mut files = Files::default();
        let layer = files.blob(layer_type, layer.clone());
        let config = json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let config = files.blob(config_type, serde_json::to_vec(&config).unwrap());
        let manifest = json!({"schemaVersion": 2, "config": config, "layers": [layer]});
        let manifest = files.blob(layout::OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
        set_index(&mut files, vec![manifest]);
        assert_invalid(scene.import_archive(&files.tar(), &OPTIONS).unwrap_err(), needle, case);
        scene.assert_empty(case);
    }
    // A descriptor whose size is not its blob's.
    let scene = Scene::new();
    let (mut files, _) = layout_of(&[(Tar::default().file("f", b"x").finish(), false)]);
    let mut index: serde_json::Value = serde_json::from_slice(&files.get_mut("index.json").clone()).unwrap();
    index["manifests"][0]["size"] = json!(1);
    files.put("index.json", serde_json::to_vec(&index).unwrap());
    assert_invalid(scene.import_archive(&files.tar(), &OPTIONS).unwrap_err(), "size", "size");
    // Neither layout nor docker archive.
    let mut files = Files::default();
    files.put("README", b"hello".to_vec());
    assert_invalid(scene.import_archive(&files.tar(), &OPTIONS).unwrap_err(), "not an image", "empty");
    // An archive with a hostile name of its own.
    let outer = Tar::default().file("../index.json", b"{}").finish();
    assert_invalid(scene.import_archive(&outer, &OPTIONS).unwrap_err(), "`..`", "outer ..");
    scene.assert_empty("validation");
}

#[test]
fn concurrent_imports_of_the_same_image_both_succeed() {
    let scene = Arc::new(Scene::new());
    let (files, manifest) = layout_of(&[(base_layer(), true), (top_layer(), false)]);
    let path = scene.input("image.tar", &files.tar());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let scene = scene.clone();
            let path = path.clone();
            std::thread::spawn(move || scene.store.import(&ImportSource::Archive(path), &OPTIONS))
        })
        .collect();
    let results: Vec<StoredImage> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    for r in &results {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(results[0].digest, manifest);
    assert_eq!(scene.store.layers().unwrap().len(), 2);
    let names: Vec<_> =
        fs::read_dir(scene.store.root().join("layers")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no staging directory is left: {names:?}");
    let names: Vec<_> = fs::read_dir(scene.store.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["layers"]);
}

#[test]
fn zstd_layers_in_a_zstd_archive_import() {
    let zstd = |data: &[u8]| ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest);
    let scene = Scene::new();
    let layer = Tar::default().dir("etc/", 0o755, (0, 0)).file("etc/hostname", b"zstd\n").finish();
    let mut files = Files::default();
    let desc = files.blob("application/vnd.oci.image.layer.v1.tar+zstd", zstd(&layer));
    let config = json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]}});
    let config = files.blob(layout::OCI_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({"schemaVersion": 2, "mediaType": layout::OCI_MANIFEST, "config": config, "layers": [desc]});
    let manifest = files.blob(layout::OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    set_index(&mut files, vec![manifest]);
    let image = scene.import_archive(&zstd(&files.tar()), &OPTIONS).unwrap();
    assert_eq!(fs::read(scene.layer(&image.layers[0], "etc/hostname")).unwrap(), b"zstd\n");
    assert_eq!(image.config, ImageConfig::default());
    assert_eq!(image.size_bytes, 5);
}
