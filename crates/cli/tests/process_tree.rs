//! Every command's tree ends with it: each exec and background process runs in a cgroup of its
//! own under the sandbox's, so a timeout, a cancelled exec, a SIGKILL and a sandbox delete end
//! every descendant, also one that left the session (`setsid`), was double-forked, or ignored
//! SIGHUP (`nohup`). Proven from inside the sandbox, through the runtime (real runc, real
//! cgroups): no such process is left, and the marker files they would write never appear.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bulkhead_runtime::{ExecEvent, ExecSpec, Exit, ProcessEvent, ProcessSpec, ProcessStatus, Runtime, TtySize};
use common::Harness;
use serde_json::json;

fn spec(script: &str, timeout_ms: u64) -> ExecSpec {
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: "/".into(),
        timeout_ms,
        max_output_bytes: 1 << 20,
        stdin: false,
        user: None,
    }
}

async fn run(rt: &dyn Runtime, sbx: &str, spec: ExecSpec, stdin: Vec<u8>) -> (String, String, Exit) {
    let mut stream = rt.exec(sbx, spec, stdin).await.expect("exec");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(ev) = stream.next().await {
        match ev.expect("event") {
            ExecEvent::Stdout(d) => out.extend(d),
            ExecEvent::Stderr(d) => err.extend(d),
            ExecEvent::Exit(x) => {
                return (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned(), x)
            }
        }
    }
    panic!("no exit");
}

async fn sh(rt: &dyn Runtime, sbx: &str, script: &str) -> String {
    let (out, err, exit) = run(rt, sbx, spec(script, 20_000), vec![]).await;
    assert_eq!(exit.exit_code, Some(0), "{script}: {out} {err}");
    out
}

/// Starts the three escapees and returns the script: each sleeps, then writes a marker.
/// `setsid` leaves the session and process group; the subshell's `&` inside `( ... ) &` is a
/// double fork (its parent exits at once, so it is reparented to PID 1); `nohup` ignores SIGHUP.
fn escapees(tag: &str, delay: &str) -> String {
    format!(
        "setsid sh -c 'sleep {delay}; touch /tmp/{tag}-setsid' & \
         ( sh -c 'sleep {delay}; touch /tmp/{tag}-double' & ) ; \
         nohup sh -c 'sleep {delay}; touch /tmp/{tag}-nohup' >/dev/null 2>&1 & \
         sleep 1; echo started; sleep 600"
    )
}

/// The processes of the sandbox still running a command line containing `needle`, as `ps` would
/// list them, read from `/proc` inside the sandbox.
async fn survivors(rt: &dyn Runtime, sbx: &str, needle: &str) -> String {
    sh(
        rt,
        sbx,
        &format!(
            "for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); \
             case \"$c\" in *{needle}*) case \"$c\" in *for\\ p*) ;; *) echo \"${{p#/proc/}} $c\";; esac;; esac; done"
        ),
    )
    .await
}

async fn sandbox() -> (Harness, String) {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let id = h.create_sandbox("alpha", &h.admin, json!({"memory_bytes": 128 << 20})).await;
    (h, id)
}

#[tokio::test]
async fn a_timed_out_exec_ends_its_setsid_double_forked_and_nohup_descendants() {
    let (h, sbx) = sandbox().await;
    let rt = h.state.runtime.as_ref();
    // The delay is unique, so the survivors check finds exactly these sleeps.
    let (out, _, exit) = run(rt, &sbx, spec(&escapees("t", "4.321"), 2500), vec![]).await;
    assert!(exit.timed_out, "{exit:?}");
    assert!(out.contains("started"), "{out}");
    assert_eq!(survivors(rt, &sbx, "4.321").await, "", "descendants outlived the timeout");
    // Past the time they would have written their markers: none did.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(
        sh(rt, &sbx, "ls /tmp/t-* 2>/dev/null; true").await,
        "",
        "a descendant wrote its marker after the timeout"
    );
}

#[tokio::test]
async fn a_cancelled_exec_ends_its_whole_tree() {
    let (h, sbx) = sandbox().await;
    let rt = h.state.runtime.as_ref();
    let mut stream = rt.exec(&sbx, spec(&escapees("c", "5.432"), 60_000), vec![]).await.unwrap();
    loop {
        match stream.next().await.expect("event").expect("ok") {
            ExecEvent::Stdout(d) if String::from_utf8_lossy(&d).contains("started") => break,
            ExecEvent::Exit(x) => panic!("exited early: {x:?}"),
            _ => {}
        }
    }
    assert!(!survivors(rt, &sbx, "5.432").await.is_empty(), "the tree runs while the caller waits");
    // The caller goes away.
    drop(stream);
    let mut left = String::from("?");
    for _ in 0..100 {
        left = survivors(rt, &sbx, "5.432").await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, "", "descendants outlived the cancelled exec");
}

#[tokio::test]
async fn a_command_sees_its_own_cgroup_and_runs_as_its_user() {
    let (h, sbx) = sandbox().await;
    let rt = h.state.runtime.as_ref();
    let cg = sh(rt, &sbx, "cat /proc/self/cgroup").await;
    // The grouping hierarchy (v2's unified line, or v1's freezer) names the command's own
    // cgroup, relative to the sandbox's: the sandbox's cgroup namespace hides the rest.
    let line = cg.lines().find(|l| l.starts_with("0::") || l.contains(":freezer:")).expect("grouping line");
    let own = line.rsplit(':').next().unwrap();
    assert!(own.starts_with("/exec-"), "{cg}");
    // Another exec gets another one.
    let cg2 = sh(rt, &sbx, "cat /proc/self/cgroup").await;
    assert_ne!(cg, cg2);
    // The sandbox's /sys/fs/cgroup stays read-only for tenant code.
    let (_, err, exit) = run(
        rt,
        &sbx,
        spec(
            "if [ -d /sys/fs/cgroup/freezer ]; then mkdir /sys/fs/cgroup/freezer/x; else mkdir /sys/fs/cgroup/x; fi",
            10_000,
        ),
        vec![],
    )
    .await;
    assert_ne!(exit.exit_code, Some(0), "{err}");

    // No stdin: EOF at once.
    let (out, _, exit) = run(rt, &sbx, spec("cat; echo done", 10_000), vec![]).await;
    assert_eq!((out.as_str(), exit.exit_code), ("done\n", Some(0)));

    // A user from the sandbox's /etc/passwd.
    let mut s = spec("id -u; id -g; echo $HOME $USER", 10_000);
    s.user = Some("nobody".into());
    let (out, err, exit) = run(rt, &sbx, s, vec![]).await;
    assert_eq!(exit.exit_code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "{out}");
    assert!(lines[2].ends_with("nobody"), "{out}");
    let mut s = spec("id -u", 10_000);
    s.user = Some("no-such-user".into());
    let e = rt.exec(&sbx, s, vec![]).await.unwrap().next().await.unwrap().unwrap_err();
    assert!(matches!(&e, bulkhead_runtime::RuntimeError::Invalid(m) if m.contains("no-such-user")), "{e}");
    // A missing working directory is named, not blamed on the program (which exists); a
    // missing program keeps a shell's 127.
    let mut s = spec("pwd", 20_000);
    s.argv = vec!["pwd".into()];
    s.cwd = "/no/such/dir".into();
    let (_, err, exit) = run(rt, &sbx, s, vec![]).await;
    assert_eq!(exit.exit_code, Some(126), "{err}");
    assert_eq!(
        err,
        "bulkhead: cannot enter the working directory \"/no/such/dir\": No such file or directory (os error 2)\n"
    );
    let mut s = spec("", 20_000);
    s.argv = vec!["no-such-program".into()];
    let (_, err, exit) = run(rt, &sbx, s, vec![]).await;
    assert_eq!(exit.exit_code, Some(127), "{err}");
    assert!(err.starts_with("bulkhead: cannot run \"no-such-program\""), "{err}");
}

#[tokio::test]
async fn sigkill_of_a_background_process_ends_its_descendants_and_delete_leaves_no_cgroup() {
    let (h, sbx) = sandbox().await;
    let rt = h.state.runtime.as_ref();
    let p = ProcessSpec {
        id: "prc_tree1".into(),
        argv: vec!["sh".into(), "-c".into(), escapees("k", "6.543")],
        env: vec![],
        cwd: "/".into(),
        user: None,
        tty: None,
        timeout_ms: None,
    };
    let info = rt.spawn_process(&sbx, p).await.unwrap();
    assert_eq!(info.status, ProcessStatus::Running);
    let mut out = rt.process_output(&sbx, "prc_tree1", 0).await.unwrap();
    match out.next().await.unwrap().unwrap() {
        ProcessEvent::Output { seq, data, .. } => {
            assert_eq!(seq, 1);
            assert_eq!(data, b"started\n");
        }
        other => panic!("{other:?}"),
    }
    assert!(!survivors(rt, &sbx, "6.543").await.is_empty());
    let cg = sh(rt, &sbx, "ls -d /sys/fs/cgroup/freezer/prc_tree1 /sys/fs/cgroup/prc_tree1 2>/dev/null; true").await;
    assert!(cg.contains("prc_tree1"), "the process's cgroup is visible in the sandbox: {cg}");
    rt.signal_process(&sbx, "prc_tree1", 9).await.unwrap();
    match out.next().await.unwrap().unwrap() {
        ProcessEvent::Exit(info) => assert_eq!(info.signal, Some(9), "{info:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(survivors(rt, &sbx, "6.543").await, "", "descendants outlived SIGKILL");
    assert!(matches!(rt.signal_process(&sbx, "prc_tree1", 0).await, Err(bulkhead_runtime::RuntimeError::Invalid(_))));
    assert!(matches!(rt.process(&sbx, "prc_nope").await, Err(bulkhead_runtime::RuntimeError::ProcessNotFound(_))));

    // A process left running (and a background child of an exec) when the sandbox goes.
    let p = ProcessSpec {
        id: "prc_tree2".into(),
        argv: vec!["sh".into(), "-c".into(), escapees("d", "7.654")],
        env: vec![],
        cwd: "/".into(),
        user: None,
        tty: Some(TtySize { rows: 24, cols: 80 }),
        timeout_ms: None,
    };
    rt.spawn_process(&sbx, p).await.unwrap();
    sh(rt, &sbx, "setsid sleep 8.765 >/dev/null 2>&1 < /dev/null & echo").await;
    let ns_dirs = |h: &Harness| {
        bulkhead_runtime::cgroup::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &h.runtime.cgroup_prefix)
            .unwrap()
            .existing()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&sbx))
            .collect::<Vec<_>>()
    };
    let before = ns_dirs(&h);
    assert!(before.iter().any(|p| p.ends_with("prc_tree2")), "{before:?}");
    h.state.runtime.delete("alpha", &sbx).await.unwrap();
    assert_eq!(ns_dirs(&h), Vec::<std::path::PathBuf>::new(), "the sandbox's cgroups, nested ones too, are gone");
}

/// A command cannot leave its cgroup nor reach a sibling sandbox's through the supervisor's
/// delegated cgroup directory (its fd 4): the supervisor is not dumpable, so `/proc/1/fd/*`
/// needs `CAP_SYS_PTRACE`, which no command has; and the namespace's cgroup directory is
/// root's, 0700, so even a handle on the sandbox's own directory would lead nowhere above it.
#[tokio::test]
async fn a_command_cannot_leave_its_cgroup_nor_reach_a_sibling_sandbox() {
    let h = Harness::with_namespaces(&["alpha"]).await;
    let sbx = h.create_sandbox("alpha", &h.admin, json!({"memory_bytes": 128 << 20})).await;
    let sibling = h.create_sandbox("alpha", &h.admin, json!({"memory_bytes": 128 << 20})).await;
    let rt = h.state.runtime.as_ref();

    // The escape: a background child of a timed-out exec moves itself into the sandbox's own
    // cgroup (out of the exec's), then writes a marker after the timeout.
    let script = "sh -c 'if echo $$ > /proc/1/fd/4/cgroup.procs; then echo moved; else echo refused; fi; \
                  sleep 3.456; echo x > /tmp/esc' & sleep 600";
    let (out, err, exit) = run(rt, &sbx, spec(script, 2500), vec![]).await;
    assert!(exit.timed_out, "{exit:?}");
    assert!(out.contains("refused") && !out.contains("moved"), "the move was not refused: {out} {err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(survivors(rt, &sbx, "3.456").await, "", "the escapee outlived the timeout");
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(sh(rt, &sbx, "ls /tmp/esc 2>/dev/null; true").await, "", "the escapee wrote its marker");

    // None of the supervisor's descriptors is reachable, nor its memory or root.
    let probe = sh(
        rt,
        &sbx,
        "for p in /proc/1/fd/0 /proc/1/fd/3 /proc/1/fd/4 /proc/1/fd/4/.. /proc/1/mem /proc/1/environ /proc/1/root/; do \
           if (exec 5< $p) 2>/dev/null; then echo \"open $p\"; fi; done; \
         readlink /proc/1/fd/4 || echo no-link",
    )
    .await;
    assert_eq!(probe.trim(), "no-link", "{probe}");
    // The sibling: neither listable nor writable, through any path the sandbox has.
    let sib = sh(
        rt,
        &sbx,
        &format!(
            "ls /proc/1/fd/4/.. 2>/dev/null | grep -c {sibling}; \
             (echo $$ > /proc/1/fd/4/../{sibling}/cgroup.procs) 2>/dev/null && echo joined; \
             mkdir /proc/1/fd/4/../{sibling}/evil 2>/dev/null && echo made; \
             ls /sys/fs/cgroup/freezer/.. /sys/fs/cgroup/.. 2>/dev/null | grep -c {sibling}; true"
        ),
    )
    .await;
    assert_eq!(sib.split_whitespace().collect::<Vec<_>>(), ["0", "0"], "{sib}");
    // The host's view: the sibling has no such cgroup, and the namespace's directory is closed.
    let dirs =
        bulkhead_runtime::cgroup::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &h.runtime.cgroup_prefix)
            .unwrap()
            .existing();
    assert!(!dirs.iter().any(|p| p.ends_with("evil")), "{dirs:?}");
    let grouping = dirs
        .iter()
        .find(|p| {
            let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
            p.ends_with(&sibling) && (v2 || p.starts_with("/sys/fs/cgroup/freezer"))
        })
        .expect("the sibling's grouping cgroup");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(grouping.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the namespace's cgroup directory is {mode:o}");
    // The commands' own /proc stays as usual: execve makes them dumpable again.
    assert_eq!(sh(rt, &sbx, "readlink /proc/self/fd/0").await.trim(), "/dev/null");
}

/// The output background processes retain lives in the supervisor (PID 1, charged to the
/// sandbox's memory): together it stays within an eighth of the sandbox's memory, and the OOM
/// killer spares the supervisor (its commands are not spared). 40 processes printing 10 MB
/// each would hold 320 MiB at 8 MiB each, in a 128 MiB sandbox.
#[tokio::test]
async fn output_of_many_loud_processes_leaves_the_supervisor_alive() {
    let (h, sbx) = sandbox().await;
    let rt = h.state.runtime.as_ref();
    // The server spares the supervisor where it may lower a score (CAP_SYS_RESOURCE, which a
    // server in a container may lack); commands are never spared.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let may_lower = u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0;
    let want = if may_lower { "-1000\n0\n" } else { "0\n0\n" };
    assert_eq!(sh(rt, &sbx, "cat /proc/1/oom_score_adj /proc/self/oom_score_adj").await, want);
    let ids: Vec<String> = (0..40).map(|i| format!("prc_loud{i}")).collect();
    // Ten at a time (three processes each): within the small sandbox's pids limit, which a
    // process that cannot start would otherwise hit (its exit 127 fails the test below).
    let mut retained = 0usize;
    for batch in ids.chunks(10) {
        spawn_and_follow(rt, &sbx, batch, &mut retained).await;
    }
    assert!(retained <= 40 * (16 << 20), "{retained}");
    // Alive and serving: an exec runs, and the processes are all still listed.
    assert_eq!(sh(rt, &sbx, "echo alive").await, "alive\n");
    assert_eq!(rt.processes(&sbx).await.unwrap().len(), 40);
    let mut now = 0usize;
    for id in &ids {
        let mut out = rt.process_output(&sbx, id, 0).await.unwrap();
        while let Some(ev) = out.next().await {
            match ev.unwrap() {
                ProcessEvent::Output { data, .. } => now += data.len(),
                ProcessEvent::Exit(_) => break,
            }
        }
    }
    assert!(now <= 16 << 20, "all processes together retain {now} bytes");
    assert!(now > 0);
}

/// Starts the loud processes `ids` and follows each to its exit, adding what it printed and
/// was retained to `retained`.
async fn spawn_and_follow(rt: &dyn Runtime, sbx: &str, ids: &[String], retained: &mut usize) {
    for id in ids {
        let p = ProcessSpec {
            id: id.clone(),
            argv: vec!["sh".into(), "-c".into(), "yes 0123456789abcdef0123456789abcdef | head -c 10000000".into()],
            env: vec![],
            cwd: "/".into(),
            user: None,
            tty: None,
            timeout_ms: None,
        };
        rt.spawn_process(sbx, p).await.unwrap();
    }
    for id in ids {
        let mut out = rt.process_output(sbx, id, 0).await.unwrap();
        loop {
            match out.next().await.expect("an event").expect("the supervisor answers") {
                ProcessEvent::Output { data, .. } => *retained += data.len(),
                ProcessEvent::Exit(info) => {
                    assert_eq!(info.exit_code, Some(0), "{info:?}");
                    break;
                }
            }
        }
    }
}

/// What a runc sandbox holds on the host: its supervisor's open descriptors, the tasks its pids
/// cgroup counts, and the cgroup directories under its own (one per running command).
fn held(h: &Harness, sbx: &str) -> (usize, u64, usize) {
    let pid = std::fs::read_to_string(h.runtime.state_dir.join("sandboxes").join(sbx).join("pid")).unwrap();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", pid.trim())).unwrap().count();
    let cgroups =
        bulkhead_runtime::cgroup::Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &h.runtime.cgroup_prefix)
            .unwrap();
    let dirs = cgroups.existing().into_iter().filter(|p| p.to_string_lossy().contains(sbx)).collect::<Vec<_>>();
    let pids = dirs
        .iter()
        .find(|d| d.ends_with(sbx) && d.join("pids.current").exists())
        .map(|d| std::fs::read_to_string(d.join("pids.current")).unwrap().trim().parse().unwrap())
        .expect("the sandbox's pids cgroup");
    let nested = dirs.iter().filter(|d| !d.ends_with(sbx)).count();
    (fds, pids, nested)
}

/// Runs `true` `n` times, each to its exit.
async fn commands(rt: &dyn Runtime, sbx: &str, n: usize) {
    for i in 0..n {
        let (out, err, exit) = run(rt, sbx, spec("true", 20_000), vec![]).await;
        assert_eq!(exit.exit_code, Some(0), "command {i} of {n}: {out} {err}");
    }
}

/// What the sandbox holds once it is at most `bound` (descriptors, tasks, nested cgroups), or
/// after a minute: the supervisor removes an ended command's cgroup within a second; the minute
/// bounds the test, it measures nothing.
async fn settled(h: &Harness, sbx: &str, bound: (usize, u64, usize)) -> (usize, u64, usize) {
    let mut now = held(h, sbx);
    for _ in 0..600 {
        if now.0 <= bound.0 && now.1 <= bound.1 && now.2 <= bound.2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = held(h, sbx);
    }
    now
}

/// Hundreds of commands leave nothing held behind: once they have ended, the sandbox holds as
/// many tasks and nested cgroups as before the first, and its supervisor as many descriptors
/// after 320 commands as after 20.
#[tokio::test]
async fn many_commands_leave_no_descriptor_task_or_cgroup_behind() {
    let (h, sbx) = sandbox().await;
    let rt = h.state.runtime.as_ref();
    let before = held(&h, &sbx);
    commands(rt, &sbx, 20).await;
    let first = settled(&h, &sbx, (usize::MAX, before.1, before.2)).await;
    assert!(first.1 <= before.1 && first.2 <= before.2, "before any command {before:?}, after 20 {first:?}");
    commands(rt, &sbx, 300).await;
    let after = settled(&h, &sbx, first).await;
    assert!(
        after.0 <= first.0 && after.1 <= first.1 && after.2 <= first.2,
        "(descriptors, tasks, nested cgroups) after 20 commands {first:?}, after 320 {after:?}"
    );
}
