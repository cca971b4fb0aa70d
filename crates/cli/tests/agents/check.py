#!/usr/bin/env python3
"""Proves every test agent and the example agent over stdio with drive.py, against stubs on
127.0.0.1: an OpenAI-compatible chat completions API answering a scripted tool-call sequence,
and Bulkhead's task state API. Python standard library only.

    check.py [--site-packages DIR] [--only NAME...]

Uses the `node` and `python3` on PATH (run it inside the default image with check-in-image to
use the image's). --site-packages is echo-py's vendored SDK (default: what scripts/agent-deps
prints). Ends with a line `N passed, N failed`; exits non-zero when something failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
DRIVE = os.path.join(HERE, "drive.py")
EXAMPLE = os.path.join(ROOT, "examples", "acp-agent")

NAMESPACE, TASK, TOKEN = "acme", "tsk_check", "bhw_check_token"

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\n\nassert add(2, 3) == 5, add(2, 3)\nprint('1 test passed')\n"


# ---- stubs ------------------------------------------------------------------------------------


class Stubs:
    """The model and the task state API, on one loopback port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # chat completions bodies and headers
        self.state = b"{}"
        self.state_puts = 0
        stubs = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body: bytes, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent gave up on this request (a cancelled turn)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self.reply(404, b'{"error": "not found"}')
                req = json.loads(self.body())
                with stubs.lock:
                    stubs.requests.append({"body": req, "authorization": self.headers.get("authorization")})
                answer = stubs.model(req)
                if answer is None:
                    return self.reply(500, b'{"error": "the stub has no script for this"}')
                self.reply(200, json.dumps(answer).encode())

            def state_path(self) -> bool:
                return self.path == f"/v1/namespaces/{NAMESPACE}/tasks/{TASK}/state"

            def do_GET(self):
                if not self.state_path():
                    return self.reply(404, b"{}")
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    return self.reply(401, b'{"error": "unauthorized"}')
                with stubs.lock:
                    body = stubs.state
                self.reply(200, body, {"etag": '"%s"' % hashlib.sha256(body).hexdigest()[:16]})

            def do_PUT(self):
                if not self.state_path():
                    return self.reply(404, b"{}")
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    return self.reply(401, b'{"error": "unauthorized"}')
                body = self.body()
                json.loads(body)
                with stubs.lock:
                    etag = '"%s"' % hashlib.sha256(stubs.state).hexdigest()[:16]
                    match = self.headers.get("if-match")
                    if match is not None and match != etag:
                        return self.reply(412, b'{"error": "precondition failed"}')
                    stubs.state = body
                    stubs.state_puts += 1
                self.reply(200, b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def model(self, req: dict):
        """The scripted model: the turn's script is named by the last user message's first word;
        the step is the number of tool answers since that message."""
        messages = req["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        script = messages[last_user]["content"].split()[0]
        tools = [m for m in messages[last_user + 1 :] if m["role"] == "tool"]
        step = len(tools)
        n = len(self.requests)

        def call(name, **args):
            return {
                "id": f"call_{n}",
                "object": "chat.completion",
                "model": req["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls",
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": f"call_{script}_{step}_{n}",
                                    "type": "function",
                                    "function": {"name": name, "arguments": json.dumps(args)},
                                }
                            ],
                        },
                    }
                ],
                "usage": {"prompt_tokens": 100 + step, "completion_tokens": 10 + step, "total_tokens": 110 + 2 * step},
            }

        def say(text):
            return {
                "id": f"done_{n}",
                "object": "chat.completion",
                "model": req["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 100 + step, "completion_tokens": 10 + step, "total_tokens": 110 + 2 * step},
            }

        if script == "fix":
            if step == 0:
                return call("read_file", path="calc.py")
            if step == 1:
                return call("write_file", path="calc.py", content=FIXED)
            if step == 2:
                return call("run", command="python3 test_calc.py")
            return say("Fixed add(). The test said: " + tools[-1]["content"].splitlines()[0])
        if script == "outside":
            if step == 0:
                return call("write_file", path="../outside.txt", content="nope")
            return say("The write said: " + tools[-1]["content"])
        if script == "loop":
            return call("read_file", path="calc.py")
        if script == "slow":
            time.sleep(30)
            return say("too late")
        if script == "sleep":
            if step == 0:
                return call("run", command="sleep 30; echo woke")
            return say("slept")
        if script == "hello":
            return say("Hello! I can read, write and run things here.")
        return None

    def chat_requests(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()


# ---- running drive.py -------------------------------------------------------------------------


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float):
        self.code = proc.returncode
        self.stderr = proc.stderr
        self.seconds = seconds
        self.messages = []
        for line in proc.stdout.splitlines():
            if line.strip():
                self.messages.append(json.loads(line))

    def recv(self):
        return [m["recv"] for m in self.messages if "recv" in m]

    def sent(self):
        return [m["send"] for m in self.messages if "send" in m]

    def updates(self, kind=None):
        out = []
        for m in self.recv():
            if m.get("method") == "session/update":
                u = m["params"]["update"]
                if kind is None or u.get("sessionUpdate") == kind:
                    out.append(u)
        return out

    def requests(self, method):
        return [m for m in self.recv() if m.get("method") == method and "id" in m]

    def texts(self, kind="agent_message_chunk"):
        return [u["content"]["text"] for u in self.updates(kind)]

    def results(self):
        """Results of our requests, by method."""
        methods = {m["id"]: m["method"] for m in self.sent() if "method" in m and "id" in m}
        out = []
        for m in self.recv():
            if "method" not in m and "result" in m and m.get("id") in methods:
                out.append((methods[m["id"]], m["result"]))
        return out

    def prompt_results(self):
        return [r for method, r in self.results() if method == "session/prompt"]

    def session_id(self):
        for method, r in self.results():
            if method == "session/new":
                return r["sessionId"]
        return None

    def agent_exit(self):
        for m in self.messages:
            if "agent_exit" in m:
                return m["agent_exit"]
        return None


def drive(command, *args, env=None, timeout=120) -> Run:
    argv = [sys.executable, DRIVE, *args, "--", *command]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    return Run(proc, time.monotonic() - started)


def agent_command(directory: str):
    """The agent's command from its agent.json, with /agent standing for its directory."""
    with open(os.path.join(directory, "agent.json"), encoding="utf-8") as f:
        spec = json.load(f)
    assert spec["protocol"] == "acp"
    command = [directory + c[len("/agent") :] if c.startswith("/agent/") else c for c in spec["command"]]
    return command, spec.get("env", {})


# ---- the checks -------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.current = ""
        self.problems: list[str] = []

    def start(self, name: str) -> None:
        self.current = name
        self.problems = []

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)

    def end(self, run: Run | None = None) -> None:
        if self.problems:
            self.failed += 1
            print(f"FAIL {self.current}")
            for p in self.problems:
                print(f"     - {p}")
            if run is not None:
                print(f"     drive exited {run.code} after {run.seconds:.1f} s; its stderr:")
                for line in run.stderr.splitlines()[-15:]:
                    print(f"       {line}")
        else:
            self.passed += 1
            took = f" ({run.seconds:.1f} s)" if run is not None else ""
            print(f"ok   {self.current}{took}")
        sys.stdout.flush()


TEMP_DIRS: list[str] = []


def tempdir() -> str:
    d = tempfile.mkdtemp(prefix="bulkhead-agents-check.")
    TEMP_DIRS.append(d)
    return d


def workspace() -> str:
    d = tempdir()
    ws = os.path.join(d, "ws")
    os.mkdir(ws)
    with open(os.path.join(ws, "calc.py"), "w") as f:
        f.write(BUGGY)
    with open(os.path.join(ws, "test_calc.py"), "w") as f:
        f.write(TEST)
    return ws


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def check_echo_py(c: Checks, stubs: Stubs, site_packages: str, token_file: str) -> None:
    command, env = agent_command(os.path.join(HERE, "echo-py"))
    env = {**env, "PYTHONPATH": site_packages}
    env_args = [f"--env={k}={v}" for k, v in env.items()]
    task_env = [
        f"--env=BULKHEAD_URL={stubs.url}",
        f"--env=BULKHEAD_NAMESPACE={NAMESPACE}",
        f"--env=BULKHEAD_TASK_ID={TASK}",
        f"--env=BULKHEAD_TOKEN_FILE={token_file}",
    ]

    c.start("echo-py: echo, read, write, shell, chunks, usage")
    ws = workspace()
    r = drive(
        command,
        f"--cwd={ws}",
        *env_args,
        "--prompt=hello there",
        "--prompt=read calc.py",
        "--prompt=write notes/../out.txt two words",
        "--prompt=shell echo out; echo err >&2; exit 4",
        "--prompt=chunks 3",
        "--prompt=usage",
        "--prompt=usage meta",
    )
    c.expect(r.code == 0, f"drive exited {r.code}")
    texts = r.texts()
    c.expect("echo: hello there" in texts, "no echo")
    c.expect(BUGGY in texts, "read did not return the file")
    c.expect("wrote notes/../out.txt" in texts, "no `wrote`")
    c.expect(os.path.exists(os.path.join(ws, "out.txt")) and read(os.path.join(ws, "out.txt")) == "two words", "the file was not written")
    c.expect("exit 4\nout\nerr\n" in texts, f"shell: {texts}")
    c.expect(["0", "1", "2"] == [t for t in texts if t in ("0", "1", "2")], "chunks")
    c.expect(len(r.updates("agent_thought_chunk")) == 7 and len(r.updates("plan")) == 7, "a turn without thought or plan")
    results = r.prompt_results()
    c.expect(len(results) == 7 and all(x["stopReason"] == "end_turn" for x in results), "stop reasons")
    c.expect(results[5].get("usage", {}).get("inputTokens") == 11 and results[5]["usage"].get("outputTokens") == 7, f"usage: {results[5]}")
    c.expect(results[6].get("_meta", {}).get("usage") == {"input_tokens": 11, "output_tokens": 7}, f"usage meta: {results[6]}")
    c.expect(len(r.requests("session/request_permission")) == 1, "one permission request")
    calls = r.updates("tool_call")
    c.expect(len(calls) == 1 and calls[0]["kind"] == "edit" and calls[0]["status"] == "pending", "the write's tool_call")
    c.expect(r.updates("tool_call_update")[-1]["status"] == "completed", "the write's completion")
    c.expect(r.agent_exit() == 0, f"agent exit {r.agent_exit()}")
    c.end(r)

    c.start("echo-py: write refused, outside the cwd fails, permission cancelled, allow_always asks once")
    ws = workspace()
    r = drive(command, f"--cwd={ws}", *env_args, "--permission=reject", "--prompt=write a.txt x")
    c.expect(r.code == 0 and "refused" in r.texts() and not os.path.exists(os.path.join(ws, "a.txt")), "refused write")
    c.expect(r.updates("tool_call_update")[-1]["status"] == "failed", "a refused call is failed")
    r2 = drive(command, f"--cwd={ws}", *env_args, "--prompt=write ../outside.txt x")
    c.expect(r2.code == 0 and any(t.startswith("write failed: ") for t in r2.texts()), f"outside write: {r2.texts()}")
    c.expect(not os.path.exists(os.path.join(os.path.dirname(ws), "outside.txt")), "wrote outside the cwd")
    r4 = drive(command, f"--cwd={ws}", *env_args, "--permission=cancel", "--prompt=write c.txt x")
    c.expect(r4.code == 0 and [x["stopReason"] for x in r4.prompt_results()] == ["cancelled"], "a cancelled permission")
    r3 = drive(command, f"--cwd={ws}", *env_args, "--permission=always", "--prompt=write a.txt 1", "--prompt=write b.txt 2")
    c.expect(r3.code == 0 and len(r3.requests("session/request_permission")) == 1, "allow_always asked again")
    c.expect(read(os.path.join(ws, "b.txt")) == "2", "second write")
    c.end(r3)

    c.start("echo-py: sleep is cancelled at once by session/cancel")
    r = drive(command, f"--cwd={ws}", *env_args, "--prompt=sleep 30", "--cancel-after=0.5")
    c.expect(r.code == 0, f"drive exited {r.code}")
    c.expect([x["stopReason"] for x in r.prompt_results()] == ["cancelled"], f"{r.prompt_results()}")
    c.expect(r.seconds < 10, f"took {r.seconds:.1f} s")
    c.end(r)

    c.start("echo-py: state reads the task state API; session/load")
    with stubs.lock:
        stubs.state = b'{"hello": "state"}'
    r = drive(command, f"--cwd={ws}", *env_args, *task_env, "--prompt=state")
    c.expect(r.code == 0 and json.loads(r.texts()[-1]) == {"hello": "state"}, f"state: {r.texts()}")
    r2 = drive(command, f"--cwd={ws}", *env_args, "--load=echo-previous", "--prompt=again")
    c.expect(r2.code == 0 and "echo: again" in r2.texts(), "after session/load")
    c.end(r2)

    c.start("echo-py: exit N ends the process with status N")
    r = drive(command, f"--cwd={ws}", *env_args, "--prompt=exit 5")
    c.expect(r.code == 1 and "closed its stdout (exit status 5)" in r.stderr, f"drive {r.code}: {r.stderr[-300:]}")
    c.expect(r.agent_exit() == 5, f"agent exit {r.agent_exit()}")
    c.end(r)


def check_example(c: Checks, stubs: Stubs, token_file: str) -> None:
    command, env = agent_command(EXAMPLE)
    env = {**env, "OPENAI_BASE_URL": f"{stubs.url}/v1", "OPENAI_MODEL": "stub-model"}
    base = [f"--env={k}={v}" for k, v in env.items()] + ["--env=OPENAI_API_KEY="]
    task_env = [
        f"--env=BULKHEAD_URL={stubs.url}",
        f"--env=BULKHEAD_NAMESPACE={NAMESPACE}",
        f"--env=BULKHEAD_TASK_ID={TASK}",
        f"--env=BULKHEAD_TOKEN_FILE={token_file}",
    ]

    c.start("example: read, fix, run the test, answer; usage; history saved")
    with stubs.lock:
        stubs.state = b'{"other": 1}'
    ws = workspace()
    before = len(stubs.chat_requests())
    r = drive(command, f"--cwd={ws}", *base, *task_env, "--prompt=fix the bug in calc.py")
    chats = stubs.chat_requests()[before:]
    c.expect(r.code == 0, f"drive exited {r.code}")
    c.expect(read(os.path.join(ws, "calc.py")) == FIXED, "calc.py not fixed")
    c.expect(len(chats) == 4, f"{len(chats)} model calls")
    if chats:
        body = chats[0]["body"]
        c.expect(body["model"] == "stub-model", "model name")
        c.expect(sorted(t["function"]["name"] for t in body["tools"]) == ["read_file", "run", "write_file"], "tools")
        c.expect(all(x["authorization"] is None for x in chats), "an Authorization header without OPENAI_API_KEY")
    calls = r.updates("tool_call")
    c.expect([x["kind"] for x in calls] == ["read", "edit", "execute"], f"tool kinds {[x.get('kind') for x in calls]}")
    c.expect(all(x["status"] == "pending" and x["toolCallId"] for x in calls), "tool_call status")
    c.expect(calls and calls[0]["locations"] == [{"path": os.path.join(ws, "calc.py")}], "read location")
    by_call: dict = {}
    for u in r.updates("tool_call_update"):
        by_call.setdefault(u["toolCallId"], []).append(u["status"])
    c.expect(all(by_call.get(x["toolCallId"]) == ["in_progress", "completed"] for x in calls), f"statuses {by_call}")
    c.expect(len(r.requests("session/request_permission")) == 2, "permission requests")
    c.expect(len(r.requests("fs/read_text_file")) == 1 and len(r.requests("fs/write_text_file")) == 1, "fs requests")
    run_update = [u for u in r.updates("tool_call_update") if u.get("status") == "completed"][-1]
    c.expect("exit code 0\n1 test passed" in run_update["content"][0]["content"]["text"], f"run output {run_update}")
    c.expect(r.texts() == ["Fixed add(). The test said: exit code 0"], f"texts {r.texts()}")
    results = r.prompt_results()
    c.expect(len(results) == 1 and results[0]["stopReason"] == "end_turn", f"{results}")
    usage = results[0].get("usage", {}) if results else {}
    c.expect(usage.get("inputTokens") == 406 and usage.get("outputTokens") == 46, f"usage {usage}")
    state = json.loads(stubs.state)
    sid = r.session_id()
    c.expect(state.get("other") == 1, "the state's other keys were lost")
    saved = state.get("sessions", {}).get(sid, {}).get("messages", [])
    c.expect([m["role"] for m in saved] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"], f"saved {[m['role'] for m in saved]}")
    c.expect(r.agent_exit() == 0, f"agent exit {r.agent_exit()}")
    c.end(r)

    c.start("example: session/load replays the saved history and goes on")
    before = len(stubs.chat_requests())
    r2 = drive(command, f"--cwd={ws}", *base, *task_env, f"--load={sid}", "--prompt=hello again")
    c.expect(r2.code == 0, f"drive exited {r2.code}")
    c.expect(r2.texts("user_message_chunk") == ["fix the bug in calc.py"], f"replayed user {r2.texts('user_message_chunk')}")
    c.expect(r2.texts()[:1] == ["Fixed add(). The test said: exit code 0"], f"replayed agent {r2.texts()}")
    c.expect(r2.texts()[-1:] == ["Hello! I can read, write and run things here."], "the new answer")
    chats = stubs.chat_requests()[before:]
    c.expect(len(chats) == 1 and len(chats[0]["body"]["messages"]) == 1 + 8 + 1, "the model did not get the history")
    r3 = drive(command, f"--cwd={ws}", *base, *task_env, "--load=sess_unknown", "--prompt=hello")
    c.expect(r3.code == 1 and "-32002" in r3.stderr, "loading an unknown session")
    c.end(r2)

    c.start("example: refused tools fail and the model hears it; allow_always is remembered; a cancelled permission cancels")
    ws = workspace()
    before = len(stubs.chat_requests())
    r = drive(command, f"--cwd={ws}", *base, "--permission=reject", "--prompt=fix it")
    chats = stubs.chat_requests()[before:]
    c.expect(r.code == 0 and read(os.path.join(ws, "calc.py")) == BUGGY, "a refused write happened")
    failed = [u for u in r.updates("tool_call_update") if u["status"] == "failed"]
    c.expect(len(failed) == 2 and all(u["content"][0]["content"]["text"] == "the user refused" for u in failed), f"{failed}")
    c.expect(len(chats) >= 2 and chats[2]["body"]["messages"][-1]["content"] == "the user refused", "the model was not told")
    r2 = drive(command, f"--cwd={ws}", *base, "--permission=always", "--prompt=fix it", "--prompt=fix it again")
    c.expect(r2.code == 0 and read(os.path.join(ws, "calc.py")) == FIXED, "fix with allow_always")
    c.expect(len(r2.requests("session/request_permission")) == 2, f"{len(r2.requests('session/request_permission'))} permission requests for 4 calls")
    r3 = drive(command, f"--cwd={ws}", *base, "--permission=cancel", "--prompt=fix it")
    c.expect(r3.code == 0 and [x["stopReason"] for x in r3.prompt_results()] == ["cancelled"], f"{r3.prompt_results()}")
    c.expect(r3.updates("tool_call_update")[-1]["status"] == "failed", "a call whose permission was cancelled")
    c.end(r2)

    c.start("example: a failed write is failed and given to the model")
    before = len(stubs.chat_requests())
    r = drive(command, f"--cwd={ws}", *base, "--prompt=outside")
    chats = stubs.chat_requests()[before:]
    failed = [u for u in r.updates("tool_call_update") if u["status"] == "failed"]
    c.expect(r.code == 0 and len(failed) == 1, "no failed update")
    c.expect(len(chats) == 2 and chats[1]["body"]["messages"][-1]["content"].startswith("error: "), "the model did not get the error")
    c.expect(r.texts() and r.texts()[-1].startswith("The write said: error: "), f"{r.texts()}")
    c.end(r)

    c.start("example: without the client's fs, node:fs; OPENAI_API_KEY is sent when set")
    ws = workspace()
    before = len(stubs.chat_requests())
    r = drive(command, f"--cwd={ws}", *[a for a in base if not a.startswith("--env=OPENAI_API_KEY")], "--env=OPENAI_API_KEY=sk-test", "--no-fs", "--prompt=fix")
    chats = stubs.chat_requests()[before:]
    c.expect(r.code == 0 and read(os.path.join(ws, "calc.py")) == FIXED, "not fixed with node:fs")
    c.expect(not r.requests("fs/read_text_file") and not r.requests("fs/write_text_file"), "fs requests without the capability")
    c.expect(chats and all(x["authorization"] == "Bearer sk-test" for x in chats), "no key sent")
    c.end(r)

    c.start("example: session/cancel stops a model call and a running command")
    r = drive(command, f"--cwd={ws}", *base, "--cancel-after=1", "--prompt=slow")
    c.expect(r.code == 0 and [x["stopReason"] for x in r.prompt_results()] == ["cancelled"], f"{r.prompt_results()}")
    c.expect(r.seconds < 15, f"took {r.seconds:.1f} s")
    r2 = drive(command, f"--cwd={ws}", *base, "--cancel-after=1.5", "--prompt=sleep", "--prompt=hello")
    c.expect(r2.code == 0 and [x["stopReason"] for x in r2.prompt_results()] == ["cancelled", "end_turn"], f"{r2.prompt_results()}")
    c.expect(r2.seconds < 15, f"took {r2.seconds:.1f} s")
    c.expect(any(u.get("status") == "failed" for u in r2.updates("tool_call_update")), "the cancelled run is not failed")
    c.end(r2)

    c.start("example: max_turn_requests after 50 model calls")
    before = len(stubs.chat_requests())
    r = drive(command, f"--cwd={ws}", *base, "--prompt=loop")
    c.expect(r.code == 0 and [x["stopReason"] for x in r.prompt_results()] == ["max_turn_requests"], f"{r.prompt_results()}")
    c.expect(len(stubs.chat_requests()) - before == 50, f"{len(stubs.chat_requests()) - before} model calls")
    c.end(r)


def check_hostile(c: Checks) -> None:
    def hostile(name):
        return agent_command(os.path.join(HERE, "hostile", name))[0]

    cases = [
        ("garbage", [], 1, "not JSON"),
        ("huge-line", ["--prompt=x"], 1, "a line of more than"),
        ("flood", ["--prompt=x", "--timeout=3"], 3, "no answer to session/prompt"),
        ("hang", ["--timeout=2"], 3, "no answer to initialize"),
        ("exit", [], 1, "(exit status 3)"),
        ("bad-rpc", [], 1, "answered a request we never sent"),
    ]
    for name, args, code, message in cases:
        c.start(f"hostile/{name}: drive exits {code}: {message}")
        ws = tempdir()
        r = drive(hostile(name), f"--cwd={ws}", *args, timeout=60)
        c.expect(r.code == code, f"drive exited {r.code}")
        c.expect(message in r.stderr, f"stderr: {r.stderr[-300:]}")
        c.expect(r.agent_exit() is not None, "the agent was not reaped")
        if name == "flood":
            c.expect(len(r.updates()) > 1000, f"only {len(r.updates())} updates")
        if name == "exit":
            c.expect("hostile exit" in r.stderr, "the agent's stderr did not pass through")
        c.end(r)
    c.start("hostile/bad-rpc: a lenient client gets through")
    # The agent's correct answers come after its junk; a client that drops what it cannot
    # match still gets a session and an answer (drive.py is strict, so this uses a raw pipe).
    proc = subprocess.Popen(hostile("bad-rpc"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": "/tmp", "mcpServers": []}},
        {"jsonrpc": "2.0", "id": 3, "method": "session/prompt", "params": {"sessionId": "bad-rpc-session", "prompt": []}},
        {"jsonrpc": "2.0", "id": "bad-rpc-1", "error": {"code": -32601, "message": "Method not found"}},
    ]
    out, err = proc.communicate("".join(json.dumps(x) + "\n" for x in lines), timeout=20)
    got = [json.loads(x) for x in out.splitlines() if x.strip()]
    answers = {m.get("id"): m for m in got if "method" not in m and m.get("jsonrpc") == "2.0"}
    c.expect(answers.get(1, {}).get("result", {}).get("protocolVersion") == 1, "initialize")
    c.expect(answers.get(3, {}).get("result", {}).get("stopReason") == "end_turn", "prompt")
    c.expect(sum(1 for m in got if m.get("id") == 2) == 2, "the duplicate answer")
    c.expect('client answered {"jsonrpc": "2.0", "id": "bad-rpc-1"' in err, "the client's answer was not logged")
    c.end()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-packages", help="echo-py's Python packages (default: scripts/agent-deps)")
    parser.add_argument("--only", nargs="*", choices=["echo-py", "example", "hostile"], help="run only these")
    args = parser.parse_args()
    only = set(args.only or ["echo-py", "example", "hostile"])
    site_packages = args.site_packages
    if "echo-py" in only and not site_packages:
        site_packages = subprocess.run(
            [os.path.join(ROOT, "scripts", "agent-deps")], check=True, capture_output=True, text=True
        ).stdout.strip()
    if "example" in only and not os.path.isdir(os.path.join(EXAMPLE, "node_modules", "@agentclientprotocol")):
        sys.exit("check: examples/acp-agent/node_modules is missing: run scripts/agent-deps")
    for tool in ("node", "python3"):
        v = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"{tool}: {v} ({shutil.which(tool)})")
    stubs = Stubs()
    tmp = tempdir()
    token_file = os.path.join(tmp, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    c = Checks()
    try:
        if "echo-py" in only:
            check_echo_py(c, stubs, site_packages, token_file)
        if "example" in only:
            check_example(c, stubs, token_file)
        if "hostile" in only:
            check_hostile(c)
    finally:
        stubs.close()
        for d in TEMP_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
