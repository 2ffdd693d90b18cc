"""What the SQL adapter promises beyond the port contracts: durability, migrations, failures, batching."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import migrations, tables
from stateport.adapters.sql.database import Database, sqlalchemy_url
from stateport.adapters.sql.dialect import DIALECTS, Statement
from stateport.adapters.sql.migrations import DDL_LOCK_WAIT_S, HEAD_REVISION, alembic_config, current, upgrade
from stateport.adapters.sql.state import SqlStateStore
from stateport.adapters.sql.stores import open_run_stores
from stateport.domain.errors import Conflict, Held, Unavailable, Unsupported, Unwritable
from stateport.domain.fairness import current_caller
from stateport.domain.ids import uuid7
from stateport.domain.models import AssetRef, AssetScope, TaskInstance, TaskScope, TaskSpec, TIState
from stateport.domain.ports import RunStores
from tests.contract.makers import add_task_instances, make_run, make_tis, queued_run, register, spec
from tests.fixtures.sql import sqlite_url
from tests.fixtures.tcp_proxy import TcpProxy
from tests.services import (
    POSTGRES_DB,
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    free_port,
    unique,
)

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def now() -> datetime:
    return datetime.now(UTC)


def pg_url(database: str, *, port: int = POSTGRES_PORT) -> str:
    return f"postgresql://{POSTGRES_USER}@{POSTGRES_HOST}:{port}/{database}"


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of either dialect."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "nested" / "dir" / "fresh.db")
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


# --- durability ---------------------------------------------------------------------------------------

CRASH_WRITER = """
import asyncio, os, sys
from datetime import UTC, datetime
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.state import SqlStateStore
from stateport.domain.models import AssetScope

async def main() -> None:
    database = await Database.connect(sys.argv[1])
    store = SqlStateStore(database)
    await store.put(AssetScope(name=sys.argv[2]), "k", b'"kept"', expires_at=None, now=datetime.now(UTC))
    os._exit(0)  # die at once: no close, no checkpoint, no cleanup

asyncio.run(main())
"""


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "durable.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_a_write_survives_close_and_reopen(durable_url: str) -> None:
    await upgrade(durable_url)
    scope = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")
    database = await Database.connect(durable_url)
    await SqlStateStore(database).put(scope, "k", b'{"a": 1}', expires_at=None, now=now())
    await database.close()
    with pytest.raises(Unavailable):
        await SqlStateStore(database).get(scope, "k", now=now())
    database = await Database.connect(durable_url)
    try:
        got = await SqlStateStore(database).get(scope, "k", now=now())
        assert got is not None and got.value == b'{"a": 1}'
    finally:
        await database.close()


async def test_an_acknowledged_write_survives_a_process_crash(durable_url: str) -> None:
    await upgrade(durable_url)
    name = unique("crash")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", CRASH_WRITER, durable_url, name)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    database = await Database.connect(durable_url)
    try:
        got = await SqlStateStore(database).get(AssetScope(name=name), "k", now=now())
        assert got is not None and got.value == b'"kept"'
    finally:
        await database.close()


# --- connecting -----------------------------------------------------------------------------------------


async def test_sqlite_urls_and_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    for url in (f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}"):
        await upgrade(url)
        database = await Database.connect(url)
        try:
            assert database.dialect_name == "sqlite"
            await database.ping()
        finally:
            await database.close()
    assert path.exists()


async def test_postgres_url_spellings(postgres_url: str) -> None:
    rest = postgres_url.split("://", 1)[1]
    for scheme in ("postgresql", "postgresql+asyncpg", "postgres"):
        database = await Database.connect(f"{scheme}://{rest}", pool_size=2)
        try:
            assert database.dialect_name == "postgresql"
            await database.ping()
        finally:
            await database.close()


async def test_a_sqlite_database_on_a_full_disk_fails_its_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An outsider's find: on a full disk every write answered 503 "database or disk is full" while
    # readiness said ok (its write probe is rolled back before it needs the disk). No disk can be filled
    # here, so the floor is raised past what this one has free.
    from stateport.adapters.sql import sqlite

    path = tmp_path / "stateport.db"
    await upgrade(sqlite_url(path))
    database = await Database.connect(sqlite_url(path))
    try:
        await database.ping()
        monkeypatch.setattr(sqlite, "MIN_FREE_BYTES", 2**62)
        with pytest.raises(
            Unwritable, match=f"the disk that holds the SQLite database {re.escape(str(path))} is full"
        ):
            await database.ping()
    finally:
        await database.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_sqlite_file_deleted_or_replaced_under_the_server_fails_its_readiness(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An outsider's find: with its file deleted, the server went on answering 200 to writes (into the
    # deleted file), said ready, logged nothing, and started empty after a restart.
    path = tmp_path / "stateport.db"
    await upgrade(sqlite_url(path))
    database = await Database.connect(sqlite_url(path))
    try:
        await database.ping()
        for suffix in ("", "-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        if how == "replaced":
            await upgrade(sqlite_url(path))  # a new, empty database at the same path
        with pytest.raises(Unavailable, match=f"{re.escape(str(path))} was {how}"):
            await database.ping()
        with pytest.raises(Unavailable, match="put the database back"):
            await database.ping()
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "while this server ran" in errors[0], errors  # told once
    finally:
        await database.close()


async def test_an_unmigrated_database_is_unavailable_with_a_hint(tmp_path: Path) -> None:
    database = await Database.connect(sqlite_url(tmp_path / "empty.db"))
    try:
        with pytest.raises(Unavailable, match="stateport migrate"):
            await SqlStateStore(database).get(AssetScope(name="a"), "k", now=now())
    finally:
        await database.close()


# --- migrations -----------------------------------------------------------------------------------------


async def _schema_diff(url: str) -> list[Any]:
    engine = create_async_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: list(compare_metadata(MigrationContext.configure(sync), tables.metadata))
            )
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("stored", "says"),
    [("0999", "newer than this Stateport knows"), ("3f1a2b9c", "not one of Stateport's")],
)
async def test_a_schema_this_stateport_does_not_know_is_refused_in_one_sentence(
    fresh_url: str, stored: str, says: str
) -> None:
    # An outsider's find: a database a newer Stateport migrated (a deploy rolled back) made every command a
    # 100-line Alembic traceback ("Can't locate revision identified by '0018'").
    await upgrade(fresh_url)
    engine = create_async_engine(sqlalchemy_url(fresh_url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": stored})
    finally:
        await engine.dispose()
    with pytest.raises(Unsupported, match=says):
        await upgrade(fresh_url)


async def test_an_upgrade_says_which_revisions_it_went_from_and_to(fresh_url: str) -> None:
    # An outsider's find: a server upgraded 0012 to 0018 without a word, and `migrate` printed the same line
    # for a new database, an old one and one at head.
    assert await upgrade(fresh_url, "0016") == (None, "0016")
    done = await upgrade(fresh_url)
    assert done == ("0016", HEAD) and str(done) == f"schema migrated from 0016 to revision {HEAD}"
    again = await upgrade(fresh_url)
    assert again == (HEAD, HEAD) and str(again) == f"schema already at revision {HEAD}"


@pytest.mark.postgres
async def test_a_migration_waiting_for_a_tables_lock_lets_the_servers_queries_through(
    fresh_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An outsider's find: one session idle in a transaction that had read task_instances made the
    # migration's ALTER TABLE wait for its lock for 60 s, and every server query on the table queued behind
    # it: claims, heartbeats and triggers all 503 for that minute. The migration now waits for a lock at
    # most DDL_LOCK_WAIT_S at a time, rolls back between tries, and names the session it waits for.
    caplog.set_level(logging.WARNING, logger="stateport.migrations")
    await upgrade(fresh_postgres_url, "0016")  # 0017 adds a column to task_instances
    dsn = fresh_postgres_url
    holder = await asyncpg.connect(dsn)
    # A server's read, bounded as the server bounds its statements (STATEPORT_DB_TIMEOUT_S).
    server = await asyncpg.connect(dsn, command_timeout=DDL_LOCK_WAIT_S + 2)
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.fetchval("SELECT count(*) FROM task_instances")
        holder_pid = holder.get_server_pid()
        migrating = asyncio.create_task(upgrade(fresh_postgres_url))
        for _ in range(3 * int(DDL_LOCK_WAIT_S) * 4):  # three times the statement wait, 4 reads a second
            await server.fetchval("SELECT count(*) FROM task_instances")  # never queued past its bound
            await asyncio.sleep(0.25)
        assert not migrating.done()
        await holding.rollback()
        assert await asyncio.wait_for(migrating, 60) == ("0016", HEAD)
    finally:
        await holder.close()
        await server.close()
    waits = [r.getMessage() for r in caplog.records if "waits for a table's lock" in r.getMessage()]
    assert waits and f"pid {holder_pid} (idle in transaction" in waits[0], waits


@pytest.mark.postgres
async def test_a_migration_that_cannot_lock_its_tables_in_time_gives_up_naming_the_holder(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "LOCK_WAIT_S", 3.0)
    await upgrade(fresh_postgres_url, "0016")
    holder = await asyncpg.connect(fresh_postgres_url)
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.fetchval("SELECT count(*) FROM task_instances")
        with pytest.raises(Held) as gave_up:
            await upgrade(fresh_postgres_url)
        # The store answered: a Held (the CLI adds no "is it reachable?" hint), naming who holds it.
        said = gave_up.value.detail
        assert f"held by pid {holder.get_server_pid()} (idle in transaction" in said, said
        assert said.endswith("(nothing was changed)"), said
        await holding.rollback()
    finally:
        await holder.close()
    assert await current(fresh_postgres_url) == "0016"


async def test_migrations_build_exactly_the_tables_module(fresh_url: str) -> None:
    assert await current(fresh_url) is None
    await upgrade(fresh_url)
    assert await current(fresh_url) == HEAD
    assert await _schema_diff(fresh_url) == []


async def test_upgrade_is_idempotent(fresh_url: str) -> None:
    await upgrade(fresh_url)
    await upgrade(fresh_url)
    assert await current(fresh_url) == HEAD


async def test_concurrent_upgrades_are_safe(fresh_url: str) -> None:
    await asyncio.gather(*(upgrade(fresh_url) for _ in range(4)))
    assert await current(fresh_url) == HEAD
    assert await _schema_diff(fresh_url) == []


async def test_concurrent_upgrades_of_new_sqlite_files_never_find_them_locked(tmp_path: Path) -> None:
    # Readers of the stored revision once switched a new file to WAL beside each other and the upgrade:
    # SQLite answered one of them "database is locked" at once (about one start in 30 here).
    for attempt in range(40):
        url = sqlite_url(tmp_path / str(attempt) / "fresh.db")
        await asyncio.gather(*(upgrade(url) for _ in range(4)))
        assert await current(url) == HEAD


def test_the_head_revision_named_in_code_is_alembics_head() -> None:
    # upgrade's fast path compares the stored revision with HEAD_REVISION: a new migration must move it.
    assert HEAD_REVISION == HEAD


UPGRADE_ALONE = """
import asyncio, sys
from stateport.adapters.sql.migrations import upgrade
asyncio.run(upgrade(sys.argv[1]))
print("alembic" in sys.modules)
"""


async def test_a_database_at_head_is_seen_without_loading_alembic(fresh_url: str) -> None:
    async def upgrade_in_a_process() -> str:
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-c", UPGRADE_ALONE, fresh_url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await done.communicate()
        assert done.returncode == 0
        return out.decode().strip()

    await upgrade(fresh_url, "0009")  # a database of an older release
    assert await current(fresh_url) == "0009"
    assert await upgrade_in_a_process() == "True"  # Alembic upgrades it
    assert await current(fresh_url) == HEAD
    assert await upgrade_in_a_process() == "False"  # at head: one query, nothing else
    assert await current(fresh_url) == HEAD and await _schema_diff(fresh_url) == []


UPGRADER = """
import asyncio, sys
from stateport.adapters.sql.migrations import upgrade
asyncio.run(upgrade(sys.argv[1]))
"""


async def test_upgrades_from_several_processes_at_once_are_safe(fresh_url: str) -> None:
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", UPGRADER, fresh_url) for _ in range(3)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 60)
    assert codes == [0, 0, 0]
    assert await current(fresh_url) == HEAD


# What a database at 0005 held: three assets (two created together), two DAGs (one with an older version),
# a queued, a running and a finished run. Times are microseconds.
AT_0005 = [
    "INSERT INTO dags VALUES ('d1', 'vb', 200), ('d2', 'vc', 150)",
    "INSERT INTO dag_versions VALUES "
    """('d1', 'va', '{"tasks": [{"task_id": "old", "outlets": ["mid"]}]}', 100), """
    """('d1', 'vb', '{"tasks": [{"task_id": "t", "inlets": ["alpha"], """
    """"outlets": [{"name": "zeta", "uri": "s3://z"}]}]}', 200), """
    """('d2', 'vc', '{"tasks": [{"task_id": "u", "inlets": ["zeta"]}]}', 150)""",
    "INSERT INTO assets VALUES ('zeta', 's3://z', 100), ('alpha', NULL, 100), ('mid', NULL, 50)",
    "INSERT INTO dag_runs (dag_id, run_id, dag_version, conf, state, run_after_us, created_at_us, "
    "updated_at_us) VALUES ('d1', 'queued', 'vb', '{}', 'queued', 1, 210, 210), "
    "('d1', 'running', 'vb', '{}', 'running', 1, 220, 300), "
    "('d1', 'done', 'vb', '{}', 'success', 1, 230, 400)",
    "INSERT INTO task_instances (id, dag_id, run_id, task_id, map_index, try_number, state, queue, "
    "created_at_us, updated_at_us, started_at_us) VALUES "
    "('00000000-0000-7000-8000-000000000001', 'd1', 'running', 't', -1, 1, 'up_for_retry', 'q', 1, 1, 260), "
    "('00000000-0000-7000-8000-000000000002', 'd1', 'running', 't', -1, 2, 'running', 'q', 1, 1, 250), "
    "('00000000-0000-7000-8000-000000000003', 'd1', 'done', 't', -1, 1, 'success', 'q', 1, 1, 310)",
]


async def test_0006_numbers_existing_assets_versions_and_times_runs(fresh_url: str) -> None:
    await upgrade(fresh_url, "0005")
    engine = create_async_engine(sqlalchemy_url(fresh_url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            for statement in AT_0005:
                await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()
    await upgrade(fresh_url)
    assert await current(fresh_url) == HEAD
    assert await _schema_diff(fresh_url) == []
    database = await Database.connect(fresh_url)
    try:
        stores = open_run_stores(database)
        # Ids in creation order, then by name; state stays by name, so nothing else moves.
        assets = {name: await stores.dags.get_asset(name=name) for name in ("mid", "alpha", "zeta")}
        assert {name: (a.id, a.uri, a.updated_at) for name, a in assets.items() if a is not None} == {
            "mid": (1, None, from_us(50)),
            "alpha": (2, None, from_us(100)),
            "zeta": (3, "s3://z", from_us(100)),
        }
        # References of the current versions only.
        refs = await stores.dags.asset_references([1, 2, 3])
        assert [(r.asset_id, r.dag_id, r.task_id, r.kind.value, r.created_at) for r in refs] == [
            (2, "d1", "t", "inlet", from_us(200)),
            (3, "d1", "t", "outlet", from_us(200)),
            (3, "d2", "u", "inlet", from_us(150)),
        ]
        numbers = {}
        for dag_id, version in (("d1", "va"), ("d1", "vb"), ("d2", "vc")):
            dag = await stores.dags.get_dag(dag_id, version)
            assert dag is not None
            numbers[version] = dag.version_number
        assert numbers == {"va": 1, "vb": 2, "vc": 1}
        times = {}
        for run_id in ("queued", "running", "done"):
            run = await stores.runs.get_run("d1", run_id)
            assert run is not None
            times[run_id] = (run.started_at, run.ended_at)
        assert times == {
            "queued": (None, None),
            "running": (from_us(250), None),
            "done": (from_us(310), from_us(400)),
        }
        # New assets and versions continue after the migrated ones.
        await register(
            stores.dags,
            "d1",
            spec(
                TaskSpec(task_id="t", inlets=["alpha"], outlets=["new", AssetRef(name="zeta", uri="s3://z")])
            ),
        )
        fresh, alpha = await stores.dags.get_asset(name="new"), await stores.dags.get_asset(name="alpha")
        assert fresh is not None and fresh.id == 4 and alpha is not None and alpha.id == 2
        current_dag = await stores.dags.get_dag("d1")
        assert current_dag is not None and current_dag.version_number == 3
    finally:
        await database.close()


async def test_0006_goes_past_a_stored_spec_it_cannot_read(fresh_url: str) -> None:
    # A spec stored by an older release (or damaged) that no longer decodes must not stop the upgrade: it
    # declares no assets, and the rest is migrated.
    await upgrade(fresh_url, "0005")
    engine = create_async_engine(sqlalchemy_url(fresh_url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO dags VALUES "
                    "('odd', 'v1', 10), ('bad', 'v2', 20), ('mix', 'v4', 25), ('ok', 'v3', 30)"
                )
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO dag_versions VALUES ('odd', 'v1', '{\"tasks\": 1}', 10), "
                    "('bad', 'v2', 'not json', 20), "
                    """('mix', 'v4', '{"tasks": [{"task_id": "m", "inlets": [7, {"uri": "x"}]}, 3]}', 25), """
                    """('ok', 'v3', '{"tasks": [{"task_id": "t", "inlets": ["a"]}]}', 30)"""
                )
            )
            await conn.execute(sa.text("INSERT INTO assets VALUES ('a', NULL, 5)"))
    finally:
        await engine.dispose()
    await upgrade(fresh_url)
    assert await current(fresh_url) == HEAD
    database = await Database.connect(fresh_url)
    try:
        stores = open_run_stores(database)
        refs = await stores.dags.asset_references([1])
        assert [(r.dag_id, r.task_id, r.kind.value) for r in refs] == [("ok", "t", "inlet")]
        ok = await stores.dags.get_dag("ok")
        assert ok is not None and ok.version_number == 1
    finally:
        await database.close()


async def test_upgrade_of_an_unreachable_postgres_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        await upgrade(pg_url(POSTGRES_DB, port=free_port()))


# --- PostgreSQL that is down ---------------------------------------------------------------------------


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy()
    await proxy.start()
    yield proxy
    await proxy.cut()


async def test_connecting_to_a_closed_port_is_unavailable_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await Database.connect(pg_url(POSTGRES_DB, port=free_port()), timeout_s=30.0)
    assert time.monotonic() - started < 5.0  # refused at once, not after the 30 s timeout


async def test_an_upgrade_on_a_frozen_postgres_is_unavailable_within_its_timeout(proxy: TcpProxy) -> None:
    # An outsider's find: `stateport serve` and the CLI took 10 s to say "the database did not answer in
    # time" whatever STATEPORT_DB_TIMEOUT_S said (the migrations' connection had its own 10 s).
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="did not answer in time"):
        await upgrade(pg_url(POSTGRES_DB, port=proxy.port), timeout_s=1.0)
    assert time.monotonic() - started < 5.0


def _operations(database: Database) -> list[Callable[[], Awaitable[object]]]:
    state, stores = SqlStateStore(database), open_run_stores(database)
    scope = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")
    ti = TaskInstance(
        id=uuid7(),
        dag_id=scope.dag_id,
        run_id=scope.run_id,
        task_id="t",
        map_index=-1,
        try_number=1,
        state=TIState.SCHEDULED,
    )
    return [
        database.ping,
        lambda: state.get(scope, "k", now=now()),
        lambda: state.put(scope, "k", b"1", expires_at=None, now=now()),
        lambda: state.delete(scope, "k", now=now()),
        lambda: state.list(scope, now=now()),
        lambda: state.clear(scope),
        lambda: state.purge_expired(now=now()),
        lambda: stores.dags.get_dag(scope.dag_id),
        lambda: stores.runs.get_run(scope.dag_id, scope.run_id),
        lambda: stores.runs.list_task_instances(scope.dag_id, scope.run_id),
        lambda: stores.bindings.get_binding(ti.id),
        lambda: stores.bindings.task_exists(scope),
        lambda: add_task_instances(stores.runs, [ti]),
        lambda: stores.leases.extend_lease(ti.id, now(), now=now()),
        lambda: stores.dags.get_asset(name="a"),
    ]


async def _assert_unavailable_within(database: Database, timeout_s: float) -> None:
    """Every operation raises Unavailable rather than hanging (a bound generous for a busy machine)."""
    limit_s = timeout_s * 3 + 2
    for operation in _operations(database):
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await operation()
        assert time.monotonic() - started < limit_s


async def test_a_postgres_that_goes_away_is_unavailable(proxy: TcpProxy) -> None:
    database = await Database.connect(pg_url(POSTGRES_DB, port=proxy.port), pool_size=4, timeout_s=1.0)
    try:
        await database.ping()
        await proxy.cut()
        await _assert_unavailable_within(database, 1.0)
    finally:
        await database.close()


async def test_a_postgres_that_stops_answering_is_unavailable_after_the_timeout(proxy: TcpProxy) -> None:
    database = await Database.connect(pg_url(POSTGRES_DB, port=proxy.port), pool_size=4, timeout_s=0.5)
    try:
        await SqlStateStore(database).get(AssetScope(name="warm"), "k", now=now())
        proxy.freeze()
        await _assert_unavailable_within(database, 0.5)
    finally:
        await database.close()


async def test_a_transaction_cancelled_while_postgres_hangs_ends_at_once(proxy: TcpProxy) -> None:
    # An outsider's find: a transaction whose task was cancelled (the server shutting down) sent its
    # ROLLBACK to a server that had stopped answering and waited for it for ever, and the shutdown with it.
    # Its connection is dropped instead (the server rolls back what a dropped connection left open).
    database = await Database.connect(pg_url(POSTGRES_DB, port=proxy.port), pool_size=2, timeout_s=2.0)
    try:
        in_transaction = asyncio.Event()

        async def hold() -> None:
            async with database.transaction() as session:
                await session.fetchrow(Statement("SELECT 1", (), {}), {})
                in_transaction.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(hold())
        await asyncio.wait_for(in_transaction.wait(), 10)
        proxy.freeze()
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 1.5  # not a ROLLBACK's wait, which asyncpg does not bound
    finally:
        await database.close()


async def test_requests_queued_behind_a_hung_pool_are_unavailable_within_one_timeout(proxy: TcpProxy) -> None:
    """The wait for a connection and the command share one ``timeout_s``: requests queued behind a pool
    whose connections all hang used to wait for their turn, then as long again for their command."""
    timeout_s = 1.0
    database = await Database.connect(pg_url(POSTGRES_DB, port=proxy.port), pool_size=2, timeout_s=timeout_s)
    state = SqlStateStore(database)

    async def timed_get() -> float:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await state.get(AssetScope(name="k"), "k", now=now())
        return time.monotonic() - started

    try:
        await asyncio.gather(database.ping(), database.ping())  # both connections open
        proxy.freeze()
        first = [asyncio.ensure_future(timed_get()) for _ in range(2)]  # they take both connections
        await asyncio.sleep(0.05)
        # Queued a moment later: they get their turns when the first two time out, just before their own wait
        # for a turn would; before, each then waited a whole timeout again for its command.
        elapsed = await asyncio.gather(*first, *(timed_get() for _ in range(4)))
        assert max(elapsed) < timeout_s * 1.7, elapsed
    finally:
        await database.close()


async def test_a_transaction_whose_server_stops_answering_is_unavailable_within_one_timeout(
    proxy: TcpProxy,
) -> None:
    """An outsider's find: a write's 503 came at twice ``timeout_s`` when PostgreSQL froze mid-transaction:
    its statement timed out, then asyncpg's ROLLBACK waited a timeout more before the connection went."""
    timeout_s = 1.0
    database = await Database.connect(pg_url(POSTGRES_DB, port=proxy.port), pool_size=2, timeout_s=timeout_s)
    try:
        await database.ping()
        for opened in (database.transaction, database.snapshot):
            started = 0.0
            with pytest.raises(Unavailable):
                async with opened() as session:
                    proxy.freeze()
                    started = time.monotonic()
                    await session.fetchrow(Statement("SELECT 1", (), {}), {})
            assert time.monotonic() - started < timeout_s * 1.7
            await proxy.cut()  # PostgreSQL answers again, on new connections
            await proxy.start()
        # The pool goes on with new connections.
        assert await open_run_stores(database).runs.get_run("d", "r") is None
    finally:
        await database.close()


@pytest.mark.postgres
async def test_a_transaction_whose_connection_is_killed_says_so(postgres_url: str) -> None:
    """An outsider's find: a 503's reason was asyncpg's complaint about the clean-up ("cannot call
    Connection.terminate(): connection has been released back to the pool", "cannot call
    Transaction.rollback(): the underlying connection is closed"), not what happened."""
    database = await Database.connect(postgres_url, pool_size=2, timeout_s=5.0)
    kill = Statement("SELECT pg_terminate_backend(pg_backend_pid())", (), {})
    try:
        with pytest.raises(Unavailable) as refused:
            async with database.transaction() as session:
                await session.fetchrow(kill, {})
        reason = str(refused.value)
        assert "released back to the pool" not in reason and "rollback" not in reason.lower(), reason
        # The caller's own error, raised once its connection went: that error, not the ROLLBACK's.
        with pytest.raises(Conflict, match="the caller's own"):
            async with database.transaction() as session:
                with contextlib.suppress(Unavailable, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await session.fetchrow(kill, {})
                raise Conflict("the caller's own error, after its connection went")
        # The pool goes on with new connections.
        assert await open_run_stores(database).runs.get_run("d", "r") is None
    finally:
        await database.close()


async def test_callers_take_turns_at_the_connections(fresh_url: str) -> None:
    """One caller's burst does not queue every other caller behind it (adapters/shared/turns.py): with the
    one connection (or SQLite's one writer) held, the waiting callers take turns."""
    await upgrade(fresh_url)
    database = await Database.connect(fresh_url, pool_size=1)
    order: list[str] = []
    taken, held = asyncio.Event(), asyncio.Event()

    async def write(caller: str, name: str, hold: bool = False) -> None:
        current_caller.set(caller)
        async with database.transaction():
            order.append(name)
            if hold:
                taken.set()
                await held.wait()

    try:
        holder = asyncio.create_task(write("a", "a0", hold=True))
        await taken.wait()
        waiting = []
        for caller, name in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1")]:
            waiting.append(asyncio.create_task(write(caller, name)))
            await asyncio.sleep(0.01)  # queued in this order
        held.set()
        await asyncio.gather(holder, *waiting)
    finally:
        await database.close()
    assert order == ["a0", "a1", "b1", "c1", "a2", "a3"]


# DAG 'one' at version 'v1', for the plan tests' rows.
ONE_DAG = """
    INSERT INTO dags (dag_id, current_version, updated_at_us) VALUES ('one', 'v1', 0);
    INSERT INTO dag_versions (dag_id, version, spec, created_at_us, version_number)
        VALUES ('one', 'v1', '{}', 0, 1);
"""


async def test_a_claim_reads_its_own_index_on_a_table_never_analysed(fresh_postgres_url: str) -> None:
    """An outsider's find: on a table with no statistics (autovacuum off, or a burst before it runs) the
    claim picked a fair-tag index, whose predicate it implied, and read and sorted a 7,100-try backlog for
    a claim of one. Those indexes are fenced off (``tables.FAIR_QUEUED``)."""
    from stateport.adapters.sql.leases import _statements as lease_statements

    await upgrade(fresh_postgres_url)
    conn = await asyncpg.connect(fresh_postgres_url)
    try:
        await conn.execute(ONE_DAG)
        await conn.execute(
            """
            INSERT INTO dag_runs (dag_id, run_id, dag_version, conf, state, run_after_us, created_at_us,
                                  updated_at_us, priority, caller)
                SELECT 'one', 'r' || i, 'v1', '{}', 'queued', 0, i, i, 0, md5((i % 50)::text)
                FROM generate_series(1, 10000) i;
            INSERT INTO task_instances (id, dag_id, run_id, task_id, map_index, try_number, state, queue,
                                        created_at_us, updated_at_us, caller, fair_tag, priority_rank)
                SELECT lpad(to_hex(i), 36, '0'), 'one', 'r' || i, 't', -1, 1,
                       CASE WHEN i <= 2900 THEN 'success' ELSE 'queued' END, 'default', i, i,
                       md5((i % 50)::text), i / 50, 0
                FROM generate_series(1, 10000) i;
            """
        )
        at = to_us(now())
        for name in ("claim", "claim_of_dags"):
            statement = getattr(lease_statements("postgresql"), name)
            params = {
                "queue": "default",
                "limit": 1,
                "worker_id": "w",
                "claimant": None,
                "until_us": at,
                "now_us": at,
            }
            if name == "claim_of_dags":
                params["dag_ids"] = ["one"]
            async with conn.transaction():
                plan = "\n".join(
                    r[0] for r in await conn.fetch("EXPLAIN " + statement.sql, *statement.args(params))
                )
            assert "ix_task_instances_fair" not in plan, plan
    finally:
        await conn.close()


async def test_a_held_runs_place_reads_its_own_indexes_on_a_table_never_analysed(
    fresh_postgres_url: str,
) -> None:
    """A held run's place (``runs.hold_tag``) read its caller's last place with max() through
    ix_dag_runs_unfinished on a table with no statistics: every held run of the DAG for each trigger. Each
    read is one row of its own index, as are admissions' held runs in order."""
    from stateport.adapters.sql.runs import _statements as run_statements

    await upgrade(fresh_postgres_url)
    conn = await asyncpg.connect(fresh_postgres_url)
    try:
        await conn.execute(ONE_DAG)
        await conn.execute(
            """
            INSERT INTO dag_runs (dag_id, run_id, dag_version, conf, state, run_after_us, created_at_us,
                                  updated_at_us, held_by, caller, hold_tag)
                SELECT 'one', 'r' || i, 'v1', '{}', CASE WHEN i <= 5000 THEN 'success' ELSE 'queued' END, 0,
                       i, i, CASE WHEN i > 5002 THEN 'max_active_runs' END, 'c' || (i % 50), i / 50
                FROM generate_series(1, 8000) i;
            """
        )
        statements = run_statements("postgresql")
        run = {
            "dag_id": "one", "run_id": "new", "dag_version": "v1", "conf": "{}", "state": "queued",
            "run_after_us": 0, "created_at_us": 9000, "updated_at_us": 9000, "outcome": None,
            "idempotency_key": None, "request_hash": None, "started_at_us": None, "ended_at_us": None,
            "traceparent": None, "deadline_at_us": None, "held_by": "max_active_runs", "priority": 0,
            "caller": "c7", "note": None,
        }  # fmt: skip
        for statement, params in (
            (statements.insert_held_run, run),
            (statements.insert_held_run_of_no_caller, {**run, "caller": None}),
            (statements.held_runs, {"dag_id": "one", "limit": 2}),
        ):
            async with conn.transaction():
                rows = await conn.fetch("EXPLAIN ANALYZE " + statement.sql, *statement.args(params))
                plan = "\n".join(r[0] for r in rows)
                await conn.execute("ROLLBACK; BEGIN")  # the insert's row goes
            assert "ix_dag_runs_unfinished" not in plan, plan
            assert "Sort" not in plan, plan
            assert all(int(read) <= 2 for read in re.findall(r"actual time=\S+ rows=(\d+)", plan)), plan
    finally:
        await conn.close()


# --- SQLite writers -------------------------------------------------------------------------------------


async def test_sqlite_concurrent_puts_on_one_key_lose_no_version(sqlite_state_store: SqlStateStore) -> None:
    scope = AssetScope(name=unique("hot"))
    writers = 200
    await asyncio.gather(
        *(
            sqlite_state_store.put(scope, "k", str(i).encode(), expires_at=None, now=now())
            for i in range(writers)
        )
    )
    got = await sqlite_state_store.get(scope, "k", now=now())
    assert got is not None and got.version == writers


async def test_sqlite_two_handles_on_one_file_serialise_their_writes(tmp_path: Path) -> None:
    # Two Database objects stand for two processes: each has its own writer lock, SQLite arbitrates.
    url = sqlite_url(tmp_path / "shared.db")
    await upgrade(url)
    first, second = await Database.connect(url), await Database.connect(url)
    try:
        scope = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")
        stores = [SqlStateStore(first), SqlStateStore(second)]
        await asyncio.gather(
            *(stores[i % 2].put(scope, "k", b"1", expires_at=None, now=now()) for i in range(100))
        )
        got = await stores[0].get(scope, "k", now=now())
        assert got is not None and got.version == 100
    finally:
        await first.close()
        await second.close()


async def test_a_sqlite_write_that_waited_for_its_turn_gets_its_503_within_its_timeout(
    tmp_path: Path,
) -> None:
    # An outsider's find: while another process held the file's write lock, a write that waited for its
    # turn behind a first one then waited out SQLite's whole busy timeout besides: a 503 after 8.4 s with
    # a timeout of 5 s. What is left of its timeout bounds the busy wait now.
    path = tmp_path / "held.db"
    url = sqlite_url(path)
    await upgrade(url)
    db = await Database.connect(url, timeout_s=2.0)
    other = sqlite3.connect(path, isolation_level=None)
    store = SqlStateStore(db)
    scope = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")

    async def write(after_s: float) -> float:
        await asyncio.sleep(after_s)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.put(scope, "k", b"1", expires_at=None, now=now())
        return time.monotonic() - started

    try:
        other.execute("BEGIN EXCLUSIVE")
        # The second gets its turn after waiting 1 s of its 2: before, it waited the busy timeout's 2 s
        # more (3 s in all).
        first, second = await asyncio.gather(write(0.0), write(1.0))
        assert first >= 1.9 and second < 2.6, (first, second)
        other.execute("ROLLBACK")
        await store.put(scope, "k", b"2", expires_at=None, now=now())  # the full busy timeout again
        got = await store.get(scope, "k", now=now())
        assert got is not None and got.value == b"2"
    finally:
        other.close()
        await db.close()


async def test_a_sqlite_write_cancelled_while_it_begins_leaves_no_transaction_open(tmp_path: Path) -> None:
    # aiosqlite runs a cancelled call's statement anyway: the BEGIN IMMEDIATE, waiting for another
    # process's write lock, ran once the lock was free, and every write after it went into that
    # transaction, acknowledged and never committed.
    path = tmp_path / "cancelled.db"
    url = sqlite_url(path)
    await upgrade(url)
    db, witness = await Database.connect(url), await Database.connect(url)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")

        async def begin() -> None:
            async with db.transaction():
                pass

        task = asyncio.create_task(begin())
        await asyncio.sleep(0.3)  # in SQLite's busy handler, on the writer's thread
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        other.execute("ROLLBACK")
        scope = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")
        for i in range(3):
            await SqlStateStore(db).put(scope, "k", str(i).encode(), expires_at=None, now=now())
            # Committed: another handle on the file (another process) reads it.
            got = await SqlStateStore(witness).get(scope, "k", now=now())
            assert got is not None and got.value == str(i).encode()
    finally:
        other.close()
        await db.close()
        await witness.close()


async def test_a_sqlite_read_cancelled_while_it_begins_leaves_no_snapshot_pinned(tmp_path: Path) -> None:
    # The same on a reader: a read transaction left open would answer every later read from one snapshot.
    url = sqlite_url(tmp_path / "pinned.db")
    await upgrade(url)
    db = await Database.connect(url)
    store = SqlStateStore(db)
    scope = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")
    try:
        for _ in range(8):  # each reader, in turn

            async def snapshot() -> None:
                async with db.snapshot():
                    pass

            task = asyncio.create_task(snapshot())
            await asyncio.sleep(0)  # waiting for its BEGIN, on a reader's thread
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.get(scope, "k", now=now())
        for i in range(3):
            await store.put(scope, "k", str(i).encode(), expires_at=None, now=now())
            for _ in range(8):
                got = await store.get(scope, "k", now=now())
                assert got is not None and got.value == str(i).encode()
    finally:
        await db.close()


async def test_a_failed_transaction_leaves_nothing_behind(sqlite_run_stores: RunStores) -> None:
    dag = await register(sqlite_run_stores.dags, unique("dag"), spec())
    run = make_run(dag)
    tis = make_tis(run, ["t"])
    with pytest.raises(Conflict):
        await sqlite_run_stores.runs.create_run(run, tis + tis)  # the second insert of one TI fails
    assert await sqlite_run_stores.runs.get_run(dag.dag_id, run.run_id) is None
    # The writer is usable again afterwards.
    assert await sqlite_run_stores.runs.create_run(run, tis) == run


# --- expiry ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sql_state_store(request: pytest.FixtureRequest) -> SqlStateStore:
    store: SqlStateStore = request.getfixturevalue(f"{request.param}_state_store")
    return store


async def test_expired_rows_are_purged_in_batches(sql_state_store: SqlStateStore) -> None:
    t0 = now()
    task = TaskScope(dag_id=unique("dag"), run_id=unique("run"), task_id="t")
    asset = AssetScope(name=unique("asset"))
    for i in range(23):
        await sql_state_store.put(task, f"old{i}", b"1", expires_at=t0 - timedelta(seconds=1), now=t0)
    for i in range(7):
        await sql_state_store.put(asset, f"old{i}", b"1", expires_at=t0, now=t0)
    await sql_state_store.put(task, "live", b"1", expires_at=t0 + timedelta(days=1), now=t0)
    await sql_state_store.put(asset, "forever", b"1", expires_at=None, now=t0)
    # The shared PostgreSQL database may hold other tests' expired rows: at least ours go.
    assert await sql_state_store.purge_expired(now=t0, batch_size=5) >= 30
    past = t0 - timedelta(hours=1)
    assert [e.key for e in (await sql_state_store.list(task, now=past)).entries] == ["live"]
    assert [e.key for e in (await sql_state_store.list(asset, now=past)).entries] == ["forever"]
    assert await sql_state_store.purge_expired(now=t0, batch_size=5) >= 0


# --- the times written ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sql_database(request: pytest.FixtureRequest) -> Database:
    database: Database = request.getfixturevalue(f"{request.param}_database")
    return database


async def _stamps(database: Database, ti_id: uuid.UUID) -> tuple[datetime, datetime]:
    """A task instance's ``created_at_us`` and ``updated_at_us``, which no model exposes."""
    tis = tables.task_instances
    stmt = DIALECTS[database.dialect_name].compile(
        sa.select(tis.c.created_at_us, tis.c.updated_at_us).where(tis.c.id == sa.bindparam("id"))
    )
    row = await database.fetchrow(stmt, {"id": str(ti_id)})
    assert row is not None
    return from_us(row["created_at_us"]), from_us(row["updated_at_us"])


async def test_every_change_to_a_task_instance_is_stamped_with_the_now_given(sql_database: Database) -> None:
    # Far from the real clock: a store stamping its own time could not pass. The leases end an hour from
    # the real now: the database is shared, and a server another test runs sweeps it by its own clock (a
    # lease ending in 2001 was expired under this test once, in a full run).
    t0 = datetime(2001, 1, 1, tzinfo=UTC)
    lease_until = datetime.now(UTC) + timedelta(hours=1)
    stores = open_run_stores(sql_database)
    run, (ti,) = await queued_run(stores, 1, at=t0)
    assert await _stamps(sql_database, ti.id) == (t0, t0)
    claimed_at = t0 + timedelta(minutes=1)
    (claimed,) = await stores.leases.claim(ti.queue, "w", limit=1, now=claimed_at, lease_until=lease_until)
    assert await _stamps(sql_database, ti.id) == (t0, claimed_at)
    beat = t0 + timedelta(minutes=2)
    assert await stores.leases.extend_lease(ti.id, lease_until, now=beat) is TIState.RUNNING
    assert await _stamps(sql_database, ti.id) == (t0, beat)
    ended = t0 + timedelta(minutes=3)
    (retry,) = make_tis(run, [ti.task_id], try_number=2)
    async with stores.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.transition(ti.id, TIState.RUNNING, TIState.UP_FOR_RETRY, now=ended)
        await unit.add_task_instances([retry], now=ended)
    assert await _stamps(sql_database, ti.id) == (t0, ended)
    assert await _stamps(sql_database, retry.id) == (ended, ended)
    assert claimed.started_at == claimed_at


async def test_a_postgresql_without_autovacuum_is_named_to_the_operator(
    postgres_database: Database, sqlite_database: Database, postgres_url: str
) -> None:
    # Whether this server runs autovacuum is its configuration (off on the benchmark machine): read it the
    # way an operator would, and the warning must say the same.
    connection = await asyncpg.connect(postgres_url)
    try:
        runs = [await connection.fetchval(f"SHOW {name}") for name in ("autovacuum", "track_counts")]
    finally:
        await connection.close()
    warnings = await postgres_database.maintenance_warnings()
    if runs == ["on", "on"]:
        assert warnings == []
    else:
        assert (
            len(warnings) == 1
            and "autovacuum (or its track_counts) is off" in warnings[0]
            and "ANALYZE" in warnings[0]
        )
    assert await sqlite_database.maintenance_warnings() == []


async def test_a_locked_run_reads_every_change_made_since_its_last_read(sql_database: Database) -> None:
    # A store keeps the task instances it decoded, each with its row (``DecodedRows``): a row changed since,
    # by another process or by this one outside a locked run, must be read as it is now, even when the
    # change is stamped with the same instant and only its state or lease tells it apart.
    here, there = open_run_stores(sql_database), open_run_stores(sql_database)
    at = now()
    run, tis = await queued_run(here, 3, at=at)
    async with here.runs.lock_run(run.dag_id, run.run_id) as unit:
        assert await unit.task_instances() == tis
    (claimed,) = await there.leases.claim(tis[0].queue, "w1", limit=1, now=at, lease_until=at)
    async with there.runs.lock_run(run.dag_id, run.run_id) as unit:
        skipped = next(ti for ti in tis if ti.id != claimed.id)
        assert await unit.transition(skipped.id, TIState.QUEUED, TIState.SKIPPED, now=at)
    later = at + timedelta(seconds=30)
    assert await here.leases.extend_lease(claimed.id, later, now=at) is TIState.RUNNING
    async with here.runs.lock_run(run.dag_id, run.run_id) as unit:
        seen = await unit.task_instances()
    assert seen == await there.runs.list_task_instances(run.dag_id, run.run_id)
    states = {ti.id: (ti.state, ti.lease_owner, ti.lease_expires_at) for ti in seen}
    assert states[claimed.id] == (TIState.RUNNING, "w1", later)
    assert states[skipped.id] == (TIState.SKIPPED, None, None)
    assert sorted(state for state, _, _ in states.values()) == sorted(
        [TIState.RUNNING, TIState.SKIPPED, TIState.QUEUED]
    )
