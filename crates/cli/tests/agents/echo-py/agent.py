"""A scripted ACP agent for Bulkhead's tests, on the official Python SDK (`acp`).

Every turn starts with an agent_thought_chunk and a plan update; then the prompt's first word
decides:

    write PATH CONTENT...  tool call (edit), permission, fs/write_text_file: `wrote PATH`,
                           `refused` or `write failed: <message>`
    read PATH              fs/read_text_file: the content (or `read failed: <message>`)
    shell CMD...           sh -c CMD in the session's cwd: `exit <code>\n<stdout+stderr>`
    sleep N                waits N seconds (`slept N`); on session/cancel stops at once: cancelled
    usage                  `ok`, with usage {inputTokens 11, outputTokens 7} in the result
    usage meta             `ok`, with _meta.usage {input_tokens 11, output_tokens 7} instead
    exit N                 no reply: the process exits with status N
    state                  the task's state document (GET through the task state API)
    chunks N               N agent_message_chunk updates: `0`, `1`, ...
    anything else          `echo: <text>`

Paths are relative to the session's cwd. Logs go to stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import urllib.error
import urllib.request
import uuid

import acp
from acp import RequestError
from acp.schema import (
    AgentCapabilities,
    Implementation,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    ToolCallLocation,
    ToolCallUpdate,
    Usage,
)

log = logging.getLogger("echo-py")

TOKEN_FILE = os.environ.get("BULKHEAD_TOKEN_FILE", "/run/bulkhead/token")
OPTIONS = [
    PermissionOption(option_id="allow_once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="allow_always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
]


class Session:
    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.cancelled = asyncio.Event()
        self.allow_always = False
        self.turns = 0


class Cancelled(Exception):
    pass


def prompt_text(blocks) -> str:
    parts = []
    for block in blocks or []:
        t = getattr(block, "text", None)
        if isinstance(t, str):
            parts.append(t)
    return "\n".join(parts)


def get_state() -> str:
    base = os.environ["BULKHEAD_URL"].rstrip("/")
    url = f"{base}/v1/namespaces/{os.environ['BULKHEAD_NAMESPACE']}/tasks/{os.environ['BULKHEAD_TASK_ID']}/state"
    with open(TOKEN_FILE, encoding="utf-8") as f:
        token = f.read().strip()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.read().decode("utf-8")


class EchoAgent:
    def __init__(self) -> None:
        self.conn = None
        self.sessions: dict[str, Session] = {}

    def on_connect(self, conn) -> None:
        self.conn = conn

    async def initialize(self, protocol_version, client_capabilities=None, client_info=None, **kwargs):
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=True),
            agent_info=Implementation(name="echo-py", title="Bulkhead test agent (Python SDK)", version="1"),
        )

    async def new_session(self, cwd, mcp_servers=None, **kwargs):
        session_id = f"echo-{uuid.uuid4().hex}"
        self.sessions[session_id] = Session(cwd)
        return NewSessionResponse(session_id=session_id)

    async def load_session(self, cwd, session_id, mcp_servers=None, **kwargs):
        # Nothing to replay: the session goes on in the given cwd.
        self.sessions[session_id] = Session(cwd)
        return LoadSessionResponse()

    async def cancel(self, session_id, **kwargs):
        session = self.sessions.get(session_id)
        if session is not None:
            session.cancelled.set()

    async def say(self, session_id: str, text: str) -> None:
        await self.conn.session_update(session_id=session_id, update=acp.update_agent_message_text(text))

    async def until_cancelled(self, session: Session, aw):
        """Awaits `aw`, unless the session is cancelled first (then raises Cancelled)."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(session.cancelled.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise Cancelled()

    async def prompt(self, prompt, session_id, **kwargs):
        session = self.sessions.get(session_id)
        if session is None:
            raise RequestError(-32002, "Resource not found", {"sessionId": session_id})
        session.cancelled = asyncio.Event()
        session.turns += 1
        text = prompt_text(prompt).strip()
        word, _, rest = text.partition(" ")
        rest = rest.strip()
        await self.conn.session_update(
            session_id=session_id, update=acp.update_agent_thought_text(f"turn {session.turns}: {word or '(empty)'}")
        )
        await self.conn.session_update(
            session_id=session_id,
            update=acp.update_plan([acp.plan_entry(f"answer `{word}`", priority="medium", status="in_progress")]),
        )
        try:
            return await self.handle(session_id, session, word, rest, text)
        except Cancelled:
            return PromptResponse(stop_reason="cancelled")

    async def handle(self, session_id: str, session: Session, word: str, rest: str, text: str):
        end = PromptResponse(stop_reason="end_turn")
        if word == "write":
            path, _, content = rest.partition(" ")
            await self.say(session_id, await self.write(session_id, session, path, content))
            return end
        if word == "read":
            path = os.path.join(session.cwd, rest)
            try:
                res = await self.until_cancelled(session, self.conn.read_text_file(session_id=session_id, path=path))
                await self.say(session_id, res.content)
            except RequestError as err:
                await self.say(session_id, f"read failed: {err}")
            return end
        if word == "shell":
            await self.say(session_id, await self.shell(session, rest))
            return end
        if word == "sleep":
            seconds = float(rest or "0")
            try:
                await asyncio.wait_for(session.cancelled.wait(), seconds)
            except asyncio.TimeoutError:
                await self.say(session_id, f"slept {rest}")
                return end
            raise Cancelled()
        if word == "usage":
            await self.say(session_id, "ok")
            if rest == "meta":
                return PromptResponse(
                    stop_reason="end_turn", field_meta={"usage": {"input_tokens": 11, "output_tokens": 7}}
                )
            return PromptResponse(stop_reason="end_turn", usage=Usage(input_tokens=11, output_tokens=7, total_tokens=18))
        if word == "exit":
            sys.stdout.flush()
            sys.stderr.write(f"echo-py: exiting with status {rest}\n")
            sys.stderr.flush()
            os._exit(int(rest or "0"))
        if word == "state":
            try:
                body = await self.until_cancelled(session, asyncio.to_thread(get_state))
            except (OSError, KeyError, urllib.error.URLError) as err:
                body = f"state failed: {err}"
            await self.say(session_id, body)
            return end
        if word == "chunks":
            for i in range(int(rest or "0")):
                await self.say(session_id, str(i))
            return end
        await self.say(session_id, f"echo: {text}")
        return end

    async def write(self, session_id: str, session: Session, path: str, content: str) -> str:
        full = os.path.join(session.cwd, path)
        call_id = f"write-{uuid.uuid4().hex[:12]}"
        location = [ToolCallLocation(path=full)]
        await self.conn.session_update(
            session_id=session_id,
            update=acp.start_edit_tool_call(call_id, f"Write {path}", full, content),
        )
        if not session.allow_always:
            answer = await self.until_cancelled(
                session,
                self.conn.request_permission(
                    session_id=session_id,
                    tool_call=ToolCallUpdate(
                        tool_call_id=call_id, title=f"Write {path}", kind="edit", status="pending", locations=location
                    ),
                    options=OPTIONS,
                ),
            )
            outcome = answer.outcome
            if outcome.outcome == "cancelled":
                await self.finish(session_id, call_id, "failed", "cancelled")
                raise Cancelled()
            if outcome.option_id == "allow_always":
                session.allow_always = True
            elif outcome.option_id != "allow_once":
                await self.finish(session_id, call_id, "failed", "refused")
                return "refused"
        await self.conn.session_update(session_id=session_id, update=acp.update_tool_call(call_id, status="in_progress"))
        try:
            await self.until_cancelled(
                session, self.conn.write_text_file(session_id=session_id, path=full, content=content)
            )
        except RequestError as err:
            await self.finish(session_id, call_id, "failed", f"write failed: {err}")
            return f"write failed: {err}"
        await self.finish(session_id, call_id, "completed", f"wrote {path}")
        return f"wrote {path}"

    async def finish(self, session_id: str, call_id: str, status: str, text: str) -> None:
        await self.conn.session_update(
            session_id=session_id,
            update=acp.update_tool_call(call_id, status=status, content=[acp.tool_content(acp.text_block(text))]),
        )

    async def shell(self, session: Session, command: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                command,
                cwd=session.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            return f"exit 127\n{err}"
        try:
            out, _ = await self.until_cancelled(session, proc.communicate())
        except Cancelled:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            raise
        return f"exit {proc.returncode}\n{out.decode('utf-8', 'replace')}"


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="echo-py: %(message)s")
    asyncio.run(acp.run_agent(EchoAgent()))


if __name__ == "__main__":
    main()
