"""What the sync and the async clients share: configuration, the description of a call, the
retry rule, error answers, and the parsing of streamed events. Nothing here does IO."""

from __future__ import annotations

import base64
import json
import os
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from . import errors

DEFAULT_URL = "http://127.0.0.1:7070"


@dataclass(frozen=True)
class Config:
    """A client's server, token and default namespace, after the environment's defaults."""

    url: str
    token: str | None
    namespace: str | None

    @staticmethod
    def resolve(url: str | None, token: str | None, namespace: str | None) -> Config:
        """Fills what is ``None`` from ``BULKHEAD_URL``, ``BULKHEAD_TOKEN`` and
        ``BULKHEAD_NAMESPACE`` (the URL defaults to ``http://127.0.0.1:7070``)."""
        url = url or os.environ.get("BULKHEAD_URL") or DEFAULT_URL
        return Config(
            url=url.rstrip("/"),
            token=token if token is not None else os.environ.get("BULKHEAD_TOKEN") or None,
            namespace=namespace if namespace is not None else os.environ.get("BULKHEAD_NAMESPACE") or None,
        )

    def headers(self) -> dict[str, str]:
        """The headers of every call."""
        h = {"User-Agent": "bulkhead-python/0.1"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def ns(self, namespace: str | None) -> str:
        """``namespace``, or the client's default; ``ValueError`` when there is neither."""
        ns = namespace or self.namespace
        if not ns:
            raise ValueError("no namespace: pass namespace= or set BULKHEAD_NAMESPACE")
        return ns


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried: at most ``attempts`` tries in all, waiting
    ``backoff * 2**n`` seconds (at most ``max_backoff``, with jitter) between them, or the
    server's ``Retry-After`` when it sends one.

    Retried: connection failures, 429 ``rate_limited``, 502, 503 and 504. Only GETs and creates
    that carry an ``Idempotency-Key`` are retried; any other call is tried once.

    A create whose earlier try still runs on the server (its retry is answered 409 ``conflict``
    with ``Retry-After``) waits, as ``Retry-After`` says, until that try answers and then returns
    what it made; these waits do not count as attempts, but end (raising the
    :class:`bulkhead.errors.Conflict`) once ``deadline`` seconds have passed since the call began.
    """

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    deadline: float = 600.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return min(float(retry_after), 60.0)
        base: float = min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)
        return base * (0.5 + random.random() / 2)


RETRIED_STATUS = frozenset({429, 502, 503, 504})


def path(*parts: str) -> str:
    """``/v1/`` and the parts, each escaped as one path segment."""
    return "/v1/" + "/".join(quote(p, safe="") for p in parts)


Body = bytes | str | None


@dataclass
class Call:
    """One request: method, path (from :func:`path`), query, and a JSON or raw body.

    ``idempotent`` calls are retried under the :class:`RetryPolicy`; a create is made
    idempotent by :meth:`create`, which adds a fresh ``Idempotency-Key`` that its retries reuse.
    """

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False
    #: Seconds to wait for each read of the answer instead of the client's timeout; ``None``
    #: waits as long as it takes (a stream that may be quiet for long).
    read_timeout: float | None | Literal["client"] = "client"

    @staticmethod
    def get(route: str, /, **params: Any) -> Call:
        """A GET of ``route``, with the query parameters that are not ``None``."""
        return Call("GET", route, params=clean(params), idempotent=True)

    @staticmethod
    def create(path: str, body: Any, idempotency_key: str | None = None) -> Call:
        """A POST that creates something, made safe to retry by an ``Idempotency-Key``."""
        key = idempotency_key or uuid.uuid4().hex
        return Call("POST", path, json=body, headers={"Idempotency-Key": key}, idempotent=True)

    def kwargs(self, timeout: float) -> dict[str, Any]:
        """The arguments of ``httpx.Client.build_request`` for this call, on a client whose
        timeout is ``timeout`` seconds."""
        out: dict[str, Any] = {"params": {k: str_param(v) for k, v in self.params.items()}}
        if self.json is not None:
            out["json"] = self.json
        if self.content is not None:
            out["content"] = self.content
        if self.headers:
            out["headers"] = self.headers
        if self.read_timeout != "client":
            out["timeout"] = httpx.Timeout(timeout, read=self.read_timeout)
        return out


def clean(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` without its ``None`` values."""
    return {k: v for k, v in d.items() if v is not None}


def str_param(v: Any) -> str:
    """A query parameter's text: booleans as ``true``/``false``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def seconds(v: str | None) -> float | None:
    """A ``Retry-After`` header in seconds, when it is a number."""
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def retry_after(response: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds, when it is a number."""
    return seconds(response.headers.get("retry-after"))


def error_from(response: httpx.Response, body: bytes) -> errors.ApiError:
    """The exception for an error answer: the class of its code, or ``ApiError``."""
    return error_for(response.status_code, response.headers, body)


def error_for(status: int, headers: Mapping[str, str], body: bytes) -> errors.ApiError:
    """The exception for an error answer of ``status`` with ``headers`` (lower-case names
    looked up) and ``body``."""
    code, message = "", ""
    request_id = headers.get("x-request-id", "")
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail.get("code", "")), str(detail.get("message", ""))
        request_id = str(detail.get("request_id") or request_id)
    except (ValueError, KeyError, TypeError, AttributeError):
        message = body[:512].decode("utf-8", "replace")
    cls = errors.BY_CODE.get(code, errors.ApiError)
    if issubclass(cls, errors._Retryable):
        return cls(status, code, message, request_id, seconds(headers.get("retry-after")))
    return cls(status, code or f"http_{status}", message, request_id)


def in_progress(call: Call, response: httpx.Response | None) -> bool:
    """Whether ``response`` says that an earlier try of the create ``call`` (same
    ``Idempotency-Key``) still runs on the server: a 409 with ``Retry-After``."""
    return (
        response is not None
        and response.status_code == 409
        and "Idempotency-Key" in call.headers
        and response.headers.get("retry-after") is not None
    )


def should_retry(
    call: Call, attempt: int, policy: RetryPolicy, response: httpx.Response | None, elapsed: float = 0.0
) -> float | None:
    """Seconds to wait before trying ``call`` again after try ``attempt`` ended with
    ``response`` (``None``: the connection failed), ``elapsed`` seconds after the call began; or
    ``None`` not to retry. A create still in progress (:func:`in_progress`) is waited for until
    the policy's ``deadline``, whatever ``attempt`` is."""
    if call.idempotent and response is not None and in_progress(call, response):
        wait = policy.delay(attempt, retry_after(response))
        return wait if elapsed + wait <= policy.deadline else None
    if not call.idempotent or attempt >= policy.attempts:
        return None
    if response is None:
        return policy.delay(attempt, None)
    if response.status_code not in RETRIED_STATUS:
        return None
    # A quota is not freed by waiting; only the rate limit's 429 is retried.
    if response.status_code == 429 and response.headers.get("retry-after") is None:
        return None
    return policy.delay(attempt, retry_after(response))


def replayable(content: Any) -> bool:
    """Whether a body can be sent again (not a one-shot stream)."""
    return content is None or isinstance(content, (bytes, str))


# ---- Command results and streamed events ----


@dataclass(frozen=True)
class ExecResult:
    """The result of a command run to its end.

    Attributes:
        exit_code: its exit status; 128 + the signal number when a signal killed it.
        stdout: standard output (``str``, or ``bytes`` when run with ``binary=True``).
        stderr: standard error, like ``stdout``.
        signal: the signal that ended it, if one did.
        timed_out: it ran past its ``timeout_seconds`` and was killed.
        truncated: output went past the server's cap and was cut.
        duration_ms: how long it ran, in milliseconds.
    """

    exit_code: int
    stdout: str | bytes
    stderr: str | bytes
    signal: int | None = None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: int = 0

    @staticmethod
    def from_json(d: Mapping[str, Any], binary: bool) -> ExecResult:
        """From the answer of ``POST .../exec`` (base64 output when ``binary``)."""
        return ExecResult(
            exit_code=int(d["exit_code"]),
            stdout=decode(d.get("stdout", ""), binary),
            stderr=decode(d.get("stderr", ""), binary),
            signal=d.get("signal"),
            timed_out=bool(d.get("timed_out", False)),
            truncated=bool(d.get("truncated", False)),
            duration_ms=int(d.get("duration_ms", 0)),
        )


def json_line(line: str) -> Any:
    """One line of an NDJSON stream, or the data of a server-sent event."""
    return json.loads(line)


def decode(data: str, binary: bool) -> str | bytes:
    """Text as sent, or base64 decoded to bytes."""
    return base64.b64decode(data) if binary else data


@dataclass(frozen=True)
class ExecEvent:
    """One event of a streamed command.

    Attributes:
        type: ``"stdout"``, ``"stderr"``, ``"exit"`` (the last) or ``"error"``.
        data: a piece of output (``str``, or ``bytes`` with ``binary=True``); empty on ``exit``.
        exit_code: on ``exit``: the exit status (128 + signal when one killed it).
        signal, timed_out, truncated, duration_ms: on ``exit``, as in :class:`ExecResult`.
        message: on ``error``: what went wrong.
    """

    type: Literal["stdout", "stderr", "exit", "error"]
    data: str | bytes = ""
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    truncated: bool = False
    duration_ms: int = 0
    message: str = ""

    @staticmethod
    def from_json(d: Mapping[str, Any], binary: bool) -> ExecEvent:
        """From one NDJSON line of a streamed exec."""
        kind = d.get("type")
        if kind in ("stdout", "stderr"):
            return ExecEvent(type=kind, data=decode(d.get("data", ""), binary))
        if kind == "exit":
            return ExecEvent(
                type="exit",
                data=b"" if binary else "",
                exit_code=int(d["exit_code"]),
                signal=d.get("signal"),
                timed_out=bool(d.get("timed_out", False)),
                truncated=bool(d.get("truncated", False)),
                duration_ms=int(d.get("duration_ms", 0)),
            )
        return ExecEvent(type="error", message=str(d.get("message", d)))


EXEC_TIMEOUT = 60
#: Seconds an exec's answer may take past the command's own timeout.
EXEC_SLACK = 30


def exec_call(sandbox: str, cmd: list[str] | str, options: Mapping[str, Any], binary: bool, stream: bool) -> Call:
    """``POST {sandbox}/exec``: buffered, waiting for the answer as long as the command's
    timeout allows; or streamed (NDJSON), waiting for each event as long as it takes."""
    body = exec_body(cmd, options, binary)
    if stream:
        return Call("POST", sandbox + "/exec", json=body, headers={"Accept": "application/x-ndjson"}, read_timeout=None)
    wait = float(options.get("timeout_seconds") or EXEC_TIMEOUT) + EXEC_SLACK
    return Call("POST", sandbox + "/exec", json=body, read_timeout=wait)


def exec_body(cmd: list[str] | str, options: Mapping[str, Any], binary: bool) -> dict[str, Any]:
    """The JSON body of an exec. A string ``cmd`` runs through ``sh -c``; bytes ``stdin`` (or
    ``binary``) sends base64."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    body: dict[str, Any] = {"cmd": argv, **clean({k: v for k, v in options.items() if k != "stdin"})}
    stdin = options.get("stdin")
    if binary or isinstance(stdin, bytes):
        body["encoding"] = "base64"
        if stdin is not None:
            raw = stdin.encode() if isinstance(stdin, str) else stdin
            body["stdin"] = base64.b64encode(raw).decode()
    elif stdin is not None:
        body["stdin"] = stdin
    return body


@dataclass(frozen=True)
class ProcessEvent:
    """One event of a background process's output.

    Attributes:
        type: ``"output"``, ``"gap"`` (output dropped before it was read) or ``"exit"`` (last).
        seq: on ``output``: its sequence number, from 1.
        stream: on ``output``: ``"stdout"``, ``"stderr"`` or ``"pty"``.
        data: on ``output``: the exact bytes.
        exit_code, signal, timed_out: on ``exit``.
        gap: on ``gap``: the first and last seq lost.
    """

    type: Literal["output", "gap", "exit"]
    seq: int = 0
    stream: str = ""
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    gap: tuple[int, int] | None = None

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> ProcessEvent:
        """From one NDJSON line of ``GET .../processes/{pid}/output``."""
        kind = d.get("type")
        if kind == "output":
            return ProcessEvent("output", seq=int(d["seq"]), stream=str(d["stream"]), data=base64.b64decode(d["data"]))
        if kind == "gap":
            return ProcessEvent("gap", gap=(int(d["from"]), int(d["to"])))
        return ProcessEvent(
            "exit", exit_code=d.get("exit_code"), signal=d.get("signal"), timed_out=bool(d.get("timed_out", False))
        )


@dataclass
class SseParser:
    """Server-sent events, fed line by line: :meth:`feed` returns ``(event, id, data)`` at
    each blank line that ends an event with data."""

    event: str = "message"
    id: str | None = None
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str | None, str] | None:
        """One line without its end; an event when this line ends one."""
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            out = (self.event, self.id, "\n".join(self.data))
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


E = TypeVar("E")


class Resumable(Generic[E]):
    """A stream of numbered events read again after a dropped connection, from the last event
    it yielded: :meth:`call` asks for what follows, :meth:`feed` turns a line into events and
    sets ``done`` at the stream's end, :meth:`failed` says how long to wait before reconnecting
    (``None``: give up). A stream that ends before ``done`` counts as dropped."""

    def __init__(self, route: str, after: int, policy: RetryPolicy) -> None:
        self.route, self.after, self.policy = route, after, policy
        self.failures = 0
        self.done = False

    def call(self) -> Call:
        """The request for the events after ``after``."""
        raise NotImplementedError

    def feed(self, line: str) -> list[E]:
        """The events a line of the answer completes."""
        raise NotImplementedError

    def failed(self) -> float | None:
        """Seconds to wait before reconnecting after a failure, or ``None`` when the failures
        in a row with no progress are as many as the policy's attempts."""
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return None
        return self.policy.delay(self.failures, None)


class ProcessOutput(Resumable[ProcessEvent]):
    """A process's output as NDJSON, resumed with ``after``; done at its ``exit`` event."""

    def call(self) -> Call:
        call = Call.get(self.route, after=self.after or None)
        # A process may print nothing for hours.
        call.read_timeout = None
        return call

    def feed(self, line: str) -> list[ProcessEvent]:
        if not line.strip():
            return []
        event = ProcessEvent.from_json(json_line(line))
        self.failures = 0
        if event.type == "output":
            self.after = event.seq
        self.done = event.type == "exit"
        return [event]


class TaskMessages(Resumable[Any]):
    """A task's messages as server-sent events, resumed with ``Last-Event-ID``; done at the
    ``end`` event (the task has ended and every message was sent)."""

    def __init__(self, route: str, after: int, policy: RetryPolicy) -> None:
        super().__init__(route, after, policy)
        self.parser = SseParser()

    def call(self) -> Call:
        self.parser = SseParser()
        call = Call.get(self.route)
        call.headers = {"Accept": "text/event-stream", **({"Last-Event-ID": str(self.after)} if self.after else {})}
        # The server sends a keep-alive every 15 s; a stream quiet for twice that is dropped.
        call.read_timeout = 60.0
        return call

    def feed(self, line: str) -> list[Any]:
        event = self.parser.feed(line)
        if event is None:
            return []
        kind, _, data = event
        self.done = kind == "end"
        if kind != "message":
            return []
        message = json_line(data)
        self.after, self.failures = int(message["seq"]), 0
        return [message]


class ClientBase:
    """What both clients hold: the server, token and default namespace (:class:`Config`) and
    the retry rule.

    Args:
        url: the server, such as ``http://127.0.0.1:7070``; default ``BULKHEAD_URL``.
        token: an API key's token (or an OIDC ID token); default ``BULKHEAD_TOKEN``.
        namespace: the namespace of namespaced calls; default ``BULKHEAD_NAMESPACE``.
        timeout: seconds to wait for a connection, a read or a write (not a whole stream).
        retry: how idempotent calls are retried (:class:`RetryPolicy`).
        transport: an httpx transport to send through instead of the network's.
    """

    def __init__(self, url: str | None, token: str | None, namespace: str | None, retry: RetryPolicy | None) -> None:
        self.config = Config.resolve(url, token, namespace)
        self.retry = retry or RetryPolicy()

    def http_options(self, timeout: float, transport: Any) -> dict[str, Any]:
        """The arguments of the httpx client: base URL, headers, timeout, transport."""
        return {"base_url": self.config.url, "headers": self.config.headers(), "timeout": timeout, "transport": transport}

    @property
    def namespace(self) -> str | None:
        """The default namespace of namespaced calls."""
        return self.config.namespace

    def ns_path(self, namespace: str | None, *parts: str) -> str:
        """The path of ``parts`` under ``/v1/namespaces/{ns}``."""
        return path("namespaces", self.config.ns(namespace), *parts)


class SandboxBase:
    """A sandbox's identity and the server's last answer about it.

    Attributes:
        id: ``sbx_…``.
        namespace: its namespace.
        data: the server's last answer about it (``status``, ``expires_at``, ``image``, …).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.id: str = data["id"]
        self.namespace: str = data["namespace"]
        self._base = path("namespaces", self.namespace, "sandboxes", self.id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        """``creating``, ``running``, ``stopped``, ``failed`` or ``deleted``, as last read."""
        return str(self.data.get("status", ""))


class ProcessBase:
    """A background process's identity and the server's last answer about it.

    Attributes:
        id: ``prc_…``.
        data: the server's last answer about it (:class:`bulkhead.types.Process`).
    """

    def __init__(self, base: str, data: dict[str, Any]) -> None:
        self.data = data
        self.id: str = data["id"]
        self._base = f"{base}/{self.id}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        """``running`` or ``exited``, as last read."""
        return str(self.data.get("status", ""))

    @property
    def exit_code(self) -> int | None:
        """Once exited: its exit status, 128 + the signal number when a signal ended it;
        ``None`` while running (as last read)."""
        code = self.data.get("exit_code")
        return None if code is None else int(code)

    @property
    def signal_number(self) -> int | None:
        """The signal that ended it, if one did (as last read)."""
        sig = self.data.get("signal")
        return None if sig is None else int(sig)

    @property
    def pid(self) -> int:
        """Its process id inside the sandbox."""
        return int(self.data["pid"])


def file_params(path: str, user: str | None = None, **extra: Any) -> dict[str, Any]:
    """The query of a file route: ``path`` (absolute in a sandbox, relative in a filesystem),
    ``user`` and what else is given."""
    return clean({"path": path, "user": user, **extra})


def mode_str(mode: int | str | None) -> str | None:
    """A file mode as the octal text the API takes: ``0o755`` or ``"0755"`` → ``"0755"``."""
    if mode is None or isinstance(mode, str):
        return mode
    return f"{mode:04o}"


CHUNK = 1 << 20
