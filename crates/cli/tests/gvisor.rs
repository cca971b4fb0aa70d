//! The `gvisor` isolation tier: a namespace whose runtime class is gVisor's `runsc`, proven
//! from inside its sandboxes. They run on gVisor's kernel, not the host's; exec, files and a
//! filesystem at `/workspace` work as on the container tier; what the container tier's
//! isolation tests check holds where it applies (its own processes, root and hostname, no host
//! path, no mount, no dangerous capability, no other tenant's sandbox over the network); the
//! memory and pids limits hold on the host, hundreds of commands leave nothing held behind, and
//! a delete leaves no runsc process, mount or cgroup behind. Where the tier differs (a limit
//! that ends the whole sandbox, no seccomp filter of Bulkhead's own), docs/ARCHITECTURE.md says
//! so; these tests pin what it does.
//!
//! runsc is required: `scripts/os-deps --test` installs it. Without it every test here fails,
//! saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use bulkhead_api::{CreateSandbox, ExecRequest};
use common::Harness;
use serde_json::{json, Value};

/// The runtime class of the tier, as the tests configure it.
const RUNSC: &str = "runsc";

/// Fails the test, loudly, when runsc is not installed.
fn require_runsc() {
    let ok = std::process::Command::new(RUNSC).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "runsc (gVisor) is not installed: `scripts/os-deps --test` installs it (Debian: apt-get install runsc)"
    );
}

/// An in-process server with a `gvisor` class and two namespaces of that tier, `gv` and `gw`.
async fn gvisor_harness() -> Harness {
    require_runsc();
    let h = Harness::with_config("runc", |c| {
        c.runtime_classes.insert("gvisor".into(), bulkhead_server::state::RuntimeClass { runtime: RUNSC.into() });
    })
    .await;
    for name in ["gv", "gw"] {
        let mut body = common::namespace_body(name);
        body["isolation"] = json!("gvisor");
        let r = h.call(Method::POST, "/v1/namespaces", Some(&h.admin), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    h
}

/// The sandbox's status as the API reports it.
async fn status(h: &Harness, ns: &str, id: &str) -> Value {
    let r = h.call(Method::GET, &format!("/v1/namespaces/{ns}/sandboxes/{id}"), Some(&h.admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

/// Waits (up to a minute: the server notices an ended sandbox within seconds) until the
/// sandbox is no longer running; its record then.
async fn ended(h: &Harness, ns: &str, id: &str) -> Value {
    for _ in 0..600 {
        let v = status(h, ns, id).await;
        if v["status"] != "running" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("sandbox {id} still runs");
}

/// The host's processes whose command line names `id`, the mounts whose path names it, and
/// its cgroup directories: what a deleted sandbox must not leave.
fn host_leftovers(cgroup_prefix: &str, ns: &str, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.bytes().all(|b| b.is_ascii_digit()) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(id) {
                left.push(format!("process {name}: {cmdline}"));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(mounts.lines().filter(|l| l.contains(id)).map(|l| format!("mount {l}")));
    for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = c.path().join(cgroup_prefix).join(ns).join(id);
        if dir.exists() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    left
}

/// The host-side pids controller directory of a sandbox (cgroup v1 or v2).
fn pids_dir(cgroup_prefix: &str, ns: &str, id: &str) -> std::path::PathBuf {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let v1 = root.join("pids").join(cgroup_prefix).join(ns).join(id);
    if v1.is_dir() {
        v1
    } else {
        root.join(cgroup_prefix).join(ns).join(id)
    }
}

fn read_u64(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn a_gvisor_sandbox_runs_on_gvisors_kernel_with_exec_files_and_a_workspace() {
    let h = gvisor_harness().await;
    let admin = h.admin.clone();
    let r = h
        .call(
            Method::POST,
            "/v1/namespaces/gv/filesystems",
            Some(&admin),
            json!({"name": "work", "size_bytes": 64 << 20}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let fs = r.body["id"].as_str().unwrap().to_owned();
    let id = h
        .create_sandbox(
            "gv",
            &admin,
            json!({"memory_bytes": 256 << 20, "env": {"GREETING": "hello"}, "filesystem": {"id": fs, "mode": "rw"}}),
        )
        .await;
    assert_eq!(status(&h, "gv", &id).await["isolation"], "gvisor");

    // gVisor's kernel answers, not the host's.
    let host_version = std::fs::read_to_string("/proc/version").unwrap();
    let (code, out, err) = h.sh("gv", &id, &admin, "cat /proc/version; dmesg").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Starting gVisor"), "dmesg is not gVisor's: {out}");
    assert!(!out.contains(host_version.trim()), "the sandbox sees the host's kernel: {out}");

    // Exec: stdout, stderr, exit codes, the environment, the hostname, the user.
    let v = h.exec("gv", &id, &admin, &["sh", "-c", "echo $GREETING; hostname; id -u; echo oops >&2; exit 7"]).await;
    assert_eq!(v["exit_code"], 7, "{v}");
    assert_eq!(v["stdout"], format!("hello\n{id}\n0\n"), "{v}");
    assert_eq!(v["stderr"], "oops\n", "{v}");

    // Files through the API and from inside, both ways.
    let path = format!("/v1/namespaces/gv/sandboxes/{id}/files?path=/tmp/x/y.txt");
    let auth = format!("Bearer {admin}");
    let put = axum::http::Request::put(&path).header("authorization", auth).body("file body".into()).unwrap();
    assert_eq!(h.send(put).await.status, StatusCode::NO_CONTENT);
    let (code, out, _) = h.sh("gv", &id, &admin, "cat /tmp/x/y.txt; echo inside > /tmp/x/z.txt").await;
    assert_eq!((code, out.as_str()), (0, "file body"));
    let r = h
        .call(
            Method::GET,
            &format!("/v1/namespaces/gv/sandboxes/{id}/files?path=/tmp/x/z.txt"),
            Some(&admin),
            Value::Null,
        )
        .await;
    assert_eq!((r.status, r.raw.as_slice()), (StatusCode::OK, b"inside\n".as_slice()));

    // The filesystem at /workspace: written inside, read back through a second sandbox.
    let (code, _, err) = h.sh("gv", &id, &admin, "echo kept > /workspace/note && cat /workspace/note").await;
    assert_eq!(code, 0, "{err}");
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/gv/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let again = h.create_sandbox("gv", &admin, json!({"filesystem": {"id": fs, "mode": "ro"}})).await;
    let (code, out, _) = h.sh("gv", &again, &admin, "cat /workspace/note; echo no > /workspace/other").await;
    assert_ne!(code, 0, "a read-only workspace took a write");
    assert_eq!(out, "kept\n");
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/gv/sandboxes/{again}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for sandbox in [&id, &again] {
        let left = host_leftovers(&h.runtime.cgroup_prefix, "gv", sandbox);
        assert!(left.is_empty(), "a deleted sandbox left: {left:#?}");
    }
}

#[tokio::test]
async fn a_gvisor_sandbox_sees_nothing_of_the_host_or_another_tenant() {
    let h = gvisor_harness().await;
    let admin = h.admin.clone();
    let a = h.create_sandbox("gv", &admin, json!({"memory_bytes": 128 << 20})).await;
    let b = h.create_sandbox("gw", &admin, json!({"memory_bytes": 128 << 20})).await;
    // A marker process and a secret in B.
    let (code, _, _) = h.sh("gw", &b, &admin, "echo tenant-b-secret-7f3a > /tmp/b-secret; (sleep 31.4159 &)").await;
    assert_eq!(code, 0);
    let (_, out_b, _) = h.sh("gw", &b, &admin, "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '").await;
    assert!(out_b.contains("31.4159"), "the marker should run in B: {out_b}");

    // A's processes are its own: its supervisor as PID 1, no marker of B, nothing of the host.
    let (code, out, _) = h
        .sh(
            "gv",
            &a,
            &admin,
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '",
        )
        .await;
    assert_eq!(code, 0);
    assert!(out.starts_with("/.bulkhead/ld.so --library-path /.bulkhead/lib /.bulkhead/supervisor "), "{out}");
    assert!(!out.contains("31.4159"), "A sees B's process: {out}");
    assert!(!out.contains("runsc") && !out.contains("bulkhead serve") && !out.contains("cargo"), "{out}");

    // No host path: not the data dir, the state dir, B's files, the host's /home or /root.
    let script = format!(
        "cat /tmp/b-secret; grep -rs tenant-b-secret-7f3a / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr; \
         cat {data}/admin.token; ls {data} {state} /home/* /root/.cargo; echo done",
        data = h.dir.path().join("data").display(),
        state = h.runtime.state_dir.display(),
    );
    let (_, out, err) = h.sh("gv", &a, &admin, &script).await;
    assert_eq!(out.trim(), "done", "A read something it must not: {out}");
    assert!(err.contains("No such file"), "{err}");

    // A's root is writable in a layer of its own: B, on the same image, sees nothing of it.
    let (code, _, err) = h.sh("gv", &a, &admin, "echo a > /usr/x && echo a > /x && rm /etc/hostname").await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = h.sh("gw", &b, &admin, "cat /usr/x /x 2>&1; test -e /etc/hostname && echo kept").await;
    assert!(
        out.contains("/usr/x: No such file") && out.contains("/x: No such file") && out.ends_with("kept\n"),
        "{out}"
    );

    // No mount, no module, no raw or admin capability; root is the sandbox's only.
    let (code, _, _) = h.sh("gv", &a, &admin, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m").await;
    assert_ne!(code, 0, "mount must fail");
    let probe = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def res(rc):
    return "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
print("mount", res(libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None)))
print("init_module", res(libc.syscall(175, None, 0, b"")))
print("ptrace_attach_1", res(libc.ptrace(16, 1, None, None)))
print("bpf", res(libc.syscall(321, 0, None, 0)))
print("perf_event_open", res(libc.syscall(298, None, 0, -1, -1, 0)))
print("reboot", res(libc.syscall(169, 0xfee1dead, 672274793, 0x1234567, None)))
"#;
    let v = h.exec("gv", &a, &admin, &["python3", "-c", probe]).await;
    let out = v["stdout"].as_str().unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(out.lines().count(), 6, "{out}");
    for line in out.lines() {
        assert!(!line.ends_with(" ok"), "succeeded inside a gVisor sandbox: {line}");
    }
    let (_, status, _) = h.sh("gv", &a, &admin, "grep '^CapEff:' /proc/self/status").await;
    let eff = u64::from_str_radix(status.split_whitespace().nth(1).unwrap(), 16).unwrap();
    for (bit, name) in [(21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE"), (13, "CAP_NET_RAW"), (12, "CAP_NET_ADMIN")] {
        assert_eq!(eff & (1 << bit), 0, "{name} is effective: {status}");
    }

    // On the host, gVisor's kernel runs as an unprivileged id, and its gofer (which opens A's
    // files) under A's namespace's own unprivileged id range.
    let pid: u32 = std::fs::read_to_string(h.runtime.state_dir.join("sandboxes").join(&a).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"runsc-sandbox"), "{}", String::from_utf8_lossy(&cmdline));
    let host_uid = |pid: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_ne!(host_uid(&pid.to_string()), 0, "gVisor's kernel runs as the host's root");
    let gofer = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            c.starts_with(b"runsc-gofer") && String::from_utf8_lossy(&c).contains(a.as_str())
        })
        .expect("A's gofer runs");
    let uid_map = std::fs::read_to_string(format!("/proc/{gofer}/uid_map")).unwrap();
    let fields: Vec<u64> = uid_map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields[0], 0, "{uid_map}");
    assert!(fields[1] >= 1_000_000, "A's gofer maps root onto {}: {uid_map}", fields[1]);
}

#[tokio::test]
async fn gvisor_limits_hold_on_the_host_and_a_delete_leaves_nothing() {
    let h = gvisor_harness().await;
    let admin = h.admin.clone();
    let prefix = h.runtime.cgroup_prefix.clone();
    // Memory: gVisor's kernel knows the limit, and an allocation past it ends the sandbox
    // (the host's OOM killer takes gVisor's kernel, which holds every process of it).
    let m = h.create_sandbox("gv", &admin, json!({"memory_bytes": 128 << 20})).await;
    let (code, out, _) = h.sh("gv", &m, &admin, "head -1 /proc/meminfo").await;
    assert_eq!((code, out.split_whitespace().nth(1)), (0, Some("131072")), "{out}");
    let r = h
        .exec_with("gv", &m, &admin, json!({"cmd": ["python3", "-c", "b = bytearray(400 << 20); print('allocated')"]}))
        .await;
    assert!(!String::from_utf8_lossy(&r.raw).contains("allocated"), "400 MiB fit in 128: {}", r.body);
    let v = ended(&h, "gv", &m).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["reason"].as_str().unwrap_or_default().contains("oom"), "{v}");

    // Pids: the host counts gVisor's own tasks, bounded for the sandbox's processes; a tree
    // past the bound ends the sandbox and never the host's or another tenant's tasks.
    let p = h.create_sandbox("gv", &admin, json!({"memory_bytes": 256 << 20})).await;
    let other = h.create_sandbox("gw", &admin, json!({"memory_bytes": 128 << 20})).await;
    let dir = pids_dir(&prefix, "gv", &p);
    let max = read_u64(&dir.join("pids.max"));
    let pids = status(&h, "gv", &p).await["pids_limit"].as_u64().unwrap();
    assert_eq!(max, bulkhead_runtime::spec::OciKind::Gvisor.host_tasks(pids));
    let (code, out, _) = h.sh("gv", &p, &admin, "for i in $(seq 1 20); do sleep 600 & done; echo started").await;
    assert_eq!((code, out.as_str()), (0, "started\n"), "twenty processes are well within the limit");
    // `pids.events` is read all along the tree's growth: the server removes the cgroup once it
    // finds the sandbox ended, which may be before the exec's answer reaches the test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, file) = (stop.clone(), dir.join("pids.events"));
        std::thread::spawn(move || {
            let mut last = String::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match std::fs::read_to_string(&file) {
                    Ok(events) => last = events,
                    Err(_) => break,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            last
        })
    };
    let r = h
        .exec_with(
            "gv",
            &p,
            &admin,
            json!({"cmd": ["sh", "-c", "i=0; while [ $i -lt 1000 ]; do sleep 600 & i=$((i+1)); done; echo forked"],
                   "timeout_seconds": 60}),
        )
        .await;
    assert!(!String::from_utf8_lossy(&r.raw).contains("forked"), "1000 processes fit: {}", r.body);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let events = sampler.join().unwrap();
    assert!(events.contains("max") && !events.contains("max 0"), "the pids limit was never hit: {events}");
    let v = ended(&h, "gv", &p).await;
    assert_eq!(v["status"], "failed", "{v}");
    let (code, out, _) = h.sh("gw", &other, &admin, "echo unaffected").await;
    assert_eq!((code, out.as_str()), (0, "unaffected\n"));

    // No warm pool on this tier: a claim mounts into the sandbox's mount namespace, which
    // gVisor keeps in its own kernel.
    let r = h.call(Method::PUT, "/v1/namespaces/gv/pools/default", Some(&admin), json!({"size": 1})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("gVisor"), "{}", r.body);

    // A delete, of an ended sandbox or a running one, leaves no runsc process, mount or cgroup.
    for (ns, id) in [("gv", &m), ("gv", &p), ("gw", &other)] {
        let r = h.call(Method::DELETE, &format!("/v1/namespaces/{ns}/sandboxes/{id}"), Some(&admin), Value::Null).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let left = host_leftovers(&prefix, ns, id);
        assert!(left.is_empty(), "a deleted sandbox left: {left:#?}");
    }
}

/// What a sandbox holds on the host: the anonymous memory its memory cgroup is charged
/// (gVisor's kernel's heap: `rss` on cgroup v1, `anon` on v2) and all of it (`usage_in_bytes`,
/// `memory.current`), gVisor's kernel's open descriptors, and the host tasks its pids cgroup
/// counts.
#[derive(Debug, Clone, Copy)]
struct Held {
    anon: u64,
    usage: u64,
    fds: usize,
    tasks: u64,
}

fn held(h: &Harness, ns: &str, id: &str) -> Held {
    let prefix = &h.runtime.cgroup_prefix;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let v1 = root.join("memory").join(prefix).join(ns).join(id);
    let (dir, anon_key, usage_file) = if v1.is_dir() {
        (v1, "rss", "memory.usage_in_bytes")
    } else {
        (root.join(prefix).join(ns).join(id), "anon", "memory.current")
    };
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap();
    let anon = stat
        .lines()
        .find_map(|l| l.strip_prefix(anon_key).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {anon_key} in {}: {stat}", dir.display()))
        .parse()
        .unwrap();
    let pid = std::fs::read_to_string(h.runtime.state_dir.join("sandboxes").join(id).join("pid")).unwrap();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", pid.trim())).unwrap().count();
    Held {
        anon,
        usage: read_u64(&dir.join(usage_file)),
        fds,
        tasks: read_u64(&pids_dir(prefix, ns, id).join("pids.current")),
    }
}

/// Commands by the hundred in a small gVisor sandbox: each one's memory, descriptors and tasks
/// are given back. (Each command used to leave an entry of an ended process in gVisor's procfs,
/// about 0.12 MiB of its kernel's memory: a 64 MiB sandbox ended after about 440 commands.)
/// After 100 commands and after 600 the sandbox holds about as much on the host, and it holds
/// nothing of them inside: its supervisor and the probing shell are its only processes. Its
/// `/proc` caches few entries, so processes that read their own do not grow it either.
#[tokio::test]
async fn a_small_gvisor_sandbox_gives_back_what_each_command_held() {
    let h = gvisor_harness().await;
    let admin = h.admin.clone();
    let id = h.create_sandbox("gv", &admin, json!({"memory_bytes": 64 << 20})).await;
    let run = |n: usize| {
        let (h, id, admin) = (&h, &id, &admin);
        async move {
            for i in 0..n {
                let r = h.exec_with("gv", id, admin, json!({"cmd": ["true"]})).await;
                assert_eq!(r.status, StatusCode::OK, "command {i} of {n}: {}", r.body);
                assert_eq!(r.body["exit_code"], 0, "command {i} of {n}: {}", r.body);
            }
        }
    };
    run(100).await;
    let after_100 = held(&h, "gv", &id);
    run(500).await;
    let after_600 = held(&h, "gv", &id);
    eprintln!("held after 100 commands: {after_100:?}; after 600: {after_600:?}");
    // Generous margins: what 500 commands would have held at the old rate is 60 MiB.
    assert!(
        after_600.anon <= after_100.anon + (8 << 20),
        "500 more commands grew gVisor's kernel: {after_100:?} then {after_600:?}"
    );
    assert!(after_600.usage <= after_100.usage + (12 << 20), "{after_100:?} then {after_600:?}");
    assert!(after_600.fds <= after_100.fds + 8, "descriptors held per command: {after_100:?} then {after_600:?}");
    // Host tasks are gVisor's Go threads, whose count is a high-water mark of its blocked
    // system calls, which grows with the host's load (+21 seen beside a parallel suite), not
    // with the commands run; a task held per command, or per ten, would add 50 to 500.
    assert!(after_600.tasks <= after_100.tasks + 40, "host tasks held per command: {after_100:?} then {after_600:?}");

    // The supervisor mounted `/proc` with a small cache and holds no CAP_SYS_ADMIN since (it
    // had it for that mount alone); nor does a command.
    let (code, out, err) = h
        .sh("gv", &id, &admin, "grep -E '^Cap[A-Z][a-z][a-z]:' /proc/1/status /proc/self/status; cat /proc/mounts")
        .await;
    assert_eq!(code, 0, "{err}");
    let caps: Vec<&str> = out.lines().filter(|l| l.contains(":Cap")).collect();
    for want in
        ["/proc/1/status:CapBnd:", "/proc/1/status:CapPrm:", "/proc/1/status:CapEff:", "/proc/self/status:CapBnd:"]
    {
        assert!(caps.iter().any(|l| l.starts_with(want)), "no {want} in {out}");
    }
    for line in caps {
        let set = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(set & (1 << 21), 0, "CAP_SYS_ADMIN: {line}");
    }
    let proc_mounts: Vec<&str> = out.lines().filter(|l| l.contains(" /proc proc ")).collect();
    assert!(proc_mounts.last().is_some_and(|l| l.contains("dentry_cache_limit=64")), "{out}");
    // Commands that read `/proc/<pid>` of short-lived processes: gVisor's procfs keeps no more
    // than its small cache of them (its default, 1,000 entries of some 0.13 MiB each, would
    // have ended this sandbox).
    let script = "i=0; while [ $i -lt 400 ]; do sh -c 'cat /proc/self/stat > /dev/null'; i=$((i+1)); done; echo $i";
    let r = h.exec_with("gv", &id, &admin, json!({"cmd": ["sh", "-c", script], "timeout_seconds": 600})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((&r.body["exit_code"], &r.body["stdout"]), (&json!(0), &json!("400\n")), "{}", r.body);
    let after_proc = held(&h, "gv", &id);
    assert!(
        after_proc.anon <= after_600.anon + (16 << 20),
        "400 processes that read /proc/self grew gVisor's kernel: {after_600:?} then {after_proc:?}"
    );
    // Inside: the shell lists `/proc` itself (a glob, no process of its own).
    let (code, out, err) = h.sh("gv", &id, &admin, "echo /proc/[0-9]*").await;
    assert_eq!(code, 0, "{err}");
    let pids: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(pids.len(), 2, "processes left in the sandbox: {out}");
    assert!(pids.contains(&"/proc/1"), "{out}");
    assert_eq!(status(&h, "gv", &id).await["status"], "running");
    let r = h.call(Method::DELETE, &format!("/v1/namespaces/gv/sandboxes/{id}"), Some(&admin), Value::Null).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let left = host_leftovers(&h.runtime.cgroup_prefix, "gv", &id);
    assert!(left.is_empty(), "a deleted sandbox left: {left:#?}");
}

/// Runs `script` with `sh -c` in a sandbox of a real server; (exit code, stdout, stderr).
async fn sh(c: &bulkhead_client::Client, ns: &str, id: &str, script: &str) -> (i32, String, String) {
    let cmd = ["sh", "-c", script].map(String::from).to_vec();
    let r = c.exec(ns, id, &ExecRequest { cmd, timeout_seconds: Some(60), ..Default::default() }).await.unwrap();
    (r.exit_code, r.stdout, r.stderr)
}

/// Whether a TCP connection from inside the sandbox gets through (as `network.rs` probes):
/// connected, and then neither reset nor closed within 3 s (the egress gateway's forwarder
/// accepts every redirected connection and resets those it denies). `CONNECTED` or why not.
async fn connect_from(c: &bulkhead_client::Client, ns: &str, id: &str, target: SocketAddr) -> String {
    let script = format!(
        "python3 -c 'import socket\ns = socket.socket(); s.settimeout(3)\ntry:\n    s.connect((\"{}\", {}))\n    try:\n        assert s.recv(1)\n    except socket.timeout:\n        pass\n    print(\"CONNECTED\")\nexcept Exception as e:\n    print(type(e).__name__)'",
        target.ip(),
        target.port()
    );
    let (code, out, err) = sh(c, ns, id, &script).await;
    assert_eq!(code, 0, "{out} {err}");
    out.trim().to_owned()
}

/// The sandbox's address on its eth0, as gVisor's network stack reports it.
async fn address(c: &bulkhead_client::Client, ns: &str, id: &str) -> Ipv4Addr {
    let (code, out, err) = sh(c, ns, id, "ip -4 -o addr show dev eth0").await;
    assert_eq!(code, 0, "{err}");
    out.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().split('/').next().unwrap().parse().unwrap()
}

/// `bulkhead serve --network isolated` with a gvisor class: gVisor's network stack runs on
/// the sandbox's own veth, whose only way out is the sandbox's gateway. From a sandbox of one
/// namespace, another namespace's sandbox is not reachable (its listener, reached from the
/// host, is the positive control), and its own gateway's API port is.
#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_sandbox_reaches_its_gateway_and_not_another_tenant() {
    require_runsc();
    let mut host = common::host::Host::new();
    let c = host.serve(&["--runtime-class", "container=runc", "--runtime-class", &format!("gvisor={RUNSC}")]);
    for name in ["gv", "gw"] {
        let quotas = common::roomy_quotas();
        let body = bulkhead_api::CreateNamespace {
            name: name.into(),
            isolation: Some("gvisor".into()),
            placement: None,
            egress: None,
            quotas,
        };
        c.create_namespace(&body).await.unwrap();
    }
    let create = CreateSandbox { cpu_millis: Some(500), ..Default::default() };
    let a = c.create_sandbox("gv", &create).await.unwrap().id;
    let b = c.create_sandbox("gw", &create).await.unwrap().id;
    let (addr_a, addr_b) = (address(&c, "gv", &a).await, address(&c, "gw", &b).await);
    assert_ne!(addr_a, addr_b);
    // A listener in B, reachable from the host.
    let listener = {
        let c = c.clone();
        let b = b.clone();
        tokio::spawn(async move {
            let script = "python3 -c 'import socket\ns = socket.socket(); s.bind((\"0.0.0.0\", 8080)); s.listen(4); s.settimeout(50)\nwhile True:\n    k, p = s.accept(); print(p[0], flush=True)\n    if k.recv(4) == b\"stop\":\n        break'";
            sh(&c, "gw", &b, script).await
        })
    };
    let target = SocketAddr::from((addr_b, 8080));
    let mut from_host = None;
    for _ in 0..200 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            from_host = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut from_host = from_host.expect("the host reaches B's listener");
    let got = connect_from(&c, "gv", &a, target).await;
    assert_ne!(got, "CONNECTED", "A reached B's sandbox at {target}");
    let (code, out, err) = sh(&c, "gv", &a, "ip -4 route show default").await;
    assert_eq!(code, 0, "{err}");
    let gateway: Ipv4Addr = out.split_whitespace().skip_while(|w| *w != "via").nth(1).unwrap().parse().unwrap();
    let api = SocketAddr::from((gateway, bulkhead_runtime::gateway::API_PORT));
    assert_eq!(connect_from(&c, "gv", &a, api).await, "CONNECTED", "A cannot reach its own gateway's API port");
    std::io::Write::write_all(&mut from_host, b"stop").unwrap();
    drop(from_host);
    let (_, peers, _) = tokio::time::timeout(Duration::from_secs(60), listener).await.unwrap().unwrap();
    assert!(!peers.contains(&addr_a.to_string()), "B's listener saw A: {peers}");
    for (ns, id) in [("gv", &a), ("gw", &b)] {
        c.delete_sandbox(ns, id).await.unwrap();
        let left = host_leftovers(&host.purge.last().unwrap().1, ns, id);
        assert!(left.is_empty(), "a deleted sandbox left: {left:#?}");
    }
}

/// Egress on the gvisor tier: what the namespace's ceiling and the sandbox's request allow is
/// reached through the sandbox's gateway (its resolver and forwarder, over gVisor's network
/// stack on the veth); a name they do not allow is neither resolved nor reached.
#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_sandbox_reaches_an_allowed_name_through_its_gateway_and_not_a_denied_one() {
    require_runsc();
    let internet = common::internet::Internet::new();
    let mut host = common::host::Host::new();
    let mut args = internet.serve_args();
    args.extend(["--runtime-class", "container=runc", "--runtime-class"].map(String::from));
    args.push(format!("gvisor={RUNSC}"));
    let c = host.serve(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let quotas = common::roomy_quotas();
    c.create_namespace(&bulkhead_api::CreateNamespace {
        name: "gv".into(),
        isolation: Some("gvisor".into()),
        placement: None,
        egress: None,
        quotas,
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let ceiling = json!({"egress": {"allow": ["allowed.test", "denied.test"]}});
    let r = http
        .patch(format!("{}/v1/namespaces/gv", c.base()))
        .bearer_auth(host.admin_token())
        .json(&ceiling)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let egress = bulkhead_api::SandboxEgress { allow: vec!["allowed.test".into()], credentials: vec![] };
    let create = CreateSandbox { cpu_millis: Some(500), egress: Some(egress), ..Default::default() };
    let a = c.create_sandbox("gv", &create).await.unwrap().id;
    let (code, out, err) = sh(&c, "gv", &a, "curl -sSf --max-time 10 http://allowed.test/simple/").await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains(common::internet::PACKAGE), "{out}");
    let denied = internet.addr("denied.test").to_string();
    let (_, out, _) = sh(&c, "gv", &a, "getent ahostsv4 denied.test; curl -sS --max-time 10 http://denied.test/").await;
    assert!(!out.contains(&denied), "the sandbox resolved denied.test: {out}");
    let reqs = internet.wait_requests(|rs| rs.iter().any(|r| r.host.as_deref() == Some("allowed.test")));
    assert!(!reqs.iter().any(|r| r.host.as_deref() == Some("denied.test")), "denied.test was reached: {reqs:?}");
    c.delete_sandbox("gv", &a).await.unwrap();
    let left = host_leftovers(&host.purge.last().unwrap().1, "gv", &a);
    assert!(left.is_empty(), "a deleted sandbox left: {left:#?}");
}
