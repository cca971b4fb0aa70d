"""The asynchronous client: :class:`AsyncClient` and its resources, the same as the
synchronous ones of :mod:`bulkhead.client` (whose docstrings give shapes, units and errors), with
``await``, ``async with`` and ``async for``; errors and retries are the same too."""

from __future__ import annotations

import builtins
import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Generator, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Unpack, cast

import httpx

from . import types as t
from .errors import NotFound
from ._core import (
    CHUNK, Call, ClientBase, E, ExecEvent, ExecResult, ProcessBase, ProcessEvent, ProcessOutput, Resumable,
    RetryPolicy, SandboxBase, TaskMessages, clean, error_from, exec_call, file_params, json_line, mode_str,
    in_progress, path, replayable, should_retry,
)

if TYPE_CHECKING:
    from .pty import AsyncTerminal

#: What an upload takes: bytes, text (UTF-8), a binary file object (read in chunks), or an
#: iterable or async iterable of byte chunks (streamed, never held whole).
AsyncData = bytes | str | IO[bytes] | Iterable[bytes] | AsyncIterable[bytes]


async def _chunks(data: IO[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if hasattr(data, "read"):
        f = cast(IO[bytes], data)
        while chunk := f.read(CHUNK):
            yield chunk
    else:
        for chunk in data:
            yield chunk


def _content(data: AsyncData) -> Any:
    """An upload's body for httpx's async client: bytes as they are, anything else as an
    async iterator of chunks."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes) or hasattr(data, "__aiter__"):
        return data
    return _chunks(data)


class AsyncClient(ClientBase):
    """An asynchronous client of one Bulkhead server, taking the arguments of
    :class:`bulkhead._core.ClientBase` (``transport``: an ``httpx.AsyncBaseTransport``);
    ``async with`` or :meth:`close` releases its connections."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, namespace, retry)
        self.timeout = timeout
        self._http = httpx.AsyncClient(**self.http_options(timeout, transport))
        self.namespaces = Namespaces(self)
        self.keys = Keys(self)
        self.sandboxes = Sandboxes(self)
        self.filesystems = Filesystems(self)
        self.images = Images(self)
        self.agents = Agents(self)
        self.tasks = Tasks(self)
        self.usage = Usage(self)
        self.audit = Audit(self)

    async def close(self) -> None:
        """Like :meth:`bulkhead.client.Client.close`, awaited."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def healthz(self) -> dict[str, Any]:
        """Like :meth:`bulkhead.client.Client.healthz`, awaited."""
        return cast(dict[str, Any], await self.json(Call.get("/healthz")))

    # ---- Sending ----

    async def _send(self, call: Call, stream: bool) -> httpx.Response:
        """Like :meth:`bulkhead.client.Client._send`, awaited."""
        attempt, started = 0, time.monotonic()
        while True:
            attempt += 1
            request = self._http.build_request(call.method, call.path, **call.kwargs(self.timeout))
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError:
                wait = should_retry(call, attempt, self.retry, None) if replayable(call.content) else None
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            if response.is_success:
                return response
            body = await response.aread()
            await response.aclose()
            elapsed = time.monotonic() - started
            wait = should_retry(call, attempt, self.retry, response, elapsed) if replayable(call.content) else None
            if wait is None:
                raise error_from(response, body)
            if in_progress(call, response):
                # Waiting for an earlier try to answer is not an attempt of this one.
                attempt -= 1
            await asyncio.sleep(wait)

    async def request(self, call: Call) -> httpx.Response:
        """Like :meth:`bulkhead.client.Client.request`, awaited."""
        return await self._send(call, stream=False)

    async def json(self, call: Call) -> Any:
        """Like :meth:`bulkhead.client.Client.json`, awaited."""
        r = await self.request(call)
        return r.json() if r.content else None

    @asynccontextmanager
    async def stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        """Like :meth:`bulkhead.client.Client.stream`, with ``async with``."""
        r = await self._send(call, stream=True)
        try:
            yield r
        finally:
            await r.aclose()

    async def pages(self, call: Call) -> AsyncIterator[Any]:
        """Like :meth:`bulkhead.client.Client.pages`, with ``async for``."""
        while True:
            page = await self.json(call)
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return
            call.params["cursor"] = cursor

    async def follow(self, reader: Resumable[E]) -> AsyncIterator[E]:
        """Like :meth:`bulkhead.client.Client.follow`, with ``async for``."""
        while True:
            try:
                async with self.stream(reader.call()) as r:
                    async for line in r.aiter_lines():
                        for event in reader.feed(line):
                            yield event
                        if reader.done:
                            return
                raise httpx.RemoteProtocolError("the stream ended before its last event")
            except httpx.TransportError:
                wait = reader.failed()
                if wait is None:
                    raise
                await asyncio.sleep(wait)


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client


class Namespaces(_Resource):
    """The asynchronous :class:`bulkhead.client.Namespaces`."""

    async def create(
        self, name: str, quotas: t.Quotas, *, placement: t.PlacementSpec | None = None,
        idempotency_key: str | None = None, **extra: Any,
    ) -> t.Namespace:
        """Like :meth:`bulkhead.client.Namespaces.create`, awaited."""
        body = {"name": name, "quotas": quotas, **clean({"placement": placement}), **extra}
        return cast(t.Namespace, await self._c.json(Call.create(path("namespaces"), body, idempotency_key)))

    async def list(self) -> list[t.Namespace]:
        """Like :meth:`bulkhead.client.Namespaces.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(path("namespaces")))]

    async def get(self, name: str) -> t.Namespace:
        """Like :meth:`bulkhead.client.Namespaces.get`, awaited."""
        return cast(t.Namespace, await self._c.json(Call.get(path("namespaces", name))))

    async def update(self, name: str, *, placement: t.PlacementSpec | None = None, **changes: Any) -> t.Namespace:
        """Like :meth:`bulkhead.client.Namespaces.update`, awaited."""
        body = {**clean({"placement": placement}), **changes}
        return cast(t.Namespace, await self._c.json(Call("PATCH", path("namespaces", name), json=body)))

    async def delete(self, name: str) -> None:
        """Like :meth:`bulkhead.client.Namespaces.delete`, awaited."""
        await self._c.request(Call("DELETE", path("namespaces", name)))


class Keys(_Resource):
    """The asynchronous :class:`bulkhead.client.Keys`."""

    async def create(
        self, name: str, role: t.Role, *, namespace: str | None = None, expires_at: str | None = None,
        projects: list[str] | None = None,
    ) -> t.Key:
        """Like :meth:`bulkhead.client.Keys.create`, awaited."""
        body = clean({"name": name, "role": role, "expires_at": expires_at, "projects": projects})
        return cast(t.Key, await self._c.json(Call("POST", self._c.ns_path(namespace, "keys"), json=body)))

    async def list(self, *, namespace: str | None = None) -> list[t.Key]:
        """Like :meth:`bulkhead.client.Keys.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "keys")))]

    async def get(self, key_id: str, *, namespace: str | None = None) -> t.Key:
        """Like :meth:`bulkhead.client.Keys.get`, awaited."""
        return cast(t.Key, await self._c.json(Call.get(self._c.ns_path(namespace, "keys", key_id))))

    async def delete(self, key_id: str, *, namespace: str | None = None) -> None:
        """Like :meth:`bulkhead.client.Keys.delete`, awaited."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "keys", key_id)))


class Sandboxes(_Resource):
    """The asynchronous :class:`bulkhead.client.Sandboxes`."""

    def create(
        self, *, namespace: str | None = None, idempotency_key: str | None = None, **options: Unpack[t.SandboxOptions]
    ) -> SandboxCreation:
        """Like :meth:`bulkhead.client.Sandboxes.create`: ``await`` it for the sandbox, or
        ``async with client.sandboxes.create(...) as sandbox:`` to have it deleted on exit."""
        call = Call.create(self._c.ns_path(namespace, "sandboxes"), dict(options), idempotency_key)
        return SandboxCreation(self._made(call))

    async def _made(self, call: Call) -> AsyncSandbox:
        return AsyncSandbox(self._c, await self._c.json(call))

    async def get(self, sandbox_id: str, *, namespace: str | None = None) -> AsyncSandbox:
        """Like :meth:`bulkhead.client.Sandboxes.get`, awaited."""
        return AsyncSandbox(self._c, await self._c.json(Call.get(self._c.ns_path(namespace, "sandboxes", sandbox_id))))

    async def list(self, *, namespace: str | None = None) -> list[AsyncSandbox]:
        """Like :meth:`bulkhead.client.Sandboxes.list`, awaited."""
        return [AsyncSandbox(self._c, d) async for d in self._c.pages(Call.get(self._c.ns_path(namespace, "sandboxes")))]

    async def delete(self, sandbox_id: str, *, namespace: str | None = None) -> None:
        """Like :meth:`bulkhead.client.Sandboxes.delete`, awaited."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "sandboxes", sandbox_id)))


class SandboxCreation:
    """A sandbox create in flight: awaitable (the :class:`AsyncSandbox`), and an async context
    manager whose exit deletes the sandbox."""

    def __init__(self, made: Coroutine[Any, Any, AsyncSandbox]) -> None:
        self._made = made
        self._sandbox: AsyncSandbox | None = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._made.__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._made
        return self._sandbox

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(kind, value, tb)


class AsyncSandbox(SandboxBase):
    """The asynchronous :class:`bulkhead.client.Sandbox`; ``async with`` deletes it on exit."""

    def __init__(self, client: AsyncClient, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._c = client
        self.files = AsyncFiles(client, self._base + "/files")
        self.processes = AsyncProcesses(client, self._base + "/processes")

    async def refresh(self) -> AsyncSandbox:
        """Like :meth:`bulkhead.client.Sandbox.refresh`, awaited."""
        self.data = await self._c.json(Call.get(self._base))
        return self

    async def exec(self, cmd: list[str] | str, *, binary: bool = False, **options: Unpack[t.ExecOptions]) -> ExecResult:
        """Like :meth:`bulkhead.client.Sandbox.exec`, awaited."""
        call = exec_call(self._base, cmd, options, binary, stream=False)
        return ExecResult.from_json(await self._c.json(call), "encoding" in call.json)

    async def exec_stream(
        self, cmd: list[str] | str, *, binary: bool = False, **options: Unpack[t.ExecOptions]
    ) -> AsyncIterator[ExecEvent]:
        """Like :meth:`bulkhead.client.Sandbox.exec_stream`, with ``async for``."""
        call = exec_call(self._base, cmd, options, binary, stream=True)
        async with self._c.stream(call) as r:
            async for line in r.aiter_lines():
                if line.strip():
                    yield ExecEvent.from_json(json_line(line), "encoding" in call.json)

    async def snapshot(self, name: str, *, idempotency_key: str | None = None) -> t.Image:
        """Like :meth:`bulkhead.client.Sandbox.snapshot`, awaited."""
        return cast(t.Image, await self._c.json(Call.create(self._base + "/snapshot", {"name": name}, idempotency_key)))

    async def delete(self) -> None:
        """Like :meth:`bulkhead.client.Sandbox.delete`, awaited."""
        await self._c.request(Call("DELETE", self._base))

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.delete()
        except NotFound:
            pass


class AsyncFiles:
    """The asynchronous :class:`bulkhead.client.Files`."""

    def __init__(self, client: AsyncClient, base: str) -> None:
        self._c = client
        self._base = base

    async def read(self, path: str, *, user: str | None = None) -> bytes:
        """Like :meth:`bulkhead.client.Files.read`, awaited."""
        return (await self._c.request(Call.get(self._base, **file_params(path, user)))).content

    async def read_text(self, path: str, *, user: str | None = None, encoding: str = "utf-8") -> str:
        """Like :meth:`bulkhead.client.Files.read_text`, awaited."""
        return (await self.read(path, user=user)).decode(encoding)

    async def iter_read(self, path: str, *, user: str | None = None, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        """Like :meth:`bulkhead.client.Files.iter_read`, with ``async for``."""
        async with self._c.stream(Call.get(self._base, **file_params(path, user))) as r:
            async for chunk in r.aiter_bytes(chunk_size):
                yield chunk

    async def download(self, path: str, to: IO[bytes], *, user: str | None = None) -> int:
        """Like :meth:`bulkhead.client.Files.download`, awaited."""
        n = 0
        async for chunk in self.iter_read(path, user=user):
            to.write(chunk)
            n += len(chunk)
        return n

    async def write(self, path: str, data: AsyncData, *, user: str | None = None, mode: int | str | None = None) -> None:
        """Like :meth:`bulkhead.client.Files.write`, awaited."""
        params = file_params(path, user, mode=mode_str(mode))
        await self._c.request(Call("PUT", self._base, params=params, content=_content(data)))

    async def list(self, path: str, *, user: str | None = None) -> list[t.FileEntry]:
        """Like :meth:`bulkhead.client.Files.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._base, **file_params(path, user, list=True)))]



class AsyncFilesystemFiles(AsyncFiles):
    """The asynchronous :class:`bulkhead.client.FilesystemFiles`."""

    async def delete(self, path: str) -> None:
        """Like :meth:`bulkhead.client.FilesystemFiles.delete`, awaited."""
        await self._c.request(Call("DELETE", self._base, params=file_params(path)))


class AsyncProcesses:
    """The asynchronous :class:`bulkhead.client.Processes`."""

    def __init__(self, client: AsyncClient, base: str) -> None:
        self._c = client
        self._base = base

    async def start(self, cmd: list[str] | str, **options: Unpack[t.ProcessOptions]) -> AsyncProcess:
        """Like :meth:`bulkhead.client.Processes.start`, awaited."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        data = await self._c.json(Call("POST", self._base, json={"cmd": argv, **options}))
        return AsyncProcess(self._c, self._base, data)

    async def list(self) -> list[AsyncProcess]:
        """Like :meth:`bulkhead.client.Processes.list`, awaited."""
        data = await self._c.json(Call.get(self._base))
        items = data["items"] if isinstance(data, dict) else data
        return [AsyncProcess(self._c, self._base, d) for d in items]

    async def get(self, process_id: str) -> AsyncProcess:
        """Like :meth:`bulkhead.client.Processes.get`, awaited."""
        return AsyncProcess(self._c, self._base, await self._c.json(Call.get(f"{self._base}/{process_id}")))


class AsyncProcess(ProcessBase):
    """The asynchronous :class:`bulkhead.client.Process`."""

    def __init__(self, client: AsyncClient, base: str, data: dict[str, Any]) -> None:
        super().__init__(base, data)
        self._c = client

    async def refresh(self) -> AsyncProcess:
        """Like :meth:`bulkhead.client.Process.refresh`, awaited."""
        self.data = await self._c.json(Call.get(self._base))
        return self

    async def write(self, data: AsyncData, *, eof: bool = False) -> int:
        """Like :meth:`bulkhead.client.Process.write`, awaited."""
        r = await self._c.json(Call("POST", self._base + "/stdin", params=clean({"eof": eof or None}), content=_content(data)))
        return int(r["bytes"])

    async def close_stdin(self) -> None:
        """Like :meth:`bulkhead.client.Process.close_stdin`, awaited."""
        await self.write(b"", eof=True)

    async def signal(self, signal: str | int = "SIGTERM") -> None:
        """Like :meth:`bulkhead.client.Process.signal`, awaited."""
        await self._c.request(Call("POST", self._base + "/signal", json={"signal": signal}))

    async def kill(self) -> None:
        """Like :meth:`bulkhead.client.Process.kill`, awaited."""
        await self.signal("SIGKILL")

    async def resize(self, rows: int, cols: int) -> None:
        """Like :meth:`bulkhead.client.Process.resize`, awaited."""
        await self._c.request(Call("POST", self._base + "/resize", json={"rows": rows, "cols": cols}))

    def output(self, *, after: int = 0) -> AsyncIterator[ProcessEvent]:
        """Like :meth:`bulkhead.client.Process.output`, with ``async for``."""
        return self._c.follow(ProcessOutput(self._base + "/output", after, self._c.retry))

    async def attach(self, *, after: int = 0) -> AsyncTerminal:
        """Like :meth:`bulkhead.client.Process.attach`, awaited."""
        from .pty import attach_async

        return await attach_async(self._c.config, self._base + "/attach", after)

    async def wait(self) -> AsyncProcess:
        """Like :meth:`bulkhead.client.Process.wait`, awaited."""
        async for _ in self.output():
            pass
        return await self.refresh()


class Filesystems(_Resource):
    """The asynchronous :class:`bulkhead.client.Filesystems`."""

    async def create(
        self, name: str, size_bytes: int, *, project: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Filesystem:
        """Like :meth:`bulkhead.client.Filesystems.create`, awaited."""
        body = clean({"name": name, "size_bytes": size_bytes, "project": project})
        return cast(t.Filesystem, await self._c.json(Call.create(self._c.ns_path(namespace, "filesystems"), body, idempotency_key)))

    async def list(self, *, namespace: str | None = None) -> list[t.Filesystem]:
        """Like :meth:`bulkhead.client.Filesystems.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "filesystems")))]

    async def get(self, fs_id: str, *, namespace: str | None = None) -> t.Filesystem:
        """Like :meth:`bulkhead.client.Filesystems.get`, awaited."""
        return cast(t.Filesystem, await self._c.json(Call.get(self._c.ns_path(namespace, "filesystems", fs_id))))

    async def resize(self, fs_id: str, size_bytes: int, *, namespace: str | None = None) -> t.Filesystem:
        """Like :meth:`bulkhead.client.Filesystems.resize`, awaited."""
        call = Call("PATCH", self._c.ns_path(namespace, "filesystems", fs_id), json={"size_bytes": size_bytes})
        return cast(t.Filesystem, await self._c.json(call))

    async def delete(self, fs_id: str, *, force: bool = False, namespace: str | None = None) -> None:
        """Like :meth:`bulkhead.client.Filesystems.delete`, awaited."""
        call = Call("DELETE", self._c.ns_path(namespace, "filesystems", fs_id), params=clean({"force": force or None}))
        await self._c.request(call)

    def files(self, fs_id: str, *, namespace: str | None = None) -> AsyncFilesystemFiles:
        """Like :meth:`bulkhead.client.Filesystems.files`, with awaited methods."""
        return AsyncFilesystemFiles(self._c, self._c.ns_path(namespace, "filesystems", fs_id, "files"))

    async def export_archive(self, fs_id: str, *, namespace: str | None = None) -> AsyncIterator[bytes]:
        """Like :meth:`bulkhead.client.Filesystems.export_archive`, with ``async for``."""
        async with self._c.stream(Call.get(self._c.ns_path(namespace, "filesystems", fs_id, "archive"))) as r:
            async for chunk in r.aiter_bytes(CHUNK):
                yield chunk

    async def import_archive(self, fs_id: str, tar: AsyncData, *, namespace: str | None = None) -> t.ArchiveResult:
        """Like :meth:`bulkhead.client.Filesystems.import_archive`, awaited."""
        call = Call("PUT", self._c.ns_path(namespace, "filesystems", fs_id, "archive"), content=_content(tar))
        return cast(t.ArchiveResult, await self._c.json(call))


class Images(_Resource):
    """The asynchronous :class:`bulkhead.client.Images`."""

    async def pull(
        self, name: str, source: str, *, credentials_secret: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Image:
        """Like :meth:`bulkhead.client.Images.pull`, awaited."""
        body: dict[str, Any] = {"name": name, "source": source}
        if credentials_secret:
            body["credentials"] = {"secret": credentials_secret}
        return cast(t.Image, await self._c.json(Call.create(self._c.ns_path(namespace, "images"), body, idempotency_key)))

    async def build(
        self, name: str, from_image: str, run: list[list[str]], *, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Image:
        """Like :meth:`bulkhead.client.Images.build`, awaited."""
        body = {"name": name, "from": from_image, "run": run}
        return cast(t.Image, await self._c.json(Call.create(self._c.ns_path(namespace, "images"), body, idempotency_key)))

    async def import_archive(self, name: str, tar: AsyncData, *, namespace: str | None = None) -> t.Image:
        """Like :meth:`bulkhead.client.Images.import_archive`, awaited."""
        call = Call("PUT", self._c.ns_path(namespace, "images", name, "archive"), content=_content(tar))
        return cast(t.Image, await self._c.json(call))

    async def list(self, *, namespace: str | None = None) -> list[t.Image]:
        """Like :meth:`bulkhead.client.Images.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "images")))]

    async def get(self, name: str, *, namespace: str | None = None) -> t.Image:
        """Like :meth:`bulkhead.client.Images.get`, awaited."""
        return cast(t.Image, await self._c.json(Call.get(self._c.ns_path(namespace, "images", name))))

    async def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Like :meth:`bulkhead.client.Images.delete`, awaited."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "images", name)))


class Agents(_Resource):
    """The asynchronous :class:`bulkhead.client.Agents`."""

    async def create(self, name: str, *, namespace: str | None = None, idempotency_key: str | None = None) -> t.Agent:
        """Like :meth:`bulkhead.client.Agents.create`, awaited."""
        return cast(t.Agent, await self._c.json(Call.create(self._c.ns_path(namespace, "agents"), {"name": name}, idempotency_key)))

    async def list(self, *, namespace: str | None = None) -> list[t.Agent]:
        """Like :meth:`bulkhead.client.Agents.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "agents")))]

    async def get(self, name: str, *, namespace: str | None = None) -> t.Agent:
        """Like :meth:`bulkhead.client.Agents.get`, awaited."""
        return cast(t.Agent, await self._c.json(Call.get(self._c.ns_path(namespace, "agents", name))))

    async def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Like :meth:`bulkhead.client.Agents.delete`, awaited."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "agents", name)))

    async def push(self, name: str, bundle: bytes, *, namespace: str | None = None, idempotency_key: str | None = None) -> t.AgentVersion:
        """Like :meth:`bulkhead.client.Agents.push`, awaited."""
        call = Call.create(self._c.ns_path(namespace, "agents", name, "versions"), None, idempotency_key)
        call.content, call.headers["Content-Type"] = bundle, "application/x-tar"
        return cast(t.AgentVersion, await self._c.json(call))

    async def versions(self, name: str, *, namespace: str | None = None) -> builtins.list[t.AgentVersion]:
        """Like :meth:`bulkhead.client.Agents.versions`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "agents", name, "versions")))]

    async def deploy(self, name: str, version: str, *, namespace: str | None = None) -> t.Agent:
        """Like :meth:`bulkhead.client.Agents.deploy`, awaited."""
        call = Call("POST", self._c.ns_path(namespace, "agents", name, "deploy"), json={"version": version})
        return cast(t.Agent, await self._c.json(call))

    async def rollback(self, name: str, *, namespace: str | None = None) -> t.Agent:
        """Like :meth:`bulkhead.client.Agents.rollback`, awaited."""
        return cast(t.Agent, await self._c.json(Call("POST", self._c.ns_path(namespace, "agents", name, "rollback"))))


class Tasks(_Resource):
    """The asynchronous :class:`bulkhead.client.Tasks`."""

    async def create(
        self, agent: str, *, version: str | None = None, filesystem: t.SandboxFilesystem | None = None,
        message: Any = None, permissions: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Task:
        """Like :meth:`bulkhead.client.Tasks.create`, awaited."""
        body = clean({"agent": agent, "version": version, "filesystem": filesystem, "message": message, "permissions": permissions})
        return cast(t.Task, await self._c.json(Call.create(self._c.ns_path(namespace, "tasks"), body, idempotency_key)))

    async def get(self, task_id: str, *, namespace: str | None = None) -> t.Task:
        """Like :meth:`bulkhead.client.Tasks.get`, awaited."""
        return cast(t.Task, await self._c.json(Call.get(self._c.ns_path(namespace, "tasks", task_id))))

    async def list(self, *, namespace: str | None = None) -> list[t.Task]:
        """Like :meth:`bulkhead.client.Tasks.list`, awaited."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "tasks")))]

    async def send(self, task_id: str, content: Any, *, namespace: str | None = None) -> dict[str, Any]:
        """Like :meth:`bulkhead.client.Tasks.send`, awaited."""
        body = {"type": "message", "content": content}
        return cast(dict[str, Any], await self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "events"), json=body)))

    async def answer_permission(self, task_id: str, request: str, outcome: str, *, namespace: str | None = None) -> dict[str, Any]:
        """Like :meth:`bulkhead.client.Tasks.answer_permission`, awaited."""
        body = {"type": "permission", "request": request, "outcome": outcome}
        return cast(dict[str, Any], await self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "events"), json=body)))

    async def cancel(self, task_id: str, *, namespace: str | None = None) -> t.Task:
        """Like :meth:`bulkhead.client.Tasks.cancel`, awaited."""
        return cast(t.Task, await self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "cancel"))))

    async def messages(
        self, task_id: str, *, after: int = 0, limit: int | None = None, namespace: str | None = None
    ) -> t.Page:
        """Like :meth:`bulkhead.client.Tasks.messages`, awaited."""
        call = Call.get(self._c.ns_path(namespace, "tasks", task_id, "messages"), after=after or None, limit=limit)
        return cast(t.Page, await self._c.json(call))

    def stream(self, task_id: str, *, after: int = 0, namespace: str | None = None) -> AsyncIterator[t.TaskMessage]:
        """Like :meth:`bulkhead.client.Tasks.stream`, with ``async for``."""
        route = self._c.ns_path(namespace, "tasks", task_id, "messages")
        return self._c.follow(TaskMessages(route, after, self._c.retry))

    async def get_state(self, task_id: str, *, namespace: str | None = None) -> tuple[Any, str]:
        """Like :meth:`bulkhead.client.Tasks.get_state`, awaited."""
        r = await self._c.request(Call.get(self._c.ns_path(namespace, "tasks", task_id, "state")))
        return r.json(), r.headers.get("etag", "")

    async def put_state(self, task_id: str, state: Any, *, if_match: str | None = None, namespace: str | None = None) -> str:
        """Like :meth:`bulkhead.client.Tasks.put_state`, awaited."""
        call = Call("PUT", self._c.ns_path(namespace, "tasks", task_id, "state"), json=state)
        if if_match:
            call.headers["If-Match"] = if_match
        return str((await self._c.request(call)).headers.get("etag", ""))


class Usage(_Resource):
    """The asynchronous :class:`bulkhead.client.Usage`."""

    async def get(
        self, *, since: str | None = None, until: str | None = None, granularity: str | None = None,
        namespace: str | None = None,
    ) -> t.UsageReport:
        """Like :meth:`bulkhead.client.Usage.get`, awaited."""
        call = Call.get(self._c.ns_path(namespace, "usage"), **{"from": since, "to": until, "granularity": granularity})
        return cast(t.UsageReport, await self._c.json(call))


class Audit(_Resource):
    """The asynchronous :class:`bulkhead.client.Audit`."""

    async def list(
        self, *, action: str | None = None, since: str | None = None, until: str | None = None,
        namespace: str | None = None,
    ) -> AsyncIterator[t.AuditRecord]:
        """Like :meth:`bulkhead.client.Audit.list`, awaited."""
        async for record in self._c.pages(Call.get(self._c.ns_path(namespace, "audit"), action=action, since=since, until=until)):
            yield record

    async def verify(self, *, namespace: str | None = None) -> t.AuditVerification:
        """Like :meth:`bulkhead.client.Audit.verify`, awaited."""
        return cast(t.AuditVerification, await self._c.json(Call.get(self._c.ns_path(namespace, "audit", "verify"))))
