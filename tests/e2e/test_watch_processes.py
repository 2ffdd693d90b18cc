"""Watching state across processes (issue #16, item 3): a watcher on one ``stateport serve`` process is
woken by a write through another process (PostgreSQL, LISTEN/NOTIFY), and by a worker writing to the
backend directly (Redis: the write script's PUBLISH; S3: the server's polling interval).

The servers' safety re-read is set far beyond the waits here (a first re-read comes at least 60 s after a
watch starts), so what wakes a watcher within ``PROMPT_S`` is the hint, or on S3 the poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.test_worker_direct import (
    Direct,
    create_task_instance,
    direct,  # noqa: F401  # a fixture
    direct_accessor,
    worker_env,  # noqa: F401  # a fixture
)
from tests.fixtures.rest import Server, run_server

pytestmark = [pytest.mark.slow]

PROMPT_S = 5.0
RECHECK_S = "120"


@pytest.fixture(scope="module")
def servers(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with (
        run_server(
            tmp_path_factory.mktemp("watch-a"),
            database_url=postgres_url,
            events_backend="postgres",
            wait_recheck_s=RECHECK_S,
        ) as a,
        run_server(
            tmp_path_factory.mktemp("watch-b"),
            database_url=postgres_url,
            events_backend="postgres",
            wait_recheck_s=RECHECK_S,
        ) as b,
    ):
        yield a, b


def key_path(ti_id: object, key: str) -> str:
    return f"/execution/state/ti/{ti_id}/{quote(key, safe='')}"


async def long_poll(
    base_url: str, path: str, auth: dict[str, str], etag: str
) -> tuple[httpx.Response, float]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        response = await client.get(path, params={"wait": "60"}, headers={**auth, "If-None-Match": etag})
        return response, time.monotonic()


@pytest.mark.postgres
async def test_a_watcher_on_one_process_wakes_on_a_write_through_another(
    servers: tuple[Server, Server],
) -> None:
    a, b = servers
    ti = create_task_instance(a)
    path = key_path(ti.id, "watermark")
    async with httpx.AsyncClient(base_url=b.base_url, timeout=10) as writer:
        got = await writer.put(path, json={"value": 1}, headers=ti.auth())
        assert got.status_code == 204
        poll = asyncio.create_task(long_poll(a.base_url, path, ti.auth(), got.headers["etag"]))
        await asyncio.sleep(0.5)
        assert not poll.done()
        written = time.monotonic()
        assert (await writer.put(path, json={"value": 2}, headers=ti.auth())).status_code == 204
        response, answered = await asyncio.wait_for(poll, 30)
    assert response.status_code == 200
    assert response.json() == {"value": 2}
    assert answered - written < PROMPT_S


@pytest.mark.postgres
async def test_a_stream_on_one_process_sees_writes_through_another(servers: tuple[Server, Server]) -> None:
    a, b = servers
    ti = create_task_instance(a)
    path = key_path(ti.id, "events")
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=30) as reader,
        httpx.AsyncClient(base_url=b.base_url, timeout=10) as writer,
        reader.stream("GET", path, headers={**ti.auth(), "Accept": "text/event-stream"}) as stream,
    ):
        lines = stream.aiter_lines()
        async with asyncio.timeout(PROMPT_S):
            assert await anext(lines) == ": watching"
            # The key's state when the stream began: absent.
            while not (line := await anext(lines)).startswith("id:"):
                pass
            assert line == "id: 0"
            ids = []
            for value in (1, 2):
                assert (await writer.put(path, json={"value": value}, headers=ti.auth())).status_code == 204
                while not (line := await anext(lines)).startswith("id:"):
                    pass
                ids.append(line)
            assert ids == ["id: 1", "id: 2"]


async def test_a_worker_direct_write_wakes_a_watcher(direct: Direct, worker_env: None) -> None:  # noqa: F811
    """Redis: the worker's own store's script announces the write. S3: the server polls every
    ``STATEPORT_STATE_WATCH_POLL_S`` (2 s by default)."""
    ti = create_task_instance(direct.server)
    state = await direct_accessor(direct, ti)
    try:
        path = key_path(ti.id, "cursor")
        async with httpx.AsyncClient(base_url=direct.server.base_url, timeout=10) as api:
            got = await api.put(path, json={"value": "a"}, headers=ti.auth())
            assert got.status_code == 204
        poll = asyncio.create_task(long_poll(direct.server.base_url, path, ti.auth(), got.headers["etag"]))
        await asyncio.sleep(0.5)
        assert not poll.done()
        written = time.monotonic()
        await state.set("cursor", "b")
        response, answered = await asyncio.wait_for(poll, 30)
    finally:
        await state.close()
    assert response.status_code == 200
    assert response.json() == {"value": "b"}
    # Redis: a hint, milliseconds. S3: within the poll interval (and a read).
    assert answered - written < PROMPT_S
