//! Background processes end to end, against the real `bulkhead serve` and real sandboxes:
//! start, list, get, output (NDJSON resumed by `seq` with no gap and no duplicate, live, and
//! server-sent events with `Last-Event-ID`), stdin (50 MiB streamed, with the server's memory
//! bounded), end-of-file and signals; signal and resize bodies read strictly (also over an
//! attachment) and errors that echo little.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use bulkhead_api::{CreateProcess, ExecRequest, OutputStream, ProcessEvent, ProcessStatus};
use bulkhead_client::{AttachEvent, Client, Error, ProcessStream};
use sha2::Digest;

use common::process::{developer_with_sandbox as setup, Setup, NS};

fn cmd(args: &[&str]) -> CreateProcess {
    CreateProcess { cmd: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// An output event as (seq, stream, bytes).
type Piece = (u64, OutputStream, Vec<u8>);

/// Reads events until `done` holds for the pieces read so far (or the exit); returns them and
/// the exit code if the exit came.
async fn read_until(stream: &mut ProcessStream, done: impl Fn(&[Piece]) -> bool) -> (Vec<Piece>, Option<i32>) {
    let mut pieces = Vec::new();
    loop {
        if done(&pieces) {
            return (pieces, None);
        }
        match stream.next().await.expect("an event") {
            Some(ProcessEvent::Output { seq, stream, data }) => pieces.push((seq, stream, unb64(&data))),
            Some(ProcessEvent::Exit { exit_code, .. }) => return (pieces, Some(exit_code)),
            Some(ProcessEvent::Gap { from, to }) => panic!("output {from} to {to} was dropped"),
            None => panic!("the output ended without an exit"),
        }
    }
}

fn bytes(pieces: &[Piece]) -> Vec<u8> {
    pieces.iter().flat_map(|p| p.2.clone()).collect()
}

fn api_status(e: Error) -> (u16, String) {
    match e {
        Error::Api { status, message, .. } => (status, message),
        other => panic!("expected an API error, got {other:#}"),
    }
}

/// A start takes an argv up to the kernel's bounds, as an exec does: 16 arguments of 64 KiB
/// (over a megabyte of JSON, past the general body limit).
#[tokio::test]
async fn a_start_takes_an_argv_as_large_as_an_exec() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let big = "x".repeat(64 * 1024);
    let mut args = vec!["sh", "-c", "echo $#", "sh"];
    args.extend(std::iter::repeat_n(big.as_str(), 16));
    let p = c.start_process(NS, sbx, &cmd(&args)).await.expect("a start with 16 arguments of 64 KiB");
    let mut stream = c.process_output(NS, sbx, &p.id, 0).await.expect("output");
    let (pieces, code) = read_until(&mut stream, |_| false).await;
    assert_eq!((bytes(&pieces), code), (b"16\n".to_vec(), Some(0)));
}

/// A fork bomb started as a process fills the sandbox's pids limit, so the supervisor can get no
/// thread for a request; a kill still reaches it and ends every process of the bomb.
#[tokio::test]
async fn a_kill_ends_a_fork_bomb_at_the_pids_limit() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let bomb = c.start_process(NS, sbx, &cmd(&["bash", "-c", "f(){ f|f & }; f; sleep 1000"])).await.expect("start");
    // Until the bomb is at the limit: an exec is refused for want of a process.
    let mut full = false;
    for _ in 0..200 {
        if c.exec(NS, sbx, &ExecRequest { cmd: vec!["true".into()], ..Default::default() }).await.is_err() {
            full = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(full, "the bomb never reached the sandbox's pids limit");
    c.signal_process(NS, sbx, &bomb.id, "KILL").await.expect("a kill at the pids limit");
    // Every process of the bomb goes; the sandbox serves again.
    let mut out = None;
    for _ in 0..200 {
        let r = ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), "ls /proc | grep -c '^[0-9]'".into()],
            ..Default::default()
        };
        if let Ok(r) = c.exec(NS, sbx, &r).await {
            out = Some(r.stdout);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let procs: u32 = out.expect("the sandbox serves again after the kill").trim().parse().unwrap();
    // The supervisor, `sh`, `ls` and `grep`: nothing of the bomb.
    assert!(procs <= 4, "{procs} processes left in the sandbox");
}

#[tokio::test]
async fn start_list_get_stdin_eof_and_signal() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());

    // stdin to a process, then end-of-file: it sees every byte and exits.
    let p = c.start_process(NS, sbx, &cmd(&["sh", "-c", "tr a-z A-Z; echo done >&2; exit 7"])).await.expect("start");
    assert!(p.id.starts_with("prc_") && p.status == ProcessStatus::Running, "{p:?}");
    assert_eq!(c.process_stdin(NS, sbx, &p.id, b"hello ".to_vec(), false).await.expect("stdin"), 6);
    assert_eq!(c.process_stdin(NS, sbx, &p.id, b"world\n".to_vec(), true).await.expect("stdin, eof"), 6);
    let mut out = c.process_output(NS, sbx, &p.id, 0).await.expect("output");
    let (pieces, exit) = read_until(&mut out, |_| false).await;
    assert_eq!(exit, Some(7));
    let stdout: Vec<Piece> = pieces.iter().filter(|p| p.1 == OutputStream::Stdout).cloned().collect();
    let stderr: Vec<Piece> = pieces.iter().filter(|p| p.1 == OutputStream::Stderr).cloned().collect();
    assert_eq!(bytes(&stdout), b"HELLO WORLD\n");
    assert_eq!(bytes(&stderr), b"done\n");
    let seqs: Vec<u64> = pieces.iter().map(|p| p.0).collect();
    assert_eq!(seqs, (1..=pieces.len() as u64).collect::<Vec<_>>(), "seq starts at 1, one per event");
    let got = c.get_process(NS, sbx, &p.id).await.expect("get");
    assert_eq!((got.status, got.exit_code), (ProcessStatus::Exited, Some(7)), "{got:?}");

    // A signal by name ends a process; an unknown one is refused.
    let sleeper = c.start_process(NS, sbx, &cmd(&["sleep", "100"])).await.expect("start");
    let listed = c.list_processes(NS, sbx).await.expect("list");
    assert!(listed.iter().any(|x| x.id == p.id && x.status == ProcessStatus::Exited), "{listed:?}");
    assert!(listed.iter().any(|x| x.id == sleeper.id && x.status == ProcessStatus::Running), "{listed:?}");
    let (status, message) = api_status(c.signal_process(NS, sbx, &sleeper.id, "SIGFOO").await.expect_err("SIGFOO"));
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("SIGFOO"), "{message}");
    c.signal_process(NS, sbx, &sleeper.id, "TERM").await.expect("TERM");
    let mut out = c.process_output(NS, sbx, &sleeper.id, 0).await.expect("output");
    let (_, exit) = read_until(&mut out, |_| false).await;
    assert_eq!(exit, Some(128 + 15));
    let got = c.get_process(NS, sbx, &sleeper.id).await.expect("get");
    assert_eq!((got.status, got.signal), (ProcessStatus::Exited, Some(15)), "{got:?}");
    // Signalling a finished process is a conflict that says so, for any signal.
    for sig in ["TERM", "KILL"] {
        let e = c.signal_process(NS, sbx, &sleeper.id, sig).await.expect_err("an exited process");
        let Error::Api { status, code, message, .. } = e else { panic!("{e:#}") };
        assert_eq!((status, code.as_str()), (409, "conflict"), "{message}");
        assert_eq!(message, format!("process {} has exited", sleeper.id));
    }

    // A process the sandbox does not have is a 404, and a viewer may not start one.
    let missing = format!("prc_{}", "0".repeat(32));
    assert_eq!(api_status(c.get_process(NS, sbx, &missing).await.expect_err("missing")).0, 404);
    assert_eq!(api_status(c.get_process(NS, sbx, "prc_nonsense").await.expect_err("malformed")).0, 404);
    let viewer = s.server.json(None, &["key", "create", "--ns", NS, "look", "--role", "viewer"]);
    let viewer = Client::new(&s.server.url, Some(viewer["token"].as_str().unwrap().to_owned()));
    assert_eq!(api_status(viewer.start_process(NS, sbx, &cmd(&["true"])).await.expect_err("viewer")).0, 403);
    assert_eq!(viewer.get_process(NS, sbx, &p.id).await.expect("a viewer reads").id, p.id);
}

#[tokio::test]
async fn a_dropped_output_stream_resumes_without_gap_or_duplicate() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let p = c.start_process(NS, sbx, &cmd(&["sh", "-c", "seq 1 20000; read x; seq 20001 40000"])).await.expect("start");
    let mut out = c.process_output(NS, sbx, &p.id, 0).await.expect("output");
    let (first, exit) = read_until(&mut out, |p| bytes(p).ends_with(b"\n20000\n")).await;
    assert_eq!(exit, None);
    drop(out);
    let last = first.last().unwrap().0;
    c.process_stdin(NS, sbx, &p.id, b"go\n".to_vec(), true).await.expect("stdin");
    let mut out = c.process_output(NS, sbx, &p.id, last).await.expect("resumed output");
    let (rest, exit) = read_until(&mut out, |_| false).await;
    assert_eq!(exit, Some(0));
    assert!(!rest.is_empty());
    let all: Vec<Piece> = first.into_iter().chain(rest).collect();
    let seqs: Vec<u64> = all.iter().map(|p| p.0).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>(), "no gap, no duplicate");
    let expected: String = (1..=40000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(bytes(&all)).unwrap(), expected);
}

#[tokio::test]
async fn output_is_live() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let script = "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second";
    let p = c.start_process(NS, sbx, &cmd(&["sh", "-c", script])).await.expect("start");
    let mut out = c.process_output(NS, sbx, &p.id, 0).await.expect("output");
    // The process cannot go on before the test has read its first output.
    let (first, exit) = read_until(&mut out, |p| bytes(p) == b"first\n").await;
    assert_eq!((exit, bytes(&first)), (None, b"first\n".to_vec()));
    let touch = ExecRequest { cmd: vec!["touch".into(), "/tmp/go".into()], ..Default::default() };
    assert_eq!(c.exec(NS, sbx, &touch).await.expect("touch").exit_code, 0);
    let (rest, exit) = read_until(&mut out, |_| false).await;
    assert_eq!((exit, bytes(&rest)), (Some(0), b"second\n".to_vec()));
}

/// A process that prints nothing yet: its output stream and its attachment open at once (the
/// process waits for a file the test writes only after both are open), and stay open until it
/// prints and exits.
#[tokio::test]
async fn a_silent_process_streams_and_attaches_at_once() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let script = "while [ ! -e /tmp/late ]; do sleep 0.05; done; echo late";
    let p = c.start_process(NS, sbx, &cmd(&["sh", "-c", script])).await.expect("start");
    // Both open before the process can print: it waits for the file written after them.
    let mut out = c.process_output(NS, sbx, &p.id, 0).await.expect("output opens while the process is silent");
    let attached = c.attach_process(NS, sbx, &p.id).await.expect("attach upgrades while the process is silent");
    let (_writer, mut reader) = attached.split();
    let touch = ExecRequest { cmd: vec!["touch".into(), "/tmp/late".into()], ..Default::default() };
    assert_eq!(c.exec(NS, sbx, &touch).await.expect("touch").exit_code, 0);
    let (pieces, exit) = read_until(&mut out, |_| false).await;
    assert_eq!((exit, bytes(&pieces)), (Some(0), b"late\n".to_vec()));
    let mut seen = Vec::new();
    loop {
        match reader.next().await.expect("attachment") {
            Some(AttachEvent::Output(d)) => seen.extend(d),
            Some(AttachEvent::Exit { exit_code, .. }) => {
                assert_eq!(exit_code, 0);
                break;
            }
            Some(AttachEvent::Error(e)) => panic!("the attachment failed: {e:?}"),
            None => panic!("the attachment ended without an exit"),
        }
    }
    assert_eq!(seen, b"late\n");
}

/// The `id:` and `data:` of each server-sent event of an answer, read to its end.
async fn sse(url: &str, token: &str, last_event_id: Option<u64>) -> Vec<(Option<u64>, serde_json::Value)> {
    let mut r = reqwest::Client::new().get(url).bearer_auth(token).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        r = r.header("last-event-id", id.to_string());
    }
    let mut response = r.send().await.expect("send");
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().parse().expect("a seq"));
            } else if let Some(v) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str(v.trim()).expect("JSON"));
            }
        }
        if let Some(d) = data {
            events.push((id, d));
        }
    }
    events
}

#[tokio::test]
async fn server_sent_events_resume_after_last_event_id() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let p = c
        .start_process(NS, sbx, &cmd(&["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done"]))
        .await
        .expect("start");
    let url = format!("{}/v1/namespaces/{NS}/sandboxes/{sbx}/processes/{}/output", s.server.url, p.id);
    let all = sse(&url, &s.token, None).await;
    let (exit_id, exit) = all.last().unwrap();
    assert_eq!((exit_id, exit["type"].as_str(), exit["exit_code"].as_i64()), (&None, Some("exit"), Some(0)));
    let outputs: Vec<u64> = all.iter().filter_map(|(id, _)| *id).collect();
    assert!(outputs.len() >= 2, "{all:?}");
    assert!(all.iter().filter(|(id, _)| id.is_some()).all(|(id, d)| d["seq"].as_u64() == *id));
    let from = outputs[0];
    let resumed = sse(&url, &s.token, Some(from)).await;
    let resumed_ids: Vec<u64> = resumed.iter().filter_map(|(id, _)| *id).collect();
    assert_eq!(resumed_ids, outputs[1..].to_vec(), "exactly the events after Last-Event-ID");
    assert_eq!(resumed.last().unwrap().1["type"], "exit");
}

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn fifty_mib_of_stdin_stream_through_with_the_servers_memory_bounded() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let mut data = vec![0u8; 50 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let want = hex(&sha2::Sha256::digest(&data));
    let p = c.start_process(NS, sbx, &cmd(&["sha256sum"])).await.expect("start");
    let pid = s.server.pid();
    // The peak is measured from here: reset the server's high-water mark (clear_refs 5).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let before = status_kib(pid, "VmRSS:");
    assert_eq!(c.process_stdin(NS, sbx, &p.id, data, true).await.expect("50 MiB of stdin"), 50 << 20);
    let peak = status_kib(pid, "VmHWM:");
    let mut out = c.process_output(NS, sbx, &p.id, 0).await.expect("output");
    let (pieces, exit) = read_until(&mut out, |_| false).await;
    assert_eq!(exit, Some(0));
    let got = String::from_utf8(bytes(&pieces)).unwrap();
    assert_eq!(got.split_whitespace().next(), Some(want.as_str()), "the process received exactly the bytes sent");
    let grew = peak.saturating_sub(before);
    eprintln!("server RSS before {before} KiB, peak during the upload {peak} KiB, growth {grew} KiB");
    assert!(grew < 16 * 1024, "the server's memory grew by {grew} KiB for 50 MiB of stdin");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A raw `POST` of `body` (JSON) to `path` under the sandbox's process `pid`; (status, body).
async fn post(s: &Setup, pid: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let url = format!("{}/v1/namespaces/{NS}/sandboxes/{}/processes/{pid}{path}", s.server.url, s.sandbox);
    let r = reqwest::Client::new().post(url).bearer_auth(&s.token).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn message(body: &serde_json::Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn signal_and_resize_bodies_are_read_strictly_and_errors_echo_little() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let tty = CreateProcess { tty: Some(bulkhead_api::TtySize { rows: 24, cols: 80 }), ..cmd(&["cat"]) };
    let p = c.start_process(NS, sbx, &tty).await.expect("start");

    // Padded names, signs, leading zeros, numbers out of range: 400s naming what was sent.
    for (bad, shown) in [
        (serde_json::json!("SIGHUP "), "\"SIGHUP \""),
        (serde_json::json!(" HUP"), "\" HUP\""),
        (serde_json::json!("+1"), "\"+1\""),
        (serde_json::json!("010"), "\"010\""),
        (serde_json::json!(0), "0"),
        (serde_json::json!(32), "32"),
        (serde_json::json!(33), "33"),
        (serde_json::json!(65), "65"),
    ] {
        let (status, body) = post(&s, &p.id, "/signal", serde_json::json!({ "signal": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(message(&body).contains(shown), "{bad}: {body}");
    }
    // Sizes out of range name the field, as a number of any width.
    for (rows, cols, field) in [(0, 80, "rows"), (24, 70000, "cols"), (-1, 80, "rows")] {
        let (status, body) = post(&s, &p.id, "/resize", serde_json::json!({ "rows": rows, "cols": cols })).await;
        assert_eq!(status, 400, "{rows}x{cols}: {body}");
        assert!(message(&body).starts_with(&format!("{field}:")), "{rows}x{cols}: {body}");
    }
    let (status, body) = post(&s, &p.id, "/resize", serde_json::json!({ "rows": 30, "cols": 100 })).await;
    assert_eq!(status, 204, "{body}");

    // A JSON number is a signal too; the process ends with it.
    let (status, body) = post(&s, &p.id, "/signal", serde_json::json!({ "signal": 15 })).await;
    assert_eq!(status, 204, "{body}");
    let mut out = c.process_output(NS, sbx, &p.id, 0).await.expect("output");
    let (_, exit) = read_until(&mut out, |_| false).await;
    assert_eq!(exit, Some(128 + 15));

    // A 5000-character process id is a 404 that does not echo it whole.
    let long = "x".repeat(5000);
    let (status, message) = api_status(c.get_process(NS, sbx, &long).await.expect_err("long id"));
    assert_eq!(status, 404, "{message}");
    assert!(message.len() < 200, "{} characters: {message}", message.len());
}

#[tokio::test]
async fn an_attachment_refuses_a_size_out_of_range_naming_the_field_and_goes_on() {
    let s = setup().await;
    let (c, sbx) = (&s.client, s.sandbox.as_str());
    let tty = CreateProcess {
        tty: Some(bulkhead_api::TtySize { rows: 24, cols: 80 }),
        ..cmd(&["sh", "-c", "echo ready; exec cat"])
    };
    let p = c.start_process(NS, sbx, &tty).await.expect("start");
    let (mut writer, mut reader) = c.attach_process(NS, sbx, &p.id).await.expect("attach").split();
    writer.resize(0, 80).await.expect("send resize");
    let error = loop {
        match reader.next().await.expect("event") {
            Some(bulkhead_client::AttachEvent::Error(message)) => break message,
            Some(bulkhead_client::AttachEvent::Output(_)) => continue,
            other => panic!("expected an error, got {other:?}"),
        }
    };
    assert!(error.starts_with("rows:"), "{error}");
    writer.stdin(b"still here\n".to_vec()).await.expect("stdin");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("still here") {
        match reader.next().await.expect("event") {
            Some(bulkhead_client::AttachEvent::Output(data)) => seen.extend(data),
            other => panic!("expected output, got {other:?}"),
        }
    }
    c.signal_process(NS, sbx, &p.id, "KILL").await.expect("kill");
    loop {
        match reader.next().await.expect("event") {
            Some(bulkhead_client::AttachEvent::Exit { exit_code, .. }) => break assert_eq!(exit_code, 128 + 9),
            Some(bulkhead_client::AttachEvent::Output(_)) => continue,
            other => panic!("expected the exit, got {other:?}"),
        }
    }
}
