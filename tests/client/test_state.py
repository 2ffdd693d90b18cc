"""``stateport.client``'s state scopes (async and sync) against a real server process: compare-and-set,
listing by prefix and batches through the raw state admin routes, with an operator token."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stateport.client import (
    AsyncStateportClient,
    BatchResult,
    RequestRejected,
    StateChange,
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
from tests.relay import Relay
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


# --- watch: the raw routes' streams, on both databases -----------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def watched(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on SQLite (the module's) and one on PostgreSQL, with a short heartbeat."""
    url = {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("postgres_url")}
    with run_server(tmp_path_factory.mktemp("watch"), watch_heartbeat_s="0.5", **url) as running:
        yield running


async def _next(changes: AsyncGenerator[StateChange, None]) -> StateChange:
    return await asyncio.wait_for(anext(changes), 10)


async def test_watch_sends_each_change_of_a_key(watched: Server) -> None:
    async with admin(watched) as client:
        for scope in (client.task_state(unique("dag"), "r/1", "t", 2), client.asset_state(unique("a/b"))):
            changes = scope.watch("files/cursor")
            first = await _next(changes)  # no version known: the state now, first
            assert (first.key, first.version, first.deleted, first.reason) == (
                "files/cursor",
                0,
                True,
                "absent",
            )
            put = await scope.put("files/cursor", {"at": 1})
            change = await _next(changes)
            assert (change.value, change.version, change.deleted) == ({"at": 1}, put.version, False)
            assert change.updated_at == put.updated_at and change.expires_at is None
            await scope.put("files/cursor", {"at": 2}, expires_at=datetime.now(UTC) + timedelta(seconds=1))
            assert (await _next(changes)).value == {"at": 2}
            expired = await _next(changes)
            assert (expired.deleted, expired.reason) == (True, "expired")
            await scope.put("files/cursor", 3)
            assert (await _next(changes)).value == 3
            await scope.clear()
            assert (await _next(changes)).reason == "deleted"
            await changes.aclose()


async def test_watch_from_a_known_version_waits_for_another(watched: Server) -> None:
    async with admin(watched) as client:
        scope = client.asset_state(unique("orders"))
        known = await scope.put("wm", "a")
        changes = scope.watch("wm", version=known.version)
        pending = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(1.2)  # two heartbeats pass, and no change
        assert not pending.done()
        await scope.put("wm", "b")
        change = await asyncio.wait_for(pending, 10)
        assert (change.value, change.version) == ("b", known.version + 1)
        await changes.aclose()
        with pytest.raises(ValueError, match="version"):
            await anext(scope.watch("wm", version=-1))


async def test_watch_resumes_after_a_dropped_connection(watched: Server) -> None:
    host, port = watched.base_url.removeprefix("http://").split(":")
    relay = await Relay(host, int(port)).start()
    try:
        through = AsyncStateportClient(f"http://127.0.0.1:{relay.port}", watched.api_token("state:admin"))
        async with through, admin(watched) as direct:
            name = unique("orders")
            changes = through.asset_state(name).watch("wm", version=0)
            pending = asyncio.ensure_future(anext(changes))
            await asyncio.sleep(0.5)
            await direct.asset_state(name).put("wm", 1)
            assert (await asyncio.wait_for(pending, 10)).version == 1
            assert relay.connections == 1
            pending = asyncio.ensure_future(anext(changes))
            relay.cut()  # the stream drops; the watch opens it again with Last-Event-ID: 1
            for _ in range(100):
                if relay.connections == 2:
                    break
                await asyncio.sleep(0.05)
            assert relay.connections == 2
            await direct.asset_state(name).put("wm", 2)
            change = await asyncio.wait_for(pending, 10)  # not version 1 again: the stream resumed from it
            assert (change.value, change.version) == (2, 2)
            await direct.asset_state(name).put("wm", 3)
            assert (await _next(changes)).version == 3
            assert relay.connections == 2
            await changes.aclose()
    finally:
        await relay.close()


async def test_a_watch_outlives_its_first_token_by_renewing_it(watched: Server) -> None:
    # A 20 s token: its stream renews it halfway through its life, 10 s before it expires (a token shorter
    # than the 30 s window in which answers renew it is in that window from the start), and sends the new
    # one, which the client takes for every request from then on; the watch goes on. (A second first: a
    # renewal must extend the token.)
    token = watched.tokens.mint_api_token("tests", frozenset({"state:admin"}), ttl_s=20)
    await asyncio.sleep(1.1)
    name = unique("orders")
    async with AsyncStateportClient(watched.base_url, token, timeout=10) as client, admin(watched) as other:
        changes = client.asset_state(name).watch("wm", version=0)
        pending = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0.5)
        opened_with = client._http.headers["Authorization"]  # the first answer renewed it already
        await asyncio.sleep(11)  # past the stream's renewal, about 10 s after it opened
        await other.asset_state(name).put("wm", 1)
        assert (await asyncio.wait_for(pending, 10)).version == 1
        # The stream renewed the token once more, and the client sends the new one.
        assert client._http.headers["Authorization"] not in (opened_with, f"Bearer {token}")
        await changes.aclose()


async def test_watch_prefix_sends_changes_under_it(watched: Server) -> None:
    async with admin(watched) as client:
        scope = client.task_state(unique("dag"), "r", "t")
        changes = scope.watch_prefix("files/")
        pending = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0.5)
        await scope.put("other", 1)
        await scope.put("files/a", 1)
        change = await asyncio.wait_for(pending, 10)
        assert (change.key, change.value) == ("files/a", 1)
        await scope.delete("files/a")
        assert (await _next(changes)).reason == "deleted"
        await changes.aclose()


async def test_watch_needs_the_state_admin_scope(watched: Server) -> None:
    token = watched.api_token("runs:read")
    async with AsyncStateportClient(watched.base_url, token, timeout=10) as client:
        with pytest.raises(Unauthorized):
            await anext(client.asset_state("orders").watch("k"))


def test_the_sync_client_watches(watched: Server) -> None:
    name = unique("asset")
    with StateportClient(watched.base_url, watched.api_token("state:admin"), timeout=10) as client:
        orders = client.asset_state(name)
        orders.put("wm", "a")
        changes = orders.watch("wm")
        assert next(changes).value == "a"
        writer = threading.Timer(0.5, lambda: orders.put("wm", "b"))
        writer.start()
        try:
            assert next(changes).value == "b"
        finally:
            writer.join()
        changes.close()
        prefixed = orders.watch_prefix()
        deleter = threading.Timer(0.5, lambda: orders.delete("wm"))
        deleter.start()
        try:
            assert next(prefixed).deleted
        finally:
            # The watch can hear the delete before the DELETE's answer arrives: closing the client under
            # it failed the deleting thread (Bad file descriptor, seen in a full run).
            deleter.join()
        prefixed.close()


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), float("-inf")])
async def test_a_value_holding_nan_or_an_infinity_is_refused_not_stored_as_null(
    server: Server, odd: float
) -> None:
    # An outsider's find: msgspec writes them as null, and {"a": nan, "b": 1} was stored as {"a": null, ...}.
    async with admin(server) as client:
        scope = client.asset_state(unique("asset"))
        with pytest.raises(ValueError, match="NaN or an infinity"):
            await scope.put("k", {"a": odd, "b": 1})
        with pytest.raises(ValueError, match="NaN or an infinity"):
            await scope.batch([StatePut("k", [odd])])
        assert await scope.entry("k") is None
        await scope.put("k", {"a": None, "b": 1})  # a null of its own is a value
        assert await scope.get("k") == {"a": None, "b": 1}
