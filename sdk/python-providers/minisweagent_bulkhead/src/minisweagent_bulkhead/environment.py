"""mini-swe-agent's environment interface over a Bulkhead sandbox, through the Python SDK.

The environment makes one sandbox when it is constructed and deletes it on :meth:`cleanup`
(also on ``with`` exit and when it is collected). Each ``execute`` runs the action's command
through the configured interpreter (``bash -lc`` by default) with Bulkhead's streamed exec,
standard output and error merged in the order they arrived, as mini-swe-agent's local and
docker environments merge them.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import httpx
from pydantic import BaseModel

import bulkhead
from bulkhead import errors
from minisweagent.exceptions import Submitted
from minisweagent.utils.serialize import recursive_merge

#: The first line of output by which an agent submits (mini-swe-agent's convention).
SUBMIT = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"


class BulkheadEnvironmentConfig(BaseModel):
    """What :class:`BulkheadEnvironment` takes as keyword arguments (a mini-swe-agent config's
    ``environment`` section). The token never goes here (trajectories record the config): it
    comes from ``BULKHEAD_TOKEN``.

    Attributes:
        url: the server (default ``BULKHEAD_URL``); namespace: where the sandbox is made
            (default ``BULKHEAD_NAMESPACE``).
        image: the image name or ``img_…`` (default the platform's).
        cpu_millis: thousandths of a core; memory_bytes, disk_bytes: bytes; ttl_seconds: how
            long the sandbox may live (the namespace's defaults when absent).
        cwd: the working directory of a step that names none (absolute).
        env: variables of every step; forward_env: names of this process's variables to pass
            on when set (``env`` wins).
        user: who steps run as (default the image's user).
        timeout: seconds a step may run (1 to 3600); everything it started is killed then.
        interpreter: what runs a step's command, the command appended as its last argument.
    """

    url: str | None = None
    namespace: str | None = None
    image: str | None = None
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    ttl_seconds: int | None = None
    cwd: str = "/"
    env: dict[str, str] = {}
    forward_env: list[str] = []
    user: str | None = None
    timeout: int = 30
    interpreter: list[str] = ["bash", "-lc"]


class BulkheadEnvironment:
    """A Bulkhead sandbox as mini-swe-agent's ``Environment``: ``execute``,
    ``get_template_vars``, ``serialize``, ``cleanup``. ``sandbox`` is the
    :class:`bulkhead.Sandbox` it runs in."""

    def __init__(self, *, config_class: type = BulkheadEnvironmentConfig, **kwargs: Any) -> None:
        """Makes the sandbox (see :class:`BulkheadEnvironmentConfig` for the arguments);
        raises the SDK's errors (``QuotaExceeded``, ``NotFound`` for an unknown image, ...)."""
        self.config = config_class(**kwargs)
        self.sandbox: bulkhead.Sandbox | None = None
        self._client = bulkhead.Client(url=self.config.url, namespace=self.config.namespace)
        options: dict[str, Any] = {
            k: v
            for k, v in self.config.model_dump(include={"image", "cpu_millis", "memory_bytes", "disk_bytes", "ttl_seconds"}).items()
            if v is not None
        }
        try:
            self.sandbox = self._client.sandboxes.create(**options)
            # The sandbox's own platform, for templates that name it ({{system}}, {{machine}}, ...).
            uname = self.sandbox.exec(["uname", "-s", "-n", "-r", "-m"], user="0")
            system, node, release, machine = (uname.stdout.split() + ["", "", "", ""])[:4]
            version = self.sandbox.exec(["uname", "-v"], user="0").stdout.strip()
        except BaseException:
            self.cleanup()
            raise
        self._platform = {"system": system, "node": node, "release": release, "version": version, "machine": machine}

    def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
        """Runs ``action["command"]`` in ``cwd`` (default the configured one):
        ``{"output", "returncode", "exception_info"}``, with ``returncode`` -1 and the reason in
        ``exception_info`` when it timed out or could not run. Raises ``Submitted`` when the
        output's first line is the submit marker and the command succeeded."""
        command = action.get("command", "")
        assert self.sandbox is not None, "the sandbox is gone"
        seconds = timeout or self.config.timeout
        env = {k: v for k in self.config.forward_env if (v := os.getenv(k)) is not None} | self.config.env
        options: dict[str, Any] = {"cwd": cwd or self.config.cwd, "timeout_seconds": seconds}
        if env:
            options["env"] = env
        if self.config.user:
            options["user"] = self.config.user
        pieces: list[str] = []
        try:
            for event in self.sandbox.exec_stream([*self.config.interpreter, command], **options):
                if event.type in ("stdout", "stderr"):
                    pieces.append(str(event.data))
                elif event.type == "exit":
                    if event.timed_out:
                        raise subprocess.TimeoutExpired(command, seconds, output="".join(pieces))
                    output = {"output": "".join(pieces), "returncode": event.exit_code, "exception_info": ""}
                    break
                else:
                    raise RuntimeError(event.message)
            else:
                raise RuntimeError("the output ended before the command's exit")
        except (subprocess.TimeoutExpired, RuntimeError, errors.ApiError, httpx.TransportError) as e:
            output = {
                "output": "".join(pieces),
                "returncode": -1,
                "exception_info": f"An error occurred while executing the command: {e}",
                "extra": {"exception_type": type(e).__name__, "exception": str(e)},
            }
        self._check_finished(output)
        return output

    def _check_finished(self, output: dict[str, Any]) -> None:
        """Raises ``Submitted`` with the rest of the output when its first line is the marker."""
        lines = output.get("output", "").lstrip().splitlines(keepends=True)
        if lines and lines[0].strip() == SUBMIT and output["returncode"] == 0:
            submission = "".join(lines[1:])
            raise Submitted(
                {"role": "exit", "content": submission, "extra": {"exit_status": "Submitted", "submission": submission}}
            )

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        """The config, the sandbox's platform (``system``, ``node``, ``release``, ``version``,
        ``machine``, as ``uname`` tells inside it) and ``kwargs``, merged."""
        return recursive_merge(self.config.model_dump(), self._platform, kwargs)

    def serialize(self) -> dict[str, Any]:
        """What a trajectory records of the environment: its config, type and sandbox."""
        return {
            "info": {
                "config": {
                    "environment": self.config.model_dump(mode="json"),
                    "environment_type": f"{self.__class__.__module__}.{self.__class__.__name__}",
                    "sandbox": self.sandbox.id if self.sandbox else None,
                }
            }
        }

    def cleanup(self) -> None:
        """Deletes the sandbox (once; one already gone is fine) and closes the client."""
        sandbox, self.sandbox = self.sandbox, None
        try:
            if sandbox is not None:
                sandbox.delete()
        except errors.NotFound:
            pass
        finally:
            self._client.close()

    def __enter__(self) -> BulkheadEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __del__(self) -> None:
        if getattr(self, "sandbox", None) is not None:
            self.cleanup()
