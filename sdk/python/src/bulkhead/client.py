"""The synchronous client: :class:`Client` and its resources.

Every method raises a subclass of :class:`bulkhead.ApiError` for an error answer (see
:mod:`bulkhead.errors`), and ``httpx.TransportError`` when the server cannot be reached once the
retries allowed (GETs and creates only) are spent. Methods that take ``namespace`` use the
client's default namespace when it is ``None``.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
    from .pty import Terminal

#: What a file or archive upload takes: bytes, text (UTF-8), a binary file object read in
#: chunks, or an iterable of byte chunks (streamed, never held whole).
Data = bytes | str | IO[bytes] | Iterable[bytes]


def _content(data: Data) -> Any:
    """An upload's body for httpx: bytes as they are, a file object as chunks."""
    if isinstance(data, str):
        return data.encode()
    if hasattr(data, "read"):
        f = cast(IO[bytes], data)
        return iter(lambda: f.read(CHUNK), b"")
    return data


class Client(ClientBase):
    """A synchronous client of one Bulkhead server; its arguments are those of
    :class:`bulkhead._core.ClientBase` (``url``, ``token``, ``namespace`` default to
    ``BULKHEAD_URL``, ``BULKHEAD_TOKEN``, ``BULKHEAD_NAMESPACE``; ``transport`` is an
    ``httpx.BaseTransport``). Use it as a context manager, or call :meth:`close`, to release its
    connections.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, namespace, retry)
        self.timeout = timeout
        self._http = httpx.Client(**self.http_options(timeout, transport))
        self.namespaces = Namespaces(self)
        self.keys = Keys(self)
        self.sandboxes = Sandboxes(self)
        self.filesystems = Filesystems(self)
        self.images = Images(self)
        self.agents = Agents(self)
        self.tasks = Tasks(self)
        self.usage = Usage(self)
        self.audit = Audit(self)

    def close(self) -> None:
        """Closes the client's connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def healthz(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", ...}``; needs no token."""
        return cast(dict[str, Any], self.json(Call.get("/healthz")))

    # ---- Sending ----

    def _send(self, call: Call, stream: bool) -> httpx.Response:
        """Sends ``call``, retrying as its :class:`RetryPolicy` allows; an error answer raises."""
        attempt, started = 0, time.monotonic()
        while True:
            attempt += 1
            request = self._http.build_request(call.method, call.path, **call.kwargs(self.timeout))
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError:
                wait = should_retry(call, attempt, self.retry, None) if replayable(call.content) else None
                if wait is None:
                    raise
                time.sleep(wait)
                continue
            if response.is_success:
                return response
            body = response.read()
            response.close()
            elapsed = time.monotonic() - started
            wait = should_retry(call, attempt, self.retry, response, elapsed) if replayable(call.content) else None
            if wait is None:
                raise error_from(response, body)
            if in_progress(call, response):
                # Waiting for an earlier try to answer is not an attempt of this one.
                attempt -= 1
            time.sleep(wait)

    def request(self, call: Call) -> httpx.Response:
        """Sends ``call`` and reads the whole answer."""
        return self._send(call, stream=False)

    def json(self, call: Call) -> Any:
        """Sends ``call``; its answer's JSON (``None`` for an empty answer such as a 204)."""
        r = self.request(call)
        return r.json() if r.content else None

    @contextmanager
    def stream(self, call: Call) -> Iterator[httpx.Response]:
        """Sends ``call`` and yields the answer unread, closing it after."""
        r = self._send(call, stream=True)
        try:
            yield r
        finally:
            r.close()

    def pages(self, call: Call) -> Iterator[Any]:
        """Every item of a paginated list, following ``next_cursor``."""
        while True:
            page = self.json(call)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
            call.params["cursor"] = cursor

    def follow(self, reader: Resumable[E]) -> Iterator[E]:
        """The events of a resumable stream, reconnecting after a dropped connection."""
        while True:
            try:
                with self.stream(reader.call()) as r:
                    for line in r.iter_lines():
                        yield from reader.feed(line)
                        if reader.done:
                            return
                raise httpx.RemoteProtocolError("the stream ended before its last event")
            except httpx.TransportError:
                wait = reader.failed()
                if wait is None:
                    raise
                time.sleep(wait)


class _Resource:
    def __init__(self, client: Client) -> None:
        self._c = client


class Namespaces(_Resource):
    """Namespaces (``/v1/namespaces``): create, update and delete need the platform admin."""

    def create(
        self, name: str, quotas: t.Quotas, *, placement: t.PlacementSpec | None = None,
        idempotency_key: str | None = None, **extra: Any,
    ) -> t.Namespace:
        """Creates a namespace with ``quotas``, ``placement`` (default shared) and what else
        is given (``isolation``, ``egress``). 409 ``Conflict`` when the name is taken, or when a
        dedicated placement asks for more than the host has left."""
        body = {"name": name, "quotas": quotas, **clean({"placement": placement}), **extra}
        return cast(t.Namespace, self._c.json(Call.create(path("namespaces"), body, idempotency_key)))

    def list(self) -> list[t.Namespace]:
        """The namespaces the token sees (every page)."""
        return list(self._c.pages(Call.get(path("namespaces"))))

    def get(self, name: str) -> t.Namespace:
        """One namespace, with its ``usage`` now."""
        return cast(t.Namespace, self._c.json(Call.get(path("namespaces", name))))

    def update(self, name: str, *, placement: t.PlacementSpec | None = None, **changes: Any) -> t.Namespace:
        """``PATCH``: new ``quotas`` (only those given change), ``egress``, or a ``placement``
        to move the namespace (its running sandboxes at once) to."""
        body = {**clean({"placement": placement}), **changes}
        return cast(t.Namespace, self._c.json(Call("PATCH", path("namespaces", name), json=body)))

    def delete(self, name: str) -> None:
        """Deletes the namespace and tears everything of it down."""
        self._c.request(Call("DELETE", path("namespaces", name)))


class Keys(_Resource):
    """API keys of a namespace (owners and admins manage them)."""

    def create(
        self, name: str, role: t.Role, *, namespace: str | None = None, expires_at: str | None = None,
        projects: list[str] | None = None,
    ) -> t.Key:
        """A new key with ``role``; the answer's ``token`` is shown this once. Never retried: a
        retry of a create whose answer was lost cannot show the token again."""
        body = clean({"name": name, "role": role, "expires_at": expires_at, "projects": projects})
        return cast(t.Key, self._c.json(Call("POST", self._c.ns_path(namespace, "keys"), json=body)))

    def list(self, *, namespace: str | None = None) -> list[t.Key]:
        """The namespace's keys (never their tokens)."""
        return list(self._c.pages(Call.get(self._c.ns_path(namespace, "keys"))))

    def get(self, key_id: str, *, namespace: str | None = None) -> t.Key:
        """One key's metadata."""
        return cast(t.Key, self._c.json(Call.get(self._c.ns_path(namespace, "keys", key_id))))

    def delete(self, key_id: str, *, namespace: str | None = None) -> None:
        """Revokes a key at once."""
        self._c.request(Call("DELETE", self._c.ns_path(namespace, "keys", key_id)))


class Sandboxes(_Resource):
    """Sandboxes of a namespace."""

    def create(
        self, *, namespace: str | None = None, idempotency_key: str | None = None, **options: Unpack[t.SandboxOptions]
    ) -> Sandbox:
        """Creates a sandbox and waits until it runs (see :class:`bulkhead.types.SandboxOptions`
        for ``image``, ``cpu_millis``, ``memory_bytes``, ``ttl_seconds``, ``env``, …).

        Safe to retry: the call carries an ``Idempotency-Key`` (``idempotency_key``, or a fresh
        one) that its retries reuse, so a lost answer never makes a second sandbox. Errors:
        ``QuotaExceeded`` past a quota, ``InvalidRequest`` naming a bad field, ``NotFound`` for
        an unknown image. The sandbox is a context manager that deletes it on exit.
        """
        data = self._c.json(Call.create(self._c.ns_path(namespace, "sandboxes"), dict(options), idempotency_key))
        return Sandbox(self._c, data)

    def get(self, sandbox_id: str, *, namespace: str | None = None) -> Sandbox:
        """A sandbox by id (``sbx_…``); ``NotFound`` when there is none."""
        return Sandbox(self._c, self._c.json(Call.get(self._c.ns_path(namespace, "sandboxes", sandbox_id))))

    def list(self, *, namespace: str | None = None) -> list[Sandbox]:
        """The namespace's sandboxes (every page), ended ones included."""
        return [Sandbox(self._c, d) for d in self._c.pages(Call.get(self._c.ns_path(namespace, "sandboxes")))]

    def delete(self, sandbox_id: str, *, namespace: str | None = None) -> None:
        """Deletes a sandbox: its processes, mounts and cgroups are gone when this returns."""
        self._c.request(Call("DELETE", self._c.ns_path(namespace, "sandboxes", sandbox_id)))


class Sandbox(SandboxBase):
    """A sandbox (``id``, ``namespace``, ``status``, and ``data``: the server's last answer
    about it), its commands, ``files`` (:class:`Files`, absolute paths) and background
    ``processes`` (:class:`Processes`). ``with`` deletes it on exit (one already gone is fine).
    """

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._c = client
        self.files = Files(client, self._base + "/files")
        self.processes = Processes(client, self._base + "/processes")

    def refresh(self) -> Sandbox:
        """Reads the sandbox again; returns itself."""
        self.data = self._c.json(Call.get(self._base))
        return self

    def exec(self, cmd: list[str] | str, *, binary: bool = False, **options: Unpack[t.ExecOptions]) -> ExecResult:
        """Runs a command to its end (a string runs through ``sh -c``).

        Returns its ``exit_code``, ``stdout`` and ``stderr`` (text; bytes with ``binary``).
        Errors: ``Conflict`` when the sandbox is not running, ``InvalidRequest`` for an unknown
        user or a bad ``cwd``, ``PayloadTooLarge`` past 16 MiB of body (use a process's stdin).
        Never retried (a command may not be idempotent).
        """
        call = exec_call(self._base, cmd, options, binary, stream=False)
        return ExecResult.from_json(self._c.json(call), "encoding" in call.json)

    def exec_stream(
        self, cmd: list[str] | str, *, binary: bool = False, **options: Unpack[t.ExecOptions]
    ) -> Iterator[ExecEvent]:
        """Runs a command and yields its output as it is produced: ``stdout`` and ``stderr``
        events, then one ``exit`` (or ``error``) event. Text never splits a character."""
        call = exec_call(self._base, cmd, options, binary, stream=True)
        with self._c.stream(call) as r:
            for line in r.iter_lines():
                if line.strip():
                    yield ExecEvent.from_json(json_line(line), "encoding" in call.json)

    def snapshot(self, name: str, *, idempotency_key: str | None = None) -> t.Image:
        """Saves the sandbox's root as a new image of its namespace named ``name``."""
        return cast(t.Image, self._c.json(Call.create(self._base + "/snapshot", {"name": name}, idempotency_key)))

    def delete(self) -> None:
        """Deletes the sandbox. Deleting one already deleted succeeds again (its record stays,
        with status ``deleted``); ``NotFound`` is for an id the namespace never had."""
        self._c.request(Call("DELETE", self._base))

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.delete()
        except NotFound:
            pass


class Files:
    """The files of a sandbox (absolute paths) or of a filesystem (paths relative to its root).

    ``user`` (sandboxes only) acts as that user of the image, whose permissions then apply
    (``PermissionDenied``). Reading a directory raises ``IsADirectory``; a fifo, socket or device
    ``NotARegularFile``; a missing path ``NotFound``.
    """

    def __init__(self, client: Client, base: str) -> None:
        self._c = client
        self._base = base

    def read(self, path: str, *, user: str | None = None) -> bytes:
        """The whole file's bytes (for a large one, :meth:`iter_read` or :meth:`download`)."""
        return self._c.request(Call.get(self._base, **file_params(path, user))).content

    def read_text(self, path: str, *, user: str | None = None, encoding: str = "utf-8") -> str:
        """The whole file decoded as ``encoding``."""
        return self.read(path, user=user).decode(encoding)

    def iter_read(self, path: str, *, user: str | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes in chunks of up to ``chunk_size``, streamed (never held whole)."""
        with self._c.stream(Call.get(self._base, **file_params(path, user))) as r:
            yield from r.iter_bytes(chunk_size)

    def download(self, path: str, to: IO[bytes], *, user: str | None = None) -> int:
        """Streams the file into the binary file object ``to``; returns the bytes written."""
        n = 0
        for chunk in self.iter_read(path, user=user):
            to.write(chunk)
            n += len(chunk)
        return n

    def write(self, path: str, data: Data, *, user: str | None = None, mode: int | str | None = None) -> None:
        """Writes the file atomically, creating missing parent directories; streams a file
        object or an iterable of chunks. ``mode`` (``0o755`` or ``"0755"``) sets the permission
        bits; without it an existing file keeps its mode and a new one gets ``0644``. A write
        past the space of the sandbox or filesystem raises ``QuotaExceeded``."""
        params = file_params(path, user, mode=mode_str(mode))
        self._c.request(Call("PUT", self._base, params=params, content=_content(data)))

    def list(self, path: str, *, user: str | None = None) -> list[t.FileEntry]:
        """The entries of the directory at ``path`` (every page), sorted by name."""
        return list(self._c.pages(Call.get(self._base, **file_params(path, user, list=True))))



class FilesystemFiles(Files):
    """The files of a filesystem (paths relative to its root): those of :class:`Files`, and
    :meth:`delete`. (A sandbox's files have no delete; run ``rm`` in it instead.)"""

    def delete(self, path: str) -> None:
        """Deletes a file, or an empty directory, of the filesystem."""
        self._c.request(Call("DELETE", self._base, params=file_params(path)))


class Processes:
    """The background processes of a sandbox."""

    def __init__(self, client: Client, base: str) -> None:
        self._c = client
        self._base = base

    def start(self, cmd: list[str] | str, **options: Unpack[t.ProcessOptions]) -> Process:
        """Starts a command in the background (a string runs through ``sh -c``); with
        ``tty={"rows": 24, "cols": 80}`` on a terminal. Never retried."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        data = self._c.json(Call("POST", self._base, json={"cmd": argv, **options}))
        return Process(self._c, self._base, data)

    def list(self) -> list[Process]:
        """The sandbox's processes, running and recently exited."""
        data = self._c.json(Call.get(self._base))
        items = data["items"] if isinstance(data, dict) else data
        return [Process(self._c, self._base, d) for d in items]

    def get(self, process_id: str) -> Process:
        """A process by id (``prc_…``)."""
        return Process(self._c, self._base, self._c.json(Call.get(f"{self._base}/{process_id}")))


class Process(ProcessBase):
    """A background process (``id``, and ``data``: the server's last answer about it): its
    stdin, signals, terminal size and output."""

    def __init__(self, client: Client, base: str, data: dict[str, Any]) -> None:
        super().__init__(base, data)
        self._c = client

    def refresh(self) -> Process:
        """Reads the process again (``status``, ``exit_code``); returns itself."""
        self.data = self._c.json(Call.get(self._base))
        return self

    def write(self, data: Data, *, eof: bool = False) -> int:
        """Writes to its standard input (any size, streamed); ``eof`` closes it after.
        Returns the bytes written."""
        r = self._c.json(Call("POST", self._base + "/stdin", params=clean({"eof": eof or None}), content=_content(data)))
        return int(r["bytes"])

    def close_stdin(self) -> None:
        """Closes its standard input."""
        self.write(b"", eof=True)

    def signal(self, signal: str | int = "SIGTERM") -> None:
        """Sends a signal: a name (``"SIGTERM"``, ``"KILL"``) or a number."""
        self._c.request(Call("POST", self._base + "/signal", json={"signal": signal}))

    def kill(self) -> None:
        """Sends ``SIGKILL``."""
        self.signal("SIGKILL")

    def resize(self, rows: int, cols: int) -> None:
        """Sets its terminal's size (a process started with ``tty``)."""
        self._c.request(Call("POST", self._base + "/resize", json={"rows": rows, "cols": cols}))

    def output(self, *, after: int = 0) -> Iterator[ProcessEvent]:
        """Its output events after seq ``after`` until it exits (the last event is ``exit``);
        a dropped connection is resumed after the last seq seen, without a gap or a duplicate."""
        return self._c.follow(ProcessOutput(self._base + "/output", after, self._c.retry))

    def attach(self, *, after: int = 0) -> Terminal:
        """Attaches to it over a WebSocket (the ``pty`` extra): stdin out, output from seq
        ``after`` in, resizes and the exit; for a process started with ``tty``, a terminal."""
        from .pty import attach

        return attach(self._c.config, self._base + "/attach", after)

    def wait(self) -> Process:
        """Reads its output to the end, then returns it refreshed (with ``exit_code``)."""
        for _ in self.output():
            pass
        return self.refresh()


class Filesystems(_Resource):
    """Filesystems of a namespace, their files and whole-filesystem archives."""

    def create(
        self, name: str, size_bytes: int, *, project: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Filesystem:
        """A new filesystem of ``size_bytes`` (counts against the ``disk_bytes`` quota)."""
        body = clean({"name": name, "size_bytes": size_bytes, "project": project})
        return cast(t.Filesystem, self._c.json(Call.create(self._c.ns_path(namespace, "filesystems"), body, idempotency_key)))

    def list(self, *, namespace: str | None = None) -> list[t.Filesystem]:
        """The namespace's filesystems the token sees."""
        return list(self._c.pages(Call.get(self._c.ns_path(namespace, "filesystems"))))

    def get(self, fs_id: str, *, namespace: str | None = None) -> t.Filesystem:
        """One filesystem, with ``used_bytes`` now."""
        return cast(t.Filesystem, self._c.json(Call.get(self._c.ns_path(namespace, "filesystems", fs_id))))

    def resize(self, fs_id: str, size_bytes: int, *, namespace: str | None = None) -> t.Filesystem:
        """Grows or shrinks the filesystem to ``size_bytes``."""
        call = Call("PATCH", self._c.ns_path(namespace, "filesystems", fs_id), json={"size_bytes": size_bytes})
        return cast(t.Filesystem, self._c.json(call))

    def delete(self, fs_id: str, *, force: bool = False, namespace: str | None = None) -> None:
        """Deletes it; ``Conflict`` while a sandbox mounts it unless ``force`` stops those."""
        call = Call("DELETE", self._c.ns_path(namespace, "filesystems", fs_id), params=clean({"force": force or None}))
        self._c.request(call)

    def files(self, fs_id: str, *, namespace: str | None = None) -> FilesystemFiles:
        """The filesystem's files, by paths relative to its root."""
        return FilesystemFiles(self._c, self._c.ns_path(namespace, "filesystems", fs_id, "files"))

    def export_archive(self, fs_id: str, *, namespace: str | None = None) -> Iterator[bytes]:
        """A tar of the whole filesystem, streamed in chunks."""
        with self._c.stream(Call.get(self._c.ns_path(namespace, "filesystems", fs_id, "archive"))) as r:
            yield from r.iter_bytes(CHUNK)

    def import_archive(self, fs_id: str, tar: Data, *, namespace: str | None = None) -> t.ArchiveResult:
        """Unpacks a tar into the filesystem (streamed); ``InvalidRequest`` names a refused entry."""
        call = Call("PUT", self._c.ns_path(namespace, "filesystems", fs_id, "archive"), content=_content(tar))
        return cast(t.ArchiveResult, self._c.json(call))


class Images(_Resource):
    """Images a namespace's sandboxes start from."""

    def pull(
        self, name: str, source: str, *, credentials_secret: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Image:
        """Pulls ``source`` (``registry/repo:tag`` or ``@sha256:…``) as ``name``."""
        body: dict[str, Any] = {"name": name, "source": source}
        if credentials_secret:
            body["credentials"] = {"secret": credentials_secret}
        return cast(t.Image, self._c.json(Call.create(self._c.ns_path(namespace, "images"), body, idempotency_key)))

    def build(
        self, name: str, from_image: str, run: list[list[str]], *, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Image:
        """Builds ``name`` by running each argv of ``run`` in a sandbox of ``from_image``."""
        body = {"name": name, "from": from_image, "run": run}
        return cast(t.Image, self._c.json(Call.create(self._c.ns_path(namespace, "images"), body, idempotency_key)))

    def import_archive(self, name: str, tar: Data, *, namespace: str | None = None) -> t.Image:
        """Imports an OCI image layout or a ``docker save`` tar as ``name`` (streamed)."""
        call = Call("PUT", self._c.ns_path(namespace, "images", name, "archive"), content=_content(tar))
        return cast(t.Image, self._c.json(call))

    def list(self, *, namespace: str | None = None) -> list[t.Image]:
        """The namespace's images and the public ones."""
        return list(self._c.pages(Call.get(self._c.ns_path(namespace, "images"))))

    def get(self, name: str, *, namespace: str | None = None) -> t.Image:
        """An image by name or ``img_…``."""
        return cast(t.Image, self._c.json(Call.get(self._c.ns_path(namespace, "images", name))))

    def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Removes an image; ``Conflict`` while a sandbox uses it."""
        self._c.request(Call("DELETE", self._c.ns_path(namespace, "images", name)))


class Agents(_Resource):
    """Agents, their versions and deployments."""

    def create(self, name: str, *, namespace: str | None = None, idempotency_key: str | None = None) -> t.Agent:
        """A new agent named ``name``."""
        return cast(t.Agent, self._c.json(Call.create(self._c.ns_path(namespace, "agents"), {"name": name}, idempotency_key)))

    def list(self, *, namespace: str | None = None) -> list[t.Agent]:
        """The namespace's agents."""
        return list(self._c.pages(Call.get(self._c.ns_path(namespace, "agents"))))

    def get(self, name: str, *, namespace: str | None = None) -> t.Agent:
        """An agent by name or ``agt_…``."""
        return cast(t.Agent, self._c.json(Call.get(self._c.ns_path(namespace, "agents", name))))

    def delete(self, name: str, *, namespace: str | None = None) -> None:
        """Deletes an agent."""
        self._c.request(Call("DELETE", self._c.ns_path(namespace, "agents", name)))

    def push(self, name: str, bundle: bytes, *, namespace: str | None = None, idempotency_key: str | None = None) -> t.AgentVersion:
        """Uploads a bundle (a tar, plain, gzip or zstd, with ``agent.json`` at its root) as a
        new immutable version; the same bundle again answers its existing version."""
        call = Call.create(self._c.ns_path(namespace, "agents", name, "versions"), None, idempotency_key)
        call.content, call.headers["Content-Type"] = bundle, "application/x-tar"
        return cast(t.AgentVersion, self._c.json(call))

    def versions(self, name: str, *, namespace: str | None = None) -> builtins.list[t.AgentVersion]:
        """The agent's versions."""
        return list(self._c.pages(Call.get(self._c.ns_path(namespace, "agents", name, "versions"))))

    def deploy(self, name: str, version: str, *, namespace: str | None = None) -> t.Agent:
        """Makes ``version`` (``ver_…``) the one new tasks run."""
        call = Call("POST", self._c.ns_path(namespace, "agents", name, "deploy"), json={"version": version})
        return cast(t.Agent, self._c.json(call))

    def rollback(self, name: str, *, namespace: str | None = None) -> t.Agent:
        """Makes the previously deployed version active again (``Conflict`` when none)."""
        return cast(t.Agent, self._c.json(Call("POST", self._c.ns_path(namespace, "agents", name, "rollback"))))


class Tasks(_Resource):
    """Tasks: an agent's run in a sandbox, driven by events, answered by messages."""

    def create(
        self, agent: str, *, version: str | None = None, filesystem: t.SandboxFilesystem | None = None,
        message: Any = None, permissions: str | None = None, namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> t.Task:
        """Starts a task of ``agent`` (its active version, or ``version``), with an optional
        first ``message`` (a string or ACP content blocks); ``permissions="ask"`` makes each
        permission request a pending message to answer with :meth:`answer_permission`."""
        body = clean({"agent": agent, "version": version, "filesystem": filesystem, "message": message, "permissions": permissions})
        return cast(t.Task, self._c.json(Call.create(self._c.ns_path(namespace, "tasks"), body, idempotency_key)))

    def get(self, task_id: str, *, namespace: str | None = None) -> t.Task:
        """A task by id (``tsk_…``)."""
        return cast(t.Task, self._c.json(Call.get(self._c.ns_path(namespace, "tasks", task_id))))

    def list(self, *, namespace: str | None = None) -> list[t.Task]:
        """The namespace's tasks."""
        return list(self._c.pages(Call.get(self._c.ns_path(namespace, "tasks"))))

    def send(self, task_id: str, content: Any, *, namespace: str | None = None) -> dict[str, Any]:
        """Sends a message (a string or ACP content blocks) as the next prompt; answers
        ``{"seq", "status"}``. Never retried."""
        body = {"type": "message", "content": content}
        return cast(dict[str, Any], self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "events"), json=body)))

    def answer_permission(self, task_id: str, request: str, outcome: str, *, namespace: str | None = None) -> dict[str, Any]:
        """Answers a pending permission request: ``allow_once``, ``allow_always`` or ``reject``."""
        body = {"type": "permission", "request": request, "outcome": outcome}
        return cast(dict[str, Any], self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "events"), json=body)))

    def cancel(self, task_id: str, *, namespace: str | None = None) -> t.Task:
        """Cancels the task; its sandbox ends."""
        return cast(t.Task, self._c.json(Call("POST", self._c.ns_path(namespace, "tasks", task_id, "cancel"))))

    def messages(
        self, task_id: str, *, after: int = 0, limit: int | None = None, namespace: str | None = None
    ) -> t.Page:
        """One page of messages after seq ``after`` (``limit`` 1 to 1000, default 100)."""
        call = Call.get(self._c.ns_path(namespace, "tasks", task_id, "messages"), after=after or None, limit=limit)
        return cast(t.Page, self._c.json(call))

    def stream(self, task_id: str, *, after: int = 0, namespace: str | None = None) -> Iterator[t.TaskMessage]:
        """The task's messages after seq ``after``, live, until the task has ended and every
        message was sent. A dropped connection resumes from the last seq seen
        (``Last-Event-ID``): no gap, no duplicate."""
        route = self._c.ns_path(namespace, "tasks", task_id, "messages")
        return self._c.follow(TaskMessages(route, after, self._c.retry))

    def get_state(self, task_id: str, *, namespace: str | None = None) -> tuple[Any, str]:
        """The task's state document and its ETag."""
        r = self._c.request(Call.get(self._c.ns_path(namespace, "tasks", task_id, "state")))
        return r.json(), r.headers.get("etag", "")

    def put_state(self, task_id: str, state: Any, *, if_match: str | None = None, namespace: str | None = None) -> str:
        """Writes the state document; with ``if_match`` only if it is still that version
        (``Conflict`` otherwise). Returns the new ETag."""
        call = Call("PUT", self._c.ns_path(namespace, "tasks", task_id, "state"), json=state)
        if if_match:
            call.headers["If-Match"] = if_match
        return str(self._c.request(call).headers.get("etag", ""))


class Usage(_Resource):
    """Metered usage of a namespace."""

    def get(
        self, *, since: str | None = None, until: str | None = None, granularity: str | None = None,
        namespace: str | None = None,
    ) -> t.UsageReport:
        """Usage from ``since`` to ``until`` (RFC 3339; default the last 24 hours) in buckets of
        a ``minute``, ``hour`` (default) or ``day``."""
        call = Call.get(self._c.ns_path(namespace, "usage"), **{"from": since, "to": until, "granularity": granularity})
        return cast(t.UsageReport, self._c.json(call))


class Audit(_Resource):
    """A namespace's hash-chained audit log."""

    def list(
        self, *, action: str | None = None, since: str | None = None, until: str | None = None,
        namespace: str | None = None,
    ) -> Iterator[t.AuditRecord]:
        """Its records, oldest first, optionally of one ``action`` (``sandbox.create``) and
        within ``since``/``until`` (RFC 3339); pages are read as the iterator goes."""
        yield from self._c.pages(Call.get(self._c.ns_path(namespace, "audit"), action=action, since=since, until=until))

    def verify(self, *, namespace: str | None = None) -> t.AuditVerification:
        """Recomputes the chain: ``ok``, ``records`` checked, ``first_bad_seq``."""
        return cast(t.AuditVerification, self._c.json(Call.get(self._c.ns_path(namespace, "audit", "verify"))))
