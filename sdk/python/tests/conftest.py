"""The SDK's tests run against a real Bulkhead server, named by the environment:

- ``BULKHEAD_URL``, ``BULKHEAD_NAMESPACE``, and ``BULKHEAD_TOKEN`` (a developer key of it);
- ``BULKHEAD_ADMIN_TOKEN`` (the platform admin) and ``BULKHEAD_VIEWER_TOKEN`` (a viewer key);
- ``BULKHEAD_TEST_AGENT_BUNDLE``: a tar of an ACP test agent that answers ``echo: <text>`` and
  ``chunks N`` with N message chunks.

``crates/cli/tests/sdk_python.rs`` starts the server and sets these. Without them the run stops
with an error: nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import bulkhead

NEEDED = (
    "BULKHEAD_URL",
    "BULKHEAD_NAMESPACE",
    "BULKHEAD_TOKEN",
    "BULKHEAD_ADMIN_TOKEN",
    "BULKHEAD_VIEWER_TOKEN",
    "BULKHEAD_TEST_AGENT_BUNDLE",
)


def pytest_configure(config: pytest.Config) -> None:
    missing = [v for v in NEEDED if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"these tests need a real server: {', '.join(missing)} unset (crates/cli/tests/sdk_python.rs sets them)"
        )


@pytest.fixture
def client() -> Iterator[bulkhead.Client]:
    """A developer of the test namespace, configured from the environment alone."""
    with bulkhead.Client() as c:
        yield c


@pytest.fixture
def admin() -> Iterator[bulkhead.Client]:
    """The platform admin."""
    with bulkhead.Client(token=os.environ["BULKHEAD_ADMIN_TOKEN"]) as c:
        yield c


@pytest.fixture
def viewer() -> Iterator[bulkhead.Client]:
    """A viewer of the test namespace."""
    with bulkhead.Client(token=os.environ["BULKHEAD_VIEWER_TOKEN"]) as c:
        yield c


@pytest.fixture
def quotas() -> bulkhead.types.Quotas:
    """The quotas of a small namespace of a test's own: a core, 512 MiB, two sandboxes."""
    return {
        "cpu_millis": 1000,
        "memory_bytes": 512 << 20,
        "disk_bytes": 256 << 20,
        "max_sandboxes": 2,
        "pids_per_sandbox": 128,
        "max_sandbox_ttl_seconds": 600,
    }


@pytest.fixture
def sandbox(client: bulkhead.Client) -> Iterator[bulkhead.Sandbox]:
    """A running sandbox of the default image, deleted after the test."""
    with client.sandboxes.create(ttl_seconds=900) as s:
        yield s
