#!/usr/bin/env python3
"""A small ACP client over stdio, to drive an agent by hand or from a test (Python standard
library only).

    drive.py [options] -- COMMAND [ARG...]

Runs COMMAND (in a new process group), sends `initialize` (protocolVersion 1, fs read/write,
no terminal, as Bulkhead does), opens a session in --cwd with `session/new` (or `session/load`
with --load), sends each --prompt as a `session/prompt` and waits for its answer, then closes
the agent's stdin and waits for it to exit. It answers `session/request_permission` as
--permission says and serves `fs/read_text_file` / `fs/write_text_file` within --cwd (JSON-RPC
errors otherwise).

Prints every message, both ways, as one JSON line: {"recv": MESSAGE} or {"send": MESSAGE}; at
the end {"agent_exit": STATUS}. The agent's stderr passes through to drive.py's stderr.

Exit status: 0 when every step was answered, 1 on a protocol error (a line that is not a JSON-RPC
2.0 message, a line longer than --max-line, an answer to no request, an update for another
session, an error answer, the agent closing its stdout before answering), 3 on a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

PROTOCOL_VERSION = 1
STOP_REASONS = {"end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"}


class ProtocolError(Exception):
    pass


class Timeout(Exception):
    pass


def emit(direction: str, message) -> None:
    sys.stdout.write(json.dumps({direction: message}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class Rpc(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class Driver:
    def __init__(self, args) -> None:
        self.args = args
        self.cwd = os.path.realpath(args.cwd)
        env = dict(os.environ)
        for kv in args.env:
            k, _, v = kv.partition("=")
            env[k] = v
        self.proc = subprocess.Popen(
            args.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self.inbox: queue.Queue = queue.Queue()
        self.next_id = 0
        self.pending: dict = {}
        self.session_id = None
        self.cancelling = False
        threading.Thread(target=self._read, daemon=True).start()

    # --- transport -------------------------------------------------------------------------

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                if buf:
                    self.inbox.put(("line", bytes(buf)))
                self.inbox.put(("eof", None))
                return
            start = len(buf)
            buf += chunk
            nl = buf.find(b"\n", start)
            while nl >= 0:
                if nl > self.args.max_line:
                    self.inbox.put(("too_long", nl))
                    return
                self.inbox.put(("line", bytes(buf[:nl])))
                del buf[: nl + 1]
                nl = buf.find(b"\n")
            if len(buf) > self.args.max_line:
                # Stop reading: the agent blocks on its write until we kill it.
                self.inbox.put(("too_long", len(buf)))
                return

    def send(self, message: dict) -> None:
        emit("send", message)
        data = json.dumps(message).encode() + b"\n"
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise ProtocolError(f"the agent closed its stdin (exit status {self.status()})") from None

    def receive(self, deadline: float, what: str):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"no answer to {what} within the time allowed")
        try:
            kind, value = self.inbox.get(timeout=remaining)
        except queue.Empty:
            raise Timeout(f"no answer to {what} within the time allowed") from None
        if kind == "eof":
            raise ProtocolError(f"the agent closed its stdout (exit status {self.status()}) while we waited for {what}")
        if kind == "too_long":
            raise ProtocolError(f"the agent wrote a line of more than {self.args.max_line} bytes ({value} so far)")
        try:
            message = json.loads(value)
        except ValueError:
            shown = value[:200].decode("utf-8", "replace")
            raise ProtocolError(f"the agent wrote a line that is not JSON: {shown!r}") from None
        emit("recv", message)
        if not isinstance(message, dict):
            raise ProtocolError("the agent wrote JSON that is not an object (ACP has no batches)")
        if message.get("jsonrpc") != "2.0":
            raise ProtocolError('the agent wrote a message without "jsonrpc": "2.0"')
        return message

    def status(self):
        """The agent's exit status, when it exits within 2 s."""
        try:
            return self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return None

    # --- requests ----------------------------------------------------------------------------

    def request(self, method: str, params: dict, cancel_after: float | None = None):
        rid = self.next_id
        self.next_id += 1
        self.pending[rid] = method
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        deadline = time.monotonic() + self.args.timeout
        cancel_at = None if cancel_after is None else time.monotonic() + cancel_after
        while True:
            until = deadline if cancel_at is None else min(deadline, cancel_at)
            try:
                message = self.receive(until, method)
            except Timeout:
                if cancel_at is not None and time.monotonic() >= cancel_at and time.monotonic() < deadline:
                    cancel_at = None
                    self.cancelling = True
                    self.send({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": self.session_id}})
                    continue
                raise
            response = self.dispatch(message)
            if response is not None and response.get("id") == rid:
                self.cancelling = False
                if "error" in response:
                    raise ProtocolError(f"the agent answered {method} with an error: {json.dumps(response['error'])}")
                if "result" not in response:
                    raise ProtocolError(f"the agent answered {method} with neither result nor error")
                return response["result"]

    def dispatch(self, message: dict):
        """Handles one message; returns it when it is a response (to a pending request)."""
        if "method" in message:
            method = message["method"]
            params = message.get("params")
            if "id" in message:
                self.answer(message["id"], method, params)
                return None
            if method == "session/update":
                if not isinstance(params, dict) or not isinstance(params.get("update"), dict):
                    raise ProtocolError("a session/update without an update")
                if not isinstance(params["update"].get("sessionUpdate"), str):
                    raise ProtocolError("a session/update without a sessionUpdate kind")
                if self.session_id is not None and params.get("sessionId") != self.session_id:
                    raise ProtocolError(f"a session/update for another session: {params.get('sessionId')!r}")
            # Other notifications ($/cancel_request, extensions) are shown and ignored.
            return None
        if "id" in message:
            if message["id"] not in self.pending:
                raise ProtocolError(f"the agent answered a request we never sent (id {message['id']!r})")
            del self.pending[message["id"]]
            if ("result" in message) == ("error" in message):
                raise ProtocolError("a response needs exactly one of result and error")
            return message
        raise ProtocolError("a message that is neither a request, a notification nor a response")

    def answer(self, rid, method: str, params) -> None:
        try:
            result = self.serve(method, params if isinstance(params, dict) else {})
            self.send({"jsonrpc": "2.0", "id": rid, "result": result})
        except Rpc as err:
            error = {"code": err.code, "message": err.message}
            if err.data is not None:
                error["data"] = err.data
            self.send({"jsonrpc": "2.0", "id": rid, "error": error})

    def serve(self, method: str, params: dict):
        if method == "session/request_permission":
            options = params.get("options")
            if not isinstance(options, list) or not isinstance(params.get("toolCall"), dict):
                raise Rpc(-32602, "Invalid params", {"details": "toolCall and options are required"})
            if self.args.permission == "cancel" or self.cancelling:
                return {"outcome": {"outcome": "cancelled"}}
            wanted = {
                "allow": ["allow_once", "allow_always"],
                "always": ["allow_always", "allow_once"],
                "reject": ["reject_once", "reject_always"],
            }[self.args.permission]
            for kind in wanted:
                for option in options:
                    if isinstance(option, dict) and option.get("kind") == kind:
                        return {"outcome": {"outcome": "selected", "optionId": option.get("optionId")}}
            return {"outcome": {"outcome": "cancelled"}}
        if method in ("fs/read_text_file", "fs/write_text_file") and not self.args.no_fs:
            path = self.confined(params.get("path"))
            if method == "fs/read_text_file":
                try:
                    with open(path, encoding="utf-8") as f:
                        lines = f.read().splitlines(keepends=True)
                except FileNotFoundError:
                    raise Rpc(-32002, "Resource not found", {"uri": path}) from None
                except (OSError, UnicodeDecodeError) as err:
                    raise Rpc(-32603, "Internal error", {"details": str(err)}) from None
                line = params.get("line") or 1
                limit = params.get("limit")
                chosen = lines[line - 1 :] if limit is None else lines[line - 1 : line - 1 + limit]
                return {"content": "".join(chosen)}
            content = params.get("content")
            if not isinstance(content, str):
                raise Rpc(-32602, "Invalid params", {"details": "content must be a string"})
            try:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(content)
            except OSError as err:
                raise Rpc(-32603, "Internal error", {"details": str(err)}) from None
            return {}
        raise Rpc(-32601, "Method not found", {"method": method})

    def confined(self, path) -> str:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise Rpc(-32602, "Invalid params", {"details": "path must be absolute"})
        parent = os.path.realpath(os.path.dirname(path))
        full = os.path.join(parent, os.path.basename(path))
        if os.path.islink(full):
            full = os.path.realpath(full)
        if full != self.cwd and not full.startswith(self.cwd.rstrip("/") + "/"):
            raise Rpc(-32602, "Invalid params", {"details": f"{path} is outside {self.cwd}"})
        return full

    # --- the session -----------------------------------------------------------------------

    def run(self) -> None:
        fs = not self.args.no_fs
        init = self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "clientCapabilities": {"fs": {"readTextFile": fs, "writeTextFile": fs}, "terminal": False},
                "clientInfo": {"name": "bulkhead-drive", "version": "1"},
            },
        )
        if not isinstance(init, dict) or init.get("protocolVersion") != PROTOCOL_VERSION:
            raise ProtocolError(f"the agent speaks protocolVersion {init.get('protocolVersion')!r}, not 1")
        if self.args.load:
            if not (init.get("agentCapabilities") or {}).get("loadSession"):
                raise ProtocolError("the agent does not advertise agentCapabilities.loadSession")
            self.session_id = self.args.load
            self.request("session/load", {"sessionId": self.args.load, "cwd": self.args.cwd, "mcpServers": []})
        else:
            result = self.request("session/new", {"cwd": self.args.cwd, "mcpServers": []})
            if not isinstance(result, dict) or not isinstance(result.get("sessionId"), str):
                raise ProtocolError("session/new answered without a sessionId")
            self.session_id = result["sessionId"]
        for text in self.args.prompt:
            result = self.request(
                "session/prompt",
                {"sessionId": self.session_id, "prompt": [{"type": "text", "text": text}]},
                cancel_after=self.args.cancel_after,
            )
            if not isinstance(result, dict) or result.get("stopReason") not in STOP_REASONS:
                raise ProtocolError(f"session/prompt answered without a valid stopReason: {json.dumps(result)}")

    def finish(self) -> int:
        """Closes the agent's stdin, shows what it still says, and waits for it to exit."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + self.args.exit_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                kind, value = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if kind != "line":
                break
            try:
                emit("recv", json.loads(value))
            except ValueError:
                raise ProtocolError("the agent wrote a line that is not JSON after its stdin closed") from None
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            sys.stderr.write("drive: the agent did not exit after its stdin closed: killing it\n")
            self.kill()
            return self.proc.wait()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cwd", default=os.getcwd(), help="the session's directory; fs requests are confined to it")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable, sent in order)")
    parser.add_argument(
        "--permission",
        choices=["allow", "always", "reject", "cancel"],
        default="allow",
        help="how to answer session/request_permission (allow: allow_once)",
    )
    parser.add_argument("--no-fs", action="store_true", help="advertise no fs capability")
    parser.add_argument("--load", metavar="SESSION_ID", help="session/load this session instead of session/new")
    parser.add_argument("--cancel-after", type=float, metavar="SECONDS", help="send session/cancel this long after each prompt")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each answer (default 60)")
    parser.add_argument("--exit-timeout", type=float, default=5, help="seconds for the agent to exit after its stdin closes")
    parser.add_argument("--max-line", type=int, default=16 << 20, help="the longest line accepted (default 16 MiB)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the agent")
    parser.add_argument("command", nargs="+", help="the agent's command")
    args = parser.parse_args()
    args.cwd = os.path.abspath(args.cwd)

    driver = Driver(args)
    try:
        driver.run()
        status = driver.finish()
        driver.kill()  # whatever the agent left behind in its process group
    except ProtocolError as err:
        sys.stderr.write(f"drive: protocol error: {err}\n")
        driver.kill()
        emit("agent_exit", driver.proc.wait())
        return 1
    except Timeout as err:
        sys.stderr.write(f"drive: timeout: {err}\n")
        driver.kill()
        emit("agent_exit", driver.proc.wait())
        return 3
    emit("agent_exit", status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
