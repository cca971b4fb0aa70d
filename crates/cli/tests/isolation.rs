//! PRODUCT.md's isolation model, proven from inside: each test runs code in a sandbox of
//! namespace A and fails if A reaches anything it must not (B's sandbox, the host, the server,
//! the network, the kernel's dangerous calls).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use serde_json::json;

/// Two namespaces with a sandbox each; returns (harness, A's sandbox, B's sandbox).
async fn two_tenants() -> (Harness, String, String) {
    let h = Harness::with_namespaces(&["alpha", "beta"]).await;
    let a = h.create_sandbox("alpha", &h.admin, json!({"memory_bytes": 128 << 20})).await;
    let b = h.create_sandbox("beta", &h.admin, json!({"memory_bytes": 128 << 20})).await;
    (h, a, b)
}

#[tokio::test]
async fn a_sees_only_its_own_processes() {
    let (h, a, b) = two_tenants().await;
    // A marker process in B, and the whole host, must be invisible from A.
    let b_stream = tokio::spawn({
        let state = h.state.clone();
        let b = b.clone();
        async move {
            let spec = bulkhead_runtime::ExecSpec {
                argv: vec!["sleep".into(), "31.4159".into()],
                env: vec![],
                cwd: "/".into(),
                timeout_ms: 20_000,
                max_output_bytes: 1024,
                stdin: false,
                user: None,
            };
            state.runtime.exec(&b, spec, vec![]).await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, out, _) = h.sh("alpha", &a, &h.admin, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '").await;
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap().trim(),
        "/.bulkhead/ld.so --library-path /.bulkhead/lib /.bulkhead/supervisor --listen-fd 3 --cgroup-fd 4",
        "PID 1 is the sandbox's own supervisor (through the host's loader, on an image)"
    );
    let count: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(count <= 8, "A sees {count} processes: {out}");
    assert!(!out.contains("31.4159"), "A sees B's process: {out}");
    assert!(
        !out.contains("bulkhead serve") && !out.contains("cargo") && !out.contains("runc"),
        "A sees host processes: {out}"
    );
    // B really is running it.
    let (_, out_b, _) = h.sh("beta", &b, &h.admin, "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '").await;
    assert!(out_b.contains("31.4159"), "the marker should run in B: {out_b}");
    drop(b_stream);
}

#[tokio::test]
async fn a_cannot_read_b_files_the_data_dir_the_admin_token_or_host_secrets() {
    let (h, a, b) = two_tenants().await;
    let (code, _, _) = h.sh("beta", &b, &h.admin, "echo tenant-b-secret-7f3a > /tmp/b-secret").await;
    assert_eq!(code, 0);
    let data_dir = h.dir.path().join("data");
    let script = format!(
        "cat /tmp/b-secret; grep -rs tenant-b-secret-7f3a / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr; \
         ls {data} ; cat {data}/admin.token; ls /home; ls {state}; \
         echo done",
        data = data_dir.display(),
        state = h.runtime.state_dir.display(),
    );
    let (code, out, err) = h.sh("alpha", &a, &h.admin, &script).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "done", "A read something it must not: {out}");
    assert!(!out.contains("tenant-b-secret") && !out.contains("bha_"), "{out}");
    assert!(err.contains("No such file"), "{err}");
    // /etc is the image's, not the host's: its passwd and shadow are the default image's own.
    let images = h.call(axum::http::Method::GET, "/v1/images", Some(&h.admin), serde_json::Value::Null).await;
    let layer = images.body["items"][0]["layers"][0].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let image_etc = common::images::shared_public_layers().join("layers").join(layer).join("etc");
    for file in ["passwd", "shadow"] {
        let (code, inside, err) = h.sh("alpha", &a, &h.admin, &format!("cat /etc/{file}")).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(inside, std::fs::read_to_string(image_etc.join(file)).unwrap(), "/etc/{file} is the image's");
    }
}

#[tokio::test]
async fn a_cannot_mount_load_modules_nest_user_namespaces_or_ptrace() {
    let (h, a, _b) = two_tenants().await;
    let probe = r#"
import ctypes, os, errno
libc = ctypes.CDLL(None, use_errno=True)
def res(rc):
    e = ctypes.get_errno()
    return "ok" if rc == 0 else errno.errorcode.get(e, str(e))
os.makedirs("/tmp/m", exist_ok=True)
print("mount", res(libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None)))
print("init_module", res(libc.syscall(175, None, 0, b"")))
print("unshare_user", res(libc.unshare(0x10000000)))
print("unshare_mount", res(libc.unshare(0x00020000)))
print("ptrace_attach_1", res(libc.ptrace(16, 1, None, None)))
print("bpf", res(libc.syscall(321, 0, None, 0)))
print("keyctl", res(libc.syscall(250, 0, 0, 0, 0, 0)))
print("perf_event_open", res(libc.syscall(298, None, 0, -1, -1, 0)))
print("setns", res(libc.setns(0, 0)))
print("reboot", res(libc.syscall(169, 0xfee1dead, 672274793, 0x1234567, None)))
"#;
    let v = h.exec("alpha", &a, &h.admin, &["python3", "-c", probe]).await;
    let out = v["stdout"].as_str().unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    for line in out.lines() {
        let (call, result) = line.split_once(' ').unwrap();
        assert_ne!(result, "ok", "{call} succeeded inside a sandbox: {out}");
        assert!(["EPERM", "EACCES", "ENOSYS", "EINVAL", "EBADF"].contains(&result), "{call}: {result}");
    }
    assert_eq!(out.lines().count(), 10, "{out}");
    // The shell tools agree.
    let (code, _, _) = h.sh("alpha", &a, &h.admin, "unshare -U true").await;
    assert_ne!(code, 0, "unshare -U must fail");
    let (code, _, _) = h.sh("alpha", &a, &h.admin, "mount -t tmpfs none /tmp/m").await;
    assert_ne!(code, 0, "mount must fail");
    // Capabilities: none of the dangerous ones, and no_new_privs.
    let (_, status, _) =
        h.sh("alpha", &a, &h.admin, "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status").await;
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().nth(1).unwrap().to_owned()
    };
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    for (bit, name) in [
        (21, "CAP_SYS_ADMIN"),
        (19, "CAP_SYS_PTRACE"),
        (13, "CAP_NET_RAW"),
        (12, "CAP_NET_ADMIN"),
        (16, "CAP_SYS_MODULE"),
        (27, "CAP_MKNOD"),
    ] {
        assert_eq!(eff & (1 << bit), 0, "{name} is effective: {status}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "a seccomp filter is installed");
}

#[tokio::test]
async fn ids_map_to_the_namespaces_own_unprivileged_range() {
    let (h, a, b) = two_tenants().await;
    let map = |out: String| -> (u64, u64, u64) {
        let f: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (f[0], f[1], f[2])
    };
    let (_, out_a, _) = h.sh("alpha", &a, &h.admin, "cat /proc/self/uid_map").await;
    let (_, out_b, _) = h.sh("beta", &b, &h.admin, "cat /proc/self/uid_map").await;
    let (inside_a, host_a, size_a) = map(out_a);
    let (_, host_b, size_b) = map(out_b);
    assert_eq!(inside_a, 0);
    assert!(host_a >= 1_000_000 && host_b >= 1_000_000, "root maps onto an unprivileged host id");
    assert!(host_a + size_a <= host_b || host_b + size_b <= host_a, "ranges of two namespaces overlap");
    // The host sees A's processes under A's host ids.
    let (_, out, _) = h.sh("alpha", &a, &h.admin, "id -u; cat /proc/self/gid_map").await;
    assert!(out.starts_with("0\n"), "{out}");
}

#[tokio::test]
async fn only_loopback_and_not_the_server() {
    let (h, a, _b) = two_tenants().await;
    // A real listener on the host's loopback, standing in for the server's port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!(
        r#"
import socket
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as e:
        return type(e).__name__ + ":" + str(e.errno)
print("host_loopback", tcp("127.0.0.1", {port}))
print("documentation_net", tcp("192.0.2.1", 80))
print("ifaces", sorted(i[1] for i in socket.if_nameindex()))
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print("own_loopback", tcp("127.0.0.1", srv.getsockname()[1]))
"#
    );
    let v = h.exec("alpha", &a, &h.admin, &["python3", "-c", &probe]).await;
    let out = v["stdout"].as_str().unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(out.contains("host_loopback ConnectionRefusedError"), "the host's loopback is reachable: {out}");
    assert!(out.contains("documentation_net OSError:101"), "an outside address is routable: {out}");
    assert!(out.contains("ifaces ['lo']"), "{out}");
    assert!(out.contains("own_loopback connected"), "the sandbox's own loopback works: {out}");
    drop(listener);
}

#[tokio::test]
async fn the_root_is_the_sandboxs_own_and_tmp_is_bounded() {
    let (h, a, b) = two_tenants().await;
    // A's root is writable, in a layer of its own: B (another tenant, the same image) sees
    // nothing of it, and the image's layers on the host are unchanged.
    let (code, _, err) = h.sh("alpha", &a, &h.admin, "echo a > /usr/x && echo a > /x && rm /etc/hostname").await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = h.sh("beta", &b, &h.admin, "ls /usr/x /x 2>&1; test -e /etc/hostname && echo kept").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("'/usr/x': No such file") && out.contains("'/x': No such file") && out.ends_with("kept\n"),
        "{out}"
    );
    let layers = common::images::shared_public_layers().join("layers");
    for layer in std::fs::read_dir(&layers).unwrap().flatten() {
        assert!(!layer.path().join("usr/x").exists() && !layer.path().join("x").exists());
    }
    let (code, out, _) = h.sh("alpha", &a, &h.admin, "df -k /tmp | tail -1 | awk '{print $2}'").await;
    assert_eq!(code, 0);
    let kib: u64 = out.trim().parse().unwrap();
    assert_eq!(kib, 128 * 1024, "/tmp is sized to the sandbox's memory");
}
