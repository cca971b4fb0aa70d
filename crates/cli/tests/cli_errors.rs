//! The CLI's errors: one line, `error: ` and then each step of the failure once (the request,
//! the answer, the cause), whether the server is down, answers an error or nonsense, or the
//! command never reaches it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

use common::process::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// Runs the CLI with `url` and a token that is never checked before the request.
fn run(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BULKHEAD_URL", url)
        .env("BULKHEAD_TOKEN", "bha_x")
        .env_remove("BULKHEAD_NAMESPACE")
        .output()
        .unwrap()
}

/// The one line a failed command printed.
fn error_line(out: &Output, args: &[&str]) -> String {
    assert!(!out.status.success(), "bulkhead {args:?} should have failed");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "bulkhead {args:?}: one line on error, got {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    err.trim_end().to_owned()
}

/// Fails when a step of `line` (the parts after `error: `, between `: `) comes twice or inside
/// another, or when any three words in a row come twice: the message repeats itself.
fn assert_each_step_once(line: &str) {
    let steps: Vec<&str> = line.strip_prefix("error: ").unwrap_or(line).split(": ").collect();
    for (i, a) in steps.iter().enumerate() {
        for (j, b) in steps.iter().enumerate() {
            assert!(i == j || !b.contains(a), "step {a:?} comes twice in {line:?}");
        }
    }
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let mut seen = HashSet::new();
    for phrase in words.windows(3) {
        assert!(seen.insert(phrase.join(" ")), "{:?} comes twice in {line:?}", phrase.join(" "));
    }
}

/// A local address where nothing listens.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A fake server that answers every request with `answer` (a whole HTTP/1.1 response).
fn canned(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    url
}

#[test]
fn an_unreachable_server_is_named_once_with_the_request_and_its_cause() {
    let url = dead_url();
    let cases: [(&[&str], &str); 6] = [
        (&["sandbox", "list", "--ns", "acme"], "GET /v1/namespaces/acme/sandboxes?limit=1000"),
        (&["namespace", "list"], "GET /v1/namespaces?limit=1000"),
        (&["exec", "--ns", "acme", "sbx_1", "--", "true"], "POST /v1/namespaces/acme/sandboxes/sbx_1/exec"),
        (&["fs", "ls", "--ns", "acme", "fs_1"], "GET /v1/namespaces/acme/filesystems/fs_1/files?path=&list=true"),
        (&["secret", "rm", "--ns", "acme", "db"], "DELETE /v1/namespaces/acme/secrets/db"),
        (&["audit", "--ns", "acme", "--verify"], "GET /v1/namespaces/acme/audit/verify"),
    ];
    for (args, request) in cases {
        let line = error_line(&run(&url, args), args);
        let (method, path) = request.split_once(' ').unwrap();
        let named = format!("error: cannot reach the server for {method} {url}{path}: ");
        assert!(line.starts_with(&named), "{args:?}: {line:?} does not start with {named:?}");
        assert!(line.ends_with("Connection refused (os error 111)"), "{line}");
        assert_eq!(line.matches(&url).count(), 1, "the URL comes once: {line}");
        assert_each_step_once(&line);
    }
}

#[test]
fn answers_that_are_not_the_api_name_the_request_and_status_once() {
    let nonsense = canned("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello");
    let args = ["namespace", "list"];
    let line = error_line(&run(&nonsense, &args), &args);
    let named = format!("error: parsing the answer to GET {nonsense}/v1/namespaces?limit=1000 (HTTP 200): ");
    assert!(line.starts_with(&named), "{line}");
    assert_each_step_once(&line);

    let proxy =
        canned("HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 12\r\n\r\nbad gateway\n");
    let line = error_line(&run(&proxy, &args), &args);
    assert_eq!(
        line,
        format!("error: unexpected answer to GET {proxy}/v1/namespaces?limit=1000 (HTTP 502): bad gateway")
    );
    assert_each_step_once(&line);
}

#[test]
fn local_failures_name_their_step_once() {
    let url = dead_url();
    // A missing token stops the command before any request.
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let args = ["sandbox", "list", "--ns", "acme"];
    let out = Command::new(BIN)
        .args(args)
        .env("BULKHEAD_URL", &url)
        .env("BULKHEAD_DATA_DIR", dir.path())
        .env_remove("BULKHEAD_TOKEN")
        .output()
        .unwrap();
    let line = error_line(&out, &args);
    assert!(line.starts_with("error: no token: ") && line.contains("BULKHEAD_TOKEN"), "{line}");
    assert_each_step_once(&line);

    // A file to copy that is not there: the step, then the system's reason.
    let missing = dir.path().join("missing");
    let src = missing.display().to_string();
    let args = ["cp", "--ns", "acme", &src, "sbx_1:/tmp/f"];
    let line = error_line(&run(&url, &args), &args);
    assert_eq!(line, format!("error: cannot read {src}: No such file or directory (os error 2)"));

    // A bad flag: clap's own message, its first line naming the flag once.
    let args = ["sandbox", "list", "--ns", "acme", "--bogus"];
    let out = run(&url, &args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    let first = err.lines().next().unwrap();
    assert_eq!(first, "error: unexpected argument '--bogus' found");
    assert_eq!(err.matches("--bogus").count(), 1, "{err}");
}

#[test]
fn a_refusal_of_the_server_is_its_code_message_and_request_id_once() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    for (args, code) in [
        (&["namespace", "get", "ghost"][..], "error: not_found: "),
        (&["namespace", "create", "Not_A_Name"][..], "error: invalid_request: name: "),
    ] {
        let line = server.fails(None, args).trim_end().to_owned();
        assert!(line.starts_with(code), "{line}");
        let (message, rest) = line.rsplit_once(" (HTTP ").unwrap();
        assert!(!message.is_empty() && rest.starts_with('4') && rest.contains(", request req_"), "{line}");
        assert_each_step_once(&line);
    }
    let line = server.fails(Some("bha_not_a_token"), &["sandbox", "list", "--ns", "acme"]).trim_end().to_owned();
    assert!(line.starts_with("error: unauthenticated: ") && line.contains("(HTTP 401, request req_"), "{line}");
    assert_each_step_once(&line);
}
