//! Archives round-trip what a filesystem holds, against the real server and real (loop-mounted
//! ext4) filesystems: absolute and relative symlinks as data, modes (a 0755 script), mtimes
//! (directories' too), names that are not UTF-8, a 1 TiB sparse file that travels as its few
//! blocks of data, an empty directory and a Python virtualenv, through `bulkhead fs push` and
//! `fs pull`, read back by GNU tar, and used by a sandbox. Hostile archives are each a 400
//! naming the entry, leaving the filesystem as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bulkhead_runtime::archive::sparse_map_of;
use common::process::{text, Server};
use common::{assert_envelope, Harness, Reply};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TIB: u64 = 1 << 40;
const MIB: u64 = 1 << 20;

/// What a file holds: its size, its runs of data (the whole file when it has no holes) and a
/// digest of the data in them.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    Dir,
    File { size: u64, sparse: bool, runs: Vec<(u64, u64)>, digest: String },
    Symlink(Vec<u8>),
}

/// One entry of a tree as `lstat` sees it: path (raw bytes), permission bits, mtime in seconds.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: String,
    mode: u32,
    mtime: i64,
    content: Content,
}

fn content_of(path: &Path, meta: &std::fs::Metadata) -> Content {
    use std::os::unix::fs::FileExt;
    if meta.file_type().is_symlink() {
        return Content::Symlink(std::fs::read_link(path).unwrap().into_os_string().into_vec());
    }
    if meta.is_dir() {
        return Content::Dir;
    }
    let f = std::fs::File::open(path).unwrap();
    let map = sparse_map_of(&f, meta.len()).unwrap();
    let sparse = map.is_some();
    let runs = map.map(|m| m.segments).unwrap_or_else(|| vec![(0, meta.len())]);
    let mut hash = Sha256::new();
    for (offset, len) in &runs {
        let mut buf = vec![0u8; *len as usize];
        f.read_exact_at(&mut buf, *offset).unwrap();
        hash.update(&buf);
    }
    let digest = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Content::File { size: meta.len(), sparse, runs, digest }
}

/// Every entry under `root` (not the root itself), sorted by path.
fn snapshot(root: &Path) -> Vec<Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes();
            let mode = if meta.file_type().is_symlink() { 0 } else { meta.mode() & 0o7777 };
            out.push(Entry {
                path: String::from_utf8_lossy(rel).into_owned() + &format!(" {rel:x?}"),
                mode,
                mtime: meta.mtime(),
                content: content_of(&path, &meta),
            });
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn set_mtime(path: &Path, secs: u64) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    out
}

/// The tree of the round trip: every kind of thing a filesystem holds that archives carry.
fn make_tree(src: &Path) {
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/run.sh"), b"#!/bin/sh\necho hi from the script\n").unwrap();
    std::fs::set_permissions(src.join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(src.join("bin/run.sh"), src.join("bin/run-again.sh")).unwrap();
    std::fs::write(src.join("old.txt"), b"from 2001\n").unwrap();
    std::fs::set_permissions(src.join("old.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&src.join("old.txt"), 1_000_000_000);
    // Names that are not UTF-8: short, in a directory, and longer than a tar header holds.
    std::fs::write(src.join(OsStr::from_bytes(b"caf\xe9.txt")), b"latin-1 name\n").unwrap();
    let odd_dir = src.join(OsStr::from_bytes(b"d\xff"));
    std::fs::create_dir(&odd_dir).unwrap();
    std::fs::write(odd_dir.join("inner"), b"inside\n").unwrap();
    let long = OsString::from_vec([&b"\xfe"[..], &[b'n'; 150]].concat());
    std::fs::write(odd_dir.join(&long), b"long name\n").unwrap();
    // Symlinks: absolute, relative, upward and dangling, to a name that is not UTF-8.
    std::os::unix::fs::symlink("/usr/bin/python3", src.join("abs")).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", src.join("rel")).unwrap();
    std::os::unix::fs::symlink("../../outside/nowhere", src.join("bin/up")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9.txt"), src.join("to-cafe")).unwrap();
    // A terabyte, three blocks of data.
    let tera = std::fs::File::create(src.join("tera")).unwrap();
    tera.set_len(TIB).unwrap();
    for (i, offset) in [0, 3 << 30, TIB - 4096].into_iter().enumerate() {
        std::os::unix::fs::FileExt::write_all_at(&tera, &[i as u8 + 1; 4096], offset).unwrap();
    }
    drop(tera);
    // An empty directory, private and old.
    std::fs::create_dir(src.join("empty")).unwrap();
    std::fs::set_permissions(src.join("empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
    set_mtime(&src.join("empty"), 1_100_000_000);
    // A virtualenv of the system Python: bin/python3 -> /usr/bin/python3.
    run(Command::new("/usr/bin/python3").args(["-m", "venv", "--without-pip"]).arg(src.join("venv")));
    set_mtime(&src.join("bin"), 1_200_000_000);
}

#[test]
fn a_tree_round_trips_exactly_through_push_pull_and_gnu_tar() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let work = dir.path();
    let server = Server::start(&work.join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = key["token"].as_str().unwrap().to_owned();
    let dev = Some(dev.as_str());
    let f = server.json(dev, &["fs", "create", "--ns", "acme", "project", "--size", "64MiB"]);
    let fs = f["id"].as_str().unwrap().to_owned();

    let src = work.join("src");
    make_tree(&src);
    let expected = snapshot(&src);
    let tera = expected.iter().find(|e| e.path.starts_with("tera ")).unwrap();
    assert!(matches!(tera.content, Content::File { sparse: true, .. }), "the source file is sparse: {tera:?}");

    let out = server.cli(dev, &["fs", "push", "--ns", "acme", &fs, src.to_str().unwrap()]);
    assert!(out.status.success(), "push: {}", text(&out.stderr));
    // The terabyte landed as its blocks: the filesystem holds far less than its 64 MiB.
    let got = server.json(dev, &["fs", "get", "--ns", "acme", &fs]);
    assert!(got["used_bytes"].as_u64().unwrap() < 32 * MIB, "{got}");

    // Pulled into a directory (unpacked by tar), everything is as it was.
    let back = work.join("back");
    let out = server.cli(dev, &["fs", "pull", "--ns", "acme", &fs, back.to_str().unwrap()]);
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    assert_eq!(snapshot(&back), expected, "the tree pulled back differs from the one pushed");

    // Pulled as a .tar: small, and GNU tar reads it back exactly.
    let tar = work.join("out.tar");
    server.ok(dev, &["fs", "pull", "--ns", "acme", &fs, tar.to_str().unwrap()]);
    let size = std::fs::metadata(&tar).unwrap().len();
    assert!(size < 8 * MIB, "the archive of a sparse terabyte is {size} bytes");
    let listing = run(Command::new("tar").arg("-tvf").arg(&tar));
    let listing = text(&listing.stdout);
    let line = listing.lines().find(|l| l.ends_with(" tera")).unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains(&TIB.to_string()), "{line}");
    let gnu = work.join("gnu");
    std::fs::create_dir(&gnu).unwrap();
    run(Command::new("tar").arg("-C").arg(&gnu).arg("-xSf").arg(&tar));
    assert_eq!(snapshot(&gnu), expected, "GNU tar's extraction of the download differs");

    // A sandbox that mounts the filesystem runs the virtualenv's Python and sees the rest.
    let s = server.json(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &fs]);
    let sbx = s["id"].as_str().unwrap().to_owned();
    let exec = |cmd: &[&str]| {
        let mut args = vec!["exec", "--ns", "acme", &sbx, "--"];
        args.extend_from_slice(cmd);
        server.ok(dev, &args)
    };
    assert_eq!(exec(&["/workspace/venv/bin/python", "-c", "print(1)"]), "1\n");
    assert_eq!(exec(&["/workspace/rel"]), "hi from the script\n");
    assert_eq!(exec(&["readlink", "/workspace/abs"]), "/usr/bin/python3\n");
    assert_eq!(
        exec(&["stat", "-c", "%s %a %Y", "/workspace/tera", "/workspace/bin/run.sh", "/workspace/old.txt"]),
        format!("{TIB} 644 {}\n34 755 {}\n10 600 1000000000\n", tera.mtime, mtime_of(&expected, "bin/run.sh ")),
    );
    server.ok(dev, &["sandbox", "delete", "--ns", "acme", &sbx]);
    server.ok(None, &["namespace", "delete", "acme"]);
}

fn mtime_of(entries: &[Entry], prefix: &str) -> i64 {
    entries.iter().find(|e| e.path.starts_with(prefix)).unwrap().mtime
}

// ---- Hostile archives, through the HTTP API ----

/// A number field: octal, or GNU base-256 when octal does not fit.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if value < 1 << (3 * digits) {
        field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let at = field.len() - 8;
        field[at..].copy_from_slice(&value.to_be_bytes());
    }
}

/// A GNU tar header block.
fn header(name: &[u8], kind: u8, mode: u32, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..265].copy_from_slice(b"ustar  \0");
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Archives built block by block, for what no tool writes.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn entry(mut self, name: &[u8], kind: u8, mode: u32, link: &[u8], data: &[u8]) -> Tar {
        let mut h = header(name, kind, mode, data.len() as u64, link);
        checksum(&mut h);
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Tar {
        self.entry(name.as_bytes(), b'0', 0o644, b"", data)
    }

    /// A GNU sparse entry (`S`): up to four runs in its header, `data` after it (which may be
    /// less than the header announces: a refusal comes before the data is read).
    fn sparse(mut self, name: &str, real_size: u64, runs: &[(u64, u64)], announced: u64, data: &[u8]) -> Tar {
        let mut h = header(name.as_bytes(), b'S', 0o644, announced, b"");
        for (i, (offset, len)) in runs.iter().enumerate() {
            let slot = 386 + i * 24;
            octal(&mut h[slot..slot + 12], *offset);
            octal(&mut h[slot + 12..slot + 24], *len);
        }
        octal(&mut h[483..495], real_size);
        checksum(&mut h);
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

async fn raw(h: &Harness, method: Method, path: &str, body: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::from(body))
        .unwrap();
    h.send(req).await
}

#[tokio::test]
async fn hostile_archives_are_refused_naming_the_entry() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/alpha/filesystems",
            Some(&h.admin),
            json!({"name": "data", "size_bytes": 32 * MIB}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let base = format!("/v1/namespaces/alpha/filesystems/{}", r.body["id"].as_str().unwrap());
    let first = Tar::default().file("keep/me.txt", b"previous").finish();
    let r = raw(&h, Method::PUT, &format!("{base}/archive"), first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let before = h.call(Method::GET, &format!("{base}/archive"), Some(&h.admin), Value::Null).await;
    assert_eq!(before.status, StatusCode::OK);

    let ok = || Tar::default().file("ok.txt", b"fine");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("absolute name", ok().file("/etc/evil", b"x").finish(), "/etc/evil"),
        ("`..`", ok().file("a/../../escape", b"x").finish(), "a/../../escape"),
        (
            "hard link to a later entry",
            ok().entry(b"hl", b'1', 0o644, b"later", b"").file("later", b"x").finish(),
            "hl",
        ),
        ("hard link to no entry", ok().entry(b"hl2", b'1', 0o644, b"keep/me.txt", b"").finish(), "hl2"),
        ("hard link out", ok().entry(b"hl3", b'1', 0o644, b"/etc/passwd", b"").finish(), "hl3"),
        ("character device", ok().entry(b"null", b'3', 0o666, b"", b"").finish(), "null"),
        ("block device", ok().entry(b"sda", b'4', 0o660, b"", b"").finish(), "sda"),
        ("fifo", ok().entry(b"pipe", b'6', 0o644, b"", b"").finish(), "pipe"),
        ("setuid", ok().entry(b"suid", b'0', 0o4755, b"", b"x").finish(), "suid"),
        ("setgid directory", ok().entry(b"sgid/", b'5', 0o2755, b"", b"").finish(), "sgid/"),
        (
            "overlapping sparse map",
            ok().sparse("overlap", 100_000, &[(0, 4096), (2048, 4096)], 8192, &[1; 8192]).finish(),
            "overlap",
        ),
        (
            "sparse map out of order",
            ok().sparse("unordered", 100_000, &[(8192, 512), (0, 512)], 1024, &[1; 1024]).finish(),
            "unordered",
        ),
        ("sparse run past the size", ok().sparse("past", 1000, &[(512, 1024)], 1024, &[1; 1024]).finish(), "past"),
        (
            "sparse data larger than the filesystem",
            ok().sparse("huge", 1 << 32, &[(0, 40 * MIB), (1 << 31, 4096)], 40 * MIB + 4096, &[1; 4096]).finish(),
            "huge",
        ),
        (
            "sparse file larger than a file can be",
            ok().sparse("pebi", 1 << 50, &[(0, 512), (1 << 49, 512)], 1024, &[1; 1024]).finish(),
            "pebi",
        ),
        (
            "write through an absolute symlink",
            ok().entry(b"link", b'2', 0o777, b"/etc", b"").file("link/evil", b"x").finish(),
            "link/evil",
        ),
        (
            "write through a relative symlink",
            ok().entry(b"up", b'2', 0o777, b"../..", b"").entry(b"up/x/", b'5', 0o755, b"", b"").finish(),
            "up/x/",
        ),
    ];
    for (case, data, entry) in cases {
        let r = raw(&h, Method::PUT, &format!("{base}/archive"), data).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{case}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("cannot write"), "{case}: {message:?} says why");
        assert!(message.contains(&format!("{entry:?}")), "{case}: {message:?} does not name {entry:?}");
        eprintln!("{case}: {message}");
        let after = h.call(Method::GET, &format!("{base}/archive"), Some(&h.admin), Value::Null).await;
        assert_eq!(after.raw, before.raw, "{case} changed the filesystem");
    }
    assert!(!Path::new("/etc/evil").exists());
}
