"""Sandboxes through the sync and async clients: create → exec → files → delete with a context
manager, streamed commands, binary output, large streamed files, background processes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

import bulkhead
from bulkhead import errors


def assert_gone(client: bulkhead.Client, sandbox_id: str) -> None:
    """The sandbox was deleted: its record says so and it runs nothing more."""
    assert client.sandboxes.get(sandbox_id).status == "deleted"
    with pytest.raises(errors.ApiError) as e:
        bulkhead.Sandbox(client, {"id": sandbox_id, "namespace": client.namespace}).exec(["true"])
    assert isinstance(e.value, (errors.Conflict, errors.NotFound)), e.value


def test_create_exec_files_and_delete_with_a_context_manager(client: bulkhead.Client) -> None:
    assert client.namespace == os.environ["BULKHEAD_NAMESPACE"]
    with client.sandboxes.create(env={"GREETING": "hi there"}, ttl_seconds=600) as sandbox:
        assert sandbox.id.startswith("sbx_") and sandbox.status == "running", sandbox.data
        assert sandbox.namespace == client.namespace

        r = sandbox.exec(["sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 7'])
        assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (7, "hi there\n", "oops\n", False)
        # A string runs through the shell; stdin, cwd and env are passed through.
        r = sandbox.exec("cat; pwd; echo $X", stdin="in\n", cwd="/tmp", env={"X": "y"})
        assert (r.exit_code, r.stdout) == (0, "in\n/tmp\ny\n")

        sandbox.files.write("/srv/app/notes.txt", "über\n")
        assert sandbox.files.read("/srv/app/notes.txt") == "über\n".encode()
        assert sandbox.files.read_text("/srv/app/notes.txt") == "über\n"
        sandbox.files.write("/srv/app/run.sh", b"#!/bin/sh\necho ran\n", mode=0o755)
        assert sandbox.exec(["/srv/app/run.sh"]).stdout == "ran\n"
        entries = {e["name"]: e for e in sandbox.files.list("/srv/app")}
        assert sorted(entries) == ["notes.txt", "run.sh"]
        assert (entries["run.sh"]["mode"], entries["notes.txt"]["size"]) == ("0755", len("über\n".encode()))

        assert sandbox.id in [s.id for s in client.sandboxes.list()]
        assert client.sandboxes.get(sandbox.id).refresh().status == "running"
        kept = sandbox.id
    assert_gone(client, kept)


def test_a_deleted_sandbox_deletes_again_and_its_files_offer_no_delete(client: bulkhead.Client) -> None:
    s = client.sandboxes.create(ttl_seconds=600)
    # The server serves no DELETE of a sandbox's files: the SDK offers none (rm does it).
    assert not hasattr(s.files, "delete")
    s.delete()
    # Deleting it again answers as the first time did; the record stays, marked deleted.
    s.delete()
    client.sandboxes.delete(s.id)
    assert_gone(client, s.id)
    with pytest.raises(errors.NotFound):
        client.sandboxes.delete("sbx_00000000000000000000000000000000")


def test_a_retried_create_waits_for_its_first_try_and_makes_one_sandbox(client: bulkhead.Client) -> None:
    before = {s.id for s in client.sandboxes.list()}
    # Every try times out long before a sandbox starts: the retries meet the first try still
    # running (409 with Retry-After), wait for it, and get what it made.
    impatient = bulkhead.Client(timeout=0.05, retry=bulkhead.RetryPolicy(attempts=50, backoff=0.02, max_backoff=0.1))
    with impatient:
        s = impatient.sandboxes.create(ttl_seconds=600)
    try:
        assert s.status == "running"
        assert {x.id for x in client.sandboxes.list() if x.status != "deleted"} - before == {s.id}
    finally:
        client.sandboxes.delete(s.id)
    assert_gone(client, s.id)
    assert {x.id for x in client.sandboxes.list() if x.status != "deleted"} <= before


def test_the_async_client_does_the_same() -> None:
    async def run() -> str:
        async with bulkhead.AsyncClient() as client:
            # Awaited, a create is the sandbox; entered, it is deleted on exit.
            plain = await client.sandboxes.create(ttl_seconds=600)
            assert plain.status == "running"
            await plain.delete()
            assert (await client.sandboxes.get(plain.id)).status == "deleted"
            async with client.sandboxes.create(ttl_seconds=600) as sandbox:
                assert sandbox.status == "running"
                r = await sandbox.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
                assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
                events = [e async for e in sandbox.exec_stream("echo a; echo b >&2")]
                # Two pipes: their pieces may come in either order.
                assert sorted((e.type, e.data) for e in events[:-1]) == [("stderr", "b\n"), ("stdout", "a\n")]
                assert (events[-1].type, events[-1].exit_code) == ("exit", 0)

                async def chunks() -> AsyncIterator[bytes]:
                    for part in (b"x" * 100_000, b"y"):
                        yield part

                await sandbox.files.write("/tmp/async.bin", chunks())
                assert await sandbox.files.read("/tmp/async.bin") == b"x" * 100_000 + b"y"
                assert await sandbox.files.read_text("/tmp/async.bin") == "x" * 100_000 + "y"
                assert [e["name"] for e in await sandbox.files.list("/tmp")] == ["async.bin"]
                with pytest.raises(errors.NotFound) as e:
                    await sandbox.files.read("/tmp/missing")
                assert "/tmp/missing" in e.value.message and e.value.request_id.startswith("req_")
                assert sandbox.id in [s.id for s in await client.sandboxes.list()]
                return sandbox.id

    kept = asyncio.run(run())
    with bulkhead.Client() as client:
        assert_gone(client, kept)


def test_streamed_exec_yields_output_while_the_command_runs(sandbox: bulkhead.Sandbox) -> None:
    # The command waits for a file that the test writes only once it has read the first event:
    # the event came while the command was still running.
    script = "echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo done >&2; exit 4"
    events = []
    for event in sandbox.exec_stream(["sh", "-c", script], timeout_seconds=120):
        events.append(event)
        if event.type == "stdout" and event.data == "ready\n":
            sandbox.files.write("/tmp/go", b"")
    assert [(e.type, e.data) for e in events[:-1]] == [("stdout", "ready\n"), ("stderr", "done\n")], events
    last = events[-1]
    assert (last.type, last.exit_code, last.timed_out) == ("exit", 4, False), last


def test_binary_commands_carry_exact_bytes(sandbox: bulkhead.Sandbox) -> None:
    data = bytes(range(256)) * 4
    r = sandbox.exec(["cat"], stdin=data)
    assert (r.exit_code, r.stdout) == (0, data)
    events = list(sandbox.exec_stream(["sh", "-c", "printf '\\377\\000'; printf '\\376' >&2"], binary=True))
    out = b"".join(e.data for e in events if e.type == "stdout" and isinstance(e.data, bytes))
    err = b"".join(e.data for e in events if e.type == "stderr" and isinstance(e.data, bytes))
    assert (out, err, events[-1].exit_code) == (b"\xff\x00", b"\xfe", 0)


def test_a_50_mib_file_round_trips_streamed(sandbox: bulkhead.Sandbox) -> None:
    size, chunk = 50 << 20, 1 << 20
    sent = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for i in range(size // chunk):
            block = hashlib.sha256(str(i).encode()).digest() * (chunk // 32)
            sent.update(block)
            yield block

    sandbox.files.write("/tmp/big.bin", chunks())
    inside = sandbox.exec(["sh", "-c", "stat -c %s /tmp/big.bin; sha256sum /tmp/big.bin"]).stdout.split()
    assert inside[0] == str(size) and inside[1] == sent.hexdigest()

    got, n = hashlib.sha256(), 0
    for piece in sandbox.files.iter_read("/tmp/big.bin"):
        got.update(piece)
        n += len(piece)
    assert (n, got.hexdigest()) == (size, sent.hexdigest())

    # And through file objects both ways.
    out = io.BytesIO()
    assert sandbox.files.download("/tmp/big.bin", out) == size
    out.seek(0)
    sandbox.files.write("/tmp/copy.bin", out)
    assert sandbox.exec("sha256sum < /tmp/copy.bin").stdout.split()[0] == sent.hexdigest()


def test_file_errors_have_their_classes(sandbox: bulkhead.Sandbox) -> None:
    with pytest.raises(errors.IsADirectory) as e:
        sandbox.files.read("/tmp")
    assert (e.value.status, e.value.code) == (400, "is_a_directory")
    with pytest.raises(errors.NotFound) as nf:
        sandbox.files.read("/no/such/file")
    assert "/no/such/file" in nf.value.message
    sandbox.exec("mkfifo /tmp/fifo")
    with pytest.raises(errors.NotARegularFile):
        sandbox.files.read("/tmp/fifo")
    sandbox.exec("echo secret > /tmp/private; chmod 600 /tmp/private")
    with pytest.raises(errors.PermissionDenied) as pd:
        sandbox.files.read("/tmp/private", user="nobody")
    assert (pd.value.status, pd.value.code) == (403, "permission_denied")


def test_background_processes_take_stdin_signals_and_stream_output(sandbox: bulkhead.Sandbox) -> None:
    cat = sandbox.processes.start(["cat"])
    assert cat.id.startswith("prc_") and cat.data["status"] == "running"
    assert cat.write(b"one\n") == 4
    assert cat.write(io.BytesIO(b"two\n"), eof=True) == 4
    events = list(cat.output())
    assert b"".join(e.data for e in events if e.type == "output") == b"one\ntwo\n"
    assert [e.seq for e in events if e.type == "output"] == list(range(1, len(events)))
    assert (events[-1].type, events[-1].exit_code) == ("exit", 0)
    # Resuming after a seq gives what follows it.
    first = events[0]
    assert [e.seq for e in cat.output(after=first.seq) if e.type == "output"] == [e.seq for e in events[1:-1]]
    assert cat.refresh().data["status"] == "exited"
    assert (cat.status, cat.exit_code) == ("exited", 0)

    sleeper = sandbox.processes.start("sleep 600")
    assert sleeper.id in [p.id for p in sandbox.processes.list()]
    sleeper.kill()
    done = sleeper.wait()
    assert (done.data["status"], done.data.get("signal"), done.data["exit_code"]) == ("exited", 9, 137)
    # The same, typed.
    assert (done.status, done.signal_number, done.exit_code) == ("exited", 9, 137)
    assert done.pid == done.data["pid"] and done.pid > 0
    running = sandbox.processes.start("sleep 600")
    assert (running.status, running.exit_code) == ("running", None)
    running.kill()
    assert running.wait().exit_code == 137

    # A terminal: its output is one `pty` stream, and it has the size asked.
    tty = sandbox.processes.start(["sh", "-c", "stty size; read line; echo got $line"], tty={"rows": 30, "cols": 100})
    tty.resize(30, 100)
    tty.write(b"hello\n")
    events = list(tty.output())
    text = b"".join(e.data for e in events if e.type == "output")
    assert {e.stream for e in events if e.type == "output"} == {"pty"}
    assert b"30 100" in text and b"got hello" in text, text


def test_a_terminal_over_the_process_websocket(sandbox: bulkhead.Sandbox, viewer: bulkhead.Client) -> None:
    from bulkhead.pty import Terminal

    script = "stty size; read line; echo got $line; exit 5"
    shell = sandbox.processes.start(["sh", "-c", script], tty={"rows": 24, "cols": 80})
    with shell.attach() as term:
        assert isinstance(term, Terminal)
        first = term.recv()
        assert first is not None
        term.resize(40, 120)
        term.send("hello\n")
        out = first + term.read_to_exit()
    assert b"24 80" in out and b"got hello" in out, out
    assert term.exit is not None and term.exit["exit_code"] == 5, term.exit
    # A viewer may not attach: the refused upgrade is the API's 403.
    cat = sandbox.processes.start(["cat"])
    viewer_process = viewer.sandboxes.get(sandbox.id).processes.get(cat.id)
    with pytest.raises(errors.Forbidden):
        viewer_process.attach()

    # The async terminal: stdin, eof, the exit.
    async def run() -> bytes:
        async with bulkhead.AsyncClient() as c:
            sb = await c.sandboxes.get(sandbox.id)
            process = await sb.processes.get(cat.id)
            async with await process.attach() as t:
                await t.send(b"async bytes")
                await t.eof()
                data = await t.read_to_exit()
                assert t.exit is not None and t.exit["exit_code"] == 0
                return data

    assert asyncio.run(run()) == b"async bytes"


def test_quiet_commands_outlast_the_clients_read_timeout(sandbox: bulkhead.Sandbox) -> None:
    # A client that waits at most a second for a read still gets the answers of commands that
    # are quiet for longer: an exec waits as its command's timeout allows, streams as long as
    # they last.
    with bulkhead.Client(timeout=1.0) as impatient:
        quiet = impatient.sandboxes.get(sandbox.id)
        assert quiet.exec("sleep 3; echo woke", timeout_seconds=30).stdout == "woke\n"
        events = list(quiet.exec_stream("sleep 3; echo streamed"))
        assert [(e.type, e.data) for e in events[:-1]] == [("stdout", "streamed\n")]
        process = quiet.processes.start("sleep 3; echo late")
        assert b"".join(e.data for e in process.output()) == b"late\n"


def test_an_exec_body_over_16_mib_is_payload_too_large(sandbox: bulkhead.Sandbox) -> None:
    with pytest.raises(errors.PayloadTooLarge) as e:
        sandbox.exec(["cat"], stdin=b"x" * (17 << 20))
    assert (e.value.status, e.value.code) == (413, "payload_too_large")
    # The same bytes go through a process's stdin.
    cat = sandbox.processes.start(["sh", "-c", "wc -c"])
    cat.write(b"x" * (17 << 20), eof=True)
    assert b"".join(e.data for e in cat.output()).strip() == str(17 << 20).encode()


def test_images_are_built_and_snapshotted_from_sandboxes(client: bulkhead.Client, sandbox: bulkhead.Sandbox) -> None:
    assert client.healthz()["status"] == "ok"
    sandbox.files.write("/opt/marker", "snapshotted\n")
    snap = sandbox.snapshot("py-snap-" + sandbox.id[-8:])
    built = client.images.build("py-built-" + sandbox.id[-8:], "default", [["sh", "-c", "echo built > /opt/marker"]])
    try:
        for image, text in ((snap, "snapshotted\n"), (built, "built\n")):
            assert image["id"].startswith("img_") and image["name"] in [i["name"] for i in client.images.list()]
            with client.sandboxes.create(image=image["name"], ttl_seconds=600) as s:
                assert s.files.read_text("/opt/marker") == text
    finally:
        client.images.delete(snap["name"])
        client.images.delete(built["name"])
    with pytest.raises(errors.NotFound):
        client.images.get(snap["name"])


def test_a_build_that_outlasts_the_clients_timeout_is_waited_for(client: bulkhead.Client) -> None:
    name = "py-slow-" + uuid.uuid4().hex[:8]
    # The first try's answer times out; its retries wait for it rather than fail with a conflict.
    with bulkhead.Client(timeout=2.0) as impatient:
        image = impatient.images.build(name, "default", [["sleep", "8"]])
    try:
        assert image["name"] == name and [i["name"] for i in client.images.list()].count(name) == 1
    finally:
        client.images.delete(name)
