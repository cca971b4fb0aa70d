"""The providers' tests run against a real Bulkhead server, named by the environment:
``BULKHEAD_URL``, ``BULKHEAD_NAMESPACE`` and ``BULKHEAD_TOKEN`` (a developer key of it).
``crates/cli/tests/sdk_providers.rs`` starts the server and sets them. Without them the run
stops with an error: nothing is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import bulkhead

NEEDED = ("BULKHEAD_URL", "BULKHEAD_NAMESPACE", "BULKHEAD_TOKEN")


def pytest_configure(config: pytest.Config) -> None:
    missing = [v for v in NEEDED if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"these tests need a real server: {', '.join(missing)} unset (crates/cli/tests/sdk_providers.rs sets them)"
        )


@pytest.fixture
def client() -> Iterator[bulkhead.Client]:
    """A developer of the test namespace, configured from the environment alone."""
    with bulkhead.Client() as c:
        yield c


def assert_gone(client: bulkhead.Client, sandbox_id: str) -> None:
    """The sandbox no longer runs: deleted, or ended and listed as such."""
    try:
        status = client.sandboxes.get(sandbox_id).status
    except bulkhead.errors.NotFound:
        return
    assert status != "running", f"{sandbox_id} still runs"
