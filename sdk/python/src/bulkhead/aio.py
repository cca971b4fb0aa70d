"""The asynchronous client: :class:`AsyncClient` and its resources, the same as the
synchronous ones of :mod:`bulkhead.client` with `await`, `async with` and `async for`.

Every method raises a subclass of :class:`bulkhead.ApiError` for an error answer (see
:mod:`bulkhead.errors`), and ``httpx.TransportError`` when the server cannot be reached once the
retries allowed (GETs and creates only) are spent. Methods that take ``namespace`` use the
client's default namespace when it is ``None``.
"""

from __future__ import annotations

import builtins
import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Unpack, cast

import httpx

from . import types as t
from .errors import NotFound
from ._core import (
    CHUNK,
    Call,
    Config,
    ExecEvent,
    ExecResult,
    ProcessEvent,
    RetryPolicy,
    SseParser,
    clean,
    error_from,
    exec_body,
    json_line,
    file_params,
    mode_str,
    path,
    replayable,
    should_retry,
    stream_retry_delay,
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


class AsyncClient:
    """A synchronous client of one Bulkhead server.

    Args:
        url: the server, such as ``http://127.0.0.1:8080``; default ``BULKHEAD_URL``.
        token: an API key's token (or an OIDC ID token); default ``BULKHEAD_TOKEN``.
        namespace: the namespace of namespaced calls; default ``BULKHEAD_NAMESPACE``.
        timeout: seconds to wait for a connection, a read or a write (not a whole stream).
        retry: how idempotent calls are retried (:class:`RetryPolicy`).
        transport: an ``httpx.AsyncBaseTransport`` to send through instead of the network's.

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

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
        self.config = Config.resolve(url, token, namespace)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.config.url, headers=self.config.headers(), timeout=timeout, transport=transport
        )
        self.namespaces = Namespaces(self)
        self.keys = Keys(self)
        self.sandboxes = Sandboxes(self)
        self.filesystems = Filesystems(self)
        self.images = Images(self)
        self.agents = Agents(self)
        self.tasks = Tasks(self)
        self.usage = Usage(self)
        self.audit = Audit(self)

    @property
    def namespace(self) -> str | None:
        """The default namespace of namespaced calls."""
        return self.config.namespace

    async def close(self) -> None:
        """Closes the client's connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def healthz(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", ...}``; needs no token."""
        return cast(dict[str, Any], await self.json(Call.get("/healthz")))

    # ---- Sending ----

    async def _send(self, call: Call, stream: bool) -> httpx.Response:
        """Sends ``call``, retrying as its :class:`RetryPolicy` allows; an error answer raises."""
        attempt = 0
        while True:
            attempt += 1
            request = self._http.build_request(call.method, call.path, **call.kwargs())
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
            wait = should_retry(call, attempt, self.retry, response) if replayable(call.content) else None
            if wait is None:
                raise error_from(response, body)
            await asyncio.sleep(wait)

    async def request(self, call: Call) -> httpx.Response:
        """Sends ``call`` and reads the whole answer."""
        return await self._send(call, stream=False)

    async def json(self, call: Call) -> Any:
        """Sends ``call``; its answer's JSON (``None`` for an empty answer such as a 204)."""
        r = await self.request(call)
        return r.json() if r.content else None

    @asynccontextmanager
    async def stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        """Sends ``call`` and yields the answer unread, closing it after."""
        r = await self._send(call, stream=True)
        try:
            yield r
        finally:
            await r.aclose()

    async def pages(self, call: Call) -> AsyncIterator[Any]:
        """Every item of a paginated list, following ``next_cursor``."""
        while True:
            page = await self.json(call)
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return
            call.params["cursor"] = cursor

    def ns_path(self, namespace: str | None, *parts: str) -> str:
        """The path of ``parts`` under ``/v1/namespaces/{ns}``."""
        return path("namespaces", self.config.ns(namespace), *parts)


class _Resource:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client


class Namespaces(_Resource):
    """Namespaces (``/v1/namespaces``): create, update and delete need the platform admin."""

    async def create(self, name: str, quotas: t.Quotas, *, idempotency_key: str | None = None, **extra: Any) -> t.Namespace:
        """Creates a namespace with ``quotas`` (and ``isolation``, ``placement``, ``egress`` as
        ``extra``). 409 ``Conflict`` when the name is taken."""
        return cast(t.Namespace, await self._c.json(Call.create(path("namespaces"), {"name": name, "quotas": quotas, **extra}, idempotency_key)))

    async def list(self) -> list[t.Namespace]:
        """The namespaces the token sees (every page)."""
        return [x async for x in self._c.pages(Call.get(path("namespaces")))]

    async def get(self, name: str) -> t.Namespace:
        """One namespace, with its ``usage`` now."""
        return cast(t.Namespace, await self._c.json(Call.get(path("namespaces", name))))

    async def update(self, name: str, **changes: Any) -> t.Namespace:
        """``PATCH``: new ``quotas`` (only those given change), ``placement`` or ``egress``."""
        return cast(t.Namespace, await self._c.json(Call("PATCH", path("namespaces", name), json=changes)))

    async def delete(self, name: str) -> None:
        """Deletes the namespace and tears everything of it down."""
        await self._c.request(Call("DELETE", path("namespaces", name)))


class Keys(_Resource):
    """API keys of a namespace (owners and admins manage them)."""

    async def create(
        self, name: str, role: t.Role, *, namespace: str | None = None, expires_at: str | None = None,
        projects: list[str] | None = None,
    ) -> t.Key:
        """A new key with ``role``; the answer's ``token`` is shown this once. Never retried: a
        retry of a create whose answer was lost cannot show the token again."""
        body = clean({"name": name, "role": role, "expires_at": expires_at, "projects": projects})
        return cast(t.Key, await self._c.json(Call("POST", self._c.ns_path(namespace, "keys"), json=body)))

    async def list(self, *, namespace: str | None = None) -> list[t.Key]:
        """The namespace's keys (never their tokens)."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "keys")))]

    async def get(self, key_id: str, *, namespace: str | None = None) -> t.Key:
        """One key's metadata."""
        return cast(t.Key, await self._c.json(Call.get(self._c.ns_path(namespace, "keys", key_id))))

    async def delete(self, key_id: str, *, namespace: str | None = None) -> None:
        """Revokes a key at once."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "keys", key_id)))


class Sandboxes(_Resource):
    """Sandboxes of a namespace."""

    async def create(
        self, *, namespace: str | None = None, idempotency_key: str | None = None, **options: Unpack[t.SandboxOptions]
    ) -> AsyncSandbox:
        """Creates a sandbox and waits until it runs (see :class:`bulkhead.types.SandboxOptions`
        for ``image``, ``cpu_millis``, ``memory_bytes``, ``ttl_seconds``, ``env``, …).

        Safe to retry: the call carries an ``Idempotency-Key`` (``idempotency_key``, or a fresh
        one) that its retries reuse, so a lost answer never makes a second sandbox. Errors:
        ``QuotaExceeded`` past a quota, ``InvalidRequest`` naming a bad field, ``NotFound`` for
        an unknown image. The sandbox is a context manager that deletes it on exit.
        """
        data = await self._c.json(Call.create(self._c.ns_path(namespace, "sandboxes"), dict(options), idempotency_key))
        return AsyncSandbox(self._c, data)

    async def get(self, sandbox_id: str, *, namespace: str | None = None) -> AsyncSandbox:
        """A sandbox by id (``sbx_…``); ``NotFound`` when there is none."""
        return AsyncSandbox(self._c, await self._c.json(Call.get(self._c.ns_path(namespace, "sandboxes", sandbox_id))))

    async def list(self, *, namespace: str | None = None) -> list[AsyncSandbox]:
        """The namespace's sandboxes (every page), ended ones included."""
        return [AsyncSandbox(self._c, d) async for d in self._c.pages(Call.get(self._c.ns_path(namespace, "sandboxes")))]

    async def delete(self, sandbox_id: str, *, namespace: str | None = None) -> None:
        """Deletes a sandbox: its processes, mounts and cgroups are gone when this returns."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "sandboxes", sandbox_id)))


class AsyncSandbox:
    """A sandbox: its fields as the server last answered (:attr:`data`), commands, files and
    background processes. ``with`` deletes it on exit (a sandbox already gone is fine).

    Attributes:
        id: ``sbx_…``.
        namespace: its namespace.
        data: the server's last answer about it (``status``, ``expires_at``, ``image``, …).
        files: its files (:class:`AsyncFiles`), absolute paths.
        processes: its background processes (:class:`AsyncProcesses`).
    """

    def __init__(self, client: AsyncClient, data: dict[str, Any]) -> None:
        self._c = client
        self.data = data
        self.id: str = data["id"]
        self.namespace: str = data["namespace"]
        base = path("namespaces", self.namespace, "sandboxes", self.id)
        self._base = base
        self.files = AsyncFiles(client, base + "/files")
        self.processes = AsyncProcesses(client, base + "/processes")

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        """``creating``, ``running``, ``stopped``, ``failed`` or ``deleted``, as last read."""
        return str(self.data.get("status", ""))

    async def refresh(self) -> AsyncSandbox:
        """Reads the sandbox again; returns itself."""
        self.data = await self._c.json(Call.get(self._base))
        return self

    async def exec(self, cmd: list[str] | str, *, binary: bool = False, **options: Unpack[t.ExecOptions]) -> ExecResult:
        """Runs a command to its end (a string runs through ``sh -c``).

        Returns its ``exit_code``, ``stdout`` and ``stderr`` (text; bytes with ``binary``).
        Errors: ``Conflict`` when the sandbox is not running, ``InvalidRequest`` for an unknown
        user or a bad ``cwd``, ``PayloadTooLarge`` past 16 MiB of body (use a process's stdin).
        Never retried (a command may not be idempotent).
        """
        body = exec_body(cmd, options, binary)
        data = await self._c.json(Call("POST", self._base + "/exec", json=body))
        return ExecResult.from_json(data, "encoding" in body)

    async def exec_stream(
        self, cmd: list[str] | str, *, binary: bool = False, **options: Unpack[t.ExecOptions]
    ) -> AsyncIterator[ExecEvent]:
        """Runs a command and yields its output as it is produced: ``stdout`` and ``stderr``
        events, then one ``exit`` (or ``error``) event. Text never splits a character."""
        body = exec_body(cmd, options, binary)
        call = Call("POST", self._base + "/exec", json=body, headers={"Accept": "application/x-ndjson"})
        async with self._c.stream(call) as r:
            async for line in r.aiter_lines():
                if line.strip():
                    yield ExecEvent.from_json(json_line(line), "encoding" in body)

    async def snapshot(self, name: str, *, idempotency_key: str | None = None) -> t.Image:
        """Saves the sandbox's root as a new image of its namespace named ``name``."""
        return cast(t.Image, await self._c.json(Call.create(self._base + "/snapshot", {"name": name}, idempotency_key)))

    async def delete(self) -> None:
        """Deletes the sandbox (``NotFound`` if it is already gone)."""
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
    """The files of a sandbox (absolute paths) or of a filesystem (paths relative to its root).

    ``user`` (sandboxes only) acts as that user of the image, whose permissions then apply
    (``PermissionDenied``). Reading a directory raises ``IsADirectory``; a fifo, socket or device
    ``NotARegularFile``; a missing path ``NotFound``.
    """

    def __init__(self, client: AsyncClient, base: str) -> None:
        self._c = client
        self._base = base

    async def read(self, path: str, *, user: str | None = None) -> bytes:
        """The whole file's bytes (for a large one, :meth:`iter_read` or :meth:`download`)."""
        return (await self._c.request(Call.get(self._base, **file_params(path, user)))).content

    async def read_text(self, path: str, *, user: str | None = None, encoding: str = "utf-8") -> str:
        """The whole file decoded as ``encoding``."""
        return (await self.read(path, user=user)).decode(encoding)

    async def iter_read(self, path: str, *, user: str | None = None, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        """The file's bytes in chunks of up to ``chunk_size``, streamed (never held whole)."""
        async with self._c.stream(Call.get(self._base, **file_params(path, user))) as r:
            async for chunk in r.aiter_bytes(chunk_size):
                yield chunk

    async def download(self, path: str, to: IO[bytes], *, user: str | None = None) -> int:
        """Streams the file into the binary file object ``to``; returns the bytes written."""
        n = 0
        async for chunk in self.iter_read(path, user=user):
            to.write(chunk)
            n += len(chunk)
        return n

    async def write(self, path: str, data: AsyncData, *, user: str | None = None, mode: int | str | None = None) -> None:
        """Writes the file atomically, creating missing parent directories; streams a file
        object or an iterable of chunks. ``mode`` (``0o755`` or ``"0755"``) sets the permission
        bits; without it an existing file keeps its mode and a new one gets ``0644``. A write
        past the space of the sandbox or filesystem raises ``QuotaExceeded``."""
        params = file_params(path, user, mode=mode_str(mode))
        await self._c.request(Call("PUT", self._base, params=params, content=_content(data)))

    async def list(self, path: str, *, user: str | None = None) -> list[t.FileEntry]:
        """The entries of the directory at ``path`` (every page), sorted by name."""
        return [x async for x in self._c.pages(Call.get(self._base, **file_params(path, user, list=True)))]

    async def delete(self, path: str) -> None:
        """Deletes a file of a filesystem (not available for a sandbox's files)."""
        await self._c.request(Call("DELETE", self._base, params=file_params(path)))


class AsyncProcesses:
    """The background processes of a sandbox."""

    def __init__(self, client: AsyncClient, base: str) -> None:
        self._c = client
        self._base = base

    async def start(self, cmd: list[str] | str, **options: Unpack[t.ProcessOptions]) -> AsyncProcess:
        """Starts a command in the background (a string runs through ``sh -c``); with
        ``tty={"rows": 24, "cols": 80}`` on a terminal. Never retried."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        data = await self._c.json(Call("POST", self._base, json={"cmd": argv, **options}))
        return AsyncProcess(self._c, self._base, data)

    async def list(self) -> list[AsyncProcess]:
        """The sandbox's processes, running and recently exited."""
        data = await self._c.json(Call.get(self._base))
        items = data["items"] if isinstance(data, dict) else data
        return [AsyncProcess(self._c, self._base, d) for d in items]

    async def get(self, process_id: str) -> AsyncProcess:
        """A process by id (``prc_…``)."""
        return AsyncProcess(self._c, self._base, await self._c.json(Call.get(f"{self._base}/{process_id}")))


class AsyncProcess:
    """A background process: its stdin, signals, terminal size and output.

    Attributes:
        id: ``prc_…``.
        data: the server's last answer about it (:class:`bulkhead.types.AsyncProcess`).
    """

    def __init__(self, client: AsyncClient, base: str, data: dict[str, Any]) -> None:
        self._c = client
        self.data = data
        self.id: str = data["id"]
        self._base = f"{base}/{self.id}"

    def __repr__(self) -> str:
        return f"AsyncProcess(id={self.id!r}, status={self.data.get('status')!r})"

    async def refresh(self) -> AsyncProcess:
        """Reads the process again (``status``, ``exit_code``); returns itself."""
        self.data = await self._c.json(Call.get(self._base))
        return self

    async def write(self, data: AsyncData, *, eof: bool = False) -> int:
        """Writes to its standard input (any size, streamed); ``eof`` closes it after.
        Returns the bytes written."""
        r = await self._c.json(Call("POST", self._base + "/stdin", params=clean({"eof": eof or None}), content=_content(data)))
        return int(r["bytes"])

    async def close_stdin(self) -> None:
        """Closes its standard input."""
        await self.write(b"", eof=True)

    async def signal(self, signal: str | int = "SIGTERM") -> None:
        """Sends a signal: a name (``"SIGTERM"``, ``"KILL"``) or a number."""
        await self._c.request(Call("POST", self._base + "/signal", json={"signal": signal}))

    async def kill(self) -> None:
        """Sends ``SIGKILL``."""
        await self.signal("SIGKILL")

    async def resize(self, rows: int, cols: int) -> None:
        """Sets its terminal's size (a process started with ``tty``)."""
        await self._c.request(Call("POST", self._base + "/resize", json={"rows": rows, "cols": cols}))

    async def output(self, *, after: int = 0) -> AsyncIterator[ProcessEvent]:
        """Its output events after seq ``after`` until it exits (the last event is ``exit``);
        a dropped connection is resumed after the last seq seen, without a gap or a duplicate."""
        failures = 0
        while True:
            try:
                async with self._c.stream(Call.get(self._base + "/output", after=after or None)) as r:
                    async for line in r.aiter_lines():
                        if not line.strip():
                            continue
                        event = ProcessEvent.from_json(json_line(line))
                        failures = 0
                        if event.type == "output":
                            after = event.seq
                        yield event
                        if event.type == "exit":
                            return
                return
            except httpx.TransportError:
                failures += 1
                wait = stream_retry_delay(self._c.retry, failures)
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    async def attach(self, *, after: int = 0) -> AsyncTerminal:
        """Like :meth:`bulkhead.client.Process.attach`, awaited."""
        from .pty import attach_async

        return await attach_async(self._c.config, self._base + "/attach", after)

    async def wait(self) -> AsyncProcess:
        """Reads its output to the end, then returns it refreshed (with ``exit_code``)."""
        async for _ in self.output():
            pass
        return await self.refresh()


class Filesystems(_Resource):
    """Filesystems of a namespace, their files and whole-filesystem archives."""

    async def create(
        self, name: str, size_bytes: int, *, project: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Filesystem:
        """A new filesystem of ``size_bytes`` (counts against the ``disk_bytes`` quota)."""
        body = clean({"name": name, "size_bytes": size_bytes, "project": project})
        return cast(t.Filesystem, await self._c.json(Call.create(self._c.ns_path(namespace, "filesystems"), body, idempotency_key)))

    async def list(self, *, namespace: str | None = None) -> list[t.Filesystem]:
        """The namespace's filesystems the token sees."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "filesystems")))]

    async def get(self, fs_id: str, *, namespace: str | None = None) -> t.Filesystem:
        """One filesystem, with ``used_bytes`` now."""
        return cast(t.Filesystem, await self._c.json(Call.get(self._c.ns_path(namespace, "filesystems", fs_id))))

    async def resize(self, fs_id: str, size_bytes: int, *, namespace: str | None = None) -> t.Filesystem:
        """Grows or shrinks the filesystem to ``size_bytes``."""
        call = Call("PATCH", self._c.ns_path(namespace, "filesystems", fs_id), json={"size_bytes": size_bytes})
        return cast(t.Filesystem, await self._c.json(call))

    async def delete(self, fs_id: str, *, force: bool = False, namespace: str | None = None) -> None:
        """Deletes it; ``Conflict`` while a sandbox mounts it unless ``force`` stops those."""
        call = Call("DELETE", self._c.ns_path(namespace, "filesystems", fs_id), params=clean({"force": force or None}))
        await self._c.request(call)

    def files(self, fs_id: str, *, namespace: str | None = None) -> AsyncFiles:
        """The filesystem's files, by paths relative to its root."""
        return AsyncFiles(self._c, self._c.ns_path(namespace, "filesystems", fs_id, "files"))

    async def export_archive(self, fs_id: str, *, namespace: str | None = None) -> AsyncIterator[bytes]:
        """A tar of the whole filesystem, streamed in chunks."""
        async with self._c.stream(Call.get(self._c.ns_path(namespace, "filesystems", fs_id, "archive"))) as r:
            async for chunk in r.aiter_bytes(CHUNK):
                yield chunk

    async def import_archive(self, fs_id: str, tar: AsyncData, *, namespace: str | None = None) -> t.ArchiveResult:
        """Unpacks a tar into the filesystem (streamed); ``InvalidRequest`` names a refused entry."""
        call = Call("PUT", self._c.ns_path(namespace, "filesystems", fs_id, "archive"), content=_content(tar))
        return cast(t.ArchiveResult, await self._c.json(call))


class Images(_Resource):
    """Images a namespace's sandboxes start from."""

    async def pull(
        self, name: str, source: str, *, credentials_secret: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Image:
        """Pulls ``source`` (``registry/repo:tag`` or ``@sha256:…``) as ``name``."""
        body: dict[str, Any] = {"name": name, "source": source}
        if credentials_secret:
            body["credentials"] = {"secret": credentials_secret}
        return cast(t.Image, await self._c.json(Call.create(self._c.ns_path(namespace, "images"), body, idempotency_key)))

    async def build(
        self, name: str, from_image: str, run: list[list[str]], *, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Image:
        """Builds ``name`` by running each argv of ``run`` in a sandbox of ``from_image``."""
        body = {"name": name, "from": from_image, "run": run}
        return cast(t.Image, await self._c.json(Call.create(self._c.ns_path(namespace, "images"), body, idempotency_key)))

    async def import_archive(self, name: str, tar: AsyncData, *, namespace: str | None = None) -> t.Image:
        """Imports an OCI image layout or a ``docker save`` tar as ``name`` (streamed)."""
        call = Call("PUT", self._c.ns_path(namespace, "images", name, "archive"), content=_content(tar))
        return cast(t.Image, await self._c.json(call))

    async def list(self, *, namespace: str | None = None) -> list[t.Image]:
        """The namespace's images and the public ones."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "images")))]

    async def get(self, name: str, *, namespace: str | None = None) -> t.Image:
        """An image by name or ``img_…``."""
        return cast(t.Image, await self._c.json(Call.get(self._c.ns_path(namespace, "images", name))))

    async def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Removes an image; ``Conflict`` while a sandbox uses it."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "images", name)))


class Agents(_Resource):
    """Agents, their versions and deployments."""

    async def create(self, name: str, *, namespace: str | None = None, idempotency_key: str | None = None) -> t.Agent:
        """A new agent named ``name``."""
        return cast(t.Agent, await self._c.json(Call.create(self._c.ns_path(namespace, "agents"), {"name": name}, idempotency_key)))

    async def list(self, *, namespace: str | None = None) -> list[t.Agent]:
        """The namespace's agents."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "agents")))]

    async def get(self, name: str, *, namespace: str | None = None) -> t.Agent:
        """An agent by name or ``agt_…``."""
        return cast(t.Agent, await self._c.json(Call.get(self._c.ns_path(namespace, "agents", name))))

    async def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Deletes an agent."""
        await self._c.request(Call("DELETE", self._c.ns_path(namespace, "agents", name)))

    async def push(self, name: str, bundle: bytes, *, namespace: str | None = None, idempotency_key: str | None = None) -> t.AgentVersion:
        """Uploads a bundle (a tar, plain, gzip or zstd, with ``agent.json`` at its root) as a
        new immutable version; the same bundle again answers its existing version."""
        call = Call.create(self._c.ns_path(namespace, "agents", name, "versions"), None, idempotency_key)
        call.content, call.headers["Content-Type"] = bundle, "application/x-tar"
        return cast(t.AgentVersion, await self._c.json(call))

    async def versions(self, name: str, *, namespace: str | None = None) -> builtins.list[t.AgentVersion]:
        """The agent's versions."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "agents", name, "versions")))]

    async def deploy(self, name: str, version: str, *, namespace: str | None = None) -> t.Agent:
        """Makes ``version`` (``ver_…``) the one new tasks run."""
        call = Call("POST", self._c.ns_path(namespace, "agents", name, "deploy"), json={"version": version})
        return cast(t.Agent, await self._c.json(call))

    async def rollback(self, name: str, *, namespace: str | None = None) -> t.Agent:
        """Makes the previously deployed version active again (``Conflict`` when none)."""
        return cast(t.Agent, await self._c.json(Call("POST", self._c.ns_path(namespace, "agents", name, "rollback"))))


class Tasks(_Resource):
    """Tasks: an agent's run in a sandbox, driven by events, answered by messages."""

    async def create(
        self, agent: str, *, version: str | None = None, filesystem: t.SandboxFilesystem | None = None,
        message: Any = None, permissions: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Task:
        """Starts a task of ``agent`` (its active version, or ``version``), with an optional
        first ``message`` (a string or ACP content blocks); ``permissions="ask"`` makes each
        permission request a pending message to answer with :meth:`answer_permission`."""
        body = clean({"agent": agent, "version": version, "filesystem": filesystem, "message": message, "permissions": permissions})
        return cast(t.Task, await self._c.json(Call.create(self._c.ns_path(namespace, "tasks"), body, idempotency_key)))

    async def get(self, task_id: str, *, namespace: str | None = None) -> t.Task:
        """A task by id (``tsk_…``)."""
        return cast(t.Task, await self._c.json(Call.get(self._c.ns_path(namespace, "tasks", task_id))))

    async def list(self, *, namespace: str | None = None) -> list[t.Task]:
        """The namespace's tasks."""
        return [x async for x in self._c.pages(Call.get(self._c.ns_path(namespace, "tasks")))]

    async def send(self, task_id: str, content: Any, *, namespace: str | None = None) -> dict[str, Any]:
        """Sends a message (a string or ACP content blocks) as the next prompt; answers
        ``{"seq", "status"}``. Never retried."""
        body = {"type": "message", "content": content}
        return cast(dict[str, Any], await self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "events"), json=body)))

    async def answer_permission(self, task_id: str, request: str, outcome: str, *, namespace: str | None = None) -> dict[str, Any]:
        """Answers a pending permission request: ``allow_once``, ``allow_always`` or ``reject``."""
        body = {"type": "permission", "request": request, "outcome": outcome}
        return cast(dict[str, Any], await self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "events"), json=body)))

    async def cancel(self, task_id: str, *, namespace: str | None = None) -> t.Task:
        """Cancels the task; its sandbox ends."""
        return cast(t.Task, await self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "cancel"))))

    async def messages(
        self, task_id: str, *, after: int = 0, limit: int | None = None, namespace: str | None = None
    ) -> t.Page:
        """One page of messages after seq ``after`` (``limit`` 1 to 1000, default 100)."""
        call = Call.get(self._c.ns_path(namespace, "tasks", task_id, "messages"), after=after or None, limit=limit)
        return cast(t.Page, await self._c.json(call))

    async def stream(self, task_id: str, *, after: int = 0, namespace: str | None = None) -> AsyncIterator[t.TaskMessage]:
        """The task's messages after seq ``after``, live, until the task has ended and every
        message was sent. A dropped connection resumes from the last seq seen
        (``Last-Event-ID``): no gap, no duplicate."""
        url = self._c.ns_path(namespace, "tasks", task_id, "messages")
        failures = 0
        while True:
            call = Call.get(url)
            call.headers = {"Accept": "text/event-stream", **({"Last-Event-ID": str(after)} if after else {})}
            try:
                async with self._c.stream(call) as r:
                    parser = SseParser()
                    async for line in r.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        kind, _, data = event
                        if kind == "end":
                            return
                        if kind == "message":
                            message = cast(t.TaskMessage, json_line(data))
                            after, failures = message["seq"], 0
                            yield message
                # The server ended the stream without its `end` event: reconnect.
                raise httpx.RemoteProtocolError("the message stream ended early")
            except httpx.TransportError:
                failures += 1
                wait = stream_retry_delay(self._c.retry, failures)
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    async def get_state(self, task_id: str, *, namespace: str | None = None) -> tuple[Any, str]:
        """The task's state document and its ETag."""
        r = await self._c.request(Call.get(self._c.ns_path(namespace, "tasks", task_id, "state")))
        return r.json(), r.headers.get("etag", "")

    async def put_state(self, task_id: str, state: Any, *, if_match: str | None = None, namespace: str | None = None) -> str:
        """Writes the state document; with ``if_match`` only if it is still that version
        (``Conflict`` otherwise). Returns the new ETag."""
        call = Call("PUT", self._c.ns_path(namespace, "tasks", task_id, "state"), json=state)
        if if_match:
            call.headers["If-Match"] = if_match
        return str((await self._c.request(call)).headers.get("etag", ""))


class Usage(_Resource):
    """Metered usage of a namespace."""

    async def get(
        self, *, since: str | None = None, until: str | None = None, granularity: str | None = None,
        namespace: str | None = None,
    ) -> t.UsageReport:
        """Usage from ``since`` to ``until`` (RFC 3339; default the last 24 hours) in buckets of
        a ``minute``, ``hour`` (default) or ``day``."""
        call = Call.get(self._c.ns_path(namespace, "usage"), **{"from": since, "to": until, "granularity": granularity})
        return cast(t.UsageReport, await self._c.json(call))


class Audit(_Resource):
    """A namespace's hash-chained audit log."""

    async def list(
        self, *, action: str | None = None, since: str | None = None, until: str | None = None,
        namespace: str | None = None,
    ) -> AsyncIterator[t.AuditRecord]:
        """Its records, oldest first, optionally of one ``action`` (``sandbox.create``) and
        within ``since``/``until`` (RFC 3339); pages are read as the iterator goes."""
        async for record in self._c.pages(Call.get(self._c.ns_path(namespace, "audit"), action=action, since=since, until=until)):
            yield record

    async def verify(self, *, namespace: str | None = None) -> t.AuditVerification:
        """Recomputes the chain: ``ok``, ``records`` checked, ``first_bad_seq``."""
        return cast(t.AuditVerification, await self._c.json(Call.get(self._c.ns_path(namespace, "audit", "verify"))))
