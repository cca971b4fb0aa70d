//! The tests' own internet (`common::internet`) works, seen from the host through its veth:
//! dnsmasq answers the test names (and NXDOMAIN for others), HTTP and HTTPS answer (HTTPS
//! verified with the test CA only: without it, verification fails), the servers count
//! connections, requests and bytes, pip installs the index's wheel, git clones the repository
//! over https, and after the drop nothing of it is left (namespace, veth, processes, files, slot).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;

use common::internet::{Internet, GIT_README, NAMES, PACKAGE, WHEEL_VALUE};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_test_internet_answers_through_its_veth_and_leaves_nothing() {
    let internet = Internet::new();
    let tmp = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();

    // DNS: every test name, a subdomain of one, NXDOMAIN for another name.
    for (name, _) in NAMES {
        assert_eq!(internet.resolve(name).unwrap(), vec![internet.addr(name)], "{name}");
    }
    assert_eq!(internet.resolve("a.wild.test").unwrap(), vec![internet.addr("wild.test")]);
    assert_eq!(internet.resolve("nowhere.test").unwrap_err(), "Non-Existent Domain");
    let got = ok(internet.command("getent").args(["ahostsv4", "allowed.test"]).output().unwrap());
    assert!(got.starts_with(&internet.addr("allowed.test").to_string()), "{got}");
    let queries = internet.dns_queries();
    assert!(queries.contains(&("A".into(), "denied.test".into())), "{queries:?}");

    // HTTP, by name, seen by the server with its Host and the name's address.
    let body = ok(internet.command("curl").args(["-sSf", "http://allowed.test/simple/"]).output().unwrap());
    assert!(body.contains(PACKAGE), "{body}");
    let r = internet.wait_requests(|rs| rs.iter().any(|r| r.server == "http"));
    let r = r.iter().find(|r| r.server == "http").expect("the HTTP request is recorded");
    assert_eq!(
        (r.host.as_deref(), r.local, r.path.as_str(), r.status),
        (Some("allowed.test"), internet.addr("allowed.test"), "/simple/", Some(200))
    );

    // HTTPS with the test CA: 1 MiB down, 256 KiB up; the server's byte counts cover them
    // (TLS adds a little, never 5 %).
    let ca = internet.ca_pem();
    let ca = ca.to_str().unwrap();
    let n = 1u64 << 20;
    let got = ok(internet
        .command("curl")
        .args([
            "-sSf",
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("https://bulk.test/bytes/{n}"),
        ])
        .output()
        .unwrap());
    assert_eq!(got.trim(), n.to_string());
    let up = tmp.path().join("up");
    std::fs::write(&up, vec![b'y'; 256 << 10]).unwrap();
    let got = ok(internet
        .command("curl")
        .args(["-sSf", "--cacert", ca, "--data-binary", &format!("@{}", up.display()), "https://bulk.test/upload"])
        .output()
        .unwrap());
    assert_eq!(got.trim(), format!("{{\"received\": {}}}", 256 << 10));
    let bulk = internet.addr("bulk.test");
    let conns = internet.wait_connections(|c| c.iter().filter(|c| c.local == bulk).count() == 2);
    let conns: Vec<_> = conns.iter().filter(|c| c.local == bulk).collect();
    assert!(
        conns.iter().all(|c| c.server == "https" && c.sni.as_deref() == Some("bulk.test") && c.peer == internet.host),
        "{conns:?}"
    );
    let down = conns.iter().find(|c| c.bytes_out > n).expect("the download's connection");
    assert!((down.bytes_out as f64) < n as f64 * 1.05, "{down:?}");
    let upc = conns.iter().find(|c| c.bytes_in > 256 << 10).expect("the upload's connection");
    assert!((upc.bytes_in as f64) < (256u64 << 10) as f64 * 1.05, "{upc:?}");

    // Without the test CA, HTTPS does not verify (curl: 60).
    let refused = internet.command("curl").args(["-sS", "https://allowed.test/"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(60), "{}", String::from_utf8_lossy(&refused.stderr));
    let failed = internet.wait_connections(|c| c.iter().any(|c| c.tls_error.is_some()));
    assert!(failed.iter().any(|c| c.sni.as_deref() == Some("allowed.test") && c.tls_error.is_some()));

    // The plain TCP sink.
    let mut s = std::net::TcpStream::connect((internet.addr("other.test"), 9000)).unwrap();
    let mut hello = [0u8; 6];
    std::io::Read::read_exact(&mut s, &mut hello).unwrap();
    assert_eq!(&hello, b"hello\n");
    std::io::Write::write_all(&mut s, b"1234").unwrap();
    drop(s);
    let sink = internet.wait_connections(|c| c.iter().any(|c| c.server == "tcp"));
    let sink = sink.iter().find(|c| c.server == "tcp").unwrap();
    assert_eq!((sink.bytes_in, sink.bytes_out), (4, 6));

    // pip from the index (Debian's pip, into a target dir).
    let target = tmp.path().join("site");
    ok(internet
        .command("/usr/bin/python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--index-url",
            "https://pypi.test/simple/",
            "--cert",
            ca,
            "--target",
        ])
        .arg(&target)
        .arg(PACKAGE)
        .output()
        .unwrap());
    let value = ok(std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import bulkhead_probe; print(bulkhead_probe.VALUE)"])
        .env("PYTHONPATH", &target)
        .output()
        .unwrap());
    assert_eq!(value.trim(), WHEEL_VALUE);
    internet.wait_requests(|rs| {
        rs.iter().any(|r| {
            r.host.as_deref() == Some("pypi.test") && r.path.starts_with("/packages/") && r.status == Some(200)
        })
    });

    // git clone over https (dumb HTTP).
    let clone = tmp.path().join("clone");
    ok(internet
        .command("git")
        .args(["-c", &format!("http.sslCAInfo={ca}"), "clone", "-q", "https://git.test/repo.git"])
        .arg(&clone)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", tmp.path())
        .output()
        .unwrap());
    assert_eq!(std::fs::read_to_string(clone.join("README")).unwrap().trim(), GIT_README);

    // Dropped: nothing is left.
    let (netns, veth, pids, root) = (internet.netns.clone(), internet.veth.clone(), internet.pids(), internet.root());
    let slot_count = || {
        std::fs::read_dir("/run")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("bulkhead-test-internet-"))
            .count()
    };
    let slots_before = slot_count();
    drop(internet);
    assert!(!Path::new("/run/netns").join(&netns).exists(), "{netns} is left");
    assert!(!Path::new("/sys/class/net").join(&veth).exists(), "{veth} is left");
    for pid in pids {
        // Reaped by the drop: the id is free, or reused by an unrelated process.
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains("dnsmasq") && !cmdline.contains("internet_server"), "{pid} is left: {cmdline}");
    }
    assert!(!root.exists(), "{} is left", root.display());
    assert!(slot_count() < slots_before, "the slot is left");
}
