"""The composition root: choose adapters from settings, wire them into use cases, open and close them.

The HTTP app, the CLI and the tests all build their services here, so they run the same wiring. Nothing
connects at import time; ``open_services`` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from stateport.adapters.clock import SystemClock
from stateport.adapters.jwt import JwtTokenService
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.runs import SqlRunStore
from stateport.adapters.sql.state import SqlStateStore
from stateport.config import Settings, ensure_secret
from stateport.domain.engine import EngineConfig, RunEngine
from stateport.domain.ports import BlobStore, EventBus, StateStore, TokenService
from stateport.domain.results import BlobLink
from stateport.domain.retention import RunRetention
from stateport.domain.runs import RunService
from stateport.domain.state import StateService
from stateport.domain.values import Limits
from stateport.domain.waiting import RunWaits, WaitConfig


@dataclass
class Services:
    """Everything a process needs, opened; ``close`` releases it."""

    settings: Settings
    database: Database
    state_store: StateStore
    tokens: TokenService
    state: StateService
    runs: RunService
    events: EventBus
    blobs: BlobStore
    engine: RunEngine
    waits: RunWaits
    retention: RunRetention
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


async def open_services(settings: Settings, *, migrate: bool = False) -> Services:
    """Open the stores named by ``settings`` (applying migrations first when asked) and wire the use cases."""
    settings = ensure_secret(settings)
    url = settings.resolved_database_url
    if migrate:
        from stateport.adapters.sql.migrations import upgrade

        await upgrade(url)
    closers: list[Any] = []
    database = await Database.connect(url, pool_size=settings.db_pool_size, timeout_s=settings.db_timeout_s)
    closers.append(database.close)
    try:
        state_store = await _open_state_store(settings, database, closers)
        events = await _open_events(settings, closers)
        blobs = await _open_blobs(settings, closers)
        clock = SystemClock()
        run_store = SqlRunStore(database)
        tokens = open_tokens(settings)
        engine = RunEngine(
            run_store,
            events,
            blobs,
            tokens,
            clock,
            EngineConfig(
                lease_s=settings.lease_s,
                inline_result_bytes=settings.result_inline_bytes,
                claim_recheck_s=settings.claim_recheck_s,
                token_ttl_s=settings.jwt_expiration_s,
            ),
            blob_link=_blob_link(settings, blobs),
        )
        limits = Limits(max_value_bytes=settings.max_value_bytes, max_key_length=settings.max_key_length)
        waits = RunWaits(run_store, events, engine, WaitConfig(recheck_s=settings.wait_recheck_s))
        # Closed before the event bus and the database it reads through (closers run in reverse).
        closers.append(waits.close)
        return Services(
            settings=settings,
            database=database,
            state_store=state_store,
            tokens=tokens,
            state=StateService(state_store, run_store, limits, clock),
            runs=RunService(run_store, clock, engine),
            events=events,
            blobs=blobs,
            engine=engine,
            waits=waits,
            retention=RunRetention(run_store, blobs, clock),
            _closers=closers,
        )
    except BaseException:
        for closer in reversed(closers):
            await closer()
        raise


def open_tokens(settings: Settings) -> TokenService:
    """The token service for ``settings`` (its key material loaded, a secret generated if none is kept).

    Also what the HTTP app verifies and renews tokens with before its lifespan opens the other services.
    """
    return JwtTokenService.from_settings(ensure_secret(settings))


async def _open_state_store(settings: Settings, database: Database, closers: list[Any]) -> StateStore:
    if settings.state_backend == "redis":
        from stateport.adapters.redis.state import RedisStateStore

        redis_store = await RedisStateStore.connect(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_s=settings.db_timeout_s,
            max_connections=settings.redis_max_connections,
        )
        closers.append(redis_store.close)
        return redis_store
    if settings.state_backend == "s3":
        from stateport.adapters.s3.state import S3StateStore

        s3_store = await S3StateStore.connect(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            max_connections=settings.s3_max_connections,
            timeout_s=settings.db_timeout_s,
        )
        closers.append(s3_store.close)
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
        from stateport.adapters.redis.events import RedisEventBus

        redis_bus = await RedisEventBus.connect(settings.redis_url, timeout_s=settings.db_timeout_s)
        closers.append(redis_bus.close)
        return redis_bus
    from stateport.adapters.memory.events import MemoryEventBus

    return MemoryEventBus()


async def _open_blobs(settings: Settings, closers: list[Any]) -> BlobStore:
    if settings.blob_backend == "s3":
        from stateport.adapters.s3.blobs import S3BlobStore

        s3_blobs = await S3BlobStore.connect(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            max_connections=settings.s3_max_connections,
            timeout_s=settings.db_timeout_s,
        )
        closers.append(s3_blobs.close)
        return s3_blobs
    from stateport.adapters.filesystem.blobs import FilesystemBlobStore

    fs_blobs = FilesystemBlobStore(settings.blob_path)
    closers.append(fs_blobs.close)
    return fs_blobs


def _blob_link(settings: Settings, blobs: BlobStore) -> BlobLink:
    """Where callers fetch result blobs from: a presigned S3 URL, or the server's own blob route."""
    if settings.resolved_blob_urls == "presigned":
        expires_s = settings.blob_url_expires_s

        async def presigned(dag_id: str, run_id: str, ref: str) -> str | None:
            return await blobs.url(ref, expires_s=expires_s)

        return presigned
    from stateport.http.blobs import blob_location

    async def served(dag_id: str, run_id: str, ref: str) -> str | None:
        return blob_location(dag_id, run_id, ref)

    return served
