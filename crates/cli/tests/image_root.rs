//! A sandbox's root from image layers, through the runtime alone (no server): the layers are
//! directories made here as the image store leaves them (the image's own ids, an overlayfs
//! whiteout), and every check runs inside the sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use bulkhead_runtime::oci::{OciConfig, OciRuntime};
use bulkhead_runtime::{ExecEvent, ExecSpec, IdRange, ImageRoot, NamespaceLimits, RootSpec, Runtime, SandboxSpec};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &["sh", "id", "cat", "echo", "ls", "dd", "stat", "rm", "touch", "grep", "df", "mkdir"];

/// Two layers: a base with busybox, `/etc` and a file the top layer removes (a whiteout), and
/// a top layer with a file of the image's user 1000.
fn layers(dir: &Path) -> Vec<PathBuf> {
    assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: apt-get install busybox-static");
    let (base, top) = (dir.join("base"), dir.join("top"));
    for d in ["bin", "etc", "tmp", "usr/bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(BUSYBOX, base.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", base.join("bin").join(a)).unwrap();
    }
    std::fs::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n")
        .unwrap();
    std::fs::write(base.join("etc/group"), "root:x:0:\nagent:x:1000:\n").unwrap();
    std::fs::write(base.join("etc/removed"), "the top layer removes this\n").unwrap();
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::create_dir_all(top.join("home/agent")).unwrap();
    std::fs::write(top.join("home/agent/notes"), "mine\n").unwrap();
    std::os::unix::fs::lchown(top.join("home/agent"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(top.join("home/agent/notes"), Some(1000), Some(1000)).unwrap();
    // An overlayfs whiteout is a 0:0 character device.
    let made = std::process::Command::new("mknod").arg(top.join("etc/removed")).args(["c", "0", "0"]).status().unwrap();
    assert!(made.success());
    vec![base, top]
}

struct Host {
    runtime: OciRuntime,
    state: PathBuf,
    prefix: String,
    _data: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        bulkhead_runtime::oci::purge(&self.state, Path::new("/sys/fs/cgroup"), &self.prefix).unwrap();
    }
}

fn host() -> Host {
    let settings = common::test_runtime();
    let data = common::tempdir();
    let config = OciConfig {
        state_dir: settings.state_dir.clone(),
        cgroup_root: "/sys/fs/cgroup".into(),
        cgroup_prefix: settings.cgroup_prefix.clone(),
        supervisor: common::SUPERVISOR.into(),
        runtimes: vec![("container".into(), "runc".into())],
        owner: "sto_imageroot".into(),
        data_dir: data.path().to_owned(),
        network: None,
        egress_ca_pem: None,
        egress_dns: None,
        lxcfs: Some("/var/lib/lxcfs".into()),
    };
    Host {
        runtime: OciRuntime::new(config).unwrap(),
        state: settings.state_dir,
        prefix: settings.cgroup_prefix,
        _data: data,
    }
}

fn spec(id: &str, layers: &[PathBuf], writable_bytes: u64) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        namespace: "acme".into(),
        oci_runtime: "runc".into(),
        cpu_millis: 1000,
        memory_bytes: 256 << 20,
        pids: 128,
        tmp_bytes: 16 << 20,
        ids: IdRange { host_start: 2_200_000_000, size: 65536 },
        env: vec![],
        workspace: None,
        agent_code: None,
        run_files: vec![],
        extra_ca_pem: None,
        root: RootSpec::Image(ImageRoot { layers: layers.to_vec(), writable_bytes }),
        pooled: false,
    }
}

/// Runs `script` with `sh -c` as `user` and returns (exit code, stdout, stderr).
async fn sh(rt: &OciRuntime, id: &str, user: Option<&str>, script: &str) -> (i32, String, String) {
    let spec = ExecSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: "/".into(),
        timeout_ms: 30_000,
        max_output_bytes: 1 << 20,
        stdin: false,
        user: user.map(str::to_owned),
    };
    let mut stream = rt.exec(id, spec, Vec::new()).await.unwrap();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), -1);
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            ExecEvent::Stdout(b) => out.extend(b),
            ExecEvent::Stderr(b) => err.extend(b),
            ExecEvent::Exit(e) => code = e.exit_code.unwrap_or(-1),
        }
    }
    (code, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_image_root_is_the_images_files_writable_within_its_limit_and_gone_with_the_sandbox() {
    let dir = common::tempdir();
    let layers = layers(dir.path());
    let host = host();
    let limits = NamespaceLimits { cpu_millis: 2000, memory_bytes: 1 << 30, pids: 1024, placement: Default::default() };
    host.runtime.ensure_namespace("acme", &limits).await.unwrap();
    let id = "sbx_00000000000000000000000000imgroot1";
    host.runtime.create(&spec(id, &layers, 8 << 20)).await.unwrap();

    // The image's ids are the sandbox's: root owns the system, the image's user its home.
    let (code, out, err) = sh(&host.runtime, id, None, "id -u; stat -c '%u %g' /bin/busybox /home/agent/notes").await;
    assert_eq!((code, out.as_str()), (0, "0\n0 0\n1000 1000\n"), "{err}");
    let (code, out, _) =
        sh(&host.runtime, id, Some("agent"), "id -u; cat /home/agent/notes; echo more >> /home/agent/notes").await;
    assert_eq!((code, out.as_str()), (0, "1000\nmine\n"));
    // A whiteout of the top layer hides the base layer's file.
    let (code, _, _) = sh(&host.runtime, id, None, "cat /etc/removed").await;
    assert_ne!(code, 0, "a file the top layer removed is gone");
    // Root may change the system (as a package manager does), in its own layer.
    let (code, _, err) =
        sh(&host.runtime, id, None, "echo tool > /usr/bin/tool && rm /bin/ls && mkdir /opt && touch /etc/new").await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = sh(&host.runtime, id, Some("agent"), "touch /usr/bin/x").await;
    assert_ne!(code, 0, "the image's user may not write where the image says it may not: {err}");
    // The writable layer's size is the kernel's limit.
    let (code, _, err) = sh(&host.runtime, id, None, "dd if=/dev/zero of=/big bs=1M count=64").await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left"), "{err}");
    // What the sandbox sees of its root's mount names no host path, sandbox or tenant.
    let (code, mountinfo, _) = sh(&host.runtime, id, None, "cat /proc/self/mountinfo").await;
    assert_eq!(code, 0);
    let root = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
    assert!(root.contains(" overlay ") && root.contains("lowerdir=1:0,upperdir=w/u,workdir=w/w"), "{root}");
    for word in ["bulkhead", "acme", "sbx_", "/run/", "/tmp/", "/var/"] {
        assert!(!root.contains(word), "{word} in {root}");
    }
    // The store's layers are untouched.
    assert!(!layers[0].join("usr/bin/tool").exists() && layers[0].join("bin/ls").exists());
    assert_eq!(std::fs::read_to_string(layers[1].join("home/agent/notes")).unwrap(), "mine\n");

    // A new sandbox from the same layers starts clean.
    host.runtime.delete("acme", id).await.unwrap();
    assert!(mounts_under(&host.state).iter().all(|m| !m.contains(id)), "{:?}", mounts_under(&host.state));
    let id2 = "sbx_00000000000000000000000000imgroot2";
    host.runtime.create(&spec(id2, &layers, 8 << 20)).await.unwrap();
    let (code, out, _) =
        sh(&host.runtime, id2, None, "ls /usr/bin/tool /opt 2>&1; cat /home/agent/notes; ls /bin/ls").await;
    assert_eq!(code, 0);
    assert!(out.contains("No such file") && out.contains("mine\n") && out.ends_with("/bin/ls\n"), "{out}");
    host.runtime.delete("acme", id2).await.unwrap();
    host.runtime.remove_namespace("acme").await.unwrap();
    assert!(
        mounts_under(&host.state).iter().all(|m| !m.contains(" overlay ")),
        "no overlay stays mounted: {:?}",
        mounts_under(&host.state)
    );
}

/// With lxcfs running on the host, `/proc/meminfo` inside follows the sandbox's own memory
/// limit and use, live.
#[tokio::test]
async fn proc_meminfo_follows_the_sandboxs_own_memory() {
    let lxcfs = Path::new("/var/lib/lxcfs");
    assert!(
        bulkhead_runtime::oci::lxcfs_at(lxcfs),
        "lxcfs is not mounted at {}: scripts/up and .ci/run start it (`lxcfs /var/lib/lxcfs`)",
        lxcfs.display()
    );
    let dir = common::tempdir();
    let layers = layers(dir.path());
    let host = host();
    let limits = NamespaceLimits { cpu_millis: 2000, memory_bytes: 1 << 30, pids: 1024, placement: Default::default() };
    host.runtime.ensure_namespace("acme", &limits).await.unwrap();
    let id = "sbx_00000000000000000000000000meminfo1";
    host.runtime.create(&spec(id, &layers, 256 << 20)).await.unwrap();
    let kib = |text: &str, field: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in {text}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let (code, before, err) = sh(&host.runtime, id, None, "cat /proc/meminfo").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(kib(&before, "MemTotal:"), (256 << 20) / 1024, "MemTotal is the sandbox's limit: {before}");
    // A process holding 100 MiB (dd's buffer, filled from /dev/zero, while it waits to write
    // into a pipe nobody reads) lowers what is available, as the sandbox reads it meanwhile.
    let script = "dd if=/dev/zero bs=100M count=1 2>/dev/null | { i=0; while [ $i -lt 30 ]; do \
                  grep MemAvailable: /proc/meminfo; sleep 0.1; i=$((i+1)); done; }";
    let (_, during, err) = sh(&host.runtime, id, None, script).await;
    let lowest = during.lines().map(|l| kib(l, "MemAvailable:")).min().unwrap_or_else(|| panic!("no output: {err}"));
    let drop_kib = kib(&before, "MemAvailable:").saturating_sub(lowest);
    assert!(drop_kib >= 90 * 1024, "MemAvailable fell by {drop_kib} KiB at most: {before}\n{during}");
    let (code, cpuinfo, _) = sh(&host.runtime, id, None, "grep -c ^processor /proc/cpuinfo").await;
    assert_eq!((code, cpuinfo.trim()), (0, "1"), "one CPU's worth of quota shows one processor");
    host.runtime.delete("acme", id).await.unwrap();
    host.runtime.remove_namespace("acme").await.unwrap();
}
