"""``stateport.client``'s state scopes (async and sync) against a real server process: compare-and-set,
listing by prefix and batches through the raw state admin routes, with an operator token."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stateport.client import (
    AsyncStateportClient,
    BatchResult,
    RequestRejected,
    StateDelete,
    StateGet,
    StateportClient,
    StatePut,
    Unauthorized,
    Unsupported,
    VersionConflict,
)
from stateport.client.state import AsyncStateScope
from tests.fixtures.rest import Server, run_server
from tests.fixtures.s3 import CREDENTIALS
from tests.services import unique


def admin(server: Server) -> AsyncStateportClient:
    return AsyncStateportClient(server.base_url, server.api_token("state:admin"), timeout=10)


async def _cas_round(scope: AsyncStateScope) -> None:
    assert await scope.entry("cursor") is None
    assert await scope.get("cursor", default=-1) == -1
    created = await scope.put("cursor", {"at": 1}, if_version=0)
    assert (created.key, created.value, created.version, created.expires_at) == ("cursor", {"at": 1}, 1, None)
    with pytest.raises(VersionConflict) as raised:
        await scope.put("cursor", {"at": 9}, if_version=0)
    assert (raised.value.key, raised.value.expected, raised.value.index, raised.value.status) == (
        "cursor",
        0,
        None,
        412,
    )
    assert "already exists" in raised.value.message
    assert (await scope.put("cursor", {"at": 2}, if_version=1)).version == 2
    with pytest.raises(VersionConflict) as raised:
        await scope.put("cursor", {"at": 9}, if_version=1)
    assert raised.value.expected == 1 and "not at version 1" in raised.value.message
    entry = await scope.entry("cursor")
    assert entry is not None and (entry.value, entry.version) == ({"at": 2}, 2)
    for stale in (1, 0):
        with pytest.raises(VersionConflict):
            await scope.delete("cursor", if_version=stale)
    assert await scope.delete("cursor", if_version=2) is True
    assert await scope.delete("cursor") is False
    assert await scope.delete("cursor", if_version=0) is False  # must be absent, and is
    later = datetime.now(UTC) + timedelta(hours=1)
    expires_at = (await scope.put("ttl", 1, expires_at=later)).expires_at
    assert expires_at is not None and abs(expires_at - later) < timedelta(milliseconds=1)
    with pytest.raises(ValueError, match="None"):
        await scope.put("null", None)
    with pytest.raises(RequestRejected):
        await scope.put("naive", 1, expires_at=datetime(2999, 1, 1))  # noqa: DTZ001  # refused: not aware


async def _listing_round(scope: AsyncStateScope) -> None:
    for key in ("files/b", "files/a", "files/中", "other", "files"):
        await scope.put(key, key.upper())
    assert await scope.list("files/") == {"files/a": "FILES/A", "files/b": "FILES/B", "files/中": "FILES/中"}
    assert list(await scope.list("files/")) == ["files/a", "files/b", "files/中"]  # byte order
    assert await scope.keys("files") == ["files", "files/a", "files/b", "files/中"]
    assert "other" in await scope.keys()
    assert await scope.clear() == 5
    assert await scope.keys() == []


async def _batch_round(scope: AsyncStateScope) -> None:
    done = await scope.batch(
        [
            StatePut("cursor", 1, if_version=0),
            StatePut("checkpoint", "a"),
            StateGet("cursor"),
            StateGet("none"),
        ]
    )
    assert done == [
        BatchResult(op="put", key="cursor", version=1),
        BatchResult(op="put", key="checkpoint", version=1),
        BatchResult(op="get", key="cursor", value=1, version=1),
        BatchResult(op="get", key="none"),
    ]
    with pytest.raises(VersionConflict) as raised:
        await scope.batch([StatePut("checkpoint", "b"), StatePut("cursor", 2, if_version=5)])
    assert raised.value.index == 1 and raised.value.status == 412
    assert await scope.get("checkpoint") == "a" and await scope.get("cursor") == 1  # nothing written
    moved = await scope.batch([StatePut("cursor", 2, if_version=1), StateDelete("checkpoint", if_version=1)])
    assert moved == [
        BatchResult(op="put", key="cursor", version=2),
        BatchResult(op="delete", key="checkpoint", deleted=True),
    ]
    with pytest.raises(RequestRejected):
        await scope.batch([])


async def test_task_state_compare_and_set(server: Server) -> None:
    async with admin(server) as client:
        # No task instance needs to exist: the operator routes address any scope by name.
        scope = client.task_state(unique("dag"), "manual__2026/12/01", "t.1", map_index=3)
        await _cas_round(scope)
        await _cas_round(client.asset_state(f"team/{unique('orders')}"))


async def test_state_lists_by_prefix(server: Server) -> None:
    async with admin(server) as client:
        await _listing_round(client.task_state(unique("dag"), "r", "t"))
        await _listing_round(client.asset_state(unique("asset")))


async def test_state_batches(server: Server) -> None:
    async with admin(server) as client:
        await _batch_round(client.task_state(unique("dag"), "r", "t"))
        await _batch_round(client.asset_state(unique("asset")))


async def test_state_needs_the_state_admin_scope(server: Server) -> None:
    token = server.api_token("runs:read", "runs:write")
    async with AsyncStateportClient(server.base_url, token, timeout=10) as client:
        with pytest.raises(Unauthorized):
            await client.asset_state("orders").get("k")


def test_the_sync_client_state(server: Server) -> None:
    name = unique("asset")
    with StateportClient(server.base_url, server.api_token("state:admin"), timeout=10) as client:
        orders = client.asset_state(name)
        assert orders.put("watermark", "2026-12-01", if_version=0).version == 1
        with pytest.raises(VersionConflict) as raised:
            orders.put("watermark", "2026-12-02", if_version=0)
        assert raised.value.key == "watermark"
        entry = orders.entry("watermark")
        assert entry is not None and entry.version == 1
        assert orders.put("watermark", "2026-12-02", if_version=entry.version).version == 2
        assert orders.get("watermark") == "2026-12-02"
        assert orders.list() == {"watermark": "2026-12-02"} and orders.keys("w") == ["watermark"]
        results = orders.batch([StateGet("watermark", if_version=2), StateDelete("watermark")])
        assert results[0].value == "2026-12-02" and results[1].deleted
        assert orders.delete("watermark") is False and orders.clear() == 0
        task = client.task_state(unique("dag"), "r", "t")
        assert task.put("k", [1]).version == 1 and task.get("k") == [1]


async def test_a_batch_on_a_store_without_atomic_batches_is_unsupported(
    tmp_path: Path, s3_endpoint: str, s3_client: object
) -> None:
    bucket = f"stateport-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]  # boto3's client is untyped
    env = {
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_CONFIG_FILE": "/nonexistent/stateport-test-aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stateport-test-aws-credentials",
    }
    with run_server(
        tmp_path, env_extra=env, state_backend="s3", s3_bucket=bucket, s3_endpoint_url=s3_endpoint
    ) as s3_server:
        async with admin(s3_server) as client:
            orders = client.asset_state("orders")
            with pytest.raises(Unsupported) as raised:
                await orders.batch([StatePut("a", 1), StatePut("b", 2)])
            assert raised.value.status == 501 and isinstance(raised.value, RequestRejected)
            assert await orders.keys() == []  # nothing written
            # Compare-and-set on one key works there (S3's conditional writes).
            assert (await orders.put("a", 1, if_version=0)).version == 1
            with pytest.raises(VersionConflict):
                await orders.put("a", 2, if_version=0)
