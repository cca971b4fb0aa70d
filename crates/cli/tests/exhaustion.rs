//! Exhaustion by slowness and size, against the real `bulkhead serve`: connections that send
//! half a header, nothing, or go idle are closed; one key's long-running downloads and uploads
//! are bounded (the 51st is `429 rate_limited` with `Retry-After`), and while 50 of each are
//! held without being read or fed, the server's open descriptors and resident memory (read from
//! `/proc/<pid>`) stay within the documented bounds and return to the baseline when the clients
//! go. A server whose store is PostgreSQL has its connections to it counted apart (its pool
//! opens and closes them on its own schedule), and bounded by the pool's maximum. Raw sockets,
//! so the test controls every byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::{runtime_names, Server};

/// How long the test waits for the server to do something it must do at once or after a short
/// timeout; a bound on the test, not a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

/// The documented bounds (docs/ARCHITECTURE.md, "Connections and streams").
const MAX_FDS_PER_DOWNLOAD: usize = 12;
const MAX_FDS_PER_UPLOAD: usize = 4;
const MAX_RSS_PER_STREAM: u64 = 1 << 20;

fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start_with_args(&dir.path().join("data"), runtime_names(), extra);
    (dir, server)
}

fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Whether the server closes the connection (end of stream or reset) within [`PATIENCE`],
/// reading and dropping whatever it still sends.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    false
}

/// A response head: status and headers (names lower-cased). Reads only up to the blank line,
/// one byte at a time, so nothing of the body is taken from the socket.
fn read_head(s: &mut TcpStream) -> (u16, Vec<(String, String)>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read a response head");
        assert_eq!(n, 1, "the server closed the connection before answering: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A whole response with a `Content-Length` body.
fn read_response(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let (status, headers) = read_head(s);
    let len: usize = header(&headers, "content-length").expect("content-length").parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, headers, body)
}

fn get(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: Bearer {token}\r\n\r\n")
}

/// The server's open descriptors, its connections to its PostgreSQL store apart.
struct Fds {
    /// Every descriptor but those connections: what the bounds are about.
    own: usize,
    /// The server's connections to the PostgreSQL server its store is on, when the suite runs
    /// on one (`BULKHEAD_TEST_STORE`): its pool opens them as it needs them and closes them when
    /// they idle, whatever the streams do, up to the pool's maximum.
    store: usize,
}

/// The port of the PostgreSQL server every test server's store is on, when the suite runs on
/// one.
fn store_port() -> Option<u16> {
    let url = bulkhead_store::postgres::testing::suite_server()?;
    let host = url.split_once("://")?.1.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
    host.split('/').next()?.rsplit_once(':')?.1.parse().ok()
}

/// The inodes of the TCP sockets in `pid`'s network namespace whose peer is port `remote` and
/// whose own port is not `local` (a client of the server that happens to use that port).
fn sockets_to(pid: u32, remote: u16, local: u16) -> std::collections::HashSet<u64> {
    let port = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    let mut inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && port(f[2]) == Some(remote) && port(f[1]) != Some(local) {
                inodes.extend(f[9].parse::<u64>().ok());
            }
        }
    }
    inodes
}

/// The server's descriptors now. A connection to the store is told by its socket's peer port;
/// the sockets are listed before and after the descriptors are, so that one the pool opens
/// meanwhile is still told apart.
fn fds(server: &Server) -> Fds {
    let pid = server.pid();
    let listen: u16 = server.url.rsplit_once(':').unwrap().1.trim_end_matches('/').parse().unwrap();
    let store = store_port().map(|p| (p, sockets_to(pid, p, listen)));
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let Some((port, mut inodes)) = store else { return Fds { own: links.len(), store: 0 } };
    inodes.extend(sockets_to(pid, port, listen));
    let to_store = |l: &String| {
        l.strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| inodes.contains(&i))
    };
    let store = links.iter().filter(|l| to_store(l)).count();
    Fds { own: links.len() - store, store }
}

/// The most connections a server keeps to its PostgreSQL store: its pool's maximum, and the one
/// that listens for changes.
const MAX_STORE_CONNECTIONS: usize =
    (bulkhead_store::postgres::MAX_CONNECTIONS + bulkhead_store::postgres::LISTEN_CONNECTIONS) as usize;

/// Asserts that the server holds no more connections to its store than its pool may.
fn assert_store_bounded(fds: &Fds, when: &str) {
    assert!(
        fds.store <= MAX_STORE_CONNECTIONS,
        "{} connections to the store {when}, more than the pool's and the listener's {MAX_STORE_CONNECTIONS}",
        fds.store
    );
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Reads the answer to one stream too many: a `429 rate_limited` error envelope with
/// `Retry-After`.
fn assert_rate_limited(s: &mut TcpStream, what: &str) {
    let (status, headers) = read_head(s);
    assert_eq!(status, 429, "{what} was not refused");
    let len: usize = header(&headers, "content-length").expect("content-length").parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let retry: u64 = header(&headers, "retry-after").expect("Retry-After").parse().expect("Retry-After in seconds");
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("error envelope");
    assert_eq!(v["error"]["code"], "rate_limited", "{what}: {v}");
    assert!(v["error"]["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{what}: {v}");
}

#[test]
fn half_headers_silence_and_idle_keep_alive_are_closed() {
    let (_dir, server) = start(&["--header-timeout", "1s", "--idle-timeout", "2s"]);

    // Half a header.
    let mut half = connect(&server);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\n").unwrap();
    assert!(closed_by_server(&mut half), "a connection that sent half a header was kept");

    // Nothing at all.
    let mut silent = connect(&server);
    assert!(closed_by_server(&mut silent), "a connection that sent nothing was kept");

    // One request, then an idle kept-alive connection.
    let mut idle = connect(&server);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\n\r\n").unwrap();
    let (status, _, _) = read_response(&mut idle);
    assert_eq!(status, 200);
    assert!(closed_by_server(&mut idle), "an idle keep-alive connection was kept");

    // A header sent a byte at a time, slower than the timeout allows in total, is cut too.
    let mut dribble = connect(&server);
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in request {
        if dribble.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cut || closed_by_server(&mut dribble), "a header dribbled past the timeout was served");

    // The server still serves.
    let mut fresh = connect(&server);
    fresh.write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut fresh).0, 200);
}

/// A namespace with a developer key and a filesystem holding a tree 1,000 directories deep with
/// a 32 MiB file at the bottom, and a 32 MiB file at the top.
struct Tenant {
    token: String,
    fs: String,
}

const BIG: u64 = 32 << 20;
const DEPTH: usize = 1000;

fn tenant(server: &Server) -> Tenant {
    server.ok(None, &["namespace", "create", "tenant", "--disk", "4GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "tenant", "dev", "--role", "developer"]);
    let token = key["token"].as_str().unwrap().to_owned();
    let fs = server.json(Some(&token), &["fs", "create", "--ns", "tenant", "deep", "--size", "256MiB"]);
    let fs = fs["id"].as_str().unwrap().to_owned();
    let work = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let mut deep = work.path().join("src");
    for _ in 0..DEPTH {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::File::create(deep.join("bottom.bin")).unwrap().set_len(BIG).unwrap();
    let src = work.path().join("src");
    server.ok(Some(&token), &["fs", "push", "--ns", "tenant", &fs, src.to_str().unwrap()]);
    let top = work.path().join("top.bin");
    std::fs::File::create(&top).unwrap().set_len(BIG).unwrap();
    server.ok(Some(&token), &["fs", "put", "--ns", "tenant", &fs, "top.bin", top.to_str().unwrap()]);
    Tenant { token, fs }
}

/// Waits (up to [`PATIENCE`] times four) until the server holds at most `bound` descriptors of
/// its own (its connections to the store apart, within the pool's maximum); the last count.
fn fds_settle(server: &Server, bound: usize) -> usize {
    let deadline = Instant::now() + PATIENCE * 4;
    loop {
        let n = fds(server);
        assert_store_bounded(&n, "as the clients go");
        if n.own <= bound || Instant::now() > deadline {
            return n.own;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The server's descriptors of its own (its connections to the store apart) once two readings
/// half a second apart agree.
fn baseline_fds(server: &Server) -> usize {
    let mut last = fds(server).own;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let n = fds(server).own;
        if n == last {
            return n;
        }
        last = n;
    }
    last
}

#[test]
fn one_keys_streams_are_bounded_and_hold_bounded_descriptors_and_memory() {
    let (_dir, server) = start(&["--stall-timeout", "10m"]);
    let pid = server.pid();
    let t = tenant(&server);
    let archive = format!("/v1/namespaces/tenant/filesystems/{}/archive", t.fs);
    let file = format!("/v1/namespaces/tenant/filesystems/{}/files?path=top.bin", t.fs);

    // One download read whole first: the archive is complete and the baseline includes what a
    // first download warms up.
    let mut whole = connect(&server);
    whole
        .write_all(
            format!(
                "GET {archive} HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                t.token
            )
            .as_bytes(),
        )
        .unwrap();
    let mut all = Vec::new();
    BufReader::new(&mut whole).read_to_end(&mut all).unwrap();
    assert!(all.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&all[..all.len().min(300)]));
    assert!(all.len() as u64 > BIG, "the archive holds the 32 MiB file: {} bytes", all.len());
    drop(whole);

    let base_fds = baseline_fds(&server);
    let base_rss = rss_bytes(pid);

    // 50 downloads that read their answer's head and nothing more: half archives of the deep
    // tree, half the 32 MiB file.
    let mut downloads = Vec::new();
    for i in 0..50 {
        let mut s = connect(&server);
        let path = if i % 2 == 0 { &archive } else { &file };
        s.write_all(get(path, &t.token).as_bytes()).unwrap();
        let (status, _) = read_head(&mut s);
        assert_eq!(status, 200, "download {i}");
        downloads.push(s);
    }
    let mut extra = connect(&server);
    extra.write_all(get(&archive, &t.token).as_bytes()).unwrap();
    assert_rate_limited(&mut extra, "the 51st download");

    // 50 uploads of 32 MiB files that send their first 64 KiB and stall. `Expect:
    // 100-continue` tells when the server took each one (it asks for the body).
    let mut uploads = Vec::new();
    let upload = |i: usize| {
        format!(
            "PUT /v1/namespaces/tenant/filesystems/{}/files?path=up/{i}.bin HTTP/1.1\r\nHost: bulkhead\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {BIG}\r\n\
             Expect: 100-continue\r\n\r\n",
            t.fs, t.token
        )
    };
    for i in 0..50 {
        let mut s = connect(&server);
        s.write_all(upload(i).as_bytes()).unwrap();
        let (status, _) = read_head(&mut s);
        assert_eq!(status, 100, "upload {i} was not taken");
        s.write_all(&vec![7u8; 64 * 1024]).unwrap();
        uploads.push(s);
    }
    let mut extra = connect(&server);
    extra.write_all(upload(50).as_bytes()).unwrap();
    assert_rate_limited(&mut extra, "the 51st upload");

    // While all 100 are held: descriptors and memory within the documented bounds.
    let held = fds(&server);
    assert_store_bounded(&held, "with 100 streams held");
    let held_fds = held.own;
    let fd_bound = base_fds + 50 * MAX_FDS_PER_DOWNLOAD + 50 * MAX_FDS_PER_UPLOAD + 2;
    assert!(
        held_fds <= fd_bound,
        "{held_fds} descriptors open with 100 streams held (baseline {base_fds}, bound {fd_bound})"
    );
    let held_rss = rss_bytes(pid);
    let rss_bound = base_rss + 100 * MAX_RSS_PER_STREAM;
    assert!(
        held_rss <= rss_bound,
        "resident memory {} MiB with 100 streams held (baseline {} MiB, bound {} MiB)",
        held_rss >> 20,
        base_rss >> 20,
        rss_bound >> 20
    );
    eprintln!(
        "100 streams held: {} descriptors (baseline {base_fds}) and {} to the store, {} MiB resident (baseline {} MiB)",
        held_fds,
        held.store,
        held_rss >> 20,
        base_rss >> 20
    );

    // The clients go: the server lets go of everything.
    drop(downloads);
    drop(uploads);
    drop(extra);
    let settled = fds_settle(&server, base_fds + 2);
    assert!(settled <= base_fds + 2, "{settled} descriptors remain after the clients left (baseline {base_fds})");

    // And the key may stream again.
    let mut again = connect(&server);
    again.write_all(get(&file, &t.token).as_bytes()).unwrap();
    assert_eq!(read_head(&mut again).0, 200);
}

#[test]
fn a_download_nobody_reads_is_closed_after_the_stall_timeout() {
    let (_dir, server) = start(&["--stall-timeout", "2s"]);
    let t = tenant(&server);
    let base_fds = baseline_fds(&server);
    let mut s = connect(&server);
    s.write_all(get(&format!("/v1/namespaces/tenant/filesystems/{}/archive", t.fs), &t.token).as_bytes()).unwrap();
    assert_eq!(read_head(&mut s).0, 200);
    // The client keeps its socket and reads nothing: the server closes its side and frees
    // what the download held.
    let settled = fds_settle(&server, base_fds);
    assert!(settled <= base_fds, "{settled} descriptors held by an unread download (baseline {base_fds})");
    // What the client then reads ends before the archive does.
    let mut rest = Vec::new();
    let _ = BufReader::new(&mut s).read_to_end(&mut rest);
    assert!((rest.len() as u64) < BIG, "the whole archive arrived although the download was cut");
}

/// Sends all but the last byte of `body` a byte at a time, one byte per `gap`, after `head`;
/// whether the server answered or closed the connection meanwhile (the body is never complete,
/// so an answer is the server cutting it).
fn cut_while_trickling(s: &mut TcpStream, head: &str, body: &[u8], gap: Duration) -> bool {
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(gap)).unwrap();
    let mut buf = [0u8; 4096];
    for b in &body[..body.len() - 1] {
        if s.write_all(&[*b]).is_err() {
            return true;
        }
        match s.read(&mut buf) {
            Ok(_) => return true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn bodies_trickled_a_byte_at_a_time_are_cut_after_the_stall_timeout() {
    // A byte every 200 ms never stalls for the 2 s timeout, but a body must also make progress
    // (64 KiB or its end within each stall timeout): 400 bytes would take 80 s.
    let (_dir, server) = start(&["--stall-timeout", "2s"]);
    server.ok(None, &["namespace", "create", "tenant", "--disk", "1GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "tenant", "dev", "--role", "developer"]);
    let token = key["token"].as_str().unwrap().to_owned();
    let fs = server.json(Some(&token), &["fs", "create", "--ns", "tenant", "slow", "--size", "64MiB"]);
    let fs = fs["id"].as_str().unwrap().to_owned();
    let gap = Duration::from_millis(200);

    // A JSON body: such routes count in no stream bound, so nothing else would stop one key
    // from holding every connection the server has.
    let body = format!(r#"{{"name": "slow{}"}}"#, " ".repeat(380)).into_bytes();
    let head = format!(
        "POST /v1/namespaces/tenant/projects HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut json = connect(&server);
    assert!(cut_while_trickling(&mut json, &head, &body, gap), "a JSON body trickled a byte at a time was kept");

    // An upload, and the same with a chunked body announcing a huge chunk.
    let head = format!(
        "PUT /v1/namespaces/tenant/filesystems/{fs}/files?path=slow.bin HTTP/1.1\r\nHost: bulkhead\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut upload = connect(&server);
    assert!(cut_while_trickling(&mut upload, &head, &body, gap), "an upload trickled a byte at a time was kept");
    let head = format!(
        "PUT /v1/namespaces/tenant/filesystems/{fs}/files?path=chunked.bin HTTP/1.1\r\nHost: bulkhead\r\n\
         Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n"
    );
    let mut chunked = connect(&server);
    assert!(
        cut_while_trickling(&mut chunked, &head, &body, gap),
        "a chunked upload trickled a byte at a time was kept"
    );

    // Nothing was created, and the server still serves.
    let projects = server.json(Some(&token), &["project", "list", "--ns", "tenant"]);
    assert!(!projects.to_string().contains("slow"), "{projects}");
    let mut fresh = connect(&server);
    fresh.write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut fresh).0, 200);
}
