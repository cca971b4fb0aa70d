//! The kernel surface a sandbox sees, proven from inside: socket families are allow-listed, and
//! nothing host-wide under `/proc` or `/sys` names or measures another tenant, the server's
//! directories or the operator's configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use common::Harness;
use serde_json::json;

/// Families whose sockets a sandbox may make (`AF_UNIX`, `AF_INET`, `AF_INET6`, `AF_NETLINK`).
const ALLOWED_FAMILIES: [u32; 4] = [1, 2, 10, 16];

/// Calls `socket(family, type, 0)` for every family 0..=45 and the usual types, `socketpair`
/// for every family, and netlink sockets for every protocol 0..=22; prints one line per call:
/// `<call> <family> <type> <protocol> <ok|ERRNO>`. Through ctypes, so the errno is the
/// kernel's (or the filter's) and not a library's interpretation.
const SOCKET_PROBE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def name(rc):
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
SOCK_CLOEXEC = 0o2000000
for family in range(46):
    for typ in (1, 2, 3, 5, 1 | SOCK_CLOEXEC):
        ctypes.set_errno(0)
        fd = libc.socket(family, typ, 0)
        print("socket", family, typ, 0, name(fd))
        if fd >= 0:
            os.close(fd)
    for typ in (1, 2):
        pair = (ctypes.c_int * 2)()
        ctypes.set_errno(0)
        rc = libc.socketpair(family, typ, 0, pair)
        print("socketpair", family, typ, 0, name(rc))
        if rc == 0:
            os.close(pair[0]); os.close(pair[1])
for protocol in range(23):
    for typ in (2, 3):
        ctypes.set_errno(0)
        fd = libc.socket(16, typ, protocol)
        print("socket", 16, typ, protocol, name(fd))
        if fd >= 0:
            os.close(fd)
"#;

/// Every socket family outside the four allowed ones fails with `EPERM`, whatever the type
/// (the kernel itself would answer `EAFNOSUPPORT` for a family it lacks, and succeed for
/// `AF_VSOCK`, `AF_ALG`, `AF_PACKET`…; only the filter answers `EPERM` for all of them), and so
/// does `socketpair` outside `AF_UNIX` and netlink outside `NETLINK_ROUTE`/`NETLINK_SOCK_DIAG`.
/// The allowed families work: stream and datagram sockets of `AF_UNIX`, `AF_INET` and
/// `AF_INET6` (with `SOCK_CLOEXEC` too), `AF_UNIX` pairs, and netlink route and diag sockets.
/// Raw sockets of allowed families are not asserted: there the kernel itself refuses them
/// (`EPERM`, no `CAP_NET_RAW`), which a test cannot tell from the filter's answer.
#[tokio::test]
async fn socket_families_are_allow_listed() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let sbx = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 128 << 20})).await;
    let v = h.exec("alpha", &sbx, &admin, &["python3", "-c", SOCKET_PROBE]).await;
    assert_eq!(v["exit_code"], 0, "{v}");
    let out = v["stdout"].as_str().unwrap();
    let mut results: BTreeMap<(String, u32, u32, u32), String> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 5, "{line}");
        let key = (f[0].to_owned(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
        results.insert(key, f[4].to_owned());
    }
    assert_eq!(results.len(), 46 * 7 + 23 * 2 - 2, "{out}");
    let mut wrong = Vec::new();
    let mut expect = |call: &str, family: u32, typ: u32, protocol: u32, ok: bool| {
        let got = &results[&(call.to_owned(), family, typ, protocol)];
        // Netlink audit is refused as a kernel without audit would (libaudit then goes on).
        let refusal = if call == "socket" && family == 16 && protocol == 9 { "EPROTONOSUPPORT" } else { "EPERM" };
        let pass = if ok { got == "ok" } else { got == refusal };
        if !pass {
            let want = if ok { "ok" } else { refusal };
            wrong.push(format!("{call}({family}, {typ}, {protocol}) = {got}, want {want}"));
        }
    };
    for family in (0..46u32).filter(|f| !ALLOWED_FAMILIES.contains(f)) {
        for typ in [1, 2, 3, 5, 1 | 0o2000000] {
            expect("socket", family, typ, 0, false);
        }
    }
    for family in (0..46u32).filter(|f| *f != 1) {
        for typ in [1, 2] {
            expect("socketpair", family, typ, 0, false);
        }
    }
    for family in [1, 2, 10] {
        for typ in [1, 2, 1 | 0o2000000] {
            expect("socket", family, typ, 0, true);
        }
    }
    for typ in [1, 2] {
        expect("socketpair", 1, typ, 0, true);
    }
    for protocol in 0..23u32 {
        for typ in [2, 3] {
            expect("socket", 16, typ, protocol, protocol == 0 || protocol == 4);
        }
    }
    assert!(wrong.is_empty(), "{} calls answered wrongly:\n{}", wrong.len(), wrong.join("\n"));
    // What programs do with the allowed families still works: a TCP round trip over loopback
    // and the routing table over netlink.
    let (code, out, err) = h
        .sh(
            "alpha",
            &sbx,
            &admin,
            "ip -o addr show lo && python3 -c 'import socket; s=socket.create_server((\"127.0.0.1\", 0)); \
             c=socket.create_connection(s.getsockname()); a,_=s.accept(); c.send(b\"hi\"); print(a.recv(2).decode())'",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("127.0.0.1") && out.trim_end().ends_with("hi"), "{out}");
}

/// A 64-bit program calls the 32-bit x86 entry point (`int 0x80`): `socketcall(SOCKET, …)` and
/// `socketcall(SOCKETPAIR, …)` for every family 0..=45 (arguments in memory below 4 GiB, so
/// the kernel can read them), and the direct 32-bit `socket` call (359) for every family; prints
/// `<call> <family> <ok|errno>`.
#[cfg(target_arch = "x86_64")]
const I386_SOCKET_PROBE: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <sys/mman.h>
static long i386(long nr, long a, long b, long c) {
  long ret;
  __asm__ volatile ("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
  return ret;
}
static void show(const char *call, int family, long rc) {
  if (rc >= 0) printf("%s %d ok\n", call, family); else printf("%s %d %ld\n", call, family, -rc);
}
int main(void) {
  int *args = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
  if (args == MAP_FAILED) return 2;
  for (int family = 0; family < 46; family++) {
    args[0] = family; args[1] = 1; args[2] = 0; args[3] = (int)(uintptr_t)(args + 8);
    show("socketcall-socket", family, i386(102, 1, (long)(uintptr_t)args, 0));
    show("socketcall-socketpair", family, i386(102, 8, (long)(uintptr_t)args, 0));
    show("socket32", family, i386(359, family, 1, 0));
  }
  return 0;
}
"#;

/// The 32-bit x86 entry point, which any 64-bit process reaches with `int 0x80`, obeys the same
/// family allow-list: the `socketcall` multiplexer (whose arguments a filter cannot read, and
/// which libseccomp would otherwise allow for every family once `socket` has argument rules)
/// fails with `ENOSYS` whatever the family, and the direct 32-bit `socket` call with `EPERM`
/// outside the allowed families.
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn the_32_bit_entry_point_obeys_the_family_allow_list() {
    const EPERM: &str = "1";
    const ENOSYS: &str = "38";
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let sbx = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 256 << 20})).await;
    let r = h
        .exec_with(
            "alpha",
            &sbx,
            &admin,
            json!({"cmd": ["sh", "-c", "cd /tmp && cat > p.c && gcc -o p p.c && ./p"],
                   "stdin": I386_SOCKET_PROBE, "timeout_seconds": 300}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["exit_code"], 0, "{}", r.body);
    let out = r.body["stdout"].as_str().unwrap();
    let mut results: BTreeMap<(String, u32), String> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "{line}");
        results.insert((f[0].to_owned(), f[1].parse().unwrap()), f[2].to_owned());
    }
    assert_eq!(results.len(), 46 * 3, "{out}");
    let mut wrong = Vec::new();
    for family in 0..46u32 {
        for call in ["socketcall-socket", "socketcall-socketpair"] {
            let got = &results[&(call.to_owned(), family)];
            if got != ENOSYS {
                wrong.push(format!("{call}({family}) = {got}, want ENOSYS"));
            }
        }
        let got = &results[&("socket32".to_owned(), family)];
        let want = if ALLOWED_FAMILIES.contains(&family) { "ok" } else { EPERM };
        // Allowed families may still fail in the kernel for their own reasons (netlink with a
        // stream type); what matters is that no other family gets a socket or a kernel answer.
        if got != want && !(ALLOWED_FAMILIES.contains(&family) && got != "ok" && got != EPERM) {
            wrong.push(format!("socket32({family}) = {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{} calls answered wrongly:\n{}", wrong.len(), wrong.join("\n"));
}

/// Walks everything readable under `/proc` and `/sys` and prints `path<TAB>needle` for every
/// file whose first MiB, and every symlink whose target (such as a process's open file in
/// `/proc/<pid>/fd`), contains one of the needles read from stdin (one per line). Reads are
/// bounded: at most 1 MiB per file, and a read that blocks is abandoned after a second.
/// Skipped: files that are not regular, `/proc/kcore`, `/proc/kmsg`, per-process memory views,
/// per-thread duplicates, and this walker's own process entries (whose environment and open
/// files would hold the needles themselves).
const LEAK_PROBE: &str = r#"
import os, signal, sys
needles = [n.encode() for n in sys.stdin.read().split("\n") if n]
class Blocked(Exception):
    pass
def on_alarm(signum, frame):
    raise Blocked()
signal.signal(signal.SIGALRM, on_alarm)
me = str(os.getpid())
skip_names = {"mem", "pagemap", "kcore", "kmsg", "clear_refs", "map_files", "task", "trace_pipe",
              "snapshot_raw", "trace_pipe_raw", "kpagecount", "kpageflags", "kpagecgroup"}
hits = 0
scanned = 0
def scan(path):
    global hits, scanned
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(1 << 20)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except (OSError, Blocked):
        return
    scanned += 1
    check(path, data)
def check(path, data):
    global hits
    for n in needles:
        if n in data:
            hits += 1
            if hits <= 200:
                print(path + "\t" + n.decode())
for top in ("/proc", "/sys"):
    for root, dirs, files in os.walk(top, followlinks=False):
        parts = root.split("/")
        if top == "/proc" and len(parts) == 2:
            dirs[:] = [d for d in dirs if d not in (me, "self", "thread-self")]
        dirs[:] = [d for d in dirs if d not in skip_names]
        for name in files + dirs:
            if name in skip_names:
                continue
            path = os.path.join(root, name)
            try:
                import stat
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    # A link's target, such as /proc/1/fd/1: the path of a host file a process
                    # of the sandbox holds open.
                    check(path + " -> ", os.readlink(path).encode())
                    continue
                if not stat.S_ISREG(mode):
                    continue
            except OSError:
                continue
            scan(path)
# This process's own view of its mounts, which the walk above skipped.
for path in ("/proc/self/mountinfo", "/proc/self/mounts", "/proc/self/mountstats", "/proc/self/cgroup"):
    scan(path)
print("scanned", scanned, file=sys.stderr)
"#;

/// PRODUCT.md: a sandbox sees nothing of any other tenant. Tenant B has a filesystem and a
/// running sandbox that mounts it (and writes to it, so its I/O counters move); inside A's
/// sandbox, every readable file under `/proc` and `/sys` is searched for B's namespace name, B's
/// filesystem and sandbox ids, and the server's data and state directories. Loop devices'
/// backing files are not readable, and no file is under `/usr/local` (the host's is never there).
#[tokio::test]
async fn other_tenants_are_invisible_in_proc_and_sys() {
    let h = Harness::new().await;
    let (spy, victim) = ("spy-k4q2", "victim-z7w9");
    h.create_namespace(spy).await;
    h.create_namespace(victim).await;
    let admin = h.admin.clone();
    let mut filesystems = Vec::new();
    for ns in [spy, victim] {
        let r = h
            .call(
                Method::POST,
                &format!("/v1/namespaces/{ns}/filesystems"),
                Some(&admin),
                json!({"name": "data", "size_bytes": 16 << 20}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        filesystems.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let with_fs = |id: &str| json!({"memory_bytes": 128 << 20, "filesystem": {"id": id, "mode": "rw"}});
    let a = h.create_sandbox(spy, &admin, with_fs(&filesystems[0])).await;
    let b = h.create_sandbox(victim, &admin, with_fs(&filesystems[1])).await;
    let (code, _, err) =
        h.sh(victim, &b, &admin, "dd if=/dev/urandom of=/workspace/x bs=64k count=16 2>/dev/null && sync").await;
    assert_eq!(code, 0, "{err}");

    let data_dir = h.dir.path().join("data");
    let state_dir = h.runtime.state_dir.clone();
    let base = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    // Full paths, and their last components (a bind mount's root shows a path relative to the
    // filesystem it is on, such as `/bulkhead-…/sandboxes/…` for a state dir on `/run`).
    let needles = [
        victim.to_owned(),
        filesystems[1].clone(),
        b.clone(),
        data_dir.display().to_string(),
        base(h.dir.path()),
        state_dir.display().to_string(),
        base(&state_dir),
        h.runtime.cgroup_prefix.clone(),
    ];
    let r = h
        .exec_with(
            spy,
            &a,
            &admin,
            json!({"cmd": ["python3", "-c", LEAK_PROBE], "stdin": needles.join("\n"), "timeout_seconds": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = r.body;
    assert_eq!(v["exit_code"], 0, "{v}");
    let err = v["stderr"].as_str().unwrap();
    let scanned: u64 = err.trim().strip_prefix("scanned ").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(scanned > 100, "the walk read too little to mean anything: {err}");
    let hits = v["stdout"].as_str().unwrap();
    assert!(hits.is_empty(), "the spy's sandbox sees the victim or the server's paths:\n{hits}");

    // The named leaks, checked directly too.
    let (code, out, err) = h
        .sh(
            spy,
            &a,
            &admin,
            "cat /sys/block/*/loop/backing_file 2>/dev/null; ls /sys/block /sys/class/block /sys/dev/block \
             /sys/devices/virtual/block /sys/fs/ext4 2>/dev/null; find /usr/local -type f; \
             cat /proc/diskstats /proc/partitions /proc/swaps 2>/dev/null; \
             grep -l /usr/local /etc/ld.so.cache /etc/ld.so.conf 2>/dev/null; echo end",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "end", "block devices, their stats or files under /usr/local are visible: {out}");
    // What programs need is still there: the number of CPUs, memory totals, the sandbox's own
    // mounts, and its own cgroup limits.
    let (code, out, err) = h
        .sh(
            spy,
            &a,
            &admin,
            "nproc && python3 -c 'import os; print(os.cpu_count())' && grep -c MemTotal /proc/meminfo \
             && grep -c ' /workspace ' /proc/self/mountinfo && cat /sys/devices/system/cpu/online",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].parse::<u32>().unwrap() >= 1 && lines[1].parse::<u32>().unwrap() >= 1, "{out}");
    assert_eq!(lines[2..4], ["1", "1"], "{out}");
}

/// The allow-listed profile and the trimmed `/proc` and `/sys` still run what agents run: a C
/// compiler and the program it builds, git, node, python with threads, processes and a pipe
/// of shell tools, pip, and the sandbox's own cgroup limits are readable.
#[tokio::test]
async fn ordinary_programs_run_under_the_kernel_surface() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let admin = h.admin.clone();
    let sbx = h.create_sandbox("alpha", &admin, json!({"memory_bytes": 256 << 20})).await;
    let script = r#"set -e
cd /tmp
printf '#include <stdio.h>\n#include <pthread.h>\nvoid *f(void *a){return a;}\nint main(void){pthread_t t; pthread_create(&t,0,f,0); pthread_join(t,0); puts("c-ok"); return 0;}\n' > hello.c
gcc -O1 -pthread -o hello hello.c && ./hello
git init -q repo && cd repo && git config user.email a@b && git config user.name a
echo x > f && git add f && git commit -qm one && git log --oneline | wc -l && cd ..
node -e 'const w = require("worker_threads"); const t = new w.Worker("process.exit(0)", {eval: true}); t.on("exit", () => console.log("node-ok", require("os").cpus().length > 0))'
python3 -c 'import concurrent.futures as f, multiprocessing as m, subprocess as s
with f.ThreadPoolExecutor(4) as e: assert sum(e.map(abs, [-1, -2])) == 3
with m.Pool(2) as p: assert p.map(abs, [-3]) == [3]
print(s.run(["sh", "-c", "echo py-ok | tr a-z A-Z"], capture_output=True, text=True).stdout.strip())'
python3 -m pip --version | cut -d' ' -f1
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max
"#;
    let (code, out, err) = h.sh("alpha", &sbx, &admin, script).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["c-ok", "1", "node-ok true", "PY-OK", "pip", &(256u64 << 20).to_string()], "{err}");
}
