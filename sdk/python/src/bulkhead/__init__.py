"""Bulkhead's Python SDK: a typed client of the Bulkhead API, synchronous (:class:`Client`)
and asynchronous (:class:`AsyncClient`), over httpx.

    import bulkhead

    with bulkhead.Client() as client:          # BULKHEAD_URL, BULKHEAD_TOKEN, BULKHEAD_NAMESPACE
        with client.sandboxes.create() as sandbox:
            result = sandbox.exec(["echo", "hi"])
            print(result.exit_code, result.stdout)

Every error answer raises a subclass of :class:`ApiError` (:mod:`bulkhead.errors`).
"""

from . import errors, types
from ._core import Call, ExecEvent, ExecResult, ProcessEvent, RetryPolicy
from .aio import AsyncClient, AsyncFiles, AsyncFilesystemFiles, AsyncProcess, AsyncSandbox
from .client import Client, Files, FilesystemFiles, Process, Sandbox
from .errors import ApiError
from .pty import AsyncTerminal, Terminal

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncFiles",
    "AsyncFilesystemFiles",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncTerminal",
    "Call",
    "Client",
    "ExecEvent",
    "ExecResult",
    "Files",
    "FilesystemFiles",
    "Process",
    "ProcessEvent",
    "RetryPolicy",
    "Sandbox",
    "Terminal",
    "errors",
    "types",
]
