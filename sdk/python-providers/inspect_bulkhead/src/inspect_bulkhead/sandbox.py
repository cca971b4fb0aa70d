"""inspect-ai's ``SandboxEnvironment`` over a Bulkhead server, through the Python SDK.

Each sample gets a sandbox of its own, made by :meth:`BulkheadSandboxEnvironment.sample_init`
and deleted by ``sample_cleanup``. Commands run through Bulkhead's streamed exec (a background
process when their stdin is larger than an exec body takes, or their timeout longer than an exec
allows); files go through its file routes, as the configured user. Relative paths and working
directories resolve against the sample's working directory (``workdir``, made at sample start).
"""

from __future__ import annotations

import errno
import posixpath
import shlex
from contextlib import aclosing
from typing import Any, ClassVar, Literal, overload

import anyio
import httpx
from pydantic import BaseModel

import bulkhead
from bulkhead import errors
from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    SandboxUnavailableError,
    sandboxenv,
)

#: Bulkhead's longest exec, in seconds; a command without a timeout runs at most this long, and
#: one with a longer timeout runs as a background process (up to a day).
MAX_EXEC_SECONDS = 3600
#: The largest stdin sent inside an exec's JSON body (16 MiB, base64 grows it by a third); a
#: larger one streams into a background process.
MAX_EXEC_STDIN_BYTES = 8 << 20


class BulkheadSandboxConfig(BaseModel, frozen=True):
    """The configuration of ``sandbox=("bulkhead", BulkheadSandboxConfig(...))``; every field is
    optional. The token never goes here (configurations are written into eval logs): it comes
    from ``BULKHEAD_TOKEN``.

    Attributes:
        url: the server (default ``BULKHEAD_URL``).
        namespace: the namespace the sandboxes are made in (default ``BULKHEAD_NAMESPACE``).
        image: the image name or ``img_…`` (default the platform's).
        cpu_millis: thousandths of a core; memory_bytes, disk_bytes: bytes; ttl_seconds: how
            long a sandbox may live (the namespace's defaults when absent).
        env: variables of every command.
        user: who commands and file operations run as when no ``user`` is given (a name,
            ``uid`` or ``uid:gid`` of the image; default the image's user).
        workdir: the per-sample working directory, absolute, made (and given to ``user``) when
            the sample starts.
    """

    url: str | None = None
    namespace: str | None = None
    image: str | None = None
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    ttl_seconds: int | None = None
    env: dict[str, str] = {}
    user: str | None = None
    workdir: str = "/work"

    def __hash__(self) -> int:
        # inspect-ai keys its sandboxes by their configuration; ``env`` is a dict.
        return hash(self.model_dump_json())


def _config(config: SandboxEnvironmentConfigType | None) -> BulkheadSandboxConfig:
    """The provider's configuration from what a task gives: nothing, or the model."""
    if config is None:
        return BulkheadSandboxConfig()
    if isinstance(config, BulkheadSandboxConfig):
        return config
    raise ValueError(f"sandbox 'bulkhead' takes a BulkheadSandboxConfig, not {config!r}")


@sandboxenv(name="bulkhead")
class BulkheadSandboxEnvironment(SandboxEnvironment):
    """One running Bulkhead sandbox of a sample: ``sandbox`` (:class:`bulkhead.AsyncSandbox`)
    and the ``client`` that made it."""

    #: The environments made and not yet cleaned up, so a task's end deletes what a sample's
    #: cleanup missed.
    _live: ClassVar[set[BulkheadSandboxEnvironment]] = set()

    def __init__(self, client: bulkhead.AsyncClient, sandbox: bulkhead.AsyncSandbox, config: BulkheadSandboxConfig) -> None:
        super().__init__()
        self.client = client
        self.sandbox = sandbox
        self.config = config

    # ---- Lifecycle ----

    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return BulkheadSandboxConfig(**config)

    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        """Checks that the server answers before any sample starts."""
        cfg = _config(config)
        async with bulkhead.AsyncClient(url=cfg.url, namespace=cfg.namespace) as client:
            await client.healthz()

    @classmethod
    async def sample_init(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, metadata: dict[str, str]
    ) -> dict[str, SandboxEnvironment]:
        """Makes the sample's sandbox and its working directory; ``{"default": env}``."""
        cfg = _config(config)
        options: dict[str, Any] = {
            k: v
            for k, v in cfg.model_dump(include={"image", "cpu_millis", "memory_bytes", "disk_bytes", "ttl_seconds"}).items()
            if v is not None
        }
        if cfg.env:
            options["env"] = cfg.env
        client = bulkhead.AsyncClient(url=cfg.url, namespace=cfg.namespace)
        try:
            sandbox = await client.sandboxes.create(**options)
        except BaseException:
            await client.close()
            raise
        env = cls(client, sandbox, cfg)
        cls._live.add(env)
        try:
            # Made as root (uid 0, which every image has), then given to the configured user.
            setup = ["mkdir", "-p", "--", cfg.workdir]
            r = await sandbox.exec(setup, user="0")
            if r.exit_code == 0 and cfg.user:
                owner = cfg.user if ":" in cfg.user else cfg.user + ":"
                r = await sandbox.exec(["chown", "--", owner, cfg.workdir], user="0")
            if r.exit_code != 0:
                raise RuntimeError(f"bulkhead: cannot make the working directory {cfg.workdir}: {r.stderr}")
        except BaseException:
            await env._close()
            raise
        return {"default": env}

    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        """Deletes the sample's sandbox."""
        for env in environments.values():
            await env.as_type(BulkheadSandboxEnvironment)._close()

    @classmethod
    async def task_cleanup(cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool) -> None:
        """Deletes the sandboxes whose samples were not cleaned up (unless ``cleanup`` is off)."""
        if cleanup:
            for env in list(cls._live):
                await env._close()

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        """``inspect sandbox cleanup bulkhead ID``: deletes the sandbox ``sbx_…`` of the
        environment's namespace (sandboxes also end by their TTL)."""
        if id:
            async with bulkhead.AsyncClient() as client:
                try:
                    await client.sandboxes.delete(id)
                except errors.NotFound:
                    pass

    async def _close(self) -> None:
        """Deletes the sandbox (one already gone is fine) and closes the client."""
        type(self)._live.discard(self)
        try:
            await self.sandbox.delete()
        except errors.NotFound:
            pass
        finally:
            await self.client.close()

    # ---- Commands ----

    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        """Runs ``cmd`` (resolved through the sandbox's ``PATH``) in ``cwd`` (default the
        sample's working directory), as ``user`` (default the configured one).

        ``TimeoutError`` past ``timeout`` (everything the command started is killed);
        ``PermissionError`` when the program cannot be executed; ``OutputLimitExceededError``
        when a stream passes inspect-ai's limit; ``SandboxUnavailableError`` when the sandbox no
        longer runs. An unknown user is a failed result naming it. ``timeout_retry`` does not
        apply: Bulkhead's timeout is exact, a retry would time out again.
        """
        options: dict[str, Any] = {"cwd": self._path(cwd) if cwd else self.config.workdir}
        user = user or self.config.user
        if user:
            options["user"] = user
        if env:
            options["env"] = env
        stdin = input.encode() if isinstance(input, str) else input
        try:
            if (stdin is not None and len(stdin) > MAX_EXEC_STDIN_BYTES) or (timeout or 0) > MAX_EXEC_SECONDS:
                code, timed_out, out, err = await self._run_process(cmd, stdin, timeout, options)
            else:
                options["timeout_seconds"] = timeout or MAX_EXEC_SECONDS
                code, timed_out, out, err = await self._run_exec(cmd, stdin, options)
        except (errors.InvalidRequest, NotStarted) as e:
            # Bulkhead refuses a user the image does not have, naming it (a 400, or the error
            # event of a streamed exec); a shell would fail the command the same way.
            message = e.message if isinstance(e, errors.ApiError) else str(e)
            if user and user in message:
                return ExecResult(success=False, returncode=126, stdout="", stderr=message + "\n")
            raise
        except (errors.Conflict, errors.NotFound) as e:
            raise SandboxUnavailableError(f"bulkhead: the sandbox {self.sandbox.id} is not running: {e}") from e
        if timed_out:
            raise TimeoutError(f"bulkhead: {shlex.join(cmd)} ran past its timeout of {timeout or MAX_EXEC_SECONDS} seconds")
        # Bulkhead answers a program it cannot start as a shell does: 126 and its reason.
        if code == 126 and err.startswith(b"bulkhead: cannot run") and b"ermission denied" in err:
            raise PermissionError(errno.EACCES, err.decode(errors="replace").strip(), cmd[0])
        return ExecResult(
            success=code == 0, returncode=code, stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace")
        )

    async def _run_exec(self, cmd: list[str], stdin: bytes | None, options: dict[str, Any]) -> tuple[int, bool, bytes, bytes]:
        """A streamed exec: ``(exit_code, timed_out, stdout, stderr)``."""
        if stdin is not None:
            options["stdin"] = stdin
        out = Output()
        async with aclosing(self.sandbox.exec_stream(cmd, binary=True, **options)) as events:
            async for event in events:
                if event.type in ("stdout", "stderr"):
                    out.add(event.type, bytes(event.data))
                elif event.type == "exit":
                    if event.truncated:
                        raise out.exceeded()
                    return int(event.exit_code or 0), event.timed_out, out.stdout, out.stderr
                else:
                    raise NotStarted(event.message)
        raise RuntimeError(f"bulkhead: the output of {shlex.join(cmd)} ended before its exit")

    async def _run_process(
        self, cmd: list[str], stdin: bytes | None, timeout: int | None, options: dict[str, Any]
    ) -> tuple[int, bool, bytes, bytes]:
        """A background process, its stdin streamed in while its output is read:
        ``(exit_code, timed_out, stdout, stderr)``."""
        if timeout:
            options["timeout_seconds"] = timeout
        process = await self.sandbox.processes.start(cmd, **options)
        out = Output()
        result: tuple[int, bool, bytes, bytes] | None = None

        async def feed() -> None:
            try:
                await process.write(stdin or b"", eof=True)
            except (errors.ApiError, httpx.TransportError):
                # A process that exits before reading all its stdin refuses the rest; its exit
                # status says what happened.
                pass

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            async with aclosing(process.output()) as events:
                async for event in events:
                    if event.type == "output":
                        out.add(event.stream, event.data)
                    elif event.type == "gap":
                        raise out.exceeded()
                    else:
                        result = (int(event.exit_code or 0), event.timed_out, out.stdout, out.stderr)
        if result is None:
            raise RuntimeError(f"bulkhead: the output of {shlex.join(cmd)} ended before its exit")
        return result

    # ---- Files ----

    def _path(self, file: str) -> str:
        """``file`` as an absolute path: a relative one is under the working directory."""
        return posixpath.normpath(posixpath.join(self.config.workdir, file))

    async def write_file(self, file: str, contents: str | bytes) -> None:
        """Writes ``file`` (atomically, parents made) as the configured user.
        ``PermissionError``, ``IsADirectoryError`` as the file system answers."""
        try:
            await self.sandbox.files.write(self._path(file), contents, user=self.config.user)
        except errors.ApiError as e:
            raise _file_error(e, file) from e

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> str | bytes:
        """Reads ``file`` as the configured user, streamed and cut off past inspect-ai's read
        limit (``OutputLimitExceededError``); text is UTF-8 with its newlines as they are.
        ``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError`` name the file."""
        limit = SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
        chunks: list[bytes] = []
        size = 0
        try:
            async with aclosing(self.sandbox.files.iter_read(self._path(file), user=self.config.user)) as stream:
                async for chunk in stream:
                    size += len(chunk)
                    if size > limit:
                        raise OutputLimitExceededError(SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, None)
                    chunks.append(chunk)
        except errors.ApiError as e:
            raise _file_error(e, file) from e
        data = b"".join(chunks)
        return data.decode("utf-8") if text else data

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        """A shell in the sandbox through the ``bulkhead`` CLI (``BULKHEAD_URL`` and
        ``BULKHEAD_TOKEN`` set as for the provider)."""
        command = ["bulkhead", "shell", "--ns", self.sandbox.namespace, self.sandbox.id, "--cwd", self.config.workdir]
        user = user or self.config.user
        if user:
            command += ["--user", user]
        return SandboxConnection(type="bulkhead", command=shlex.join(command), container=self.sandbox.id)


class NotStarted(RuntimeError):
    """A streamed exec's ``error`` event: the command did not run (its message says why)."""


class Output:
    """The output of a command as it arrives, held to inspect-ai's limit per stream."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""

    def add(self, stream: str, data: bytes) -> None:
        """Appends ``data`` to ``stream``; ``OutputLimitExceededError`` past the limit."""
        if stream == "stderr":
            self.stderr += data
        else:
            self.stdout += data
        if max(len(self.stdout), len(self.stderr)) > SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE:
            raise self.exceeded()

    def exceeded(self) -> OutputLimitExceededError:
        """The limit's error, with the last of the output up to the limit."""
        limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
        tail = (self.stdout if len(self.stdout) >= len(self.stderr) else self.stderr)[-limit:]
        return OutputLimitExceededError(SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR, tail.decode(errors="replace"))


def _file_error(e: errors.ApiError, file: str) -> Exception:
    """The ``OSError`` inspect-ai expects for a file route's error answer, naming ``file``."""
    if isinstance(e, errors.NotFound):
        return FileNotFoundError(errno.ENOENT, "No such file or directory", file)
    if isinstance(e, errors.IsADirectory):
        return IsADirectoryError(errno.EISDIR, "Is a directory", file)
    if isinstance(e, errors.PermissionDenied):
        return PermissionError(errno.EACCES, "Permission denied", file)
    if isinstance(e, errors.NotARegularFile):
        return OSError(errno.EINVAL, "Not a regular file", file)
    return e
