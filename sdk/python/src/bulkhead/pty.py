"""Terminals: the WebSocket attachment of a background process (``GET .../processes/{id}/attach``).

Needs the ``pty`` extra (``pip install 'bulkhead[pty]'``, which brings ``websockets``); the rest
of the SDK does not. Binary frames carry the process's stdin (out) and output (in); text frames
carry JSON control messages: ``resize`` and ``eof`` out, ``exit`` (then the close) in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._core import Config, error_for

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection as AsyncConnection
    from websockets.sync.client import ClientConnection


class TerminalError(Exception):
    """The server ended an attachment with an error (its message)."""


def _target(config: Config, path: str, after: int) -> tuple[str, dict[str, str]]:
    """The WebSocket URL of ``path`` on the client's server, and the headers of the upgrade."""
    url = ("wss://" + config.url[len("https://") :]) if config.url.startswith("https://") else (
        "ws://" + config.url.split("://", 1)[-1]
    )
    query = f"?after={after}" if after else ""
    return url + path + query, config.headers()


def _refused(e: Exception) -> Exception:
    """An upgrade the server answered with an error: the ``ApiError`` of its code."""
    response = getattr(e, "response", None)
    if response is None:
        return e
    headers: Mapping[str, str] = {k.lower(): v for k, v in response.headers.raw_items()}
    return error_for(response.status_code, headers, bytes(response.body or b""))


def _need_websockets() -> None:
    try:
        import websockets  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("terminals need the pty extra: pip install 'bulkhead[pty]'") from e


def _control(terminal: Terminal | AsyncTerminal, text: str) -> None:
    """Takes in a control message of the server: ``exit`` sets ``exit``, ``error`` raises."""
    message: dict[str, Any] = json.loads(text)
    if message.get("type") == "exit":
        terminal.exit = message
    elif message.get("type") == "error":
        raise TerminalError(str(message.get("message", message)))


class Terminal:
    """A synchronous attachment to a process (a context manager that closes it).

    Attributes:
        exit: once the process ended, ``{"exit_code", "signal"?, "timed_out"}``; else ``None``.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.exit: dict[str, Any] | None = None

    def send(self, data: bytes | str) -> None:
        """Writes to the process's stdin (text as UTF-8)."""
        self._ws.send(data.encode() if isinstance(data, str) else data, text=False)

    def resize(self, rows: int, cols: int) -> None:
        """Sets the terminal's size in characters (1 to 1000 each)."""
        self._ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    def eof(self) -> None:
        """Closes the process's stdin."""
        self._ws.send(json.dumps({"type": "eof"}))

    def recv(self, timeout: float | None = None) -> bytes | None:
        """The next piece of output, or ``None`` once the process has exited (see ``exit``).
        ``TimeoutError`` when nothing came within ``timeout`` seconds."""
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                frame = self._ws.recv(timeout)
            except ConnectionClosed:
                return None
            if isinstance(frame, bytes):
                return frame
            _control(self, frame)

    def read_to_exit(self) -> bytes:
        """All output until the process exits."""
        out = bytearray()
        while (piece := self.recv()) is not None:
            out += piece
        return bytes(out)

    def close(self) -> None:
        """Detaches; the process goes on (with its stdin open unless :meth:`eof` was sent)."""
        self._ws.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTerminal:
    """The asynchronous form of :class:`Terminal`: the same methods, awaited."""

    def __init__(self, ws: AsyncConnection) -> None:
        self._ws = ws
        self.exit: dict[str, Any] | None = None

    async def send(self, data: bytes | str) -> None:
        """Writes to the process's stdin (text as UTF-8)."""
        await self._ws.send(data.encode() if isinstance(data, str) else data, text=False)

    async def resize(self, rows: int, cols: int) -> None:
        """Sets the terminal's size in characters."""
        await self._ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    async def eof(self) -> None:
        """Closes the process's stdin."""
        await self._ws.send(json.dumps({"type": "eof"}))

    async def recv(self) -> bytes | None:
        """The next piece of output, or ``None`` once the process has exited."""
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed:
                return None
            if isinstance(frame, bytes):
                return frame
            _control(self, frame)

    async def read_to_exit(self) -> bytes:
        """All output until the process exits."""
        out = bytearray()
        while (piece := await self.recv()) is not None:
            out += piece
        return bytes(out)

    async def close(self) -> None:
        """Detaches; the process goes on."""
        await self._ws.close()

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def attach(config: Config, path: str, after: int = 0) -> Terminal:
    """Opens the attachment at ``path``; an upgrade refused raises its ``ApiError``."""
    _need_websockets()
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, headers = _target(config, path, after)
    try:
        connection = connect(url, additional_headers=headers, proxy=None, max_size=None)
    except InvalidStatus as e:
        raise _refused(e) from None
    # Entered as the context manager it is (closed by `Terminal.close`).
    return Terminal(connection.__enter__())


async def attach_async(config: Config, path: str, after: int = 0) -> AsyncTerminal:
    """The asynchronous :func:`attach`."""
    _need_websockets()
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    url, headers = _target(config, path, after)
    try:
        return AsyncTerminal(await connect(url, additional_headers=headers, proxy=None, max_size=None))
    except InvalidStatus as e:
        raise _refused(e) from None


__all__ = ["AsyncTerminal", "Terminal", "TerminalError"]
