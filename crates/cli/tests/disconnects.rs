//! A change runs to its end whether or not its client waits: a client that sends a delete and
//! hangs up at once still gets a sandbox deleted (torn down, its status `deleted`, its record in
//! the audit chain), never one marked failed halfway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::Server;

#[test]
fn a_delete_whose_client_hangs_up_still_deletes() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "2", "--memory", "2GiB"]);
    let token = server.first_token.clone().expect("the admin token");
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut deleted = 0;
    // Hang-ups at several points: before the server reads the request (then nothing happens),
    // and while the delete runs (then it must run to its end).
    for (round, delay_ms) in [0u64, 5, 10, 20, 30, 50, 80, 120].into_iter().enumerate() {
        let id = server.json(None, &["sandbox", "create", "--ns", "acme"])["id"].as_str().unwrap().to_owned();
        let mut conn = TcpStream::connect(&addr).unwrap();
        let request = format!(
            "DELETE /v1/namespaces/acme/sandboxes/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        conn.shutdown(std::net::Shutdown::Both).unwrap();
        drop(conn);
        let deadline = Instant::now() + Duration::from_secs(3);
        let (status, body) = loop {
            let s = server.json(None, &["sandbox", "get", "--ns", "acme", &id]);
            let status = s["status"].as_str().unwrap().to_owned();
            if status != "running" || Instant::now() > deadline {
                break (status, s);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match status.as_str() {
            // The server never started the delete: the sandbox is as it was.
            "running" => {
                server.ok(None, &["sandbox", "delete", "--ns", "acme", &id]);
            }
            "deleted" => {
                deleted += 1;
                let audit = server.json(None, &["audit", "--ns", "acme"]).to_string();
                assert!(audit.contains(&id) && audit.contains("sandbox.delete"), "round {round}: no record: {audit}");
            }
            other => panic!("round {round} (hang-up after {delay_ms} ms): the sandbox is {other}: {body}"),
        }
    }
    assert!(deleted > 0, "no round reached the delete: the test proves nothing");
}
