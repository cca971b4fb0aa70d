//! Filesystems and projects through the real CLI against the real `bulkhead serve`: `fs create`,
//! `list`, `get`, `resize` (grow only), `push` and `pull` of a whole tree (directories, `.tar`
//! and `.tar.gz`), single files with ETags (`put`, `cat`, `ls`, `rm`), a read-only mount in a
//! sandbox (`sandbox create --filesystem`), and delete refused while mounted unless forced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{text, Server};

/// What a tree holds, by relative path: a file's bytes, a symlink's target, or a directory.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
}

fn snapshot(root: &Path) -> Vec<(String, Node)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Node)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push((rel, Node::Symlink(std::fs::read_link(&path).unwrap())));
            } else if meta.is_dir() {
                out.push((rel, Node::Dir));
                walk(root, &path, out);
            } else {
                out.push((rel, Node::File(std::fs::read(&path).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn filesystems_through_the_cli() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let work = dir.path();
    let server = Server::start(&work.join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = key["token"].as_str().unwrap().to_owned();
    let dev = Some(dev.as_str());

    // Projects.
    let p = server.json(dev, &["project", "create", "--ns", "acme", "team"]);
    let project = p["id"].as_str().unwrap().to_owned();
    assert!(project.starts_with("prj_"), "{p}");
    let list = server.ok(dev, &["project", "list", "--ns", "acme"]);
    assert!(list.starts_with("ID") && list.contains(&project) && list.contains("team"), "{list}");

    // Create, list, get with human units.
    let f = server.json(dev, &["fs", "create", "--ns", "acme", "data", "--size", "64MiB"]);
    let fs = f["id"].as_str().unwrap().to_owned();
    assert_eq!((f["name"].as_str(), f["size_bytes"].as_u64()), (Some("data"), Some(64 << 20)), "{f}");
    let in_project =
        server.json(dev, &["fs", "create", "--ns", "acme", "shared", "--size", "16MiB", "--project", &project]);
    assert_eq!(in_project["project"].as_str(), Some(project.as_str()), "{in_project}");
    let list = server.ok(dev, &["fs", "list", "--ns", "acme"]);
    assert!(list.starts_with("ID") && list.contains(&fs) && list.contains("64MiB"), "{list}");
    let got = server.ok(dev, &["fs", "get", "--ns", "acme", &fs]);
    assert!(got.contains("size:") && got.contains("64MiB") && got.contains("data"), "{got}");
    let err = server.fails(dev, &["project", "delete", "--ns", "acme", &project]);
    assert!(err.contains("409"), "a project with filesystems stays: {err}");
    server.ok(dev, &["fs", "delete", "--ns", "acme", in_project["id"].as_str().unwrap()]);
    assert_eq!(
        server.ok(dev, &["project", "delete", "--ns", "acme", &project]),
        format!("deleted project {project}\n")
    );

    // Push a tree (a file, a nested file, a symlink), pull it back into a fresh directory.
    let src = work.join("src");
    std::fs::create_dir_all(src.join("nested/deeper")).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from the host\n").unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(src.join("nested/deeper/blob.bin"), &payload).unwrap();
    std::os::unix::fs::symlink("../hello.txt", src.join("nested/link")).unwrap();
    let out = server.cli(dev, &["fs", "push", "--ns", "acme", &fs, src.to_str().unwrap()]);
    assert!(out.status.success(), "push: {}", text(&out.stderr));
    let progress = text(&out.stderr);
    assert!(progress.trim_end().lines().count() == 1 && progress.starts_with("pushed "), "{progress:?}");
    let back = work.join("back");
    let out = server.cli(dev, &["fs", "pull", "--ns", "acme", &fs, back.to_str().unwrap()]);
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("pulled "), "{}", text(&out.stderr));
    assert_eq!(snapshot(&back), snapshot(&src), "the tree pulled back differs from the one pushed");

    // Into a .tar file (no temporary file left beside it); a .tar.gz goes in as is.
    let tar = work.join("out/data.tar");
    std::fs::create_dir(work.join("out")).unwrap();
    server.ok(dev, &["fs", "pull", "--ns", "acme", &fs, tar.to_str().unwrap()]);
    let names: Vec<String> =
        std::fs::read_dir(work.join("out")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, ["data.tar"]);
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    assert!(text(&listing.stdout).contains("nested/deeper/blob.bin"), "{}", text(&listing.stdout));
    let gz_src = work.join("gz");
    std::fs::create_dir(&gz_src).unwrap();
    std::fs::write(gz_src.join("only.txt"), b"gzipped\n").unwrap();
    let gz = work.join("tree.tar.gz");
    let status = Command::new("tar").arg("-C").arg(&gz_src).arg("-czf").arg(&gz).arg(".").status().unwrap();
    assert!(status.success());
    let pushed = server.json(dev, &["fs", "push", "--ns", "acme", &fs, gz.to_str().unwrap()]);
    assert_eq!(pushed["bytes"].as_u64(), Some(8), "{pushed}");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "only.txt"]), "gzipped\n");
    assert!(server.fails(dev, &["fs", "cat", "--ns", "acme", &fs, "hello.txt"]).contains("404"));
    std::fs::write(work.join("notes.zip"), b"PK").unwrap();
    let err = server.fails(dev, &["fs", "push", "--ns", "acme", &fs, work.join("notes.zip").to_str().unwrap()]);
    assert!(err.contains("not a directory or a .tar"), "{err}");
    // Back to the tree for the rest.
    server.ok(dev, &["fs", "push", "--ns", "acme", &fs, src.to_str().unwrap()]);

    // Single files: put and cat round trip, conditional writes.
    let local = work.join("todo.txt");
    std::fs::write(&local, b"1. ship it\n").unwrap();
    let tag = server.ok(dev, &["fs", "put", "--ns", "acme", &fs, "notes/todo.txt", local.to_str().unwrap()]);
    let tag = tag.trim().to_owned();
    assert!(tag.starts_with('"') && tag.len() > 10, "{tag}");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/todo.txt"]), "1. ship it\n");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/todo.txt", "--etag"]).trim(), tag);
    let blob = server.cli(dev, &["fs", "cat", "--ns", "acme", &fs, "nested/deeper/blob.bin"]);
    assert!(blob.status.success() && blob.stdout == payload, "cat of a binary file differs");
    let err = server.fails(dev, &["fs", "put", "--ns", "acme", &fs, "notes/todo.txt", "--if-none-match"]);
    assert!(err.contains("412") || err.contains("conflict"), "{err}");
    let out =
        server.run(dev, &["fs", "put", "--ns", "acme", &fs, "notes/todo.txt", "--if-match", &tag], b"2. test it\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new_tag = text(&out.stdout).trim().to_owned();
    assert_ne!(new_tag, tag);
    // The old ETag no longer matches (given without its quotes, as people type it).
    let err =
        server.fails(dev, &["fs", "put", "--ns", "acme", &fs, "notes/todo.txt", "--if-match", tag.trim_matches('"')]);
    assert!(err.contains("412"), "{err}");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/todo.txt"]), "2. test it\n");
    let out = server.run(dev, &["fs", "put", "--ns", "acme", &fs, "fresh.txt", "-", "--if-none-match"], b"new\n");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // ls: the root and a directory.
    let ls = server.ok(dev, &["fs", "ls", "--ns", "acme", &fs]);
    let header: Vec<&str> = ls.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TYPE", "MODE", "SIZE", "MODIFIED"], "{ls}");
    let kind_of = |ls: &str, name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
    };
    assert_eq!(kind_of(&ls, "hello.txt").as_deref(), Some("file"), "{ls}");
    assert_eq!(kind_of(&ls, "nested").as_deref(), Some("directory"), "{ls}");
    let ls = server.ok(dev, &["fs", "ls", "--ns", "acme", &fs, "nested"]);
    assert_eq!(kind_of(&ls, "link").as_deref(), Some("symlink"), "{ls}");
    let entries = server.json(dev, &["fs", "ls", "--ns", "acme", &fs, "nested/deeper"]);
    assert_eq!(entries[0]["name"], "blob.bin");
    assert_eq!(entries[0]["size"].as_u64(), Some(payload.len() as u64));
    // rm.
    assert_eq!(server.ok(dev, &["fs", "rm", "--ns", "acme", &fs, "fresh.txt"]), "deleted fresh.txt\n");
    assert!(server.fails(dev, &["fs", "cat", "--ns", "acme", &fs, "fresh.txt"]).contains("404"));

    // Grow (unmounted: not every kernel grows a mounted ext4); shrinking is refused with one
    // clear line.
    let grown = server.json(dev, &["fs", "resize", "--ns", "acme", &fs, "--size", "128MiB"]);
    assert_eq!(grown["size_bytes"].as_u64(), Some(128 << 20), "{grown}");
    let err = server.fails(dev, &["fs", "resize", "--ns", "acme", &fs, "--size", "64MiB"]);
    assert!(err.contains("only grow"), "{err}");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "hello.txt"]), "hello from the host\n");

    // Mounted read-only in a sandbox at /workspace.
    let mount = format!("{fs}:ro");
    let s = server.json(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &mount]);
    let sbx = s["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (s["filesystem"]["id"].as_str(), s["filesystem"]["mode"].as_str()),
        (Some(fs.as_str()), Some("ro")),
        "{s}"
    );
    assert_eq!(
        server.ok(dev, &["exec", "--ns", "acme", &sbx, "--", "cat", "/workspace/hello.txt"]),
        "hello from the host\n"
    );
    assert_eq!(
        server.ok(dev, &["exec", "--ns", "acme", &sbx, "--", "cat", "/workspace/notes/todo.txt"]),
        "2. test it\n"
    );
    let out = server.cli(dev, &["exec", "--ns", "acme", &sbx, "--", "sh", "-c", "echo x > /workspace/x"]);
    assert!(!out.status.success(), "a read-only mount took a write");
    // A bad mode is a usage error (clap's, so with its hint below).
    let out = server.cli(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &format!("{fs}:rx")]);
    assert!(!out.status.success() && text(&out.stderr).contains("is not ID, ID:rw or ID:ro"), "{}", text(&out.stderr));
    let got = server.json(dev, &["fs", "get", "--ns", "acme", &fs]);
    assert_eq!(got["mounted_by"][0].as_str(), Some(sbx.as_str()), "{got}");
    let err = server.fails(dev, &["fs", "push", "--ns", "acme", &fs, src.to_str().unwrap()]);
    assert!(err.contains("409"), "push under a running sandbox: {err}");

    // Delete: refused while mounted, forced takes the sandbox with it.
    let err = server.fails(dev, &["fs", "delete", "--ns", "acme", &fs]);
    assert!(err.contains("409") && err.contains(&sbx), "{err}");
    let out = server.ok(dev, &["fs", "delete", "--ns", "acme", &fs, "--force"]);
    assert!(out.contains(&fs) && out.contains(&sbx), "{out}");
    assert!(!server.ok(dev, &["fs", "list", "--ns", "acme"]).contains(&fs));
    let ended = server.json(dev, &["sandbox", "get", "--ns", "acme", &sbx]);
    assert_eq!(ended["status"].as_str(), Some("deleted"), "{ended}");
    assert!(server
        .fails(dev, &["fs", "pull", "--ns", "acme", &fs, work.join("gone").to_str().unwrap()])
        .contains("404"));

    // Deleting the sandbox again is harmless; then the namespace, and no mount of this server's
    // is left on the host.
    let out = server.cli(dev, &["sandbox", "delete", "--ns", "acme", &sbx]);
    assert!(out.status.success() || text(&out.stderr).trim_end().lines().count() == 1, "{}", text(&out.stderr));
    server.ok(None, &["namespace", "delete", "acme"]);
    assert!(!server.ok(None, &["namespace", "list"]).contains("acme"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = server.state_dir.to_str().unwrap();
    assert!(!mounts.lines().any(|l| l.contains(state)), "mounts left under {state}:\n{mounts}");
}
