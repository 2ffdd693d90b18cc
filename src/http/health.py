"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get
from litestar.openapi import ResponseSpec
from msgspec import Struct
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stateport.bootstrap import Services
from stateport.domain.errors import StateportError
from stateport.domain.ports import LeaseStore
from stateport.http import openapi
from stateport.http.providers import SERVICES, AnyRequest, AppServices
from stateport.telemetry.metrics import Metrics

TAGS = ["Health"]
METRICS = "metrics"
# The app state's keys of the process's ``SharedChecks``: of every store, and of the database alone (Airflow's
# monitor reports only the database: a frozen state store held its answer to the deadline, an outsider saw).
SHARED_CHECKS = "shared_checks"
SHARED_SCRAPE = "shared_scrape"
SHARED_DATABASE_CHECK = "shared_database_check"
# Litestar appends "; charset=utf-8" to every text/* media type, so hand it the type without the charset
# prometheus_client puts in (else the header carries the parameter twice).
METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


class Live(Struct, frozen=True, kw_only=True):
    status: str


class Readiness(Struct, frozen=True, kw_only=True):
    """``ok``, or ``unavailable`` with 503; each check ``ok`` or ``unavailable: <why>``. ``events``: the
    event bus, ``ok`` or ``reconnecting``, which leaves the status alone: the server still serves all (its
    waiters answer at their re-reads, up to ``STATEPORT_WAIT_RECHECK_S`` late), and taking every process
    out of a load balancer for it would turn a slow answer into none. It says so for monitoring (an
    outsider saw outcomes 17-32 s late and readiness saying nothing)."""

    status: str
    checks: dict[str, str]
    events: str = "ok"


@get(
    "/health/live",
    tags=TAGS,
    summary="The process is up",
    operation_class=openapi.StateportOperation,
    operation_id="health_live",
)
async def live() -> Live:
    return Live(status="ok")


@get(
    "/health/ready",
    tags=TAGS,
    summary="The database takes writes and the state store answers (503 otherwise)",
    description="The checks run at once under one deadline (`STATEPORT_DB_TIMEOUT_S`).",
    responses={
        503: ResponseSpec(
            generate_examples=False,
            data_container=Readiness,
            description="A store does not answer (`Retry-After: 1`)",
        )
    },
    operation_class=openapi.StateportOperation,
    operation_id="health_ready",
)
async def ready(request: AnyRequest, services: AppServices) -> Response[Readiness]:
    checks = await request.app.state[SHARED_CHECKS].checks(services)
    healthy = all(v == "ok" for v in checks.values())
    events = "ok" if services.events.connected else "reconnecting"
    return Response(
        Readiness(status="ok" if healthy else "unavailable", checks=checks, events=events),
        status_code=200 if healthy else 503,
        headers=None if healthy else {"Retry-After": "1"},
    )


class ExecutionHealth(Struct, frozen=True, kw_only=True):
    """Airflow's Execution API ``/health`` answer."""

    status: str


class ExecutionPing(Struct, frozen=True, kw_only=True):
    """Airflow's Execution API ``/health/ping`` answer: the checks that passed, and why the others failed."""

    ok: list[str]
    failing: dict[str, str]


@get(
    "/execution/health",
    tags=TAGS,
    summary="The Execution API is up (Airflow's route; no token)",
    operation_class=openapi.StateportOperation,
    operation_id="execution_health",
)
async def execution_health() -> ExecutionHealth:
    return ExecutionHealth(status="healthy")


@get(
    "/execution/health/ping",
    tags=TAGS,
    summary="The stores answer (Airflow's route; no token): the checks of /health/ready",
    description=(
        "Airflow's shape (`ok`: the checks that passed, `failing`: why the others did not). Airflow "
        "answers 500 when one fails; Stateport answers 503 with `Retry-After: 1`, as `/health/ready`."
    ),
    responses={
        503: ResponseSpec(
            generate_examples=False, data_container=ExecutionPing, description="A store does not answer"
        )
    },
    operation_class=openapi.StateportOperation,
    operation_id="execution_health_ping",
)
async def execution_ping(request: AnyRequest, services: AppServices) -> Response[ExecutionPing]:
    checks = await request.app.state[SHARED_CHECKS].checks(services)
    ok = [name for name, verdict in checks.items() if verdict == "ok"]
    failing = {name: verdict for name, verdict in checks.items() if verdict != "ok"}
    return Response(
        ExecutionPing(ok=ok, failing=failing),
        status_code=503 if failing else 200,
        headers={"Retry-After": "1"} if failing else None,
    )


class SharedChecks:
    """The stores' checks, one run at a time in a process: a caller that comes while one runs gets its
    answer. The health routes need no token, and each check takes the SQLite write lock (or a PostgreSQL
    connection) and a state store read: a flood of them would otherwise take those ahead of the requests
    that need them."""

    def __init__(self, *, database_only: bool = False) -> None:
        self._running: asyncio.Future[dict[str, str]] | None = None
        self._check = _check_database if database_only else _check_stores

    async def checks(self, services: Services) -> dict[str, str]:
        """Each store's verdict (``ok`` or ``unavailable: <why>``), from the run in progress or a new one."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._check(services))
            self._running.add_done_callback(_retrieve)  # every caller may have gone
        # Shielded: a caller that goes away does not cancel the others' answer.
        return await asyncio.shield(self._running)


async def _check_stores(services: Services) -> dict[str, str]:
    probes = {
        "database": services.database.ping(),
        "state_store": services.state_store.ping(),
        # Large results live there: a blob store that is down fails every large report (an outsider saw
        # readiness say ok while S3 answered nothing).
        "blob_store": services.blobs.ping(),
    }
    return await check_all(probes, services.settings.db_timeout_s)


async def _check_database(services: Services) -> dict[str, str]:
    return await check_all({"database": services.database.ping()}, services.settings.db_timeout_s)


async def check_all(probes: Mapping[str, Awaitable[Any]], deadline_s: float) -> dict[str, str]:
    """Run every probe at once under one deadline: a frozen store costs the deadline, not the sum.

    A probe still running at the deadline is cancelled and not waited for: unwinding a call to a frozen
    store may itself hang, and readiness must answer by its deadline. It may still end with an exception
    rather than as cancelled (the store's own timeout, due at the same moment, wins the race): a callback
    retrieves it, else asyncio logs "Task exception was never retrieved" with a traceback on every probe.
    """
    tasks = {name: asyncio.ensure_future(probe) for name, probe in probes.items()}
    try:
        await asyncio.wait(tasks.values(), timeout=deadline_s)
        return {name: _verdict(task) for name, task in tasks.items()}
    finally:
        for task in tasks.values():
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of a probe as seen: its verdict is given, or it is no longer waited for."""
    if not task.cancelled():
        task.exception()


def _verdict(task: asyncio.Future[Any]) -> str:
    if not task.done():
        return "unavailable: timed out"
    exc = task.exception()
    if exc is None:
        return "ok"
    if isinstance(exc, StateportError | TimeoutError):
        return f"unavailable: {exc}" if str(exc) else "unavailable: timed out"
    raise exc


@get(
    "/metrics",
    tags=TAGS,
    summary="Prometheus metrics of this process",
    media_type=METRICS_MEDIA_TYPE,
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=str,
            media_type=CONTENT_TYPE_LATEST,
            description="Prometheus' text format",
        )
    },
    operation_class=openapi.StateportOperation,
    operation_id="metrics",
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    app_metrics: Metrics = request.app.state[METRICS]
    services = request.app.state.get(SERVICES)
    shared: SharedScrape = request.app.state[SHARED_SCRAPE]
    body = await shared.body(lambda: _scrape(app_metrics, services))
    return Response(content=body, media_type=METRICS_MEDIA_TYPE)


class SharedScrape:
    """One scrape at a time in a process: a caller that comes while one is made gets its answer. The route
    needs no token, and each scrape reads the run store and probes the others, then renders about a
    megabyte of text (50 ms of the loop): a flood of them took the stores' connections and the CPU from
    the requests that need them (an outsider's observation)."""

    def __init__(self) -> None:
        self._running: asyncio.Future[bytes] | None = None

    async def body(self, make: Callable[[], Awaitable[bytes]]) -> bytes:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(make())
            self._running.add_done_callback(_retrieve)  # every caller may have gone
        # Shielded: a caller that goes away does not cancel the others' answer.
        return await asyncio.shield(self._running)


async def _scrape(app_metrics: Metrics, services: Services | None) -> bytes:
    if services is not None:
        deadline_s = min(services.settings.db_timeout_s, SCRAPE_STORE_S)
        others = {"state_store": services.state_store.ping(), "blob_store": services.blobs.ping()}
        _, verdicts = await asyncio.gather(
            read_queue_depths(app_metrics, services.stores.leases, deadline_s), check_all(others, deadline_s)
        )
        for store, verdict in verdicts.items():
            app_metrics.queue_depth.up[store] = 1.0 if verdict == "ok" else 0.0
        # Nothing else says so: its reconnects are counted only once it is back (an outsider's find).
        app_metrics.queue_depth.bus_connected = 1.0 if services.events.connected else 0.0
    return generate_latest(app_metrics.registry)


# The longest a scrape waits for the stores: within Prometheus's scrape timeouts (10 s by default, often 5),
# whatever STATEPORT_DB_TIMEOUT_S is. A scrape that waited for a hung store as long as a request does timed
# out itself, and store_up 0 was never seen (an outsider's find: with the timeout at 15 s, no alert fired).
SCRAPE_STORE_S = 3.0


async def read_queue_depths(app_metrics: Metrics, leases: LeaseStore, deadline_s: float) -> None:
    """Read the queue depths for this scrape; a store that fails or is late leaves them out and sets
    ``stateport_store_up`` to 0 (the scrape itself still answers: it is how an outage is seen)."""
    # A task waited for with a timeout, not a timeout around the read: cancelled, the read's cleanup (the
    # driver's cancel of its statement, on a frozen database) took a second deadline, and the scrape twice
    # STATEPORT_DB_TIMEOUT_S (an outsider's find: 10 s by default, Prometheus's own scrape timeout).
    now = datetime.now(UTC)
    reading = asyncio.ensure_future(leases.queue_backlogs(now))
    await asyncio.wait((reading,), timeout=deadline_s)
    if reading.done() and not reading.cancelled() and reading.exception() is None:
        backlogs = reading.result()
        app_metrics.queue_depth.depths = {queue: b.queued for queue, b in backlogs.items()}
        app_metrics.queue_depth.ready_ages = {
            queue: 0.0 if b.ready_since is None else max(0.0, (now - b.ready_since).total_seconds())
            for queue, b in backlogs.items()
        }
        app_metrics.queue_depth.up["database"] = 1.0
        return
    if not reading.done():
        reading.cancel()
        reading.add_done_callback(_retrieved)  # its cleanup ends in its own time; nobody waits for it
    elif not isinstance(reading.exception(), StateportError | TimeoutError):
        reading.result()  # anything but the store's failure (or lateness) is the app's error, as before
    app_metrics.queue_depth.depths = {}
    app_metrics.queue_depth.ready_ages = {}
    app_metrics.queue_depth.up["database"] = 0.0


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # taken, so that asyncio does not log it as never retrieved
