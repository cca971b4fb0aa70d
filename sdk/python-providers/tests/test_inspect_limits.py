"""What inspect-ai's conformance checks leave out, against a real sandbox: the exec output
limit, a command run as a background process (a stdin larger than an exec body, a timeout longer
than an exec allows) and its timeout, and a sandbox that is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from inspect_ai.util import OutputLimitExceededError, SandboxUnavailableError
from inspect_ai.util._sandbox.limits import override_max_exec_output_size
from inspect_bulkhead import BulkheadSandboxConfig, BulkheadSandboxEnvironment
from inspect_bulkhead.sandbox import MAX_EXEC_SECONDS, MAX_EXEC_STDIN_BYTES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def env(anyio_backend: str) -> AsyncIterator[BulkheadSandboxEnvironment]:
    config = BulkheadSandboxConfig()
    envs = await BulkheadSandboxEnvironment.sample_init("limits", config, {})
    yield envs["default"].as_type(BulkheadSandboxEnvironment)
    await BulkheadSandboxEnvironment.sample_cleanup("limits", config, envs, False)


async def test_output_past_the_limit_raises_with_its_tail(env: BulkheadSandboxEnvironment) -> None:
    with override_max_exec_output_size(1024):
        with pytest.raises(OutputLimitExceededError) as e:
            await env.exec(["sh", "-c", "yes a | head -c 3000; echo END"])
        assert e.value.limit_str == "1 KiB", e.value.limit_str
        # The output up to the limit, the last of it.
        assert e.value.truncated_output is not None and len(e.value.truncated_output) == 1024
        assert set(e.value.truncated_output) <= {"a", "\n", "E", "N", "D"}, e.value.truncated_output
        # Within the limit the whole output comes back.
        r = await env.exec(["sh", "-c", "yes a | head -c 1000"])
        assert r.stdout == "a\n" * 500


async def test_a_large_stdin_and_a_long_timeout_run_as_a_process(env: BulkheadSandboxEnvironment) -> None:
    big = b"\x00\xff" * (MAX_EXEC_STDIN_BYTES // 2 + 1)
    r = await env.exec(["sh", "-c", "wc -c; echo to-stderr >&2; exit 3"], input=big, cwd="/tmp", env={"A": "b"})
    assert (r.returncode, r.stdout.strip(), r.stderr) == (3, str(len(big)), "to-stderr\n")
    r = await env.exec(["sh", "-c", 'echo "$A in $PWD as $(id -un)"'], timeout=MAX_EXEC_SECONDS + 1, env={"A": "b"}, user="nobody")
    assert r.stdout == "b in /work as nobody\n", r
    # The process's timeout is Bulkhead's, which kills it.
    with pytest.raises(TimeoutError):
        await env.exec(["sh", "-c", "cat > /dev/null; sleep 30"], input=big, timeout=2)


async def test_a_deleted_sandbox_is_unavailable(env: BulkheadSandboxEnvironment) -> None:
    await env.sandbox.delete()
    with pytest.raises(SandboxUnavailableError):
        await env.exec(["true"])

