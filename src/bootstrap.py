"""The composition root: choose adapters from settings, wire them into use cases, open and close them.

The HTTP app, the CLI and the tests all build their services here, so they run the same wiring. Nothing
connects at import time; ``open_services`` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from stateport.adapters.clock import SystemClock
from stateport.adapters.jwt import JwtTokenService
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.state import SqlStateStore
from stateport.adapters.sql.stores import open_run_stores
from stateport.adapters.sql.workers import SqlWorkerStore
from stateport.config import Settings, ensure_secret
from stateport.domain.assets import AssetCatalog
from stateport.domain.disconnects import CallerRegistry
from stateport.domain.engine import RunCore
from stateport.domain.engine.advancing import RunAdvancer
from stateport.domain.engine.claims import ClaimBroker
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.events import DELETED_TOPIC, LOST_TOPIC, RunEvents
from stateport.domain.engine.handoff import LostWorkers, WaitingClaims
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.progress import DEADLINE_EXCEEDED
from stateport.domain.engine.reporting import TaskReports
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.engine.sweeper import LeaseSweeper
from stateport.domain.errors import StateportError, Unavailable
from stateport.domain.ports import (
    BlobStore,
    Clock,
    DagStore,
    EventBus,
    LeaseStore,
    RunStore,
    RunStores,
    StateChanges,
    StateStore,
    TokenService,
)
from stateport.domain.ports.observer import install as install_observer
from stateport.domain.quiet import Repeated
from stateport.domain.results import BlobLink
from stateport.domain.retention import RunRetention
from stateport.domain.run_feed import RunFeed
from stateport.domain.runs import RunService
from stateport.domain.seats import STREAMED_PAGES, Seats
from stateport.domain.state import DeletedRuns, StateService
from stateport.domain.waiting import RunWaits, WaitConfig
from stateport.domain.watching import StateWatches, WatchConfig
from stateport.domain.workers import WorkerRegistry
from stateport.fds import fd_limit, wait_room
from stateport.telemetry.observer import TelemetryObserver

if TYPE_CHECKING:  # boto3 loads only when S3 is configured
    from stateport.adapters.s3.client import S3Location

log = logging.getLogger("stateport")


@dataclass
class Services:
    """Everything a process needs, opened; ``close`` releases it."""

    settings: Settings
    database: Database
    state_store: StateStore
    stores: RunStores
    tokens: TokenService
    state: StateService
    runs: RunService
    assets: AssetCatalog
    events: EventBus
    blobs: BlobStore
    core: RunCore
    waits: RunWaits
    callers: CallerRegistry
    retention: RunRetention
    # Hints of state changes (announced by the state service or the store itself), and the watches on them.
    changes: StateChanges
    watches: StateWatches
    # The workers seen by their claims and heartbeats (noted in memory, flushed in the background).
    workers: WorkerRegistry
    # Run changes across runs, for the event stream (GET /api/v2/dagRuns/events).
    feed: RunFeed
    # Every long wait of this process holds one, in all and per caller (the run waits, the feed and the
    # watches hold theirs; the workers' claim and stop long-polls take theirs in the route).
    seats: Seats
    # Every listing this process sends a part at a time holds one while it is sent (streamed_pages).
    page_seats: Seats
    _closers: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()


async def clean_up(
    services: Services,
    *,
    run_retention_days: float | None = None,
    batch_size: int = 1000,
    expired_state: bool = True,
) -> dict[str, int]:
    """Delete expired state (unless told not to) and, with a retention (default: the configured one), the
    finished runs past it."""
    days = services.settings.run_retention_days if run_retention_days is None else run_retention_days
    done = {"purged": await services.state.purge_expired(batch_size=batch_size)} if expired_state else {}
    if days > 0:
        runs = await services.retention.purge(older_than=timedelta(days=days), batch_size=batch_size)
        done |= {"runs_deleted": runs.runs, "blobs_deleted": runs.blobs}
    return done


async def open_services(
    settings: Settings, *, migrate: bool = False, tokens: TokenService | None = None, serving: bool = False
) -> Services:
    """Open the stores named by ``settings`` (applying migrations first when asked) and wire the use cases.

    ``tokens``: the token service the HTTP app already verifies with (``open_tokens``), so that the tokens
    the run core mints are the ones the app knows (a task token minted here is kept as verified: with two
    services, every worker's report checked the signature of a token this process had just signed).
    """
    settings = ensure_secret(settings)
    # The run core's and the stores' points of interest, counted and logged (one observer per process).
    install_observer(TelemetryObserver())
    url = settings.resolved_database_url
    if migrate:
        from stateport.adapters.sql.migrations import upgrade

        schema = await upgrade(url, timeout_s=settings.db_timeout_s)
        if schema.before != schema.after:
            log.info("%s", schema)
    closers: list[Any] = []
    database = await Database.connect(url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s)
    closers.append(database.close)
    try:
        state_store = await _open_state_store(settings, database, closers, mark=serving)
        events = await _open_events(settings, closers)
        changes = await _open_changes(settings, events, closers)
        blobs = await _open_blobs(settings, closers)
        clock = SystemClock()
        stores = open_run_stores(database)
        if tokens is None:
            tokens = open_tokens(settings)
        config = EngineConfig(
            lease_s=settings.lease_s,
            inline_result_bytes=settings.result_inline_bytes,
            claim_recheck_s=settings.claim_recheck_s,
            max_claim_rechecks_per_caller=settings.max_claim_rechecks_per_caller,
            max_claim_bytes=settings.max_claim_bytes,
            token_ttl_s=settings.jwt_expiration_s,
            max_map_length=settings.max_map_length,
        )
        core = wire_run_core(
            dags=stores.dags,
            runs=stores.runs,
            leases=stores.leases,
            events=events,
            blobs=blobs,
            tokens=tokens,
            clock=clock,
            config=config,
            blob_link=_blob_link(settings, blobs),
        )
        # Before the event bus closes (closers run in reverse): the announcements not yet sent go out.
        closers.append(core.events.flush)
        limits = settings.limits
        advancer = core.advancer

        async def stop_at_deadline(dag_id: str, run_id: str) -> None:
            with suppress(Exception):  # best effort: the sweeper stops it otherwise
                await advancer.cancel(dag_id, run_id, DEADLINE_EXCEEDED)

        # Every long wait of this process holds one of these (``Services.seats``), and its connection: no
        # more of them than the process has descriptors for (``stateport.fds``), so that one caller's
        # share (half, by default) never takes every connection from the others.
        max_waiters = waiter_limit(settings.max_waiters, fd_limit())
        seats = Seats(max_waiters, settings.max_waiters_per_caller or None)
        waits = RunWaits(
            stores.runs,
            core.events,
            core.plans,
            core.results,
            WaitConfig(recheck_s=settings.wait_recheck_s, max_waiters=max_waiters),
            on_deadline=stop_at_deadline,
            now=clock.now,
            seats=seats,
        )
        callers = CallerRegistry(stores.waiters, core.advancer, clock)
        core.sweeper.also.append(callers.sweep_orphans)
        watches = StateWatches(
            state_store, changes, clock, WatchConfig(recheck_s=settings.wait_recheck_s), seats=seats
        )
        # Closed before the event bus and the database it reads through (closers run in reverse).
        closers.append(waits.close)
        closers.append(callers.close)
        closers.append(watches.close)
        feed = RunFeed(events, stores.runs, seats=seats)
        closers.append(feed.close)
        state = StateService(
            state_store,
            stores.bindings,
            stores.dags,
            limits,
            clock,
            default_retention=settings.state_default_retention,
            changes=changes,
        )
        return Services(
            settings=settings,
            database=database,
            state_store=state_store,
            stores=stores,
            tokens=tokens,
            state=state,
            assets=AssetCatalog(stores.dags),
            runs=RunService(
                stores.dags,
                stores.runs,
                clock,
                plans=core.plans,
                advancer=core.advancer,
                results=core.results,
                unclaimed_after_s=settings.unclaimed_after_s,
                max_conf_bytes=settings.max_conf_bytes,
                max_page_bytes=settings.max_page_bytes,
                deleted=state.clear_run,
            ),
            events=events,
            blobs=blobs,
            core=core,
            waits=waits,
            callers=callers,
            retention=RunRetention(stores.retention, blobs, clock, deleted=state.forget_run),
            changes=changes,
            watches=watches,
            workers=WorkerRegistry(SqlWorkerStore(database), clock),
            feed=feed,
            seats=seats,
            page_seats=Seats(
                settings.max_streamed_pages,
                settings.max_streamed_pages_per_caller or None,
                names=STREAMED_PAGES,
            ),
            _closers=closers,
        )
    except BaseException:
        for closer in reversed(closers):
            await closer()
        raise


def wire_run_core(
    *,
    dags: DagStore,
    runs: RunStore,
    leases: LeaseStore,
    events: EventBus,
    blobs: BlobStore,
    tokens: TokenService,
    clock: Clock,
    config: EngineConfig,
    blob_link: BlobLink | None = None,
) -> RunCore:
    """The run core's collaborators over the given ports (the tests build theirs here too)."""
    plans = Plans(dags, runs)
    results = ResultStore(blobs, inline_bytes=config.inline_result_bytes, link=blob_link)
    run_events = RunEvents(events, clock)
    waiting = WaitingClaims()
    advancer = RunAdvancer(
        runs,
        plans,
        results,
        run_events,
        waiting,
        clock,
        lease_s=config.lease_s,
        max_map_length=config.max_map_length,
    )
    reports = TaskReports(runs, leases, advancer, results, clock, lease_s=config.lease_s)
    claims = ClaimBroker(
        runs, leases, plans, results, run_events, waiting, advancer, reports, tokens, clock, config
    )
    sweeper = LeaseSweeper(leases, advancer, clock, batch=config.sweep_batch)
    return RunCore(
        config=config,
        plans=plans,
        results=results,
        events=run_events,
        advancer=advancer,
        claims=claims,
        reports=reports,
        sweeper=sweeper,
    )


@asynccontextmanager
async def background(services: Services) -> AsyncIterator[None]:
    """Run the server's background loops for as long as the context is open: the lease and timeout
    sweeper, and the periodic cleanup (when configured); and hear of the workers another process found
    lost. Every server process runs them."""
    try:
        for warning in await services.database.maintenance_warnings():
            log.warning("%s", warning)
    except StateportError as exc:  # the database is down: the health checks say so
        log.warning("could not read the database's settings: %s", exc)
    tasks = [
        asyncio.create_task(
            services.core.sweeper.run(services.settings.sweep_interval_s), name="stateport-sweeper"
        ),
        asyncio.create_task(services.callers.renew_forever(), name="stateport-waiter-registry"),
        asyncio.create_task(_flush_workers_forever(services), name="stateport-worker-registry"),
    ]
    if services.settings.cleanup_interval_s > 0:
        tasks.append(asyncio.create_task(_clean_up_forever(services), name="stateport-cleanup"))
    lost = LostWorkers(services.core.advancer.waiting)
    services.events.listen(LOST_TOPIC, lost)
    deleted = DeletedRuns(services.state)
    services.events.listen(DELETED_TOPIC, deleted)
    try:
        yield
    finally:
        services.events.unlisten(DELETED_TOPIC, deleted)
        services.events.unlisten(LOST_TOPIC, lost)
        await stopped(tasks)


async def stopped(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they end. A cancellation a driver turned into an error of its own
    (asyncpg connecting to a server that had stopped answering: it came out as the connect's timeout) was
    taken by a loop for a store failure, and the loop went on: the server's shutdown waited for it for
    ever (an outsider's find). So a task still running a second later is asked again, until it ends."""
    for task in tasks:
        task.cancel()
    pending = set(tasks)
    while pending:
        _done, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
    for task in tasks:
        with suppress(asyncio.CancelledError):
            await task


# Workers unseen for a day are pruned about this often (one indexed DELETE, usually of nothing).
WORKER_PRUNE_S = 600.0


async def _flush_workers_forever(services: Services) -> None:
    """Write the workers noted since the last round (``WorkerRegistry``), and now and then prune the
    long unseen ones, outliving store outages."""
    registry = services.workers
    rounds_per_prune = max(1, round(WORKER_PRUNE_S / registry.config.flush_s))
    rounds = 0
    # Said once an outage begins, then now and then while it lasts: a line every round (every 5 s) was the
    # one loop that flooded the log through an outage (an outsider's find).
    flushes = Repeated(log, "worker registry")
    while True:
        await asyncio.sleep(registry.config.flush_s)
        rounds += 1
        try:
            wrote = await registry.flush()
            pruned = rounds % rounds_per_prune == 0
            if pruned:
                await registry.prune()
        except Exception as exc:  # noqa: BLE001  # a store outage must not end the loop
            flushes.failed(str(exc))
        else:
            # Only a round that reached the store says it works: one with nothing to write said "works
            # again" while the database was still down (an outsider's find).
            if wrote or pruned:
                flushes.worked()


async def _clean_up_forever(services: Services) -> None:
    """Delete expired state and runs past their retention now and then, outliving store outages.

    Every server process runs it; the deletes are idempotent, so several at once only repeat work. The
    first round waits a jittered interval, so that processes started together do not clean together.
    Expired state is purged here only from the SQL store, where an index finds it cheaply and expired rows
    take space until they are deleted. Redis drops expired entries by itself (a purge only tidies index
    sets, one script per scope), and on S3 a purge lists and HEADs every object of the prefix: costs an
    operator should schedule (``stateport cleanup``), not defaults every few minutes.
    """
    settings = services.settings
    interval = settings.cleanup_interval_s
    await asyncio.sleep(interval * random.uniform(0.5, 1.0))  # noqa: S311  # jitter only
    while True:
        try:
            done = await clean_up(services, expired_state=settings.state_backend == "sql")
            if any(done.values()):
                log.info("cleanup: %s", done)
        except Exception as exc:  # noqa: BLE001  # a store outage must not end the loop
            log.warning("cleanup failed: %s", exc)
        await asyncio.sleep(interval)


def open_tokens(settings: Settings) -> JwtTokenService:
    """The token service for ``settings`` (its key material loaded, a secret generated if none is kept).

    Also what the HTTP app verifies and renews tokens with before its lifespan opens the other services.
    """
    return JwtTokenService.from_settings(ensure_secret(settings))


# What a failure to reach S3 names: a bad region fails there too (an outsider was pointed at the other two).
S3_SETTINGS = "STATEPORT_S3_BUCKET, STATEPORT_S3_ENDPOINT_URL, STATEPORT_S3_REGION"


# What ``serve`` says to check when a store it opens before serving cannot be used.
REACH_HINT = "check that it runs and is reachable, and the settings named (docs/configuration.md)"
# S3 is a service: a missing bucket or credentials were told to check that "it runs" (an outsider's find).
S3_HINT = (
    "check that the endpoint is reachable, the bucket exists, and credentials are given (AWS_ACCESS_KEY_ID "
    "and AWS_SECRET_ACCESS_KEY, a profile, or the host's role) that allow it; and the settings named "
    "(docs/configuration.md)"
)
DIRECTORY_HINT = (
    "check that it is a directory this user can create and write files in, or name another one "
    "(docs/configuration.md)"
)


class StoreUnreachable(Unavailable):
    """A store ``serve`` could not open before serving, with what to check (``hint``): a directory is not
    something that "runs" (an outsider read that hint for a blob directory on /proc)."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.hint = hint


async def check_database_writes(settings: Settings) -> None:
    """Unwritable (or Unavailable) unless the database would take a write now, as readiness asks it
    (``Database.ping``): ``serve`` refuses, in one line, a standby, a read-only database or a full disk,
    where it started and then failed in its lifespan with a 90-line traceback (an outsider's find: a hot
    standby's ``LISTEN``)."""
    database = await Database.connect(
        settings.resolved_database_url, pool_size=1, timeout_s=settings.db_timeout_s
    )
    try:
        await database.ping()
    finally:
        await database.close()


async def deployment_differences(settings: Settings, token_key: str) -> list[str]:
    """What this server does not share with the one that started before it on its database (its token key,
    its fingerprint ``token_key``; its blob store: ``stateport.domain.deployment``), each said in a line;
    ``serve`` logs them."""
    from stateport.adapters.sql.marks import SqlDeploymentMarks
    from stateport.domain.deployment import differences

    closers: list[Any] = []
    try:
        database = await Database.connect(
            settings.resolved_database_url, pool_size=1, timeout_s=settings.db_timeout_s
        )
        closers.append(database.close)
        blobs = await _open_blobs(settings, closers)
        # The key id is checked with a key pair only (a shared secret's tokens are verified whatever it says).
        kid = settings.jwt_kid if settings.jwt_algorithm in {"RS256", "EdDSA"} else ""
        names = (
            f"issuer {settings.jwt_issuer!r}, audiences {settings.jwt_audience!r} and "
            f"{settings.api_audience!r}, key id {kid!r}"
        )
        return await differences(SqlDeploymentMarks(database), blobs, token_key, names)
    except StateportError as exc:  # the stores answered just before: a failure here is not worth a refusal
        return [f"the deployment's marks could not be compared: {exc.detail}"]
    finally:
        for close in reversed(closers):
            await close()


async def reach_backends(settings: Settings) -> None:
    """Open each configured store other than the SQL database once, and close it (``stateport serve``,
    before it serves): a Redis or S3 that cannot be reached (or a bucket that does not exist) is then a
    one-line error naming the settings to check, not the traceback of a failed lifespan (an outsider's
    find: 80-150 lines, exit 3). StoreUnreachable if one cannot be used. SQL is reached by the migration."""
    opened: list[tuple[str, Callable[[list[Any]], Awaitable[object]], str]] = []
    if settings.state_backend == "redis":
        # Redis needs no database: the SQL one is not opened for this.
        opened.append(("the Redis state store (STATEPORT_REDIS_URL)", _state_opener(settings), REACH_HINT))
    if settings.state_backend == "s3":
        opened.append((f"the S3 state store ({S3_SETTINGS})", _state_opener(settings), S3_HINT))
    if settings.resolved_events_backend == "redis":
        opened.append(
            ("the Redis event bus (STATEPORT_REDIS_URL)", partial(_open_events, settings), REACH_HINT)
        )
    if settings.blob_backend == "s3":
        opened.append((f"the S3 blob store ({S3_SETTINGS})", partial(_open_blobs, settings), S3_HINT))
    else:
        opened.append(
            (
                f"the blob directory {str(settings.blob_path)!r} (STATEPORT_BLOB_DIR, else the data dir's "
                "blobs/)",
                partial(_checked_directory, settings),
                DIRECTORY_HINT,
            )
        )
    for what, open_it, hint in opened:
        closers: list[Any] = []
        try:
            await open_it(closers)
        except Unavailable as exc:
            raise StoreUnreachable(f"{what}: {exc.detail}", hint) from exc
        finally:
            for close in reversed(closers):
                await close()


def _state_opener(settings: Settings) -> Callable[[list[Any]], Awaitable[StateStore]]:
    return partial(_open_state_store, settings, cast("Database", None))


async def _open_state_store(
    settings: Settings, database: Database, closers: list[Any], *, mark: bool = False
) -> StateStore:
    """The configured state store; ``mark``: a server's, which leaves its mark for the workers going direct
    (``adapters.shared.marks``). Only a server: every command did, so a read through a mistyped prefix
    marked it (and a read-only replica or S3 credential refused the read: outsiders' finds)."""
    if settings.state_backend == "redis":
        from stateport.adapters.redis.state import RedisStateStore

        redis_store = await RedisStateStore.connect(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_s=settings.db_timeout_s,
            max_connections=settings.redis_max_connections,
            min_replicas=settings.redis_min_replicas,
        )
        closers.append(redis_store.close)
        if mark:
            await redis_store.mark_layout()
        return redis_store
    if settings.state_backend == "s3":
        from stateport.adapters.s3.state import S3StateStore

        s3_store = await S3StateStore.connect(_s3_location(settings))
        closers.append(s3_store.close)
        if mark:
            await s3_store.mark_layout()
        return s3_store
    return SqlStateStore(database)


async def _open_events(settings: Settings, closers: list[Any]) -> EventBus:
    backend = settings.resolved_events_backend
    if backend == "postgres":
        from stateport.adapters.sql.events import PostgresEventBus

        pg_bus = await PostgresEventBus.connect(
            settings.resolved_database_url, timeout_s=settings.db_timeout_s
        )
        closers.append(pg_bus.close)
        return pg_bus
    if backend == "redis":
        from stateport.adapters.redis.events import RedisEventBus, events_channel

        # The channel carries the deployment's prefix: Redis's pub/sub ignores database numbers and key
        # prefixes, so two deployments on one Redis would otherwise hear each other's runs and queues.
        redis_bus = await RedisEventBus.connect(
            settings.redis_url, timeout_s=settings.db_timeout_s, channel=events_channel(settings.redis_prefix)
        )
        closers.append(redis_bus.close)
        return redis_bus
    from stateport.adapters.memory.events import MemoryEventBus

    return MemoryEventBus()


async def _open_changes(settings: Settings, events: EventBus, closers: list[Any]) -> StateChanges:
    """Who announces state changes: Redis's write scripts (heard on a listener of their channel), else
    this server after each write, on the event bus (S3 watchers also poll: workers write there directly)."""
    if settings.state_backend == "redis":
        from stateport.adapters.redis.changes import RedisChanges

        redis_changes = await RedisChanges.connect(
            settings.redis_url, prefix=settings.redis_prefix, timeout_s=settings.db_timeout_s
        )
        closers.append(redis_changes.close)
        return redis_changes
    from stateport.adapters.shared.changes import BusChanges

    poll_s = settings.state_watch_poll_s if settings.state_backend == "s3" else None
    bus_changes = BusChanges(events, poll_s=poll_s)
    # Closed before the bus (closers run in reverse), so that pending hints go out.
    closers.append(bus_changes.close)
    return bus_changes


async def _open_blobs(settings: Settings, closers: list[Any]) -> BlobStore:
    if settings.blob_backend == "s3":
        from stateport.adapters.s3.blobs import S3BlobStore

        s3_blobs = await S3BlobStore.connect(_s3_location(settings))
        closers.append(s3_blobs.close)
        return s3_blobs
    from stateport.adapters.filesystem.blobs import FilesystemBlobStore

    fs_blobs = FilesystemBlobStore(settings.blob_path)
    closers.append(fs_blobs.close)
    return fs_blobs


async def _checked_directory(settings: Settings, closers: list[Any]) -> BlobStore:
    """The filesystem blob store, its directory made and written to once (Unavailable if it cannot be)."""
    from stateport.adapters.filesystem.blobs import FilesystemBlobStore

    blobs = await _open_blobs(settings, closers)
    assert isinstance(blobs, FilesystemBlobStore)  # reach_backends asks only of that one
    try:
        await blobs.check()
    except Unavailable as exc:
        if not isinstance(exc.__cause__, OSError):
            raise
        # The OS's words alone: ``reach_backends`` names the directory (it was named twice in one line).
        raise Unavailable(f"{type(exc.__cause__).__name__}: {exc.__cause__.strerror}") from exc.__cause__
    return blobs


def _s3_location(settings: Settings) -> S3Location:
    """The bucket both S3 stores use (state under ``<prefix>/``, blobs under ``<prefix>/blobs/``)."""
    from stateport.adapters.s3.client import S3Location

    return S3Location(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region,
        max_connections=settings.s3_max_connections,
        timeout_s=settings.db_timeout_s,
    )


def _blob_link(settings: Settings, blobs: BlobStore) -> BlobLink:
    """Where callers fetch result blobs from: a presigned S3 URL, or the server's own blob route."""
    if settings.resolved_blob_urls == "presigned":
        expires_s = settings.blob_url_expires_s

        async def presigned(dag_id: str, run_id: str, ref: str) -> str | None:
            return await blobs.url(ref, expires_s=expires_s)

        return presigned

    async def served(dag_id: str, run_id: str, ref: str) -> str | None:
        # Imported here, not when the link is made: the module is Litestar's, which a CLI command that
        # opens the services never otherwise needs (importing it took a good part of each command's start).
        from stateport.http.blobs import blob_location

        return blob_location(dag_id, run_id, ref)

    return served


def waiter_limit(configured: int, fds: int) -> int:
    """``STATEPORT_MAX_WAITERS``, or fewer if the process has descriptors for fewer (``fds.wait_room``)."""
    room = wait_room(fds)
    if configured > room:
        log.info(
            "long waits held at most %d at once, not STATEPORT_MAX_WAITERS %d: the process has %d file "
            "descriptors (RLIMIT_NOFILE), and each wait holds a connection",
            room,
            configured,
            fds,
        )
    return min(configured, room)
