"""Error answers raise the class of their code with the server's request id; only idempotent
calls are retried, a create reusing its ``Idempotency-Key``."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable

import httpx
import pytest

import bulkhead
from bulkhead import errors


class LoseAnswers(httpx.BaseTransport):
    """A real connection to the server that loses the answers of the requests ``lose`` picks:
    each such request reaches the server and is served, then the client sees a dropped
    connection instead of the answer. Records every request and each lost answer's body."""

    def __init__(self, lose: Callable[[httpx.Request, int], bool]) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose = lose
        self.requests: list[httpx.Request] = []
        self.lost: list[bytes] = []
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        if self.lose(request, len(self.requests)):
            response.read()
            self.lost.append(response.content)
            response.close()
            raise httpx.ReadError("the connection dropped before the answer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_not_found_invalid_and_unauthenticated_raise_their_classes(client: bulkhead.Client) -> None:
    with pytest.raises(errors.NotFound) as nf:
        client.sandboxes.get("sbx_00000000000000000000000000000000")
    e = nf.value
    assert isinstance(e, bulkhead.ApiError)
    assert (e.status, e.code) == (404, "not_found") and e.request_id.startswith("req_"), e

    with pytest.raises(errors.InvalidRequest) as bad:
        client.sandboxes.create(ttl_seconds=-1)
    assert (bad.value.status, bad.value.code) == (400, "invalid_request") and bad.value.request_id.startswith("req_")
    assert "ttl_seconds" in bad.value.message, bad.value.message
    # Another namespace is not found, whatever it holds.
    with pytest.raises(errors.NotFound):
        client.sandboxes.list(namespace="ghost-" + uuid.uuid4().hex[:8])

    with bulkhead.Client(token="bhk_not_a_key") as stranger:
        with pytest.raises(errors.Unauthenticated) as un:
            stranger.sandboxes.list()
    assert (un.value.status, un.value.code) == (401, "unauthenticated")


def test_a_viewer_is_forbidden_to_change_anything_and_the_audit_log_has_its_request(
    client: bulkhead.Client, viewer: bulkhead.Client, admin: bulkhead.Client, sandbox: bulkhead.Sandbox
) -> None:
    # A viewer reads...
    assert sandbox.id in [s.id for s in viewer.sandboxes.list()]
    assert viewer.sandboxes.get(sandbox.id).status == "running"
    # ...and is refused every change, with the class of its code.
    with pytest.raises(errors.Forbidden) as f:
        viewer.sandboxes.create()
    assert (f.value.status, f.value.code) == (403, "forbidden") and f.value.request_id.startswith("req_")
    with pytest.raises(errors.Forbidden):
        viewer.sandboxes.get(sandbox.id).exec(["true"])
    with pytest.raises(errors.Forbidden):
        viewer.sandboxes.delete(sandbox.id)
    # The refused request is in the namespace's audit log under its request id, and the chain
    # still verifies.
    ns = os.environ["BULKHEAD_NAMESPACE"]
    records = [r for r in admin.audit.list(namespace=ns) if r["request_id"] == f.value.request_id]
    assert [(r["action"], r["decision"], r["status"]) for r in records] == [("sandbox.create", "deny", 403)], records
    assert admin.audit.verify(namespace=ns)["ok"] is True
    assert sandbox.exec(["true"]).exit_code == 0


def test_a_create_whose_answer_is_lost_is_retried_with_the_same_idempotency_key(client: bulkhead.Client) -> None:
    before = {s.id for s in client.sandboxes.list()}
    lose_first_create = LoseAnswers(lambda r, n: r.method == "POST" and n == 1)
    with bulkhead.Client(transport=lose_first_create) as flaky:
        with flaky.sandboxes.create(ttl_seconds=600) as sandbox:
            posts = [r for r in lose_first_create.requests if r.method == "POST"]
            assert len(posts) == 2, posts
            keys = {r.headers["idempotency-key"] for r in posts}
            assert len(keys) == 1 and keys != {""}, keys
            # The retry answered the sandbox the lost answer named: one sandbox, not two.
            assert json.loads(lose_first_create.lost[0])["id"] == sandbox.id
            made = {s.id for s in client.sandboxes.list()} - before
            assert made == {sandbox.id}, made
            assert sandbox.exec("echo once").stdout == "once\n"
    # A key given by the caller makes two calls one create; the same key with another body is
    # a conflict.
    key = uuid.uuid4().hex
    with client.sandboxes.create(ttl_seconds=600, idempotency_key=key) as first:
        again = client.sandboxes.create(ttl_seconds=600, idempotency_key=key)
        assert again.id == first.id
        with pytest.raises(errors.Conflict):
            client.sandboxes.create(ttl_seconds=601, idempotency_key=key)


def test_a_lost_get_is_retried_and_a_lost_command_is_not(sandbox: bulkhead.Sandbox) -> None:
    lose_first_get = LoseAnswers(lambda r, n: r.method == "GET" and n == 1)
    with bulkhead.Client(transport=lose_first_get) as flaky:
        assert flaky.sandboxes.get(sandbox.id).status == "running"
    assert [r.method for r in lose_first_get.requests] == ["GET", "GET"]

    lose_exec = LoseAnswers(lambda r, n: r.url.path.endswith("/exec"))
    with bulkhead.Client(transport=lose_exec) as flaky:
        with pytest.raises(httpx.ReadError):
            flaky.sandboxes.get(sandbox.id).exec("echo ran >> /tmp/runs")
    # Tried once: the command ran once.
    assert [r.url.path.rsplit("/", 1)[-1] for r in lose_exec.requests if r.method == "POST"] == ["exec"]
    assert sandbox.files.read_text("/tmp/runs") == "ran\n"


def test_a_quota_is_not_retried_and_a_rate_limit_is(admin: bulkhead.Client, quotas: bulkhead.types.Quotas) -> None:
    name = "py-rate-" + uuid.uuid4().hex[:8]
    admin.namespaces.create(name, {**quotas, "api_requests_per_second": 1})
    try:
        token = admin.keys.create("dev", "developer", namespace=name)["token"]
        counting = LoseAnswers(lambda r, n: False)
        once = bulkhead.RetryPolicy(attempts=1)
        with bulkhead.Client(token=token, namespace=name, retry=once, transport=counting) as dev:
            with pytest.raises(errors.QuotaExceeded) as q:
                dev.sandboxes.create(memory_bytes=1 << 30)
            assert (q.value.status, q.value.code) == (429, "quota_exceeded")
            # A burst past one request a second: the server asks to wait.
            with pytest.raises(errors.RateLimited) as limited:
                for _ in range(50):
                    dev.sandboxes.list()
            assert limited.value.code == "rate_limited" and (limited.value.retry_after or 0) >= 1
        assert sum(1 for r in counting.requests if r.method == "POST") == 1, "a quota refusal is not retried"
        # With retries, a burst of ten at one a second waits as told, and every call succeeds.
        retried = LoseAnswers(lambda r, n: False)
        with bulkhead.Client(token=token, namespace=name, transport=retried) as dev:
            for _ in range(10):
                assert dev.sandboxes.list() == []
        assert retried.statuses.count(200) == 10 and 429 in retried.statuses, retried.statuses
        assert set(retried.statuses) == {200, 429}, retried.statuses
    finally:
        admin.namespaces.delete(name)


def test_the_default_url_is_the_one_bulkhead_serve_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKHEAD_URL")
    with bulkhead.Client() as c:
        assert c.config.url == "http://127.0.0.1:7070"
