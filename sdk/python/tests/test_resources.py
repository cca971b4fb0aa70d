"""Namespaces and keys (admin), filesystems and archives, images, usage and audit, through the
sync and async clients."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import uuid

import pytest

import bulkhead
from bulkhead import errors


def test_the_admin_manages_namespaces_and_keys(admin: bulkhead.Client, quotas: bulkhead.types.Quotas) -> None:
    name = "py-ns-" + uuid.uuid4().hex[:8]
    ns = admin.namespaces.create(name, quotas, placement={"mode": "shared"})
    try:
        assert (ns["name"], ns["quotas"]["max_sandboxes"], ns["placement"]["mode"]) == (name, 2, "shared")
        assert admin.namespaces.update(name, placement={"mode": "shared"})["placement"] == {"mode": "shared"}
        assert name in [n["name"] for n in admin.namespaces.list()]
        with pytest.raises(errors.Conflict):
            admin.namespaces.create(name, quotas)
        updated = admin.namespaces.update(name, quotas={"max_sandboxes": 3})
        assert updated["quotas"]["max_sandboxes"] == 3 and admin.namespaces.get(name)["quotas"]["max_sandboxes"] == 3

        key = admin.keys.create("robot", "developer", namespace=name)
        assert key["id"].startswith("key_") and key["role"] == "developer" and key["token"]
        assert [k["id"] for k in admin.keys.list(namespace=name)] == [key["id"]]
        assert "token" not in admin.keys.get(key["id"], namespace=name)
        with bulkhead.Client(token=key["token"], namespace=name) as robot:
            assert robot.sandboxes.list() == []
            # A developer is no admin of the platform.
            with pytest.raises(errors.ApiError) as e:
                robot.namespaces.create("py-not-mine", quotas)
            assert isinstance(e.value, (errors.Forbidden, errors.NotFound)), e.value
            admin.keys.delete(key["id"], namespace=name)
            with pytest.raises(errors.Unauthenticated):
                robot.sandboxes.list()
    finally:
        admin.namespaces.delete(name)
    with pytest.raises(errors.NotFound):
        admin.namespaces.get(name)


def test_filesystems_files_archives_and_a_sandbox_that_mounts_one(client: bulkhead.Client) -> None:
    fs = client.filesystems.create("py-fs-" + uuid.uuid4().hex[:8], 64 << 20)
    copy = client.filesystems.create("py-copy-" + uuid.uuid4().hex[:8], 64 << 20)
    try:
        assert fs["size_bytes"] == 64 << 20 and fs["id"] in [f["id"] for f in client.filesystems.list()]
        files = client.filesystems.files(fs["id"])
        files.write("src/main.py", "print('hi')\n")
        files.write("bin/tool", b"#!/bin/sh\necho tool\n", mode="0755")
        assert files.read_text("src/main.py") == "print('hi')\n"
        assert sorted(e["name"] for e in files.list("")) == ["bin", "src"]
        files.write("junk", b"x")
        files.delete("junk")
        with pytest.raises(errors.NotFound):
            files.read("junk")

        tar = b"".join(client.filesystems.export_archive(fs["id"]))
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            members = {m.name.lstrip("./"): m for m in t.getmembers()}
        assert members["bin/tool"].mode & 0o777 == 0o755 and members["src/main.py"].size == len("print('hi')\n")
        result = client.filesystems.import_archive(copy["id"], io.BytesIO(tar))
        assert result["bytes"] == len("print('hi')\n") + len("#!/bin/sh\necho tool\n"), result
        assert client.filesystems.files(copy["id"]).read("bin/tool") == b"#!/bin/sh\necho tool\n"

        with client.sandboxes.create(filesystem={"id": fs["id"], "mode": "ro"}, ttl_seconds=600) as sandbox:
            assert sandbox.exec(["/workspace/bin/tool"]).stdout == "tool\n"
            assert sandbox.files.read_text("/workspace/src/main.py") == "print('hi')\n"
            assert sandbox.exec("echo x > /workspace/new").exit_code != 0, "mounted read-only"
            assert client.filesystems.get(fs["id"])["mounted_by"] == [sandbox.id]
            with pytest.raises(errors.Conflict):
                client.filesystems.delete(fs["id"])
    finally:
        client.filesystems.delete(fs["id"], force=True)
        client.filesystems.delete(copy["id"], force=True)


def test_images_usage_and_audit(client: bulkhead.Client, admin: bulkhead.Client, sandbox: bulkhead.Sandbox) -> None:
    names = [i["name"] for i in client.images.list()]
    assert "default" in names, names
    image = client.images.get("default")
    assert image["id"].startswith("img_") and image["digest"].startswith("sha256:")
    assert sandbox.data["image"]["id"] == image["id"]
    with pytest.raises(errors.NotFound):
        client.images.get("no-such-image")

    sandbox.exec("true")
    usage = client.usage.get(granularity="minute")
    assert usage["totals"]["exec_count"] >= 1 and usage["totals"]["sandbox_seconds"] >= 0
    assert isinstance(usage["buckets"], list)

    ns = os.environ["BULKHEAD_NAMESPACE"]
    created = list(admin.audit.list(namespace=ns, action="sandbox.create"))
    assert created and all(r["action"] == "sandbox.create" for r in created)
    assert any(sandbox.id in r["resource"] or sandbox.id in r["detail"] for r in created), created[-3:]
    assert admin.audit.verify(namespace=ns)["ok"] is True


def test_the_async_client_covers_the_same_resources(admin: bulkhead.Client) -> None:
    ns = os.environ["BULKHEAD_NAMESPACE"]

    async def run() -> None:
        async with bulkhead.AsyncClient() as client:
            fs = await client.filesystems.create("py-afs-" + uuid.uuid4().hex[:8], 32 << 20)
            files = client.filesystems.files(fs["id"])
            await files.write("a/b.txt", b"async")
            assert await files.read("a/b.txt") == b"async"
            tar = b"".join([c async for c in client.filesystems.export_archive(fs["id"])])
            assert b"async" in tar
            await client.filesystems.delete(fs["id"])
            assert "default" in [i["name"] for i in await client.images.list()]
            assert "totals" in await client.usage.get()
        async with bulkhead.AsyncClient(token=os.environ["BULKHEAD_ADMIN_TOKEN"], namespace=ns) as a:
            assert (await a.audit.verify())["ok"] is True
            assert [r async for r in a.audit.list(action="filesystem.create")]

    asyncio.run(run())
