"""The Litestar application: routers, error handlers, header hooks, metrics, OpenAPI and the lifespan."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware

from stateport.bootstrap import Services, clean_up, open_services, open_tokens
from stateport.config import Settings, ensure_secret
from stateport.domain.values import Limits
from stateport.http import airflow, blobs, execution, health, openapi, public, waits, workers
from stateport.http.errors import EXCEPTION_HANDLERS
from stateport.http.guards import RequestGuard
from stateport.http.headers import ApiVersionMiddleware, make_before_send
from stateport.http.metrics import Metrics, MetricsMiddleware
from stateport.http.providers import APP_PROVIDERS, SERVICE_PROVIDERS, SERVICES, TOKENS
from stateport.http.state_admin import state_admin_router
from stateport.http.state_io import body_limit

log = logging.getLogger("stateport.app")


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """Build the app; without ``services`` its lifespan opens them (migrating first) and closes them."""
    if services is not None:
        settings = services.settings
        tokens = services.tokens
    else:
        settings = ensure_secret(settings)
        # The same key material open_services will load: the header hook needs it before the lifespan runs.
        tokens = open_tokens(settings)
    limits = Limits(max_value_bytes=settings.max_value_bytes, max_key_length=settings.max_key_length)
    state_limit = body_limit(limits)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if services is not None:
            async with _sweeping(services):
                yield
            return
        opened = await open_services(settings, migrate=True)
        app.state[SERVICES] = opened
        try:
            async with _sweeping(opened):
                yield
        finally:
            await opened.close()

    routers = [
        Router(
            "/execution/state",
            route_handlers=execution.handlers(),
            request_max_body_size=state_limit,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/execution/store",
            route_handlers=airflow.handlers(),
            request_max_body_size=state_limit,
            middleware=[ApiVersionMiddleware],
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/execution",
            route_handlers=workers.claim_handlers(),
            request_max_body_size=workers.SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/execution",
            route_handlers=workers.report_handlers(),
            request_max_body_size=workers.report_body_limit(settings.result_max_bytes),
            dependencies=SERVICE_PROVIDERS,
        ),
        # DAG specs of thousands of tasks are legitimately large; state bodies are capped by the value limit.
        Router(
            "/api/v2",
            route_handlers=public.dag_handlers(),
            request_max_body_size=settings.dag_max_bytes,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=public.state_handlers(),
            request_max_body_size=state_limit,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=waits.handlers(),
            request_max_body_size=workers.SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=blobs.handlers(),
            request_max_body_size=workers.SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
    ]
    initial: dict[str, Any] = {"metrics": metrics, TOKENS: tokens}
    if services is not None:
        initial[SERVICES] = services
    return Litestar(
        route_handlers=[*routers, state_admin_router, health.live, health.ready, health.metrics],
        lifespan=[lifespan],
        state=State(initial),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[DefineMiddleware(MetricsMiddleware, metrics=metrics), RequestGuard],
        before_send=[make_before_send(tokens)],  # type: ignore[list-item]
        dependencies=APP_PROVIDERS,
        openapi_config=openapi.config(),
        plugins=[openapi.StructSchemas()],
        request_max_body_size=state_limit,
        debug=False,
    )


@asynccontextmanager
async def _sweeping(services: Services) -> AsyncIterator[None]:
    """Run the lease and timeout sweeper, and the periodic cleanup, for as long as the app runs."""
    tasks = [
        asyncio.create_task(
            services.engine.sweep_forever(services.settings.sweep_interval_s), name="stateport-sweeper"
        )
    ]
    if services.settings.cleanup_interval_s > 0:
        tasks.append(asyncio.create_task(_clean_up_forever(services), name="stateport-cleanup"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task


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
