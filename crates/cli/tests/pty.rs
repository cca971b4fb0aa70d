//! `bulkhead shell` in a real terminal: tmux runs the real CLI against the real `bulkhead serve`
//! and a real sandbox, the test types into it (`send-keys`) and reads the screen
//! (`capture-pane`). Line editing, a full-screen program, a resize, Ctrl-C and the exit code all
//! go through the WebSocket attachment and the sandbox's terminal.
//!
//! Nothing here is timed: each step polls the screen until what it expects appears, and fails
//! when that has not happened within a generous overall limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
/// How long one expected screen may take to appear before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.session])
    }

    /// Types `keys` (tmux key names such as `Enter`, `C-a`, `BSpace`, or literal text with `-l`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn text(&self, text: &str) {
        self.run(&["send-keys", "-t", &self.session, "-l", text]);
    }

    /// Polls the screen until `ok` holds for it; fails with the screen after [`PATIENCE`].
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what} did not appear; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a line that is exactly `line` (output, not the command that printed it).
    fn wait_line(&self, line: &str) -> String {
        self.wait(line, |s| s.lines().any(|l| l.trim_end() == line))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
    }
}

#[test]
fn a_shell_on_a_real_terminal() {
    let dir = tempfile::Builder::new().prefix("bulkhead-test-").tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.ok(None, &["namespace", "create", "acme", "--cpu", "1", "--memory", "1GiB"]);
    let key = server.json(None, &["key", "create", "--ns", "acme", "dev", "--role", "developer"]);
    let token = key["token"].as_str().unwrap().to_owned();
    let sandbox = server.json(Some(&token), &["sandbox", "create", "--ns", "acme"]);
    let sandbox = sandbox["id"].as_str().unwrap().to_owned();

    // No status line: the pane is the whole 80x24 window.
    let conf = dir.path().join("tmux.conf");
    std::fs::write(&conf, "set -g status off\n").unwrap();
    let tag = server.cgroup_prefix.trim_start_matches("bulkhead-test-").to_owned();
    let tmux = Tmux { socket: format!("bulkhead-pty-{tag}"), session: "pty".into() };
    let command = format!(
        "BULKHEAD_URL={url} BULKHEAD_TOKEN={token} BULKHEAD_NAMESPACE=acme {BIN} shell {sandbox}; \
         echo \"bulkhead exited $?\"; sleep 600",
        url = server.url,
    );
    let conf = conf.display().to_string();
    let out = Command::new("tmux")
        .args(["-L", &tmux.socket, "-f", &conf, "new-session", "-d", "-s", &tmux.session, "-x", "80", "-y", "24"])
        .arg(&command)
        .env("TERM", "xterm-256color")
        .output()
        .expect("tmux starts");
    assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));

    // The shell answers.
    tmux.text("echo ready-$((40+2))");
    tmux.keys(&["Enter"]);
    tmux.wait_line("ready-42");

    // Line editing: a typo removed with backspace, the missing first letter added after Ctrl-A.
    tmux.text("cho edited-okX");
    tmux.keys(&["BSpace", "C-a"]);
    tmux.text("e");
    tmux.keys(&["Enter"]);
    tmux.wait_line("edited-ok");

    // The terminal's size, then a resize followed by the sandbox's terminal.
    tmux.text("stty size");
    tmux.keys(&["Enter"]);
    tmux.wait_line("24 80");
    tmux.run(&["resize-window", "-t", &tmux.session, "-x", "100", "-y", "30"]);
    tmux.wait("the resized pane", |_| {
        tmux.run(&["display-message", "-p", "-t", &tmux.session, "#{pane_width}x#{pane_height}"]).trim() == "100x30"
    });
    tmux.keys(&["C-l"]);
    tmux.text("stty size");
    tmux.keys(&["Enter"]);
    tmux.wait_line("30 100");

    // A full-screen program: less pages a file, jumps to its end, and quits.
    tmux.text("seq -f 'row-%g' 1 500 > /tmp/rows; less /tmp/rows");
    tmux.keys(&["Enter"]);
    let first = tmux.wait("less's first page", |s| s.lines().next().is_some_and(|l| l.trim_end() == "row-1"));
    assert!(first.lines().any(|l| l.trim_end() == "row-29"), "a full page of 30 rows:\n{first}");
    tmux.keys(&["G"]);
    tmux.wait("less's last page", |s| s.contains("row-500") && s.contains("(END)") && !s.contains("row-1\n"));
    tmux.keys(&["q"]);
    tmux.text("echo quit-$((5+5))");
    tmux.keys(&["Enter"]);
    tmux.wait_line("quit-10");

    // Ctrl-C ends the foreground command, not the shell.
    tmux.keys(&["C-l"]);
    tmux.text("echo sleeping-$((2+3)); sleep 1000");
    tmux.keys(&["Enter"]);
    tmux.wait_line("sleeping-5");
    tmux.keys(&["C-c"]);
    tmux.text("echo status-$?");
    tmux.keys(&["Enter"]);
    tmux.wait_line("status-130");

    // The shell's exit code is bulkhead's.
    tmux.text("exit 3");
    tmux.keys(&["Enter"]);
    tmux.wait_line("bulkhead exited 3");
}
