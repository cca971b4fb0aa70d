//! Faults of the host under a running server: a filesystem's mount gone from underneath (an
//! `umount`, or a reboot that emptied the state dir and detached the loop devices) is mounted
//! again on demand with its data; a full data disk answers 507 `insufficient_storage` on writes
//! while reads keep working, and after space is freed everything works again with the audit
//! chain and the database intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{runtime_names, text, Server};
use serde_json::Value;

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// `curl` against the server: status and JSON body (Null when none).
fn http(server: &Server, token: &str, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-D", "-", "-w", "\n%{http_code}", "-X", method, "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("{}{path}", server.url));
    if body.is_some() {
        c.args(["-H", "content-type: application/octet-stream", "--data-binary", "@-"]);
        c.stdin(std::process::Stdio::piped());
    }
    c.stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("curl");
    if let Some(b) = body {
        child.stdin.take().unwrap().write_all(b).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = all.rsplit_once('\n').unwrap();
    // The last header block: a `100 Continue` may come before the answer's.
    let (headers, body) = rest.rsplit_once("\r\n\r\n").unwrap_or((rest, ""));
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null), headers.to_owned())
}

fn admin(server: &Server) -> String {
    server.first_token.clone().expect("first start prints the admin token")
}

/// Unmounts `path` if mounted (lazily, as a careless operator might).
fn umount(path: &Path) {
    let _ = sh("umount", &["-l", &path.display().to_string()]);
}

/// Loop devices backed by `image`.
fn loops_of(image: &Path) -> Vec<String> {
    let out = sh("losetup", &["-j", &image.display().to_string()]);
    text(&out.stdout).lines().filter_map(|l| l.split(':').next()).map(str::to_owned).collect()
}

fn image_of(data: &Path, fs: &str) -> PathBuf {
    data.join("filesystems").join("images").join(format!("{fs}.img"))
}

fn mount_of(server: &Server, fs: &str) -> PathBuf {
    server.state_dir.join("filesystems").join(fs)
}

fn is_mounted(path: &Path) -> bool {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == Some(&wanted))
}

/// A server with namespace `acme`, a developer key and filesystem `data` holding one file.
fn with_filesystem(data: &Path) -> (Server, String, String) {
    let server = Server::start(data);
    server.ok(None, &["namespace", "create", "acme"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = key["token"].as_str().unwrap().to_owned();
    let fs = server.json(Some(&dev), &["fs", "create", "--ns", "acme", "data", "--size", "32MiB"]);
    let fs = fs["id"].as_str().unwrap().to_owned();
    let local = data.parent().unwrap().join("note.txt");
    std::fs::write(&local, "kept across faults\n").unwrap();
    server.ok(Some(&dev), &["fs", "put", "--ns", "acme", &fs, "notes/note.txt", local.to_str().unwrap()]);
    (server, dev, fs)
}

/// `umount` of a filesystem underneath the running server: the next list, read and upload
/// mount it again, with its data.
#[test]
fn a_filesystem_unmounted_underneath_is_mounted_again_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (server, dev, fs) = with_filesystem(&dir.path().join("data"));
    let mnt = mount_of(&server, &fs);
    let token = dev.clone();
    let dev = Some(dev.as_str());

    umount(&mnt);
    assert!(!is_mounted(&mnt));
    let listing = server.ok(dev, &["fs", "ls", "--ns", "acme", &fs, "notes"]);
    assert!(listing.contains("note.txt"), "{listing}");
    assert!(is_mounted(&mnt), "the list mounted it again");

    umount(&mnt);
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"]), "kept across faults\n");

    umount(&mnt);
    let local = dir.path().join("more.txt");
    std::fs::write(&local, "written after a repair\n").unwrap();
    server.ok(dev, &["fs", "put", "--ns", "acme", &fs, "more.txt", local.to_str().unwrap()]);
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "more.txt"]), "written after a repair\n");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"]), "kept across faults\n");

    // Many requests at once on a vanished mount: one repair, every answer a success.
    umount(&mnt);
    let answers: Vec<_> = (0..6)
        .map(|_| {
            let (url, token, fs) = (server.url.clone(), token.clone(), fs.clone());
            std::thread::spawn(move || {
                Command::new(env!("CARGO_BIN_EXE_bulkhead"))
                    .args(["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"])
                    .env("BULKHEAD_URL", url)
                    .env("BULKHEAD_TOKEN", token)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for a in answers {
        let out = a.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "kept across faults\n");
    }
    let image = image_of(&server.data_dir, &fs);
    assert_eq!(loops_of(&image).len(), 1, "one loop device for the image: {:?}", loops_of(&image));
}

/// A sandbox created with a filesystem whose mount vanished gets the filesystem, with its data.
#[test]
fn a_sandbox_create_mounts_a_vanished_filesystem_again() {
    let dir = tempfile::tempdir().unwrap();
    let (server, dev, fs) = with_filesystem(&dir.path().join("data"));
    umount(&mount_of(&server, &fs));
    let dev = Some(dev.as_str());
    let s = server.json(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &format!("{fs}:rw")]);
    let id = s["id"].as_str().unwrap();
    let out = server.ok(dev, &["exec", "--ns", "acme", id, "--", "cat", "/workspace/notes/note.txt"]);
    assert_eq!(out, "kept across faults\n");
    server.ok(dev, &["sandbox", "delete", "--ns", "acme", id]);
}

/// A reboot while the server was down: the state dir is gone and the loop devices detached.
/// The next start rebuilds every mount from the data dir, with the data.
#[test]
fn after_a_reboot_a_start_rebuilds_the_filesystems_from_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, dev, fs) = with_filesystem(&data);
    let names = (server.state_dir.clone(), server.cgroup_prefix.clone());
    let mnt = mount_of(&server, &fs);
    server.stop();
    drop(server);
    // What a reboot leaves: no mount, no loop device, an empty /run.
    if is_mounted(&mnt) {
        assert!(sh("umount", &[&mnt.display().to_string()]).status.success());
    }
    for dev in loops_of(&image_of(&data, &fs)) {
        let _ = sh("losetup", &["-d", &dev]);
    }
    let _ = std::fs::remove_dir_all(&names.0);

    let server = Server::start_with(&data, names);
    assert!(is_mounted(&mount_of(&server, &fs)), "the start mounted it again");
    let dev = Some(dev.as_str());
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"]), "kept across faults\n");
}

/// A second server with its own data dir sharing the state dir does not take the first one's
/// filesystems for orphans of its own.
#[test]
fn a_server_judges_only_its_own_data_dirs_images() {
    let dir = tempfile::tempdir().unwrap();
    let (first, dev, fs) = with_filesystem(&dir.path().join("first"));
    let mnt = mount_of(&first, &fs);
    // The second server's start over the same state dir (on today's code it "removed an
    // orphaned filesystem image": the first one's mount). Started by hand: the harness's own
    // cleanup of a server would unmount everything under the state dir it names.
    let other = dir.path().join("second");
    let prefix = format!("{}-b", first.cgroup_prefix);
    let mut second = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["serve", "--network", "loopback-only", "--listen", "127.0.0.1:0"])
        .args(common::images::default_image_args())
        .args(common::process::store_args(&other))
        .arg("--data-dir")
        .arg(&other)
        .arg("--state-dir")
        .arg(&first.state_dir)
        .args(["--cgroup-prefix", &prefix])
        .arg("--host-registry")
        .arg(other.join("host-registry"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It listens, or refuses to start (the state dir's lock, the integrator's): either way its
    // start is over once it printed its line or exited.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(second.stdout.take().unwrap()));
    let _ = lines.find(|l| l.as_ref().map_or(true, |l| l.starts_with("bulkhead listening on ")));
    let _ = second.kill();
    let _ = second.wait();
    let _ = bulkhead_runtime::oci::purge(&other.join("no-state"), Path::new("/sys/fs/cgroup"), &prefix);
    assert!(is_mounted(&mnt), "the first server's filesystem is still mounted");
    assert!(image_of(&first.data_dir, &fs).exists());
    assert_eq!(first.ok(Some(&dev), &["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"]), "kept across faults\n");
}

/// `curl` GET of raw bytes: status and body.
fn download(server: &Server, token: &str, path: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("{}{path}", server.url))
        .output()
        .unwrap();
    let split = out.stdout.iter().rposition(|&b| b == b'\n').unwrap();
    (text(&out.stdout[split + 1..]).parse().unwrap(), out.stdout[..split].to_vec())
}

/// Whether `path` is a mount point mounted read-only.
fn mounted_read_only(path: &Path) -> bool {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(1) == Some(&wanted.as_str()) && f.get(3).is_some_and(|o| o.split(',').any(|o| o == "ro"))
    })
}

/// When e2fsck last checked the filesystem in `image` (its superblock's "Last checked").
fn last_checked(image: &Path) -> String {
    let out = sh("dumpe2fs", &["-h", &image.display().to_string()]);
    let all = text(&out.stdout);
    all.lines().find(|l| l.starts_with("Last checked:")).unwrap_or_else(|| panic!("dumpe2fs: {all}")).to_owned()
}

/// A filesystem that turned read-only after a disk error (ext4's `errors=remount-ro`, here a
/// remount on the host) while a sandbox holds it: the sandbox's mount lives in its own mount
/// namespace, so nothing is unmounted, checked or mounted again under it. Reads keep working,
/// writes answer 503 with `Retry-After` and a message that says why, the sandbox still sees
/// its data; once the sandbox is gone the next write repairs it, with the data intact.
#[test]
fn a_read_only_filesystem_a_sandbox_holds_keeps_reads_and_is_repaired_once_free() {
    let dir = tempfile::tempdir().unwrap();
    // The server's drop kills the sandboxes and unmounts its filesystems, even on a panic.
    let (server, token, fs) = with_filesystem(&dir.path().join("data"));
    let dev = Some(token.as_str());
    let mnt = mount_of(&server, &fs);
    let image = image_of(&server.data_dir, &fs);
    let s = server.json(dev, &["sandbox", "create", "--ns", "acme", "--filesystem", &format!("{fs}:rw")]);
    let sandbox = s["id"].as_str().unwrap().to_owned();
    let exec = |cmd: &str| server.ok(dev, &["exec", "--ns", "acme", &sandbox, "--", "sh", "-c", cmd]);
    assert_eq!(exec("cat /workspace/notes/note.txt"), "kept across faults\n");
    let checked = last_checked(&image);
    // A check now would be told apart from the one at creation.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let loops = loops_of(&image);
    assert_eq!(loops.len(), 1, "{loops:?}");

    let out = sh("mount", &["-o", "remount,ro", &mnt.display().to_string()]);
    assert!(out.status.success(), "remount: {}", text(&out.stderr));

    let files = format!("/v1/namespaces/acme/filesystems/{fs}/files");
    for round in 0..2 {
        // Reads: a list, a file, the archive.
        let listing = server.ok(dev, &["fs", "ls", "--ns", "acme", &fs, "notes"]);
        assert!(listing.contains("note.txt"), "round {round}: {listing}");
        assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"]), "kept across faults\n");
        let (status, tar) = download(&server, &token, &format!("/v1/namespaces/acme/filesystems/{fs}/archive"));
        assert_eq!(status, 200, "archive: {}", text(&tar));
        assert!(
            tar.windows(b"kept across faults".len()).any(|w| w == b"kept across faults"),
            "the archive holds the file"
        );
        // Writes: 503, retryable, saying why.
        let (status, body, headers) = http(&server, &token, "PUT", &format!("{files}?path=new.txt"), Some(b"new\n"));
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "round {round}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&fs) && message.contains("read-only after a disk error"), "{message}");
        assert!(message.contains("no sandbox uses it"), "{message}");
        assert!(headers.to_ascii_lowercase().contains("retry-after:"), "{headers}");
        let (status, body, _) = http(&server, &token, "DELETE", &format!("{files}?path=notes/note.txt"), None);
        assert_eq!(status, 503, "a remove is refused too: {body}");
        // Nothing was unmounted, checked or mounted again under the sandbox.
        assert!(mounted_read_only(&mnt), "the read-only host mount stays");
        assert_eq!(loops_of(&image), loops, "the same loop device");
        assert_eq!(last_checked(&image), checked, "no e2fsck ran while the sandbox mounts it");
        assert_eq!(exec("cat /workspace/notes/note.txt"), "kept across faults\n");
    }
    let out = server.cli(dev, &["fs", "put", "--ns", "acme", &fs, "put.txt", "/etc/hostname"]);
    assert!(!out.status.success(), "a CLI put is refused");
    assert!(text(&out.stderr).contains("read-only after a disk error"), "{}", text(&out.stderr));

    // The sandbox goes: the next write repairs the filesystem (unmount, check, mount).
    server.ok(dev, &["sandbox", "delete", "--ns", "acme", &sandbox]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body, _) = http(&server, &token, "PUT", &format!("{files}?path=new.txt"), Some(b"new\n"));
        if (200..300).contains(&status) {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(std::time::Instant::now() < deadline, "still refused after the sandbox went: {body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(is_mounted(&mnt) && !mounted_read_only(&mnt), "mounted again read-write");
    assert_ne!(last_checked(&image), checked, "checked once nothing mounted it");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "new.txt"]), "new\n");
    assert_eq!(server.ok(dev, &["fs", "cat", "--ns", "acme", &fs, "notes/note.txt"]), "kept across faults\n");
    assert_eq!(loops_of(&image).len(), 1, "one loop device for the image: {:?}", loops_of(&image));
}

/// A small ext4 of its own, loop-mounted: the data dir of a server whose disk fills up.
struct SmallDisk {
    image: PathBuf,
    mnt: PathBuf,
}

impl SmallDisk {
    fn new(dir: &Path, mib: u64) -> SmallDisk {
        let image = dir.join("bulkhead-test-disk.img");
        let mnt = dir.join("bulkhead-test-disk");
        std::fs::File::create(&image).unwrap().set_len(mib << 20).unwrap();
        assert!(sh("mkfs.ext4", &["-q", "-F", &image.display().to_string()]).status.success());
        std::fs::create_dir(&mnt).unwrap();
        let out = sh("mount", &["-o", "loop", &image.display().to_string(), &mnt.display().to_string()]);
        assert!(out.status.success(), "mount: {}", text(&out.stderr));
        SmallDisk { image, mnt }
    }

    /// Fills the disk with one file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.mnt.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        loop {
            if f.write_all(&chunk).is_err() || f.sync_data().is_err() {
                break;
            }
        }
        // Whatever fits in smaller pieces too.
        let small = vec![0x5au8; 4096];
        while f.write_all(&small).is_ok() && f.sync_data().is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a loop device of a filesystem image on it may be released a moment later.
        let _ = sh("umount", &["-l", &self.mnt.display().to_string()]);
        for dev in loops_of(&self.image) {
            let _ = sh("losetup", &["-d", &dev]);
        }
    }
}

/// The data dir's disk full: writes answer 507 (never a 500, never a success that lost data),
/// reads keep working; once space is freed everything works again, the audit chains verify and
/// the database is intact.
#[test]
fn a_full_data_disk_answers_507_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path(), 96);
    let data = disk.mnt.join("data");
    let names = runtime_names();
    let server = Server::start_with(&data, names);
    let admin = admin(&server);
    server.ok(None, &["namespace", "create", "acme"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let dev = key["token"].as_str().unwrap().to_owned();
    let fs = server.json(Some(&dev), &["fs", "create", "--ns", "acme", "data", "--size", "64MiB"]);
    let fs = fs["id"].as_str().unwrap().to_owned();
    let (status, _, _) = http(
        &server,
        &dev,
        "PUT",
        &format!("/v1/namespaces/acme/filesystems/{fs}/files?path=before.txt"),
        Some(b"before\n"),
    );
    assert!((200..300).contains(&status), "write before the disk fills: {status}");

    let filler = disk.fill();

    // An upload whose image must grow on the full disk: 507, and the file is not there.
    let big = vec![0xa5u8; 8 << 20];
    let (status, body, _) =
        http(&server, &dev, "PUT", &format!("/v1/namespaces/acme/filesystems/{fs}/files?path=big.bin"), Some(&big));
    assert_eq!((status, body["error"]["code"].as_str()), (507, Some("insufficient_storage")), "{body}");
    // Creates: each is a success that is there afterwards, or a 507; never anything else.
    let mut refused = 0;
    let mut made = Vec::new();
    for i in 0..40 {
        let name = format!("k{i}");
        let body = format!(r#"{{"name":"{name}","role":"viewer"}}"#);
        let (status, answer, _) = http_json(&server, &admin, "POST", "/v1/namespaces/acme/keys", &body);
        match status {
            201 => made.push(name),
            507 => {
                assert_eq!(answer["error"]["code"], "insufficient_storage", "{answer}");
                refused += 1;
            }
            other => panic!("a create on a full disk answered {other}: {answer}"),
        }
    }
    // Reads keep working.
    let (status, _, _) =
        http(&server, &dev, "GET", &format!("/v1/namespaces/acme/filesystems/{fs}/files?path=before.txt"), None);
    assert_eq!(status, 200);
    let (status, keys, _) = http(&server, &admin, "GET", "/v1/namespaces/acme/keys?limit=100", None);
    assert_eq!(status, 200, "{keys}");
    for name in &made {
        assert!(keys.to_string().contains(&format!("\"{name}\"")), "acknowledged key {name} is there");
    }
    eprintln!("on the full disk: {} creates acknowledged, {refused} refused with 507", made.len());

    // Space freed: everything works again.
    std::fs::remove_file(&filler).unwrap();
    let (status, body, _) =
        http(&server, &dev, "PUT", &format!("/v1/namespaces/acme/filesystems/{fs}/files?path=big.bin"), Some(&big));
    assert!((200..300).contains(&status), "{status} {body}");
    let out = server.cli(Some(&dev), &["fs", "cat", "--ns", "acme", &fs, "big.bin"]);
    assert!(out.status.success() && out.stdout == big, "the big file reads back");
    server.ok(None, &["key", "create", "--ns", "acme", "after", "--role", "viewer"]);
    for path in ["/v1/namespaces/acme/audit/verify", "/v1/audit/verify"] {
        let (status, v, _) = http(&server, &admin, "GET", path, None);
        assert_eq!((status, v["ok"].as_bool()), (200, Some(true)), "{path}: {v}");
    }
    let db = data.join("bulkhead.db");
    if let Ok(out) = Command::new("sqlite3").arg(&db).arg("PRAGMA integrity_check").output() {
        if out.status.success() {
            assert_eq!(text(&out.stdout).trim(), "ok");
        }
    }
    // The server (and its filesystem's mount, whose image lives on the small disk) goes before
    // the disk.
    drop(server);
    drop(disk);
}

fn http_json(server: &Server, token: &str, method: &str, path: &str, body: &str) -> (u16, Value, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", method, "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .args(["-H", "content-type: application/json", "--data-binary", body])
        .arg(format!("{}{path}", server.url))
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = all.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null), String::new())
}
