"""Health, metrics, OpenAPI and the app's lifespan."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient

from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.http.app import create_app
from stateport.http.health import SCRAPE_STORE_S
from stateport.http.options import HEAD_AS_GET
from tests.fixtures.counting import Counted
from tests.fixtures.redis import redis_available
from tests.fixtures.sql import admin_sql
from tests.fixtures.tcp_proxy import TcpProxy
from tests.http.conftest import SECRET, World
from tests.relay import Relay
from tests.services import (
    POSTGRES_DB,
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    REDIS_URL,
    redis_key_prefix,
    require,
)


@pytest.fixture
def redis_available_url() -> str:
    require(redis_available(), f"Redis at {REDIS_URL}")
    return REDIS_URL


async def test_live_and_ready(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "state_store": "ok", "blob_store": "ok"}


async def test_metrics_count_by_route_template(client: httpx.AsyncClient, world: World) -> None:
    ti = world.tis["extract"].id
    await client.get(f"/execution/state/ti/{ti}/some/key", headers=world.auth("extract"))
    text = (await client.get("/metrics")).text
    assert 'route="/execution/state/ti/{task_instance_id}/{key}"' in text
    assert 'status="404"' in text
    assert "stateport_http_request_duration_seconds_bucket" in text
    assert str(ti) not in text


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    got = await client.get("/schema/openapi.json")
    assert got.status_code == 200
    paths = got.json()["paths"]
    assert "/execution/store/asset/by-name/value" in paths
    assert "/api/v2/dags/{dag_id}/dagRuns" in paths


async def test_all_map_indices_is_documented_only_where_it_means_something(client: httpx.AsyncClient) -> None:
    """A task scope's clear may widen to every map index; an asset scope has no map index."""
    paths = (await client.get("/schema/openapi.json")).json()["paths"]

    def parameters(path: str) -> set[str]:
        return {p["name"] for p in paths[path]["delete"].get("parameters", [])}

    assert "all_map_indices" in parameters("/api/v2/state-store/task/{dag_id}/{run_id}/{task_id}/{map_index}")
    assert "all_map_indices" not in parameters("/api/v2/state-store/asset/{name}")


async def test_lifespan_opens_migrates_and_closes(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
    assert (tmp_path / "own.db").exists()


async def test_ready_is_503_when_the_database_is_down(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        await app.state["services"].database.close()
        got = await client.get("/health/ready")
        assert got.status_code == 503
        assert got.headers["retry-after"] == "1"
        assert got.json()["status"] == "unavailable"
        # A monitor's HEAD hears the same (HEAD_AS_GET).
        for path in ("/health/ready", "/execution/health/ping"):
            head = await client.head(path)
            assert (head.status_code, head.headers["retry-after"]) == (503, "1"), path
        assert (await client.head("/health/live")).status_code == 200


async def test_the_execution_apis_health_routes_answer_as_airflows_without_a_token(
    client: httpx.AsyncClient,
) -> None:
    # The Airflow Task SDK's worker asks them (an outsider's find: 404 Not Found).
    health = await client.get("/execution/health")
    assert (health.status_code, health.json()) == (200, {"status": "healthy"})
    ping = await client.get("/execution/health/ping")
    assert (ping.status_code, ping.json()) == (
        200,
        {"ok": ["database", "state_store", "blob_store"], "failing": {}},
    )


async def test_health_and_version_paths_answer_head_as_their_get(client: httpx.AsyncClient) -> None:
    # RFC 9110 asks general-purpose servers to answer HEAD; monitors check with it (HAProxy's
    # `option httpchk HEAD /health/ready`), and they were answered 405. Served by the GET's handler: the
    # same status and Content-Length (an outsider saw `content-length: 4` on a first version). The server
    # leaves the body out (tests/e2e/test_head.py).
    for path in sorted(HEAD_AS_GET):
        head, get = await client.head(path), await client.get(path)
        assert (head.status_code, get.status_code) == (200, 200), path
        assert head.headers["content-length"] == get.headers["content-length"], path
    # Another GET route still answers HEAD 405, as Airflow's API does.
    assert (await client.head("/api/v2/dags")).status_code == 405


async def test_the_consoles_pages_and_the_openapi_document_answer_head_as_their_get(
    client: httpx.AsyncClient,
) -> None:
    # Static answers that link checkers and uptime monitors probe with HEAD (they were 405).
    for path in ("/ui", "/ui/dags", "/ui/runs", "/ui/static/console.js", "/schema", "/schema/openapi.json"):
        head, get = await client.head(path), await client.get(path)
        assert head.status_code == get.status_code, path
        assert head.status_code in (200, 302), (path, head.status_code)
        assert head.headers.get("content-length") == get.headers.get("content-length"), path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
    # Only those trees: a path that merely starts alike is not among them.
    assert (await client.head("/uix")).status_code == 404


async def test_the_execution_apis_ping_is_503_naming_the_store_that_is_down(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        await app.state["services"].database.close()
        got = await client.get("/execution/health/ping")
        assert (got.status_code, got.headers["retry-after"]) == (503, "1")
        # On SQLite the state store is the same database: both fail, each saying why.
        assert got.json()["ok"] == ["blob_store"] and set(got.json()["failing"]) == {
            "database",
            "state_store",
        }
        assert "closed" in got.json()["failing"]["database"], got.text


async def test_ready_and_the_metrics_name_a_blob_store_that_cannot_be_written(tmp_path: Path) -> None:
    # An outsider's find: with the blob store down (S3 stopped), readiness said ok and no metric moved until
    # a large report failed; every large report was a 503 meanwhile.
    blobs = tmp_path / "blobs"
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        database_url=f"sqlite:///{tmp_path / 'own.db'}",
        blob_dir=str(blobs),
        jwt_secret=SECRET,
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health/ready")).json()["checks"]["blob_store"] == "ok"
        shutil.rmtree(blobs, ignore_errors=True)
        blobs.write_text("not a directory")  # what a lost mount, or a full disk, does to its writes
        got = await client.get("/health/ready")
        assert got.status_code == 503, got.text
        assert got.json()["checks"]["blob_store"].startswith("unavailable:"), got.text
        scraped = (await client.get("/metrics")).text
        assert 'stateport_store_up{store="blob_store"} 0.0' in scraped
        assert 'stateport_store_up{store="database"} 1.0' in scraped


async def test_metrics_content_type_names_the_charset_once(client: httpx.AsyncClient) -> None:
    got = await client.get("/metrics")
    assert got.status_code == 200
    assert got.headers.get_list("content-type") == ["text/plain; version=1.0.0; charset=utf-8"]


async def _wait_until_held(relays: list[Relay], request: asyncio.Task[httpx.Response]) -> None:
    """Until every frozen relay has received a probe, or the request ended (the probes ran in turn)."""
    held: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(r.holding.wait() for r in relays)))
    pending: list[asyncio.Future[Any]] = [held, request]
    await asyncio.wait(pending, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    held.cancel()


async def test_ready_probes_run_at_once_under_one_deadline(
    postgres_url: str, redis_available_url: str, tmp_path: Path
) -> None:
    # Each probe's own bound is long (30 s): had they run in turn, the state store would hear nothing
    # while the frozen database keeps the first probe waiting.
    database = await Relay(POSTGRES_HOST, POSTGRES_PORT).start()
    redis_parts = urlsplit(redis_available_url)
    redis = await Relay(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379).start()
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        database_url=f"postgresql://{POSTGRES_USER}@127.0.0.1:{database.port}/{POSTGRES_DB}",
        state_backend="redis",
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        redis_prefix=redis_key_prefix(),
        db_timeout_s=30,
        jwt_secret=SECRET,
    )
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            assert (await client.get("/health/ready")).status_code == 200
            database.freeze()
            redis.freeze()
            request = asyncio.create_task(client.get("/health/ready"))
            await _wait_until_held([database, redis], request)
            assert database.held and redis.held, "the second probe waited for the first"
            database.thaw()
            redis.thaw()
            got = await request
            assert got.status_code == 200, got.text
            assert got.json()["checks"] == {"database": "ok", "state_store": "ok", "blob_store": "ok"}
    finally:
        database.thaw()
        redis.thaw()
        await services.close()
        await database.close()
        await redis.close()


@asynccontextmanager
async def _on_relayed_redis(
    database_url: str, redis_url: str, tmp_path: Path, db_timeout_s: float
) -> AsyncIterator[tuple[httpx.AsyncClient, Relay]]:
    """An app whose state store is the Redis at ``redis_url`` reached through a ``Relay`` the test freezes,
    and a client of it; whatever happens, the relay is thawed and everything closed."""
    redis_parts = urlsplit(redis_url)
    redis = await Relay(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379).start()
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        database_url=database_url,
        state_backend="redis",
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        redis_prefix=redis_key_prefix(),
        db_timeout_s=db_timeout_s,
        jwt_secret=SECRET,
    )
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            yield client, redis
    finally:
        redis.thaw()
        await services.close()
        await redis.close()


async def test_ready_names_the_frozen_store_and_answers_by_the_deadline(
    database_url: str, redis_available_url: str, tmp_path: Path
) -> None:
    # The deadline the frozen Redis costs; the database must answer within it on a busy machine (its
    # connection is opened by the first probe, before the freeze).
    async with _on_relayed_redis(database_url, redis_available_url, tmp_path, 3) as (client, redis):
        assert (await client.get("/health/ready")).status_code == 200
        redis.freeze()
        got = await client.get("/health/ready")
        assert got.status_code == 503
        assert got.json()["checks"] == {
            "database": "ok",
            "state_store": "unavailable: timed out",
            "blob_store": "ok",
        }


async def test_airflows_monitor_answers_while_the_state_store_is_frozen(
    database_url: str, redis_available_url: str, tmp_path: Path
) -> None:
    # It reports the database only, and waited for the state store's check too, to the deadline (an
    # outsider's find: 5 s a call with Redis stopped). The deadline here is far past the wait below.
    async with _on_relayed_redis(database_url, redis_available_url, tmp_path, 60) as (client, redis):
        assert (await client.get("/health/ready")).status_code == 200
        redis.freeze()
        ready = asyncio.create_task(client.get("/health/ready"))
        monitor = await asyncio.wait_for(client.get("/api/v2/monitor/health"), timeout=20)
        assert monitor.json()["metadatabase"] == {"status": "healthy"}
        assert not ready.done()  # still waiting on the frozen store
        redis.thaw()
        assert (await asyncio.wait_for(ready, timeout=60)).status_code in (200, 503)


async def test_ready_is_503_while_the_redis_replicas_every_write_waits_for_are_missing(
    postgres_url: str, redis_available_url: str, tmp_path: Path
) -> None:
    # The test Redis has no replica: every write answers 503 (STATEPORT_REDIS_MIN_REPLICAS) while reads
    # work, and readiness, which only read, said ok (a load balancer kept sending writes to the process).
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        database_url=postgres_url,
        state_backend="redis",
        redis_url=redis_available_url,
        redis_prefix=redis_key_prefix(),
        redis_min_replicas=1,
        db_timeout_s=2,
        jwt_secret=SECRET,
    )
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            got = await client.get("/health/ready")
            assert got.status_code == 503, got.text
            checks = got.json()["checks"]
            assert checks["database"] == "ok"
            assert checks["state_store"].startswith("unavailable: Redis has 0 replicas online"), checks
            assert "STATEPORT_REDIS_MIN_REPLICAS" in checks["state_store"]
            ping = await client.get("/execution/health/ping")
            assert ping.status_code == 503 and list(ping.json()["failing"]) == ["state_store"]
    finally:
        await services.close()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@asynccontextmanager
async def _through_a_relay(
    tmp_path: Path, timeout_s: float
) -> AsyncIterator[tuple[httpx.AsyncClient, Relay]]:
    """A client of an app whose database (PostgreSQL) is reached through a relay the test freezes."""
    database = await Relay(POSTGRES_HOST, POSTGRES_PORT).start()
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        database_url=f"postgresql://{POSTGRES_USER}@127.0.0.1:{database.port}/{POSTGRES_DB}",
        db_timeout_s=timeout_s,
        jwt_secret=SECRET,
    )
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            yield client, database
    finally:
        database.thaw()
        await services.close()
        await database.close()


async def test_ready_leaves_no_unretrieved_probe_exception_behind(postgres_url: str, tmp_path: Path) -> None:
    # The probes of a frozen database are cancelled at the deadline but end with the database's own
    # timeout (Unavailable); nobody retrieving it made asyncio log "Task exception was never retrieved"
    # with a traceback on every probe.
    # Its own handler on asyncio's logger: the app's logging set-up may replace the root logger's.
    records = _Records()
    logging.getLogger("asyncio").addHandler(records)
    try:
        async with _through_a_relay(tmp_path, 1) as (client, database):
            database.freeze()
            for _ in range(3):
                got = await client.get("/health/ready")
                assert got.status_code == 503, got.text
            # Let the cancelled probes end, then collect them: asyncio logs an unretrieved exception when
            # its task is destroyed.
            await asyncio.sleep(1.5)
            gc.collect()
            await asyncio.sleep(0)
    finally:
        logging.getLogger("asyncio").removeHandler(records)
    assert not [m for m in records.messages if "never retrieved" in m], records.messages


async def test_ready_is_503_while_another_process_holds_the_sqlite_write_lock(tmp_path: Path) -> None:
    # Reads go on, so a probe that only read said ready while every write waited out the busy timeout.
    path = tmp_path / "own.db"
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{path}", jwt_secret=SECRET, db_timeout_s=1
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            got = await client.get("/health/ready")
            assert got.status_code == 503, got.text
            assert got.json()["checks"]["database"].startswith("unavailable"), got.json()
            assert got.json()["checks"]["state_store"] == "ok"
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert (await client.get("/health/ready")).status_code == 200


async def test_ready_is_503_on_a_read_only_postgresql(fresh_postgres_url: str, tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path), database_url=fresh_postgres_url, jwt_secret=SECRET)
    await (await open_services(settings, migrate=True)).close()
    name = fresh_postgres_url.rsplit("/", 1)[1]
    # As a standby's sessions are: every transaction read-only.
    await admin_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    services = await open_services(settings, migrate=False)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            got = await client.get("/health/ready")
            assert got.status_code == 503, got.text
            assert "read-only" in got.json()["checks"]["database"], got.json()
            health = (await client.get("/api/v2/monitor/health")).json()
            assert health["metadatabase"]["status"] == "unhealthy"
    finally:
        await services.close()


@pytest.mark.parametrize("mode", ["SHARE", "ACCESS EXCLUSIVE"])
async def test_ready_is_503_while_a_table_is_locked_against_writes(
    fresh_postgres_url: str, tmp_path: Path, mode: str
) -> None:
    # An outsider's find: with the tables locked, every request answered 503 at its timeout, and readiness
    # said the database was ok. It says which at once (NOWAIT), and ok again once the lock is gone.
    settings = load_settings({}, data_dir=str(tmp_path), database_url=fresh_postgres_url, jwt_secret=SECRET)
    services = await open_services(settings, migrate=True)
    app = create_app(settings, services)
    locker = await asyncpg.connect(fresh_postgres_url)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            assert (await client.get("/health/ready")).status_code == 200
            async with locker.transaction():
                await locker.execute(f"LOCK TABLE task_instances IN {mode} MODE")
                got = await client.get("/health/ready")
                assert got.status_code == 503, got.text
                assert "locked against writes" in got.json()["checks"]["database"], got.json()
            assert (await client.get("/health/ready")).status_code == 200
    finally:
        await locker.close()
        await services.close()


async def test_health_checks_coming_together_share_one_run_of_the_checks(tmp_path: Path) -> None:
    # No token is needed: a flood of them took the SQLite write lock (or a PostgreSQL connection) once each,
    # ahead of the writes waiting for it.
    path = tmp_path / "own.db"
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{path}", jwt_secret=SECRET, db_timeout_s=1
    )
    services = await open_services(settings, migrate=True)
    counted = Counted(services.database, "ping")
    services.database = counted  # type: ignore[assignment]  # the real database, counted
    app = create_app(settings, services)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            other.execute("BEGIN IMMEDIATE")  # each check now lasts its deadline
            routes = ["/health/ready", "/api/v2/monitor/health"] * 50
            answers = await asyncio.gather(*(client.get(route) for route in routes))
            other.execute("ROLLBACK")
            assert [a.status_code for a in answers[::2]] == [503] * 50
            assert {a.json()["metadatabase"]["status"] for a in answers[1::2]} == {"unhealthy"}
            # One shared run of the checks for the readiness probes, one of the database's for the monitor's.
            assert counted.calls <= 2, counted.calls
            after = await client.get("/health/ready")
            assert after.status_code == 200, after.text
            assert counted.calls <= 3
    finally:
        other.close()
        await services.close()


async def test_ready_says_when_the_event_bus_reconnects_and_stays_200(
    postgres_url: str, redis_available_url: str, tmp_path: Path
) -> None:
    # An outsider's find: with the Redis event bus down, outcomes came 17-32 s late (at the waiters'
    # re-reads) and readiness said nothing. It says so now, without taking the process out of rotation.
    redis_parts = urlsplit(redis_available_url)
    bus = TcpProxy(upstream=(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379))
    await bus.start()
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        database_url=postgres_url,
        events_backend="redis",
        redis_url=f"redis://127.0.0.1:{bus.port}/0",
        redis_prefix=redis_key_prefix(),
        jwt_secret=SECRET,
    )
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            assert (await client.get("/health/ready")).json()["events"] == "ok"
            await bus.cut()
            for _ in range(200):  # the bus sees the cut within 10 s
                if not services.events.connected:
                    break
                await asyncio.sleep(0.05)
            got = await client.get("/health/ready")
            assert got.status_code == 200, got.text
            assert (got.json()["status"], got.json()["events"]) == ("ok", "reconnecting"), got.text
            # And the metrics say so, for an alert (an outsider's find: nothing did until it was back).
            assert "stateport_event_bus_connected 0.0" in (await client.get("/metrics")).text
            await bus.start()
            await services.events.wait_connected(30)  # type: ignore[attr-defined]  # the bus's own
            assert (await client.get("/health/ready")).json()["events"] == "ok"
            assert "stateport_event_bus_connected 1.0" in (await client.get("/metrics")).text
    finally:
        await services.close()
        await bus.cut()


async def test_a_scrape_answers_within_one_deadline_while_the_database_is_frozen(
    postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: /metrics took twice STATEPORT_DB_TIMEOUT_S (10 s by default, Prometheus's own
    # scrape timeout) while PostgreSQL was frozen, so the scrape failed and store_up 0 was never seen.
    timeout_s = 2.0
    async with _through_a_relay(tmp_path, timeout_s) as (client, database):
        up = (await client.get("/metrics")).text
        for store in ("database", "state_store", "blob_store"):
            assert f'stateport_store_up{{store="{store}"}} 1.0' in up, up
        database.freeze()
        loop = asyncio.get_running_loop()
        began = loop.time()
        got = await client.get("/metrics")
        took = loop.time() - began
        assert got.status_code == 200, got.text
        # The database and the state store in it (SQL): both late; the blob store (files) answers.
        assert 'stateport_store_up{store="database"} 0.0' in got.text
        assert 'stateport_store_up{store="state_store"} 0.0' in got.text
        assert 'stateport_store_up{store="blob_store"} 1.0' in got.text
        assert took < 2 * timeout_s - 0.5, took  # one deadline and some slack, not two


async def test_a_scrape_waits_for_a_hung_store_no_longer_than_a_scrape_timeout_allows(
    postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: with STATEPORT_DB_TIMEOUT_S at 15 s, the scrape of a hung database took 15 s,
    # past Prometheus's 10 s scrape timeout: the scrape failed, store_up 0 was never seen, no alert fired.
    async with _through_a_relay(tmp_path, 15.0) as (client, database):
        database.freeze()
        loop = asyncio.get_running_loop()
        began = loop.time()
        got = await client.get("/metrics")
        took = loop.time() - began
        assert 'stateport_store_up{store="database"} 0.0' in got.text
        assert took < SCRAPE_STORE_S + 2, took


async def test_scrapes_coming_together_share_one_reading_of_the_stores(tmp_path: Path) -> None:
    # /metrics needs no token, and each scrape reads the run store, probes the others and renders about a
    # megabyte: a flood of them took the stores' connections and the CPU from the requests that need them.
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    services = await open_services(settings, migrate=True)
    counted = Counted(services.stores.leases, "queue_backlogs")
    services.stores = dataclasses.replace(services.stores, leases=counted)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            answers = await asyncio.gather(*(client.get("/metrics") for _ in range(30)))
            assert {a.status_code for a in answers} == {200}
            assert all("stateport_store_up" in a.text for a in answers)
            assert counted.calls <= 2, counted.calls  # one reading shared (two if one ended as they came)
            await client.get("/metrics")  # one that comes after reads afresh
            assert counted.calls <= 3 and counted.calls >= 2, counted.calls
    finally:
        await services.close()
