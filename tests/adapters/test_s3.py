"""The S3 adapter beyond the contract: Airflow's object layout, a free event loop, batching, failures."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config

from stateport.adapters.s3.client import S3Location
from stateport.adapters.s3.state import S3StateStore
from stateport.domain.errors import Invalid, Unavailable, UnreadableValue, VersionMismatch
from stateport.domain.models import AssetScope, TaskScope
from stateport.domain.ports.observer import Observer, install
from tests.fixtures.s3 import CREDENTIALS
from tests.fixtures.tcp_proxy import TcpProxy
from tests.services import free_port, unique

PREFIX = "stateport"


def now() -> datetime:
    return datetime.now(UTC)


def object_keys(client: Any, bucket: str) -> list[str]:
    """Every object key in the bucket, through a plain client."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


@pytest.fixture
def own_client(s3_endpoint: str) -> Iterator[Any]:
    """A client the test builds itself, as a worker would, so it can watch the requests through events."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        config=Config(
            max_pool_connections=16,
            connect_timeout=5,
            read_timeout=5,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
        **CREDENTIALS,
    )
    yield client
    client.close()


@pytest.fixture
async def own_store(own_client: Any, s3_bucket: str) -> AsyncIterator[S3StateStore]:
    store = S3StateStore(own_client, bucket=s3_bucket, prefix=PREFIX)
    try:
        yield store
    finally:
        await store.close()


def watch(client: Any, event: str) -> list[dict[str, Any]]:
    """Record each request matching a botocore event name: its parameters and the thread sending it."""
    seen: list[dict[str, Any]] = []

    def record(params: Any = None, **_: Any) -> None:
        seen.append({"thread": threading.current_thread().name, "params": params, "at": time.perf_counter()})

    client.meta.events.register(event, record)
    return seen


# --- the object layout ----------------------------------------------------------------------------------


async def test_object_layout_is_airflows(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str
) -> None:
    t = datetime(2026, 11, 23, 18, 5, 2, 123456, tzinfo=UTC)
    expires = t + timedelta(days=7)
    run_id = "manual__2026-01-01T00:00:00+00:00"
    writes: list[tuple[TaskScope | AssetScope, str, bytes, datetime | None, str]] = [
        (
            TaskScope(dag_id="etl daily", run_id=run_id, task_id="load", map_index=3),
            "job/id",
            b'{"id": 1}',
            None,
            "stateport/etl%20daily/manual__2026-01-01T00%3A00%3A00%2B00%3A00/load/3/job%2Fid",
        ),
        (
            TaskScope(dag_id="etl daily", run_id=run_id, task_id="load", map_index=-1),
            "a b?c&d=e%2F",
            b"  [1, 2]  ",
            expires,
            "stateport/etl%20daily/manual__2026-01-01T00%3A00%3A00%2B00%3A00/load/-1/a%20b%3Fc%26d%3De%252F",
        ),
        (
            AssetScope(name="s3://bucket/orders"),
            "100%",
            b'"\xc3\xa9"',
            None,
            "stateport/assets/s3%3A%2F%2Fbucket%2Forders/100%25",
        ),
        (
            AssetScope(name="café"),
            "ключ",
            b"true",
            None,
            "stateport/assets/caf%C3%A9/%D0%BA%D0%BB%D1%8E%D1%87",
        ),
        # A DAG called "assets" lands under the asset folder, but four segments deep.
        (TaskScope(dag_id="assets", run_id="r", task_id="t"), "k", b"1", None, "stateport/assets/r/t/-1/k"),
        (AssetScope(name="r"), "t", b"2", None, "stateport/assets/r/t"),
    ]
    for scope, key, value, expires_at, _ in writes:
        await s3_state_store.put(scope, key, value, expires_at=expires_at, now=t)

    assert sorted(object_keys(s3_client, s3_bucket)) == sorted(name for *_, name in writes)
    for _, _, value, expires_at, name in writes:
        obj = s3_client.get_object(Bucket=s3_bucket, Key=name)
        assert obj["Body"].read() == value
        expected = {"stateport-version": "1", "stateport-updated-at": "2026-11-23T18:05:02.123456+00:00"}
        if expires_at is not None:
            expected["stateport-expires-at"] = "2026-11-30T18:05:02.123456+00:00"
        assert obj["Metadata"] == expected
        assert obj["ContentType"] == "application/json"

    # Each scope sees its own object only, at its own depth.
    assert [e.key for e in (await s3_state_store.list(AssetScope(name="r"), now=t)).entries] == ["t"]
    dag_assets = TaskScope(dag_id="assets", run_id="r", task_id="t")
    assert [e.value for e in (await s3_state_store.list(dag_assets, now=t)).entries] == [b"1"]


async def test_versions_live_in_metadata(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str
) -> None:
    scope = AssetScope(name=unique("a"))
    for _ in range(3):
        await s3_state_store.put(scope, "k", b"1", expires_at=None, now=now())
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/assets/{scope.name}/k")
    assert head["Metadata"]["stateport-version"] == "3"


async def test_an_object_written_by_another_tool_reads_as_version_1(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str
) -> None:
    # What Airflow's ObjectStorage backend writes from a worker: the bytes, no Stateport metadata.
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/d/r/t/-1/ref", Body=b'{"x": 1}')
    scope = TaskScope(dag_id="d", run_id="r", task_id="t")
    got = await s3_state_store.get(scope, "ref", now=now())
    assert got is not None and got.value == b'{"x": 1}' and got.version == 1 and got.expires_at is None
    assert (await s3_state_store.put(scope, "ref", b"2", expires_at=None, now=now())).version == 2


@pytest.mark.parametrize(
    "metadata",
    [
        {"stateport-version": "0", "stateport-updated-at": "2026-11-23T18:05:02+00:00"},
        {"stateport-version": "-4", "stateport-updated-at": "2026-11-23T18:05:02+00:00"},
        {"stateport-version": "x", "stateport-updated-at": "2026-11-23T18:05:02+00:00"},
        {"stateport-version": "3", "stateport-updated-at": "yesterday"},
        # A time past the years 1 to 9999 in UTC: a 500 on every read, write and listing of the scope.
        {"stateport-version": "3", "stateport-updated-at": "0001-01-01T00:00:00+05:00"},
        {
            "stateport-version": "3",
            "stateport-updated-at": "2026-12-07T10:00:00+00:00",
            "stateport-expires-at": "9999-12-31T23:59:59-05:00",
        },
        # Past a version's range, or spelt as Stateport never writes one: never matched by a compare-and-set.
        {"stateport-version": "99999999999999999999999", "stateport-updated-at": "2026-11-23T18:05:02+00:00"},
        {"stateport-version": "1_000", "stateport-updated-at": "2026-11-23T18:05:02+00:00"},
    ],
)
async def test_an_object_whose_metadata_cannot_be_read_is_version_1_never_absent(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str, metadata: dict[str, str]
) -> None:
    # Version 0 is what a compare-and-set reads for an absent key: a live object read as 0 was overwritten
    # by a create-only write (if_version=0).
    dag_id = unique("d")
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/{dag_id}/r/t/-1/k", Body=b"7", Metadata=metadata)
    scope = TaskScope(dag_id=dag_id, run_id="r", task_id="t")
    got = await s3_state_store.get(scope, "k", now=now())
    assert got is not None and got.value == b"7" and got.version == 1 and got.expires_at is None
    with pytest.raises(VersionMismatch):
        await s3_state_store.put(scope, "k", b"8", expires_at=None, now=now(), if_version=0)
    assert (await s3_state_store.get(scope, "k", now=now())).value == b"7"  # type: ignore[union-attr]


async def test_metadata_times_without_an_offset_read_as_utc(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str
) -> None:
    # Compared with the aware clock, a naive time raised: every read of the key was a 500.
    dag_id = unique("d")
    metadata = {
        "stateport-version": "2",
        "stateport-updated-at": "2026-11-23T18:05:02",
        "stateport-expires-at": "2099-01-01T00:00:00",
    }
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/{dag_id}/r/t/-1/k", Body=b"7", Metadata=metadata)
    scope = TaskScope(dag_id=dag_id, run_id="r", task_id="t")
    got = await s3_state_store.get(scope, "k", now=now())
    assert got is not None and got.version == 2
    assert got.expires_at == datetime(2099, 1, 1, tzinfo=UTC)
    listed = await s3_state_store.list(scope, now=now())
    assert [(e.key, e.version) for e in listed.entries] == [("k", 2)]


async def test_an_object_another_tool_wrote_that_is_not_json_is_unreadable_named_not_served(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str
) -> None:
    # An outsider's find: bytes that are not JSON were served inside the JSON answer (a 200 whose body was
    # not JSON), and one such object made every listing of its scope unreadable.
    dag_id = unique("d")
    scope = TaskScope(dag_id=dag_id, run_id="r", task_id="t")
    await s3_state_store.put(scope, "good", b"1", expires_at=None, now=now())
    deep = b"[" * 3000 + b"]" * 3000  # past the decoder's recursion limit: a 500 on every read
    for key, body in (
        ("bad", b"not json"),
        ("empty", b""),
        ("nan", b"NaN"),
        ("latin", b'"\xff\xfe"'),
        ("deep", deep),
    ):
        s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/{dag_id}/r/t/-1/{key}", Body=body)
        with pytest.raises(UnreadableValue, match=f"state key '{key}' holds bytes that are not a JSON value"):
            await s3_state_store.get(scope, key, now=now())
    with pytest.raises(UnreadableValue, match="state key 'bad'"):
        await s3_state_store.list(scope, now=now())
    with pytest.raises(UnreadableValue, match="state key 'bad'"):
        await s3_state_store.scan(scope, now=now(), limit=10)
    keys = await s3_state_store.scan(scope, now=now(), limit=10, keys_only=True)  # values unread: listed
    assert [e.key for e in keys.entries] == ["bad", "deep", "empty", "good", "latin", "nan"]


async def test_a_folder_object_another_tool_made_is_no_key(
    s3_state_store: S3StateStore, s3_client: Any, s3_bucket: str
) -> None:
    # An outsider's find: the zero-byte "folder" object the AWS console or s3fs makes was listed as key "",
    # every value listing of the scope answered 502 on it, and no delete could name it.
    dag_id = unique("d")
    scope = TaskScope(dag_id=dag_id, run_id="r", task_id="t")
    await s3_state_store.put(scope, "k", b"1", expires_at=None, now=now())
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/{dag_id}/r/t/-1/", Body=b"")
    assert [e.key for e in (await s3_state_store.list(scope, now=now())).entries] == ["k"]
    assert [e.key for e in (await s3_state_store.scan(scope, now=now(), limit=10)).entries] == ["k"]
    keys = await s3_state_store.scan(scope, now=now(), limit=10, keys_only=True)
    assert [e.key for e in keys.entries] == ["k"]
    assert await s3_state_store.clear(scope) == 1  # the key, not the folder object it also removes


async def test_list_orders_raw_keys_not_quoted_ones(s3_state_store: S3StateStore) -> None:
    # Quoted, "a/" is "a%2F" and "é" is "%C3%A9": S3 lists both before "a-" and "z"; keys must not be.
    scope = TaskScope(dag_id=unique("d"), run_id="r", task_id="t")
    keys = ["é", "a/", "~", "z", "a-"]
    for key in keys:
        await s3_state_store.put(scope, key, b"1", expires_at=None, now=now())
    page = await s3_state_store.list(scope, now=now())
    assert [e.key for e in page.entries] == sorted(keys) == ["a-", "a/", "z", "~", "é"]
    second = await s3_state_store.list(scope, now=now(), limit=2, offset=2)
    assert [e.key for e in second.entries] == ["z", "~"] and second.total == 5


async def test_a_key_too_long_for_s3_is_invalid(s3_state_store: S3StateStore) -> None:
    # 512 characters are allowed, but quoted "é" takes six bytes: the object key would pass 1024 bytes.
    with pytest.raises(Invalid) as refused:
        await s3_state_store.put(AssetScope(name="a"), "é" * 512, b"1", expires_at=None, now=now())
    assert refused.value.field == "key" and "past S3's 1024" in refused.value.detail
    assert await s3_state_store.get(AssetScope(name="a"), "é" * 512, now=now()) is None
    assert await s3_state_store.delete(AssetScope(name="a"), "é" * 512, now=now()) is False


# --- versions and conditional writes --------------------------------------------------------------------


def test_etags_name_contents_so_versions_are_not_atomic(s3_client: Any, s3_bucket: str) -> None:
    # Why atomic_versions is False: If-Match compares ETags, and an ETag is the MD5 of the body. A rewrite
    # with the same bytes (new metadata, new version) keeps it, so a writer holding the old ETag still wins.
    assert S3StateStore.capabilities.atomic_versions is False
    first = s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"1", Metadata={"v": "1"})["ETag"]
    second = s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"1", Metadata={"v": "2"})["ETag"]
    assert first == second
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"1", Metadata={"v": "2"}, IfMatch=first)


# --- the event loop -------------------------------------------------------------------------------------


class RecordingExecutor(ThreadPoolExecutor):
    """A default executor that notes every use."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.used = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.used += 1
        return super().submit(fn, *args, **kwargs)


async def test_boto3_runs_off_the_loop_on_the_stores_own_threads(
    own_store: S3StateStore, own_client: Any
) -> None:
    loop = asyncio.get_running_loop()
    default = RecordingExecutor()
    loop.set_default_executor(default)
    sends = watch(own_client, "before-send.s3")
    ticks: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.005)
            ticks.append(time.perf_counter())

    beating = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    scope = TaskScope(dag_id=unique("d"), run_id="r", task_id="t")
    await asyncio.gather(
        *(
            own_store.put(scope, f"k{i}", b'"' + b"x" * 1000 + b'"', expires_at=None, now=now())
            for i in range(50)
        )
    )
    stop.set()
    await beating

    # 100 requests (a HEAD and a PUT per key), every one sent from the store's own threads.
    assert len(sends) >= 100
    assert {send["thread"].rsplit("_", 1)[0] for send in sends} == {"stateport-s3"}
    # The loop kept running while they were in flight: the heartbeat ticked between the requests. (Counted,
    # not timed: a loaded machine stretches gaps, but a blocked loop could not tick in between at all.)
    first, last = sends[0]["at"], sends[-1]["at"]
    assert sum(first < tick < last for tick in ticks) >= 3
    assert default.used == 0


# --- clear and purge ------------------------------------------------------------------------------------


async def test_clear_of_many_keys_pages_and_batches(
    own_store: S3StateStore, own_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    dag = unique("d")
    scope = TaskScope(dag_id=dag, run_id="r", task_id="t", map_index=0)
    sibling = TaskScope(dag_id=dag, run_id="r", task_id="t", map_index=1)
    count = 1105
    keys = [f"k{i:05d}" for i in range(count)]
    await asyncio.gather(*(own_store.put(scope, key, b"1", expires_at=None, now=now()) for key in keys))
    await own_store.put(sibling, "k00000", b"1", expires_at=None, now=now())
    await own_store.put(AssetScope(name=dag), "k", b"1", expires_at=None, now=now())
    deletes = watch(own_client, "provide-client-params.s3.DeleteObjects")

    assert await own_store.clear(scope) == count

    sizes = [len(d["params"]["Delete"]["Objects"]) for d in deletes]
    assert len(sizes) >= 2 and max(sizes) <= 1000 and sum(sizes) == count
    assert sorted(object_keys(s3_client, s3_bucket)) == [
        f"{PREFIX}/assets/{dag}/k",
        f"{PREFIX}/{dag}/r/t/1/k00000",
    ]
    assert await own_store.clear(sibling, all_map_indices=True) == 1
    assert object_keys(s3_client, s3_bucket) == [f"{PREFIX}/assets/{dag}/k"]


async def test_purge_expired_deletes_only_expired_objects_in_batches(
    own_store: S3StateStore, own_client: Any, s3_client: Any, s3_bucket: str
) -> None:
    t0 = now()
    past, future = t0 - timedelta(seconds=1), t0 + timedelta(days=1)
    task = TaskScope(dag_id="d", run_id="r", task_id="t")
    dag_assets = TaskScope(dag_id="assets", run_id="r", task_id="t", map_index=2)
    asset = AssetScope(name="r")
    for scope in (task, dag_assets, asset):
        for i in range(3):
            await own_store.put(scope, f"old{i}", b"1", expires_at=past, now=t0 - timedelta(seconds=5))
        await own_store.put(scope, "live", b"1", expires_at=future, now=t0)
        await own_store.put(scope, "forever", b"1", expires_at=None, now=t0)
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/foreign", Body=b"no metadata")
    deletes = watch(own_client, "provide-client-params.s3.DeleteObjects")

    assert await own_store.purge_expired(now=t0, batch_size=4) == 9

    assert [len(d["params"]["Delete"]["Objects"]) for d in deletes] == [4, 4, 1]
    remaining = set(object_keys(s3_client, s3_bucket))
    assert remaining == {
        f"{PREFIX}/foreign",
        *(f"{PREFIX}/d/r/t/-1/{k}" for k in ("live", "forever")),
        *(f"{PREFIX}/assets/r/t/2/{k}" for k in ("live", "forever")),
        *(f"{PREFIX}/assets/r/{k}" for k in ("live", "forever")),
    }
    assert await own_store.purge_expired(now=t0) == 0


# --- failures -------------------------------------------------------------------------------------------


async def test_closed_port_is_unavailable_within_the_timeout(s3_credentials: None) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unavailable"):
        await S3StateStore.connect(S3Location(bucket="stateport-test", endpoint_url=endpoint, timeout_s=1.0))
    # Two attempts (botocore retries once, with under a second of backoff), each refused at once. A hang
    # guard, generous for a busy machine: at most 2 x 1 s timeouts and 1 s of backoff, plus slack.
    assert time.monotonic() - started < 3.0 * 2 + 2


async def test_a_malformed_endpoint_is_unavailable(s3_credentials: None) -> None:
    with pytest.raises(Unavailable, match="cannot create the S3 client"):
        await S3StateStore.connect(S3Location(bucket="stateport-test", endpoint_url="not a url"))


async def test_an_endpoint_that_never_answers_times_out(own_client: Any) -> None:
    # A socket that listens but never accepts: connections complete in the kernel backlog, no reply comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            config=Config(
                connect_timeout=0.5, read_timeout=0.5, retries={"max_attempts": 2, "mode": "standard"}
            ),
            **CREDENTIALS,
        )
        store = S3StateStore(client, bucket="stateport-test")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="unavailable"):
            await store.get(AssetScope(name="a"), "k", now=now())
        await store.close()
        client.close()
    # A hang guard: at most 2 attempts x (0.5 s connect + 0.5 s read) and 1 s of backoff, with slack for a
    # busy machine; without the timeouts it would wait forever.
    assert time.monotonic() - started < 3.0 * 2 + 2


async def test_a_missing_bucket_is_unavailable(
    s3_endpoint: str, s3_credentials: None, own_client: Any
) -> None:
    bucket = unique("missing").replace("_", "-")
    with pytest.raises(Unavailable, match="does not exist"):
        await S3StateStore.connect(S3Location(bucket=bucket, endpoint_url=s3_endpoint, timeout_s=2.0))
    store = S3StateStore(own_client, bucket=bucket)
    with pytest.raises(Unavailable, match="does not exist"):
        await store.get(AssetScope(name="a"), "k", now=now())
    with pytest.raises(Unavailable, match="does not exist"):
        await store.put(AssetScope(name="a"), "k", b"1", expires_at=None, now=now())
    await store.close()


async def test_a_closed_store_is_unavailable(own_store: S3StateStore) -> None:
    await own_store.close()
    with pytest.raises(Unavailable, match="closed"):
        await own_store.get(AssetScope(name="a"), "k", now=now())


class ReplyDropper:
    """A TCP forwarder to moto that, once armed, loses the reply to the next PUT or DELETE: S3 applied it,
    and the connection breaks before the client reads the answer (so botocore sends it again)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.armed = False
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        self._connections.add(this)
        this.add_done_callback(self._connections.discard)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        method = [b""]

        async def to_s3() -> None:
            while data := await reader.read(65536):
                if data[:4] in (b"GET ", b"PUT ", b"HEAD", b"POST", b"DELE"):
                    method[0] = data.split(b" ", 1)[0]
                up_writer.write(data)
                await up_writer.drain()

        async def from_s3() -> None:
            while data := await up_reader.read(65536):
                # Not the "100 Continue" botocore waits for before a PUT's body: the answer to the write.
                if self.armed and method[0] in (b"PUT", b"DELETE") and not data.startswith(b"HTTP/1.1 100"):
                    self.armed = False
                    self.dropped += 1
                    writer.transport.abort()  # the write was applied; its answer never arrives
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(to_s3(), from_s3())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            up_writer.transport.abort()


@asynccontextmanager
async def store_at(endpoint: str, s3_bucket: str, *, timeout_s: float) -> AsyncIterator[S3StateStore]:
    """A store as the server opens one, reaching S3 at ``endpoint`` (a proxy in front of moto)."""
    store = await S3StateStore.connect(
        S3Location(bucket=s3_bucket, prefix="stateport", endpoint_url=endpoint, timeout_s=timeout_s)
    )
    try:
        yield store
    finally:
        await store.close()


async def test_a_conditional_write_whose_reply_was_lost_is_not_refused_for_its_own_doing(
    s3_endpoint: str, s3_bucket: str, s3_credentials: None
) -> None:
    # An outsider's find: botocore sends a write again when its reply is lost, and the condition then fails
    # on the first attempt's own write: a 412 said "nothing changed" for a write that was applied.
    scope = AssetScope(name=unique("asset"))
    dropper = ReplyDropper(s3_endpoint)
    try:
        async with store_at(await dropper.start(), s3_bucket, timeout_s=5.0) as store:
            dropper.armed = True
            created = await store.put(
                scope, "lock", b'"mine"', expires_at=None, now=datetime.now(UTC), if_version=0
            )
            assert dropper.dropped == 1 and created.version == 1
            dropper.armed = True
            updated = await store.put(
                scope, "lock", b'"again"', expires_at=None, now=datetime.now(UTC), if_version=1
            )
            assert dropper.dropped == 2 and updated.version == 2
            dropper.armed = True
            plain = await store.put(scope, "lock", b'"plain"', expires_at=None, now=datetime.now(UTC))
            assert dropper.dropped == 3 and plain.version == 3  # written once, not twice
            read = await store.get(scope, "lock", now=datetime.now(UTC))
            assert read is not None and (read.value, read.version) == (b'"plain"', 3)
            dropper.armed = True
            assert await store.delete(scope, "lock", now=datetime.now(UTC), if_version=3) is True
            assert dropper.dropped == 4
            assert await store.get(scope, "lock", now=datetime.now(UTC)) is None
    finally:
        await dropper.close()


class CountedErrors(Observer):
    """The observer port, recording which stores failed as unavailable."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.details: list[str] = []

    def store_error(self, backend: str, detail: str = "") -> None:
        self.backends.append(backend)
        self.details.append(detail)


async def test_a_stalled_s3_is_unavailable_within_one_timeout_not_one_per_attempt(
    s3_endpoint: str, s3_bucket: str, s3_credentials: None
) -> None:
    # An outsider's find: botocore's timeouts are per attempt and per read, and it makes two attempts, so a
    # stalled S3 took 15-20 s to answer a request whose timeout is 5 s.
    scope = AssetScope(name=unique("asset"))
    host, _, port = s3_endpoint.removeprefix("http://").partition(":")
    proxy = TcpProxy(upstream=(host, int(port)))
    await proxy.start()
    try:
        async with store_at(f"http://127.0.0.1:{proxy.port}", s3_bucket, timeout_s=1.0) as store:
            proxy.freeze()
            errors = CountedErrors()
            install(errors)
            try:
                for operation in (
                    store.get(scope, "k", now=datetime.now(UTC)),
                    store.put(scope, "k", b"1", expires_at=None, now=datetime.now(UTC)),
                ):
                    # Each times out on a read (a put reads the object's version first): nothing was
                    # written, and the 503 does not say a write may be applied (an outsider's find: every
                    # GET's did).
                    with pytest.raises(Unavailable, match=r"no answer within 1 s$"):
                        await operation
            finally:
                install(Observer())
            # Counted as every store's failures are (an outsider's find: a frozen S3 was not).
            assert errors.backends == ["s3", "s3"]
            # With its cause, for the operator's log (an outsider's find: it said only "unavailable").
            assert errors.details == ["S3 is unavailable: no answer within 1 s"] * 2
            await proxy.cut()  # S3 answers again, on new connections
            await proxy.start()
            assert (await store.put(scope, "k", b"2", expires_at=None, now=datetime.now(UTC))).value == b"2"
    finally:
        await proxy.cut()


async def test_a_listing_and_a_clear_of_a_stalled_s3_are_unavailable_within_one_timeout(
    s3_endpoint: str, s3_bucket: str, s3_credentials: None
) -> None:
    # An outsider's find: a listing's pages (and the listing a clear starts with) had botocore's timeouts
    # only, two attempts of one read timeout each: 15 s before the 503 where a key's read took 5.
    scope = AssetScope(name=unique("asset"))
    async with (
        s3_proxy(s3_endpoint) as proxy,
        store_at(f"http://127.0.0.1:{proxy.port}", s3_bucket, timeout_s=1.0) as store,
    ):
        await store.put(scope, "k", b"1", expires_at=None, now=datetime.now(UTC))
        proxy.freeze()
        # The step's own deadline says "no answer within 1 s"; botocore's, reached after its two attempts,
        # would say "Read timeout on endpoint URL".
        with pytest.raises(Unavailable, match=r"no answer within 1 s$"):
            await store.list(scope, now=datetime.now(UTC))
        with pytest.raises(Unavailable, match=r"no answer within 1 s$"):
            await store.clear(scope)


async def test_a_store_opened_on_a_stalled_s3_is_unavailable_within_its_timeout(
    s3_endpoint: str, s3_bucket: str, s3_credentials: None
) -> None:
    # An outsider's find: a worker's direct accessor opened while S3 was frozen took 15 s to fail (the
    # bucket's HEAD had only botocore's timeouts, per attempt and per read), one opened before it 5 s.
    async with s3_proxy(s3_endpoint) as proxy:
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"no answer within 1 s$"):
            async with store_at(f"http://127.0.0.1:{proxy.port}", s3_bucket, timeout_s=1.0):
                pass
        assert time.monotonic() - started < 3.0


async def test_a_step_its_caller_gave_up_on_leaves_no_unretrieved_error(
    s3_endpoint: str, s3_bucket: str, s3_credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    # An outsider's find: while S3 was frozen, readiness checks cancelled by their own deadline left
    # botocore's ReadTimeoutError in futures nobody read, logged as ERROR "Future exception was never
    # retrieved" with a traceback each.
    async with s3_proxy(s3_endpoint) as proxy:
        async with store_at(f"http://127.0.0.1:{proxy.port}", s3_bucket, timeout_s=0.5) as store:
            proxy.freeze()
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                checking = asyncio.create_task(store.ping())
                await asyncio.sleep(0.2)
                checking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checking
        # Closed: its steps ended (botocore gave up on the frozen endpoint); their futures are gone.
        gc.collect()
        await asyncio.sleep(0)
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@contextlib.asynccontextmanager
async def s3_proxy(s3_endpoint: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of moto, which the test freezes; cut when done."""
    host, _, port = s3_endpoint.removeprefix("http://").partition(":")
    proxy = TcpProxy(upstream=(host, int(port)))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()


async def test_a_stalled_s3_fails_a_blob_write_or_read_within_its_timeout_and_its_bytes(
    s3_endpoint: str, s3_bucket: str, s3_credentials: None
) -> None:
    # An outsider's find: a report whose 200 KB result went to S3 as a blob waited 25-75 s on an S3 that had
    # stopped answering, with no 503; botocore's timeouts are per socket operation and per attempt.
    from stateport.adapters.s3.blobs import MIN_RATE, S3BlobStore

    host, _, port = s3_endpoint.removeprefix("http://").partition(":")
    proxy = TcpProxy(upstream=(host, int(port)))
    await proxy.start()
    location = S3Location(
        bucket=s3_bucket, prefix=unique("stall"), endpoint_url=f"http://127.0.0.1:{proxy.port}", timeout_s=1.0
    )
    store = await S3BlobStore.connect(location)
    try:
        data = b"x" * 200_000
        assert await store.put("kept", data) == "kept"
        proxy.freeze()
        for operation, says in ((store.put("new", data), "may be applied"), (store.get("kept"), "s$")):
            started = time.monotonic()
            with pytest.raises(Unavailable, match=f"no answer within .*{says}"):
                await operation
            assert time.monotonic() - started < 1.0 + len(data) / MIN_RATE + 1.0  # a hang guard with slack
        await proxy.cut()  # S3 answers again, on new connections
        await proxy.start()
        assert await store.get("kept") == data
    finally:
        await store.close()
        await proxy.cut()
