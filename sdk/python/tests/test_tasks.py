"""Agents, versions and tasks: a pushed and deployed agent answers a task's messages, read in
pages and as a live stream that resumes after a dropped connection without gap or duplicate."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest

import bulkhead
from bulkhead import errors, types


class CutFirstStream(httpx.BaseTransport):
    """A real connection to the server whose first message stream is cut (a dropped
    connection) once it has carried ``events`` server-sent events."""

    def __init__(self, events: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.events = events
        self.streams: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.headers.get("accept") != "text/event-stream":
            return response
        self.streams.append(request)
        if len(self.streams) > 1:
            return response
        return httpx.Response(
            response.status_code, headers=response.headers, stream=Cut(response, self.events), request=request
        )


class Cut(httpx.SyncByteStream):
    """The body of a server-sent event stream, cut right after its ``events``-th event with an
    id, however the bytes came in chunks."""

    def __init__(self, response: httpx.Response, events: int) -> None:
        self.response, self.events = response, events

    def __iter__(self) -> Iterator[bytes]:
        seen, pending = 0, b""
        for chunk in self.response.stream:  # type: ignore[union-attr]
            pending += chunk
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                yield event + b"\n\n"
                seen += b"id:" in event
                if seen == self.events:
                    raise httpx.ReadError("the connection dropped")

    def close(self) -> None:
        self.response.close()


def deploy_echo(client: bulkhead.Client) -> str:
    """Pushes and deploys the test agent under a fresh name; returns the name."""
    name = "echo-" + uuid.uuid4().hex[:8]
    with open(os.environ["BULKHEAD_TEST_AGENT_BUNDLE"], "rb") as f:
        bundle = f.read()
    agent = client.agents.create(name)
    assert agent["name"] == name and "active_version" not in agent
    version = client.agents.push(name, bundle)
    assert version["id"].startswith("ver_") and version["digest"].startswith("sha256:")
    # The same bundle again is the same version.
    assert client.agents.push(name, bundle)["id"] == version["id"]
    assert [v["id"] for v in client.agents.versions(name)] == [version["id"]]
    assert client.agents.deploy(name, version["id"])["active_version"] == version["id"]
    assert name in [a["name"] for a in client.agents.list()]
    return name


def until_turn_end(messages: Iterator[types.TaskMessage]) -> list[types.TaskMessage]:
    out = []
    for m in messages:
        out.append(m)
        if m["type"] == "turn_end":
            return out
    raise AssertionError(f"the stream ended before the turn: {out}")


def test_a_task_streams_its_messages_and_resumes_after_a_dropped_connection(client: bulkhead.Client) -> None:
    agent = deploy_echo(client)
    task = client.tasks.create(agent, message="chunks 40")
    assert task["id"].startswith("tsk_") and task["agent"] == agent
    cut = CutFirstStream(events=5)
    with bulkhead.Client(transport=cut) as flaky:
        streamed = until_turn_end(flaky.tasks.stream(task["id"]))
    seqs = [m["seq"] for m in streamed]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert len([m for m in streamed if m["type"] == "agent_message_chunk"]) == 40
    # The stream was cut and opened again after the last message read.
    assert len(cut.streams) == 2, cut.streams
    assert cut.streams[1].headers["last-event-id"] == "5"

    # The same messages in pages, and a stream from the middle.
    paged: list[types.TaskMessage] = []
    page = client.tasks.messages(task["id"], limit=7)
    while True:
        paged.extend(page["items"])
        if "next_cursor" not in page:
            break
        page = client.tasks.messages(task["id"], after=int(page["next_cursor"]), limit=7)
    assert [m["seq"] for m in paged][: len(seqs)] == seqs
    middle = until_turn_end(client.tasks.stream(task["id"], after=10))
    assert [m["seq"] for m in middle] == seqs[10:]

    # A second message, then a cancel: the stream ends by itself once the task has.
    assert client.tasks.send(task["id"], "hello")["seq"] > seqs[-1]
    second = until_turn_end(client.tasks.stream(task["id"], after=seqs[-1]))
    texts = [m["data"].get("content", {}).get("text") for m in second if m["type"] == "agent_message_chunk"]
    assert texts == ["echo: hello"], second
    # Its state document: conditional writes with the ETag.
    state, etag = client.tasks.get_state(task["id"])
    assert state == {} and etag
    etag2 = client.tasks.put_state(task["id"], {"step": 1}, if_match=etag)
    assert client.tasks.get_state(task["id"]) == ({"step": 1}, etag2)
    with pytest.raises(errors.Conflict):
        client.tasks.put_state(task["id"], {"step": 2}, if_match=etag)
    client.tasks.cancel(task["id"])
    rest = list(client.tasks.stream(task["id"], after=second[-1]["seq"]))
    assert client.tasks.get(task["id"])["status"] == "cancelled", rest
    assert task["id"] in [t["id"] for t in client.tasks.list()]


def test_the_async_client_runs_a_task() -> None:
    with bulkhead.Client() as client:
        agent = deploy_echo(client)

    async def run() -> None:
        async with bulkhead.AsyncClient() as c:
            task = await c.tasks.create(agent, message="hi there")
            replies = []
            async for m in c.tasks.stream(task["id"]):
                if m["type"] == "agent_message_chunk":
                    replies.append(m["data"]["content"]["text"])
                if m["type"] == "turn_end":
                    break
            assert replies == ["echo: hi there"]
            await c.tasks.cancel(task["id"])
            assert (await c.tasks.get(task["id"]))["status"] == "cancelled"

    asyncio.run(run())
