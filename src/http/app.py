"""The Litestar application: routers, error handlers, header hooks, metrics, OpenAPI and the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware

from stateport.bootstrap import Services, background, open_services, open_tokens
from stateport.config import Settings, ensure_secret
from stateport.http import (
    airflow,
    asset_state,
    assets,
    blobs,
    dags,
    execution,
    health,
    monitor,
    observing,
    openapi,
    param_checks,
    runs,
    sdk_dag_runs,
    task_instances,
    task_state,
    ti_run,
    ti_sdk,
    waits,
    workers,
)
from stateport.http.bodies import SMALL_BODY, BodyBudget
from stateport.http.checking import CheckProcesses
from stateport.http.console import pages as console
from stateport.http.draining import LongPolls, draining
from stateport.http.errors import EXCEPTION_HANDLERS
from stateport.http.fastpath import StateportApp
from stateport.http.guards import RequestGuard
from stateport.http.headers import ApiVersionMiddleware, make_before_send
from stateport.http.metrics import MetricsMiddleware, unrouted_recorder
from stateport.http.parking import parking
from stateport.http.providers import (
    APP_PROVIDERS,
    BODY_BUDGET,
    CHECKS,
    LONG_POLLS,
    PARAM_CHECKS,
    SERVICE_PROVIDERS,
    SERVICES,
    TOKENS,
)
from stateport.http.state_admin import state_admin_router
from stateport.http.state_io import body_limit
from stateport.telemetry.metrics import Metrics, process_exiting

log = logging.getLogger("stateport.app")


def _drain(services: Services, polls: LongPolls) -> None:
    """What ends this app's waits when the server shuts down (``stateport.http.draining``), and its
    sweeps: no heartbeat reaches a server that takes no connection (``LeaseSweeper.pause``)."""
    services.core.sweeper.pause()
    polls.drain()
    services.waits.drain()
    services.watches.drain()
    services.feed.drain()


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """Build the app; without ``services`` its lifespan opens them (migrating first) and closes them."""
    if services is not None:
        settings = services.settings
        tokens = services.tokens
    else:
        settings = ensure_secret(settings)
        # The same key material open_services will load: the header hook needs it before the lifespan runs.
        tokens = open_tokens(settings)
    limits = settings.limits
    state_limit = body_limit(limits)
    metrics = Metrics()
    polls = LongPolls()
    checks = CheckProcesses(settings.check_processes, modules=(workers.__name__, ti_sdk.__name__))
    params_pool = CheckProcesses(settings.check_processes, modules=(param_checks.__name__,))
    if services is not None:
        services.runs.param_checks = param_checks.param_checks_in(params_pool)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            if services is not None:
                async with background(services):
                    with draining(partial(_drain, services, polls)), parking(services.tokens, services.waits):
                        yield
                return
            opened = await open_services(settings, migrate=True, tokens=tokens, serving=True)
            app.state[SERVICES] = opened
            opened.runs.param_checks = param_checks.param_checks_in(params_pool)
            try:
                async with background(opened):
                    with draining(partial(_drain, opened, polls)), parking(opened.tokens, opened.waits):
                        yield
            finally:
                await opened.close()
                process_exiting()
        finally:
            await checks.close()
            await params_pool.close()

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
            route_handlers=[*workers.claim_handlers(), *ti_run.handlers(), *ti_sdk.handlers()],
            request_max_body_size=SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/execution",
            route_handlers=[*workers.report_handlers(), *ti_sdk.xcom_handlers()],
            request_max_body_size=workers.report_body_limit(settings.result_max_bytes),
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/execution",
            route_handlers=sdk_dag_runs.handlers(),
            request_max_body_size=runs.trigger_body_limit(settings.max_conf_bytes),
            dependencies=SERVICE_PROVIDERS,
        ),
        # DAG specs of thousands of tasks are legitimately large; state bodies are capped by the value limit.
        # The DAG and run routes share a router (a path's handlers must): its limit is the larger of a DAG
        # spec's and a trigger's, and each of them reads its body under its own (``bodies.bounded_body``).
        Router(
            "/api/v2",
            route_handlers=[*dags.handlers(), *runs.handlers(), *task_instances.handlers()],
            request_max_body_size=max(
                settings.dag_max_bytes, runs.trigger_body_limit(settings.max_conf_bytes)
            ),
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=[*task_state.handlers(), *asset_state.handlers()],
            request_max_body_size=state_limit,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=[*assets.handlers(), *monitor.handlers(), *observing.handlers()],
            request_max_body_size=SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=waits.handlers(),
            request_max_body_size=SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
        Router(
            "/api/v2",
            route_handlers=blobs.handlers(),
            request_max_body_size=SMALL_BODY,
            dependencies=SERVICE_PROVIDERS,
        ),
    ]
    initial: dict[str, Any] = {
        "metrics": metrics,
        TOKENS: tokens,
        LONG_POLLS: polls,
        CHECKS: checks,
        PARAM_CHECKS: params_pool,
        BODY_BUDGET: BodyBudget(settings.max_body_bytes_in_flight),
        health.SHARED_CHECKS: health.SharedChecks(),
        health.SHARED_SCRAPE: health.SharedScrape(),
        health.SHARED_DATABASE_CHECK: health.SharedChecks(database_only=True),
    }
    if services is not None:
        initial[SERVICES] = services
    app = StateportApp(
        route_handlers=[
            *routers,
            state_admin_router,
            health.live,
            health.ready,
            health.execution_health,
            health.execution_ping,
            health.metrics,
            console.router(),
        ],
        lifespan=[lifespan],
        state=State(initial),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            DefineMiddleware(MetricsMiddleware, metrics=metrics, access=settings.access_log),
            RequestGuard,
        ],
        before_send=[make_before_send(tokens, starting=unrouted_recorder(metrics, settings.access_log))],  # type: ignore[list-item]
        dependencies=APP_PROVIDERS,
        openapi_config=openapi.config(),
        template_config=console.template_config(),
        plugins=[openapi.StructSchemas()],
        request_max_body_size=state_limit,
        debug=False,
        # Logging is the process's (stateport.telemetry.logs, set up by ``stateport serve``): Litestar's
        # default config would replace its handlers with a format of its own.
        logging_config=None,
    )
    app.serve_fast(metrics, access=settings.access_log)
    # The document lists its tags (linters flag an operation's tag that is not listed): those the routes use,
    # read off them here, before the document is first made.
    app.openapi_config.tags = openapi.tags_of(app.routes)  # type: ignore[union-attr]
    return app
