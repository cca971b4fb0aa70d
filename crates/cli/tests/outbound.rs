//! Fetches a tenant directs (its identity provider) and the outbound policy: a literal address in a
//! refused range is a 400 when it is set; a name is checked on the address the connector would dial,
//! when it is fetched, through the server's own resolver (`--egress-dns`, served here by a real DNS
//! server on loopback), and a refused address is never connected to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::process::{runtime_names, Server};
use common::{assert_envelope, Harness};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::json;

const NAME: &str = "idp.outbound.test";

/// A DNS server on loopback that answers `A` queries for [`NAME`] with 127.0.0.1 and everything
/// else with an empty answer. Counts the questions about [`NAME`].
struct Dns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Lets the loop see `stop`; not a bound on anything the test asserts.
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
                let mut reply = Message::new();
                reply
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(request.op_code())
                    .set_recursion_desired(request.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true)
                    .set_response_code(ResponseCode::NoError);
                for query in request.queries() {
                    reply.add_query(query.clone());
                    if query.name().to_ascii().trim_end_matches('.') == NAME {
                        q.fetch_add(1, Ordering::Relaxed);
                        if query.query_type() == RecordType::A {
                            let rdata = RData::A(A::new(127, 0, 0, 1));
                            reply.add_answer(Record::from_rdata(query.name().clone(), 0, rdata));
                        }
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Dns { addr, queries, stop, thread: Some(thread) }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connections the kernel completed on `listener` so far (each waits in the backlog until
/// accepted, so one made before an answer is counted whenever the count is taken after it).
fn accepted(listener: &TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    let mut n = 0;
    while listener.accept().is_ok() {
        n += 1;
    }
    n
}

/// A token shaped like an RS256 JWT of `issuer`; verifying it needs the issuer's keys.
fn jwt_shaped(issuer: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}).to_string());
    let claims = URL_SAFE_NO_PAD
        .encode(json!({"iss": issuer, "aud": "bulkhead", "sub": "mallory", "groups": ["eng"]}).to_string());
    let signature = URL_SAFE_NO_PAD.encode([7u8; 256]);
    format!("{header}.{claims}.{signature}")
}

/// The status code of `GET path` with `token`, over a plain socket.
fn status_of(server: &Server, path: &str, token: &str) -> u16 {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Starts a server with `extra` flags, makes namespace `acme` with its issuer at [`NAME`] on the
/// port of `target`, and sends one JWT-shaped token. Returns the answer's status.
fn sign_in_through_the_name(dns: &Dns, target: &TcpListener, extra: &[&str]) -> u16 {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let dns_addr = dns.addr.to_string();
    let mut args = vec!["--egress-dns", dns_addr.as_str()];
    args.extend_from_slice(extra);
    let mut server = Server::start_with_args(&dir.path().join("data"), runtime_names(), &args);
    server.ok(None, &["namespace", "create", "acme"]);
    let issuer = format!("https://{NAME}:{}", target.local_addr().unwrap().port());
    // A name is not resolved when it is set: it is checked where it leads when it is fetched.
    server.ok(
        None,
        &["identity", "set", "--ns", "acme", "--issuer", &issuer, "--audience", "bulkhead", "--map", "eng=developer"],
    );
    let status = status_of(&server, "/v1/namespaces/acme", &jwt_shaped(&issuer));
    server.stop();
    status
}

#[test]
fn a_name_that_resolves_to_loopback_is_never_dialled() {
    let dns = Dns::start();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();

    let status = sign_in_through_the_name(&dns, &target, &[]);
    assert_eq!(status, 401, "the token is refused");
    assert!(dns.queries.load(Ordering::Relaxed) >= 1, "the server asked its --egress-dns resolver for the name");
    assert_eq!(accepted(&target), 0, "the server connected to a loopback address");

    // The same name, with loopback allowed by the operator: the server dials it (and fails the TLS
    // handshake with a listener that says nothing, so the token is still refused).
    let status = sign_in_through_the_name(&dns, &target, &["--outbound-allow", "127.0.0.0/8"]);
    assert_eq!(status, 401);
    assert!(accepted(&target) >= 1, "with the range allowed the server did dial the name's address");
}

#[tokio::test]
async fn issuers_at_refused_or_non_canonical_addresses_are_400() {
    let h = Harness::with_namespaces(&["acme"]).await;
    let (_, owner) = h.create_key("acme", "boss", "owner").await;
    let set = |issuer: &str| json!({"oidc": {"issuer": issuer, "audience": "bulkhead", "role_mappings": {"eng": "developer"}}});
    for issuer in [
        "http://0x7f000001",
        "http://2130706433",
        "http://0177.0.0.1",
        "http://127.1",
        "http://127.0.0.1",
        "http://127.0.0.1:8080/realm",
        "https://127.0.0.1",
        "http://[::1]",
        "https://[::1]:8443",
        "http://[::ffff:127.0.0.1]",
        "https://[::ffff:7f00:1]",
        "http://169.254.169.254",
        "https://169.254.169.254/latest",
        "https://[fd00:ec2::254]",
        "http://10.0.0.1",
        "https://10.0.0.1",
        "https://172.16.0.1",
        "https://192.168.1.1",
        "https://100.64.0.1",
        "https://0.0.0.0",
        "https://[fe80::1]",
        "https://[fc00::1]",
        "https://224.0.0.1",
        "https://255.255.255.255",
        "http://8.8.8.8",
    ] {
        let r = h.call(Method::PUT, "/v1/namespaces/acme/identity", Some(&owner), set(issuer)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{issuer}: {}", r.body);
        assert_envelope(&r, "invalid_request");
        assert!(r.body["error"]["message"].as_str().unwrap_or("").starts_with("oidc.issuer: "), "{}", r.body);
    }
    let r = h.call(Method::GET, "/v1/namespaces/acme/identity", Some(&owner), serde_json::Value::Null).await;
    assert_eq!(r.body, json!({"oidc": null}), "nothing was stored");
    // A public address or a name is accepted (names are checked when fetched).
    for issuer in ["https://8.8.8.8", "https://idp.example.com/realms/acme"] {
        let r = h.call(Method::PUT, "/v1/namespaces/acme/identity", Some(&owner), set(issuer)).await;
        assert_eq!(r.status, StatusCode::OK, "{issuer}: {}", r.body);
    }
}

#[tokio::test]
async fn an_allowed_range_admits_exactly_its_canonical_addresses() {
    let h = Harness::with_config("runc", |c| {
        c.outbound.policy = bulkhead_core::outbound::OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    h.create_namespace("acme").await;
    let set = |issuer: &str| json!({"oidc": {"issuer": issuer, "audience": "bulkhead", "role_mappings": {"eng": "developer"}}});
    for (issuer, status) in [
        ("http://127.0.0.1:9", StatusCode::OK),
        ("https://127.0.0.2", StatusCode::OK),
        ("http://0x7f000001", StatusCode::BAD_REQUEST),
        ("http://127.1", StatusCode::BAD_REQUEST),
        ("http://[::1]", StatusCode::BAD_REQUEST),
        ("http://10.0.0.1", StatusCode::BAD_REQUEST),
        ("http://169.254.169.254", StatusCode::BAD_REQUEST),
    ] {
        let r = h.call(Method::PUT, "/v1/namespaces/acme/identity", Some(&h.admin), set(issuer)).await;
        assert_eq!(r.status, status, "{issuer}: {}", r.body);
    }
}
