"""Worker-direct state, end to end: a worker's accessor writing straight to Redis or S3, and a Stateport
server process configured with the same backend, see the same data both ways.

Each server is a real ``stateport serve`` process; the task instance is a real one, created by registering
a DAG and triggering a run through the public API, and the server is asked with that instance's token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from stateport.adapters.rest.state import RestStateStore
from stateport.adapters.rest.transport import MAX_CONNECTIONS, make_client
from stateport.domain.errors import Forbidden, Invalid, NotFound, VersionMismatch
from stateport.domain.models import AssetScope
from stateport.worker import (  # as a worker imports them (docs/adapters.md, worker-direct configuration)
    BatchMismatch,
    Change,
    Delete,
    Entry,
    Get,
    Put,
    TaskScope,
    Unsupported,
    VersionConflict,
)
from stateport.worker.state import (
    NEVER_EXPIRE,
    AsyncStateAccessor,
    AsyncTaskStateAccessor,
    TaskStateAccessor,
)
from tests.fixtures.redis import redis_available
from tests.fixtures.rest import Server, run_server
from tests.fixtures.s3 import CREDENTIALS
from tests.services import REDIS_URL, redis_key_prefix, require, unique

REF = b'{"__airflow_state_ref__": "s3://bucket/offload/dag/run/task/-1/big"}'


@dataclass(frozen=True)
class TaskInstanceRef:
    """A real task instance on a server: its id, its state scope, its token and its task's asset."""

    id: uuid.UUID
    scope: TaskScope
    token: str
    asset: str

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def create_task_instance(server: Server) -> TaskInstanceRef:
    """Register a one-task DAG with an asset outlet, trigger a run, and return its task instance."""
    dag_id, asset = unique("worker_direct"), f"team/{unique('orders')}"
    headers = {"authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as api:
        spec = {"tasks": [{"task_id": "extract", "outlets": [asset]}]}
        api.put(f"/api/v2/dags/{dag_id}", json=spec).raise_for_status()
        run = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        run.raise_for_status()
        run_id = run.json()["dag_run_id"]
        listed = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        listed.raise_for_status()
    (ti,) = listed.json()["task_instances"]
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id=ti["task_id"], map_index=ti["map_index"])
    return TaskInstanceRef(id=uuid.UUID(ti["id"]), scope=scope, token=server.ti_token(ti["id"]), asset=asset)


def quoted(segment: str) -> str:
    return quote(segment, safe="")


# --- a server per direct backend ------------------------------------------------------------------------


@dataclass(frozen=True)
class Direct:
    """A server on a backend, and the options a worker passes to reach the same backend directly."""

    server: Server
    backend: str
    options: dict[str, Any]


def _drop_redis_prefix(prefix: str) -> None:
    async def drop() -> None:
        client = Redis.from_url(REDIS_URL, decode_responses=False)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(drop())


@pytest.fixture(scope="module", params=["redis", "s3"])
def direct(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    data_dir = tmp_path_factory.mktemp(f"direct-{request.param}")
    if request.param == "redis":
        require(redis_available(), f"Redis at {REDIS_URL}")
        prefix = redis_key_prefix()
        try:
            with run_server(
                data_dir, state_backend="redis", redis_url=REDIS_URL, redis_prefix=prefix
            ) as server:
                yield Direct(server, "redis", {"redis_url": REDIS_URL, "redis_prefix": prefix})
        finally:
            _drop_redis_prefix(prefix)
        return
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket = f"stateport-{uuid.uuid4().hex[:20]}"
    request.getfixturevalue("s3_client").create_bucket(Bucket=bucket)
    env = {
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_CONFIG_FILE": "/nonexistent/stateport-test-aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stateport-test-aws-credentials",
    }
    with run_server(
        data_dir,
        env_extra=env,
        state_backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        s3_prefix="sp",
    ) as server:
        yield Direct(server, "s3", {"s3_bucket": bucket, "s3_endpoint_url": endpoint, "s3_prefix": "sp"})


@pytest.fixture
def worker_env(direct: Direct, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own credentials for the S3 backend (boto3 reads them from the environment)."""
    if direct.backend == "s3":
        request_env = {
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_CONFIG_FILE": "/nonexistent/stateport-test-aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stateport-test-aws-credentials",
        }
        for name, value in request_env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)


async def direct_accessor(direct: Direct, ti: TaskInstanceRef) -> AsyncTaskStateAccessor:
    return await AsyncTaskStateAccessor.for_task_instance(
        ti.id,
        ti.token,
        direct.server.base_url,
        scope=ti.scope,
        backend=direct.backend,  # type: ignore[arg-type]  # "redis" | "s3", from the fixture's params
        assets={ti.asset},
        **direct.options,
    )


# --- a prefix or database that is not the server's ---------------------------------------------------


async def test_a_direct_accessor_on_another_prefix_than_its_server_says_so_once(
    direct: Direct, worker_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    # An outsider's find: a worker going direct with a wrong prefix (or database, or bucket) wrote where no
    # server reads, and nothing said so. Each server marks the store it opens; a worker not finding the
    # mark warns, once per process and store, and goes on (its tasks must not fail for a Redis restarted
    # without persistence, which lost the mark).
    ti = create_task_instance(direct.server)
    caplog.set_level(logging.WARNING, logger="stateport.worker")
    async with await direct_accessor(direct, ti) as state:
        await state.set("k", 1)
    assert not [r for r in caplog.records if "no Stateport server" in r.getMessage()]

    wrong_prefix = redis_key_prefix() if direct.backend == "redis" else "not-sp"
    wrong = {**direct.options, f"{direct.backend}_prefix": wrong_prefix}
    for _ in range(2):  # the second accessor of the same store is not checked again
        async with await AsyncTaskStateAccessor.for_task_instance(
            ti.id,
            ti.token,
            direct.server.base_url,
            scope=ti.scope,
            backend=direct.backend,  # type: ignore[arg-type]  # "redis" | "s3"
            **wrong,
        ) as state:
            await state.set("k", 2)  # it goes on: a warning, not a refusal
    warned = [r.getMessage() for r in caplog.records if "no Stateport server" in r.getMessage()]
    assert len(warned) == 1, warned
    assert repr(wrong_prefix) in warned[0]
    setting = "STATEPORT_REDIS_PREFIX" if direct.backend == "redis" else "STATEPORT_S3_PREFIX"
    assert setting in warned[0]
    if direct.backend == "redis":
        client = Redis.from_url(REDIS_URL)
        try:
            await client.delete(*[key async for key in client.scan_iter(match=f"{wrong_prefix}:*")])
        finally:
            await client.aclose()


# --- interop, both ways ---------------------------------------------------------------------------------


async def test_a_value_written_directly_is_read_through_the_api(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    async with await direct_accessor(direct, ti) as state:
        await state.set("ref", msgspec.json.decode(REF))
        await state.set("job/id", {"n": 1, "tags": ["a", "é"]}, retention=NEVER_EXPIRE)
        await state.asset(ti.asset).set("watermark", "2024-01-01")
    async with httpx.AsyncClient(base_url=direct.server.base_url, headers=ti.auth()) as api:
        ref = await api.get(f"/execution/state/ti/{ti.id}/ref")
        nested = await api.get(f"/execution/state/ti/{ti.id}/{quoted('job/id')}")
        asset = await api.get(f"/execution/state/asset/{quoted(ti.asset)}/watermark")
    assert ref.status_code == 200 and msgspec.json.decode(ref.content) == {"value": msgspec.json.decode(REF)}
    assert nested.json() == {"value": {"n": 1, "tags": ["a", "é"]}}
    assert asset.json() == {"value": "2024-01-01"}


async def test_a_value_written_through_the_api_is_read_directly(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    async with httpx.AsyncClient(base_url=direct.server.base_url, headers=ti.auth()) as api:
        put = await api.put(
            f"/execution/state/ti/{ti.id}/ref",
            content=b'{"value": ' + REF + b', "expires_at": null}',
            headers={"content-type": "application/json"},
        )
        assert put.status_code == 204
        put = await api.put(
            f"/execution/state/asset/{quoted(ti.asset)}/{quoted('a/b')}", json={"value": [1, 2.5, None]}
        )
        assert put.status_code == 204
    async with await direct_accessor(direct, ti) as state:
        assert await state.get("ref") == msgspec.json.decode(REF)
        assert await state.asset(ti.asset).get("a/b") == [1, 2.5, None]
        assert await state.get("missing", default="d") == "d"
        await state.delete("ref")
        assert await state.get("ref") is None
    async with httpx.AsyncClient(base_url=direct.server.base_url, headers=ti.auth()) as api:
        assert (await api.get(f"/execution/state/ti/{ti.id}/ref")).status_code == 404


async def test_airflow_offload_wrappers_pass_through_byte_for_byte(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    async with await direct_accessor(direct, ti) as state:
        await state.set("ref", msgspec.json.decode(REF))
    admin = await RestStateStore.connect(direct.server.base_url, direct.server.api_token("state:admin"))
    try:
        entry = await admin.get(ti.scope, "ref", now=datetime.now(UTC))
    finally:
        await admin.close()
    # encode_value writes compact JSON; the server hands back exactly what the worker stored.
    assert entry is not None and entry.value == msgspec.json.encode(msgspec.json.decode(REF))


# Keys the server refuses to store (api.md, "Values and keys"): refused before any I/O on every path.
UNSTORABLE_KEYS = [" lead", "trail ", " ", ".", "..", "a/../b", "a/./b", "/", "//", "x\n", "tab\t"]


async def test_the_direct_accessor_refuses_keys_the_server_refuses(direct: Direct, worker_env: None) -> None:
    # An outsider's find: written straight to Redis or S3 they were stored, listed, and then unreachable
    # (a GET or DELETE of `/` is 422 on the server).
    ti = create_task_instance(direct.server)
    async with await direct_accessor(direct, ti) as state:
        for key in UNSTORABLE_KEYS:
            with pytest.raises(Invalid):
                await state.set(key, 1)
            with pytest.raises(Invalid):
                await state.asset(ti.asset).set(key, 1)
        assert await state.keys() == [] and await state.asset(ti.asset).keys() == []
        await state.set("kept", 1)  # the check refuses only these
    async with httpx.AsyncClient(base_url=direct.server.base_url, headers=ti.auth()) as api:
        for key in UNSTORABLE_KEYS:
            put = await api.put(
                f"/execution/state/ti/{ti.id}/{quoted(key)}",
                content=b'{"value": 1}',
                headers={"content-type": "application/json"},
            )
            assert put.status_code in (404, 405, 422), (key, put.status_code, put.text)


async def test_the_direct_accessor_refuses_scopes_the_server_refuses(
    direct: Direct, worker_env: None
) -> None:
    # An outsider's find: keys were checked, but a task scope of dag_id '..' or '~', or an asset named
    # ' a', '..' or '', were stored straight into Redis, where no route of the server could address them.
    ti = create_task_instance(direct.server)
    for bad in (
        msgspec.structs.replace(ti.scope, dag_id=".."),
        msgspec.structs.replace(ti.scope, dag_id="~"),
        msgspec.structs.replace(ti.scope, run_id=" r"),
        msgspec.structs.replace(ti.scope, task_id="t\x01"),
        msgspec.structs.replace(ti.scope, map_index=-5),
    ):
        with pytest.raises(Invalid):
            await AsyncTaskStateAccessor.for_task_instance(
                ti.id,
                ti.token,
                direct.server.base_url,
                scope=bad,
                backend=direct.backend,  # type: ignore[arg-type]  # "redis" | "s3", from the fixture
                **direct.options,
            )
    async with await AsyncTaskStateAccessor.for_task_instance(
        ti.id,
        ti.token,
        direct.server.base_url,
        scope=ti.scope,
        backend=direct.backend,  # type: ignore[arg-type]  # "redis" | "s3", from the fixture
        **direct.options,
    ) as state:  # no declared assets given: the name alone is checked
        for name in ("..", ".", "", " a", "a ", "a\tb", "\x7f", "x" * 1501):
            with pytest.raises(Invalid):
                await state.asset(name).set("k", 1)
        await state.asset(ti.asset).set("k", 1)


async def test_the_direct_accessor_refuses_undeclared_assets(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    async with await direct_accessor(direct, ti) as state:
        with pytest.raises(KeyError):
            state.asset("somebody/else")


async def test_asset_state_written_directly_never_expires_by_default(
    direct: Direct, worker_env: None
) -> None:
    # Issue #12 item 11: the task state's default retention (30 days) was applied to asset state too.
    ti = create_task_instance(direct.server)
    before = datetime.now(UTC)
    async with await direct_accessor(direct, ti) as state:
        await state.asset(ti.asset).set("watermark", "2024-01-01")
        await state.set("task", 1)
    expiries = await _expiries(direct.server, ti)
    assert expiries["asset"] is None
    assert expiries["task"] is not None and _near(expiries["task"], before + timedelta(days=30))


# --- the REST backend and the sync accessor, on the default server --------------------------------------


async def test_asset_state_written_through_the_api_never_expires_by_default(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    before = datetime.now(UTC)
    async with await AsyncTaskStateAccessor.for_task_instance(
        ti.id, ti.token, stateport_server.base_url
    ) as state:
        await state.asset(ti.asset).set("watermark", "2024-01-01")
        await state.set("task", 1)
        await state.asset(ti.asset).set("week", 7, retention=timedelta(days=7))  # an explicit one still holds
    expiries = await _expiries(stateport_server, ti, asset_keys=("watermark", "week"))
    assert expiries["asset"] is None
    assert expiries["week"] is not None and _near(expiries["week"], before + timedelta(days=7))
    assert expiries["task"] is not None and _near(expiries["task"], before + timedelta(days=30))


async def _expiries(
    server: Server, ti: TaskInstanceRef, asset_keys: tuple[str, ...] = ("watermark",)
) -> dict[str, datetime | None]:
    """expires_at of the task key "task", of the asset key "watermark" (as "asset"), of other asset keys."""
    admin = await RestStateStore.connect(server.base_url, server.api_token("state:admin"))
    try:
        now = datetime.now(UTC)
        task = await admin.get(ti.scope, "task", now=now)
        out = {"task": None if task is None else task.expires_at}
        for key in asset_keys:
            entry = await admin.get(AssetScope(name=ti.asset), key, now=now)
            assert entry is not None
            out["asset" if key == "watermark" else key] = entry.expires_at
    finally:
        await admin.close()
    assert task is not None
    return out


async def test_the_rest_accessor_uses_the_task_token(stateport_server: Server) -> None:
    ti, other = create_task_instance(stateport_server), create_task_instance(stateport_server)
    async with await AsyncTaskStateAccessor.for_task_instance(
        ti.id, ti.token, stateport_server.base_url
    ) as state:
        await state.set("k", msgspec.json.decode(REF))
        assert await state.get("k") == msgspec.json.decode(REF)
        await state.asset(ti.asset).set("w", 1)
        assert await state.asset(ti.asset).get("w") == 1
        # Another task's asset exists but is not this task's: the server refuses; a missing one reads absent.
        with pytest.raises(Forbidden):
            await state.asset(other.asset).set("w", 1)
        with pytest.raises(NotFound):
            await state.asset(unique("nowhere")).set("w", 1)
        assert await state.asset(unique("nowhere")).get("w", default="absent") == "absent"
        await state.clear()
        assert await state.get("k", default=0) == 0


def test_the_sync_accessor(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    admin_token = stateport_server.api_token("state:admin")
    with TaskStateAccessor.for_task_instance(ti.id, ti.token, stateport_server.base_url) as state:
        assert state.get("missing", default={"d": 1}) == {"d": 1}
        before = datetime.now(UTC)
        state.set("week", [1], retention=timedelta(days=7))
        state.set("default", "x")
        state.set("forever", True, retention=NEVER_EXPIRE)
        assert state.get("week") == [1]
        entries = asyncio.run(_entries(stateport_server.base_url, admin_token, ti.scope))
        week, default, forever = (entries[k] for k in ("week", "default", "forever"))
        assert week is not None and _near(week, before + timedelta(days=7))
        assert default is not None and _near(default, before + timedelta(days=30))
        assert forever is None
        state.asset(ti.asset).set("a", 1)
        state.clear()
        assert state.get("week") is None
        assert state.asset(ti.asset).get("a") == 1


async def _entries(base_url: str, token: str, scope: TaskScope) -> dict[str, datetime | None]:
    store = await RestStateStore.connect(base_url, token)
    try:
        page = await store.list(scope, now=datetime.now(UTC))
    finally:
        await store.close()
    return {entry.key: entry.expires_at for entry in page.entries}


def _near(moment: datetime, expected: datetime) -> bool:
    # Retentions are days apart; a minute of slack keeps a busy machine from mattering.
    return abs((moment - expected).total_seconds()) < 60


# --- listing keys by prefix (issue #16 item 1): direct, REST, sync ---------------------------------------

LISTED = {"job/1": 1, "job/2": [2], "job/é": "e", "job/中": {"z": 1}, "jobs": 0, "other": None}


async def _fill(state: AsyncTaskStateAccessor, asset: str) -> None:
    for key, value in LISTED.items():
        if value is not None:
            await state.set(key, value)
            await state.asset(asset).set(key, value)


async def test_the_direct_accessor_lists_keys_by_prefix(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    async with await direct_accessor(direct, ti) as state:
        await _fill(state, ti.asset)
        expected = {k: v for k, v in LISTED.items() if k.startswith("job/")}
        assert await state.list("job/") == expected
        assert list((await state.list("job/")).items()) == list(expected.items())  # byte order
        assert await state.keys("job") == ["job/1", "job/2", "job/é", "job/中", "jobs"]
        assert await state.asset(ti.asset).keys("job/") == list(expected)
    # The server lists the same keys, in the same order.
    async with httpx.AsyncClient(base_url=direct.server.base_url, headers=ti.auth()) as api:
        listed = await api.get(f"/execution/state/ti/{ti.id}", params={"prefix": "job/"})
    assert [e["key"] for e in listed.json()["entries"]] == list(expected)


async def test_the_rest_accessor_lists_keys_by_prefix(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    async with await AsyncTaskStateAccessor.for_task_instance(
        ti.id, ti.token, stateport_server.base_url
    ) as state:
        await _fill(state, ti.asset)
        expected = {k: v for k, v in LISTED.items() if k.startswith("job/")}
        assert list((await state.list("job/")).items()) == list(expected.items())
        assert await state.keys() == ["job/1", "job/2", "job/é", "job/中", "jobs"]
        assert await state.asset(ti.asset).list("job/") == expected
    with TaskStateAccessor.for_task_instance(ti.id, ti.token, stateport_server.base_url) as sync_state:
        assert sync_state.keys("job/") == list(expected)
        assert sync_state.asset(ti.asset).list("jobs") == {"jobs": 0}


# --- batches (issue #16 item 2): REST, direct, sync ------------------------------------------------------


async def _batch_round(state: AsyncStateAccessor) -> None:
    """A cursor and a checkpoint moved together, a failed precondition that writes nothing."""
    first = await state.batch([Put("cursor", {"at": 1}, if_version=0), Put("checkpoint", "a"), Get("cursor")])
    assert [o.version for o in first] == [1, 1, 1]
    assert first[2].value == {"at": 1}
    with pytest.raises(BatchMismatch) as raised:
        await state.batch([Put("checkpoint", "b"), Put("cursor", {"at": 2}, if_version=5)])
    assert raised.value.index == 1 and isinstance(raised.value, VersionMismatch)
    assert await state.get("checkpoint") == "a" and await state.get("cursor") == {"at": 1}
    done = await state.batch([Put("cursor", {"at": 2}, if_version=1), Delete("checkpoint", if_version=1)])
    assert done[0].version == 2 and done[1].deleted
    assert await state.get("cursor") == {"at": 2} and await state.get("checkpoint") is None
    missing = await state.batch([Get("nothing", if_version=0)])
    assert missing[0].value is None and missing[0].version is None


async def test_the_rest_accessor_batches(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    async with await AsyncTaskStateAccessor.for_task_instance(
        ti.id, ti.token, stateport_server.base_url
    ) as state:
        await _batch_round(state)
        await _batch_round(state.asset(ti.asset))
        with pytest.raises(Invalid):
            await state.batch([])
    with TaskStateAccessor.for_task_instance(ti.id, ti.token, stateport_server.base_url) as sync_state:
        (outcome,) = sync_state.batch([Put("cursor", {"at": 3}, if_version=2)])
        assert outcome.version == 3
        with pytest.raises(BatchMismatch) as raised:
            sync_state.asset(ti.asset).batch([Get("cursor"), Get("cursor", if_version=9)])
        assert raised.value.index == 1


async def test_the_direct_accessor_batches_or_says_it_cannot(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    async with await direct_accessor(direct, ti) as state:
        if direct.backend == "s3":
            with pytest.raises(Unsupported):
                await state.batch([Put("cursor", 1)])
            assert await state.get("cursor") is None
            # The server on S3 says the same: 501, nothing written.
            with pytest.raises(Unsupported):
                rest = await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, direct.server.base_url)
                async with rest:
                    await rest.batch([Put("cursor", 1)])
            return
        await _batch_round(state)
    # What the worker wrote directly, the server reads.
    async with httpx.AsyncClient(base_url=direct.server.base_url, headers=ti.auth()) as api:
        cursor = await api.get(f"/execution/state/ti/{ti.id}/cursor")
    assert cursor.json() == {"value": {"at": 2}} and cursor.headers["etag"] == '"2"'


# --- compare-and-set and watching (issue #16 item 5): REST, direct, sync ----------------------------------


async def _cas_round(state: AsyncStateAccessor) -> None:
    """Create-only, compare-and-set and compare-and-delete on one key, each failure naming key and version."""
    assert await state.entry("cas") is None
    assert await state.set("cas", {"n": 1}, if_version=0) == 1
    with pytest.raises(VersionConflict) as raised:
        await state.set("cas", {"n": 9}, if_version=0)
    assert (raised.value.key, raised.value.expected) == ("cas", 0)
    assert isinstance(raised.value, VersionMismatch) and "already exists" in raised.value.detail
    assert await state.set("cas", {"n": 2}, if_version=1) == 2
    with pytest.raises(VersionConflict) as raised:
        await state.set("cas", {"n": 9}, if_version=1)
    assert (raised.value.key, raised.value.expected) == ("cas", 1)
    assert "not at version 1" in raised.value.detail
    assert await state.entry("cas") == Entry("cas", {"n": 2}, 2)
    for stale in (1, 0):
        with pytest.raises(VersionConflict):
            await state.delete("cas", if_version=stale)
    assert await state.get("cas") == {"n": 2}
    await state.delete("cas", if_version=2)
    assert await state.entry("cas") is None
    await state.delete("cas", if_version=0)  # must be absent, and is: nothing to remove
    with pytest.raises(Invalid):
        await state.set("cas", 1, if_version=-1)


async def _watch_round(state: AsyncStateAccessor, writer: AsyncStateAccessor) -> None:
    """``writer`` reaches the same scope by another path (the server, or the store directly): its writes
    wake ``state``'s watches."""
    assert await state.watch("mark", version=0, timeout=0.2) is None  # missing, and stays so
    waiting = asyncio.create_task(state.watch("mark", version=0, timeout=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await writer.set("mark", {"at": 1})
    assert await waiting == Change(key="mark", value={"at": 1}, version=1)
    # A version the key is no longer at answers at once; None: "as it is now".
    assert await state.watch("mark", version=7, timeout=20) == Change(key="mark", value={"at": 1}, version=1)
    waiting = asyncio.create_task(state.watch("mark", timeout=20))
    await asyncio.sleep(0.3)
    await writer.delete("mark")
    gone = await waiting
    assert gone is not None and gone.deleted and gone.value is None and gone.version == 0
    # The iterator form: each change from the version given on.
    seen: list[Change] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for change in state.changes("mark", version=0):
            seen.append(change)
            first.set()
            if change.deleted:
                return

    following = asyncio.create_task(follow())
    await writer.set("mark", "a")
    await asyncio.wait_for(first.wait(), 20)
    await writer.delete("mark")
    await asyncio.wait_for(following, 20)
    assert seen[0] == Change(key="mark", value="a", version=1) and seen[-1].deleted


async def test_the_rest_accessor_compares_and_sets(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    async with await AsyncTaskStateAccessor.for_task_instance(
        ti.id, ti.token, stateport_server.base_url
    ) as state:
        await _cas_round(state)
        await _cas_round(state.asset(ti.asset))


async def test_the_rest_accessor_watches(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    base_url = stateport_server.base_url
    async with (
        await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, base_url) as state,
        await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, base_url) as writer,
    ):
        await _watch_round(state, writer)
        await _watch_round(state.asset(ti.asset), writer.asset(ti.asset))
        # A wait longer than one long-poll's timeout of the HTTP client still ends at the deadline.
        started = asyncio.get_running_loop().time()
        assert await state.watch("quiet", version=0, timeout=1.0) is None
        assert 0.9 < asyncio.get_running_loop().time() - started < 5


async def test_the_direct_accessor_compares_and_sets_and_watches(direct: Direct, worker_env: None) -> None:
    ti = create_task_instance(direct.server)
    rest = await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, direct.server.base_url)
    options = {**direct.options, "s3_watch_poll_s": 0.2} if direct.backend == "s3" else direct.options
    async with (
        rest,
        await AsyncTaskStateAccessor.for_task_instance(
            ti.id,
            ti.token,
            direct.server.base_url,
            scope=ti.scope,
            backend=direct.backend,  # type: ignore[arg-type]  # "redis" | "s3", from the fixture's params
            assets={ti.asset},
            **options,
        ) as state,
    ):
        await _cas_round(state)
        # A write through the server wakes a worker watching the store directly (Redis: the scripts'
        # PUBLISH; S3: its poll), and a write made directly wakes a watcher on the server.
        await _watch_round(state, rest)
        await _watch_round(rest.asset(ti.asset), state.asset(ti.asset))


def test_the_sync_accessor_compares_and_sets_and_watches(stateport_server: Server) -> None:
    ti = create_task_instance(stateport_server)
    base_url = stateport_server.base_url
    with (
        TaskStateAccessor.for_task_instance(ti.id, ti.token, base_url) as state,
        TaskStateAccessor.for_task_instance(ti.id, ti.token, base_url) as writer,
    ):
        assert state.set("k", 1, if_version=0) == 1
        with pytest.raises(VersionConflict):
            state.set("k", 2, if_version=0)
        assert state.entry("k") == Entry("k", 1, 1)
        assert state.watch("k", timeout=0.2) is None
        waker = threading.Timer(0.3, writer.set, ("k", 2))
        waker.start()
        try:
            assert state.watch("k", version=1, timeout=20) == Change(key="k", value=2, version=2)
        finally:
            waker.join()
        waker = threading.Timer(0.3, writer.delete, ("k",))
        waker.start()
        try:
            change = next(state.changes("k"))
        finally:
            waker.join()
        assert change.deleted


async def test_watches_leave_the_shared_client_free(stateport_server: Server) -> None:
    """More watching tasks than a worker's shared state client has turns (20): their long-polls go on
    clients of their own, so other tasks' state calls on the shared one still answer at once."""
    ti = create_task_instance(stateport_server)
    shared = make_client(stateport_server.base_url, timeout_s=1.0)
    accessors = [
        await AsyncTaskStateAccessor.for_task_instance(
            ti.id, ti.token, stateport_server.base_url, http_client=shared, timeout_s=1.0
        )
        for _ in range(MAX_CONNECTIONS + 5)
    ]
    watches = [asyncio.create_task(a.watch("quiet", version=0, timeout=10)) for a in accessors]
    try:
        await asyncio.sleep(0.5)
        await accessors[0].set("other", 1)  # a turn on the shared client within its 1 s pool timeout
        assert await accessors[0].get("other") == 1
        assert not any(w.done() for w in watches)
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        for accessor in accessors:
            await accessor.close()
        await shared.aclose()


async def test_only_a_server_marks_the_store_a_command_does_not(direct: Direct, tmp_path: Path) -> None:
    # An outsider's find: every command marked the store it opened, so a read through a mistyped prefix
    # marked it (and a worker with the same typo was then told nothing), and a read-only replica or S3
    # credential refused the read.
    from tests.e2e.test_cli import cli

    if direct.backend != "redis":
        pytest.skip("the S3 case is the same code path; Redis shows it without a bucket of its own")
    typo = redis_key_prefix()
    env = {
        "STATEPORT_STATE_BACKEND": "redis",
        "STATEPORT_REDIS_URL": REDIS_URL,
        "STATEPORT_REDIS_PREFIX": typo,
    }
    await asyncio.to_thread(cli, tmp_path, "migrate", env_extra=env)
    read = await asyncio.to_thread(
        cli,
        tmp_path,
        "state",
        "get",
        "--dag-id",
        "d",
        "--dag-run-id",
        "r",
        "--task-id",
        "t",
        "k",
        check=False,
        env_extra=env,
    )
    assert "Traceback" not in read.stderr, read.stderr
    client = Redis.from_url(REDIS_URL)
    try:
        assert not await client.exists(f"{typo}:layout")
        assert await client.exists(f"{direct.options['redis_prefix']}:layout")  # the server's, marked
    finally:
        await client.aclose()
