//! Exec is exact, against the real `bulkhead serve` and real sandboxes: no stdin is end-of-file
//! at once, base64 carries every byte both ways, streamed text never splits a character, argv
//! reaches the kernel's bounds, bodies up to 16 MiB pass and larger ones are 413s, and commands
//! run as the user asked for; `bulkhead exec -i` streams stdin of any size in bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use bulkhead_api::{Encoding, ExecEvent, ExecRequest};
use bulkhead_client::Error;

use common::process::{developer_with_sandbox as setup, Setup, NS};

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

fn req(cmd: &[&str]) -> ExecRequest {
    ExecRequest { cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout_seconds: Some(60), ..Default::default() }
}

/// Runs a streamed exec; returns (stdout pieces, stderr pieces, exit code).
async fn streamed(s: &Setup, r: &ExecRequest) -> (Vec<String>, Vec<String>, i32) {
    let mut stream = s.client.exec_stream(NS, &s.sandbox, r).await.expect("stream");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match stream.next().await.expect("event") {
            Some(ExecEvent::Stdout { data }) => out.push(data),
            Some(ExecEvent::Stderr { data }) => err.push(data),
            Some(ExecEvent::Exit { exit_code, timed_out, .. }) => {
                assert!(!timed_out);
                return (out, err, exit_code);
            }
            Some(ExecEvent::Error { message }) => panic!("exec failed: {message}"),
            None => panic!("the stream ended before the exit"),
        }
    }
}

fn api_error(e: Error) -> (u16, String, String) {
    match e {
        Error::Api { status, code, message, .. } => (status, code, message),
        other => panic!("expected an API error, got {other:#}"),
    }
}

#[tokio::test]
async fn cat_without_stdin_or_with_an_empty_one_ends_at_once() {
    let s = setup().await;
    // Were stdin left open, cat would wait for the whole timeout and be killed.
    for stdin in [None, Some(String::new())] {
        let r = ExecRequest { stdin: stdin.clone(), timeout_seconds: Some(120), ..req(&["cat"]) };
        let out = s.client.exec(NS, &s.sandbox, &r).await.expect("exec");
        assert!(!out.timed_out, "cat waited for input with stdin {stdin:?}");
        assert_eq!((out.exit_code, out.stdout.as_str()), (0, ""), "stdin {stdin:?}");
        let (o, _, code) = streamed(&s, &r).await;
        assert_eq!((code, o.concat()), (0, String::new()));
    }
}

#[tokio::test]
async fn base64_carries_every_byte_through_stdin_and_stdout() {
    let s = setup().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 64).collect();
    let r = ExecRequest { stdin: Some(b64(&data)), encoding: Some(Encoding::Base64), ..req(&["cat"]) };
    let out = s.client.exec(NS, &s.sandbox, &r).await.expect("exec");
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert_eq!(unb64(&out.stdout), data, "buffered");
    let (pieces, _, code) = streamed(&s, &r).await;
    assert_eq!(code, 0);
    let got: Vec<u8> = pieces.iter().flat_map(|p| unb64(p)).collect();
    assert_eq!(got, data, "streamed");
    // Bytes that are not UTF-8 on stderr too.
    let r = ExecRequest { encoding: Some(Encoding::Base64), ..req(&["sh", "-c", "printf '\\377\\000\\303' >&2"]) };
    let out = s.client.exec(NS, &s.sandbox, &r).await.expect("exec");
    assert_eq!(unb64(&out.stderr), b"\xff\x00\xc3");

    // The CLI pipes any bytes through (base64 underneath).
    let cli = s.server.run(Some(&s.token), &["exec", "--ns", NS, "-i", &s.sandbox, "--", "cat"], &data);
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(cli.stdout, data, "through the CLI");
    let file = s._dir.path().join("bytes");
    std::fs::write(&file, &data).unwrap();
    let path = file.display().to_string();
    let args = ["exec", "--ns", NS, "--stdin-file", &path, &s.sandbox, "--", "sha256sum"];
    let cli = s.server.run(Some(&s.token), &args, b"");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let local = std::process::Command::new("sha256sum").arg(&file).output().unwrap();
    let digest = |o: &[u8]| String::from_utf8_lossy(o).split_whitespace().next().unwrap_or("").to_owned();
    assert_eq!(digest(&cli.stdout), digest(&local.stdout));
}

#[tokio::test]
async fn streamed_text_never_splits_a_character() {
    let s = setup().await;
    let r = req(&["sh", "-c", "yes é | head -n 100000"]);
    let (pieces, _, code) = streamed(&s, &r).await;
    assert_eq!(code, 0);
    assert!(pieces.len() > 1, "the output came in one piece; the test proves nothing");
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "a character was split between events");
    let all = pieces.concat();
    assert_eq!(all, "é\n".repeat(100_000));
    let buffered = s.client.exec(NS, &s.sandbox, &r).await.expect("exec");
    assert_eq!(buffered.stdout, all);

    // The namespace's log keeps the same text, cut between characters.
    let q = bulkhead_client::LogQuery { sandbox: Some(s.sandbox.clone()), limit: Some(10_000), ..Default::default() };
    let page = s.client.logs(NS, &q).await.expect("logs");
    assert!(page.records.iter().all(|r| !r.data.contains('\u{fffd}')), "a log record split a character");
    let q = bulkhead_client::LogQuery { encoding: Some(Encoding::Base64), ..q };
    let page = s.client.logs(NS, &q).await.expect("logs");
    let bytes: Vec<u8> = page.records.iter().flat_map(|r| unb64(&r.data)).collect();
    let text = String::from_utf8(bytes).expect("the log's bytes are the output's");
    assert!(text.len() >= 3 * 100_000 && text.chars().all(|c| c == 'é' || c == '\n'), "the log's bytes");
}

#[tokio::test]
async fn argv_reaches_the_kernels_bounds() {
    let s = setup().await;
    let big = "x".repeat(64 * 1024);
    let mut cmd = vec!["sh", "-c", "for a; do echo ${#a}; done", "sh"];
    cmd.extend(std::iter::repeat_n(big.as_str(), 16));
    let out = s.client.exec(NS, &s.sandbox, &req(&cmd)).await.expect("16 arguments of 64 KiB");
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "65536\n".repeat(16));

    let too_long = "y".repeat(131_073);
    let e = s.client.exec(NS, &s.sandbox, &req(&["echo", &too_long])).await.expect_err("an argument over 128 KiB");
    let (status, code, message) = api_error(e);
    assert_eq!((status, code.as_str()), (400, "invalid_request"), "{message}");
    assert!(message.contains("cmd[1]"), "{message}");
}

#[tokio::test]
async fn a_body_of_16_mib_passes_and_a_larger_one_is_413() {
    let s = setup().await;
    let stdin = "a".repeat((16 << 20) - 4096);
    let r = ExecRequest { stdin: Some(stdin), ..req(&["wc", "-c"]) };
    let out = s.client.exec(NS, &s.sandbox, &r).await.expect("a 16 MiB body");
    assert_eq!(out.stdout.trim(), ((16 << 20) - 4096).to_string());

    let r = ExecRequest { stdin: Some("a".repeat(17 << 20)), ..req(&["wc", "-c"]) };
    let e = s.client.exec(NS, &s.sandbox, &r).await.expect_err("a 17 MiB body");
    let (status, code, message) = api_error(e);
    assert_eq!((status, code.as_str()), (413, "payload_too_large"), "{message}");
}

#[tokio::test]
async fn commands_run_as_the_user_asked_for() {
    let s = setup().await;
    for user in ["nobody", "65534"] {
        let r = ExecRequest { user: Some(user.into()), ..req(&["id", "-u"]) };
        let out = s.client.exec(NS, &s.sandbox, &r).await.expect("exec as a user");
        assert_eq!((out.exit_code, out.stdout.trim()), (0, "65534"), "as {user}: {}", out.stderr);
    }
    let out = s.client.exec(NS, &s.sandbox, &req(&["id", "-u"])).await.expect("exec");
    assert_eq!(out.stdout.trim(), "0", "the default is the sandbox's root");

    let r = ExecRequest { user: Some("nosuchuser".into()), ..req(&["id", "-u"]) };
    let (status, code, message) = api_error(s.client.exec(NS, &s.sandbox, &r).await.expect_err("unknown user"));
    assert_eq!((status, code.as_str()), (400, "invalid_request"), "{message}");
    assert!(message.contains("nosuchuser"), "{message}");

    let cli =
        s.server.run(Some(&s.token), &["exec", "--ns", NS, "--user", "nobody", &s.sandbox, "--", "id", "-u"], b"");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "65534");
}

/// Runs the CLI under `/usr/bin/time -v` with `stdin` from a file; returns its output and its
/// peak resident set size in KiB (the kernel's `ru_maxrss` of the CLI process).
fn run_measured(s: &Setup, args: &[&str], stdin: &std::path::Path) -> (std::process::Output, u64) {
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .env("BULKHEAD_URL", &s.server.url)
        .env("BULKHEAD_TOKEN", &s.token)
        .env_remove("BULKHEAD_NAMESPACE")
        .stdin(std::fs::File::open(stdin).unwrap())
        .output()
        .expect("run bulkhead under /usr/bin/time");
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    let rss = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {report}"));
    (out, rss)
}

#[tokio::test]
async fn exec_dash_i_streams_stdin_of_any_size_in_bounded_memory() {
    let s = setup().await;
    // 50 MiB of random bytes: more than an exec body may carry (16 MiB).
    let file = s._dir.path().join("big.bin");
    let mut data = vec![0u8; 50 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data).unwrap();
    std::fs::write(&file, &data).unwrap();
    drop(data);
    let (out, rss_kib) = run_measured(&s, &["exec", "--ns", NS, "-i", &s.sandbox, "--", "sha256sum"], &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let local = std::process::Command::new("sha256sum").arg(&file).output().unwrap();
    let digest = |o: &[u8]| String::from_utf8_lossy(o).split_whitespace().next().unwrap_or("").to_owned();
    assert_eq!(digest(&out.stdout), digest(&local.stdout));
    // The CLI never holds stdin whole: its peak is far below the 50 MiB it sent, within a
    // few MiB of its peak for a few bytes (the same exec with a 5-byte stdin).
    let small = s._dir.path().join("small.bin");
    std::fs::write(&small, b"small").unwrap();
    let (base, base_kib) = run_measured(&s, &["exec", "--ns", NS, "-i", &s.sandbox, "--", "sha256sum"], &small);
    assert!(base.status.success(), "{}", String::from_utf8_lossy(&base.stderr));
    eprintln!("peak RSS of the CLI: {rss_kib} KiB for 50 MiB of stdin, {base_kib} KiB for 5 bytes");
    assert!(
        rss_kib < base_kib + (8 << 10),
        "the CLI's peak RSS was {rss_kib} KiB for 50 MiB of stdin, {base_kib} KiB for 5 bytes"
    );

    // --stdin-file streams the same way.
    let path = file.display().to_string();
    let empty = s._dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let args = ["exec", "--ns", NS, "--stdin-file", &path, &s.sandbox, "--", "sha256sum"];
    let (out, rss_kib) = run_measured(&s, &args, &empty);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(digest(&out.stdout), digest(&local.stdout));
    assert!(rss_kib < base_kib + (8 << 10), "the CLI's peak RSS was {rss_kib} KiB for a 50 MiB --stdin-file");
}

#[tokio::test]
async fn exec_dash_i_keeps_the_streams_apart_and_passes_the_exit_code_through() {
    let s = setup().await;
    let run = |script: &str, stdin: &[u8]| {
        s.server.run(Some(&s.token), &["exec", "--ns", NS, "-i", &s.sandbox, "--", "sh", "-c", script], stdin)
    };
    let out = run("cat; printf '\\377err' >&2; exit 3", b"in\x00\xfe");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"in\x00\xfe");
    assert_eq!(out.stderr, b"\xfferr");
    // Killed by a signal: 128 + its number.
    let out = run("kill -9 $$", b"");
    assert_eq!(out.status.code(), Some(137), "{}", String::from_utf8_lossy(&out.stderr));
    // A command that reads none of its stdin still ends with its own exit code.
    let out = run("exit 0", &vec![7u8; 4 << 20]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
