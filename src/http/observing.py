"""What an operator watches (scope ``runs:read``), read by the console: the workers seen lately with the
queues' loads, and the stream of run changes across runs.

- ``GET /api/v2/workers?seen_within=S&limit=N``: the workers seen by a claim or a heartbeat in the last S
  seconds (default 300, at most a day), most recently seen first, and every queue's ready and running task
  instances (``stateport.domain.workers``).
- ``GET /api/v2/dagRuns/events[?dag_id=D]``: Server-Sent Events, one ``event: run`` per change of a run
  (its state, or its task instances), of every DAG or of D's only, pushed from the server's event bus, so
  a change made by any server process is sent (``stateport.domain.run_feed``). ``event: recheck`` says
  changes may have been missed (the bus reconnected, the client fell behind): re-read. It starts with
  ``: watching``, sends ``: heartbeat`` when idle for ``STATEPORT_WATCH_HEARTBEAT_S``, and ends with
  ``event: error`` when the server shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.response import Stream
from msgspec import Struct

from stateport.domain.errors import Invalid, StateportError
from stateport.domain.models import MAX_IDENTIFIER
from stateport.domain.ports import TokenClaims
from stateport.domain.run_feed import Recheck, RunChange
from stateport.domain.values import check_name
from stateport.http import openapi
from stateport.http.auth import waiter_of
from stateport.http.errors import RequestInvalid
from stateport.http.listing import only_known
from stateport.http.metrics import STREAM_KIND
from stateport.http.openapi import EVENT_STREAM
from stateport.http.params import query
from stateport.http.providers import AnyRequest, AppServices, api_caller
from stateport.http.queries import plain_int
from stateport.http.state_watch import error_event, until_expiry, watchers
from stateport.http.waits import STREAM_HEADERS

TAGS = ["Workers"]
RUNS_READ = {"caller": api_caller("runs:read")}
DEFAULT_WITHIN_S = 300
MAX_WITHIN_S = 86_400  # the registry keeps a worker a day after it was last seen
MAX_WORKERS = 1000

_encode = msgspec.json.Encoder().encode


class WorkerResponse(Struct, frozen=True, kw_only=True):
    """A worker seen lately. ``hostname``/``pid``: what its claims or heartbeats said (null: nothing).
    ``running``: the task instances it holds a lease on now."""

    worker_id: str
    hostname: str | None
    pid: int | None
    queues: list[str]
    running: int
    first_seen_at: datetime
    last_seen_at: datetime
    last_claim_at: datetime | None
    last_heartbeat_at: datetime | None


class QueueResponse(Struct, frozen=True, kw_only=True):
    """A queue with task instances ready for a worker (``ready``, i.e. queued) or running, or served by a
    listed worker (then maybe 0 and 0)."""

    queue: str
    ready: int
    running: int
    oldest_ready_at: datetime | None


class WorkersResponse(Struct, frozen=True, kw_only=True):
    workers: list[WorkerResponse]
    queues: list[QueueResponse]
    seen_within: int


class RunEvent(Struct, frozen=True, kw_only=True):
    """The ``data`` of an ``event: run``: the run that changed and its state after the change."""

    dag_id: str
    dag_run_id: str
    state: str


SeenWithin = Annotated[
    str | None,
    query(
        "seen_within",
        f"Seconds: workers last seen this recently (default {DEFAULT_WITHIN_S}, 1..{MAX_WITHIN_S}).",
        type="integer",
        minimum=1,
        maximum=MAX_WITHIN_S,
    ),
]
Limit = Annotated[
    str | None,
    query(
        "limit",
        f"At most this many workers (default 100, 0..{MAX_WORKERS}).",
        type="integer",
        minimum=0,
        maximum=MAX_WORKERS,
    ),
]
DagFilter = Annotated[
    str | None,
    query("dag_id", "Only this DAG's runs.", type="string", minLength=1, maxLength=MAX_IDENTIFIER),
]


@get(
    "/workers",
    tags=TAGS,
    summary="The workers seen lately, and the queues' loads (scope runs:read)",
    description=(
        "Workers are recorded by their claims (worker_id, queues, and the optional hostname and pid of the "
        "claim body) and their task instances' heartbeats (hostname, pid), each server process writing "
        "what it saw every few seconds: a worker shows up to that late in another process's answer. "
        "Workers unseen for a day are deleted. Any other query parameter is a 422."
    ),
    dependencies=RUNS_READ,
    responses=openapi.public_responses(),
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="get_workers",
)
async def list_workers(
    request: AnyRequest,
    caller: NamedDependency[TokenClaims],
    services: AppServices,
    seen_within: SeenWithin = None,
    limit: Limit = None,
) -> WorkersResponse:
    only_known(request, ("seen_within", "limit"))
    within = plain_int(seen_within, "seen_within", DEFAULT_WITHIN_S, ge=1, le=MAX_WITHIN_S)
    most = plain_int(limit, "limit", 100, ge=0, le=MAX_WORKERS)
    registry = services.workers
    seen = await registry.seen(timedelta(seconds=within), limit=most) if most else []
    # Every queue with work, and every queue a listed worker serves (an idle queue with nothing to do).
    loads = {q.queue: q for q in await registry.queues()}
    served = {queue for w in seen for queue in w.queues if queue not in loads}
    queues = [
        QueueResponse(queue=q.queue, ready=q.ready, running=q.running, oldest_ready_at=q.oldest_ready_at)
        for q in loads.values()
    ] + [QueueResponse(queue=queue, ready=0, running=0, oldest_ready_at=None) for queue in served]
    return WorkersResponse(
        workers=[
            WorkerResponse(
                worker_id=w.worker_id,
                hostname=w.hostname,
                pid=w.pid,
                queues=list(w.queues),
                running=w.running,
                first_seen_at=w.first_seen_at,
                last_seen_at=w.last_seen_at,
                last_claim_at=w.last_claim_at,
                last_heartbeat_at=w.last_heartbeat_at,
            )
            for w in seen
        ],
        queues=sorted(queues, key=lambda q: q.queue),
        seen_within=within,
    )


@get(
    "/dagRuns/events",
    tags=["DagRun"],
    summary="Stream the changes of every run as Server-Sent Events (scope runs:read)",
    description=(
        '`event: run` with `{"dag_id", "dag_run_id", "state"}` per change of a run (its state or its '
        "task instances), of every DAG or of `dag_id`'s, pushed as the server's event bus announces it (from "
        "any server process). `event: recheck`: changes may have been missed, re-read what you show. Starts "
        "with `: watching`, sends `: heartbeat` when idle, ends with `event: error` when the server shuts "
        "down (503 `overloaded` when this process holds STATEPORT_MAX_WAITERS streams). Any other query "
        "parameter is a 422."
    ),
    media_type=EVENT_STREAM,
    dependencies=RUNS_READ,
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=RunEvent,
            media_type=EVENT_STREAM,
            description="One object per event, of its fields; heartbeats are comments",
        ),
        **openapi.public_responses(404, 429, 503),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.RunEventsOperation,
    operation_id="stream_dag_run_events",
)
async def run_events(
    request: AnyRequest, caller: NamedDependency[TokenClaims], services: AppServices, dag_id: DagFilter = None
) -> Stream:
    only_known(request, ("dag_id",))
    if dag_id is not None:
        try:
            check_name(dag_id, "dag_id")  # no run has one that is not a name (NUL, longer, ...)
        except Invalid as exc:
            raise RequestInvalid.one("value_error", ["query", "dag_id"], exc.detail, dag_id) from None
        # A DAG that is not registered: 404, where a stream that never sent anything hid a misspelt dag_id
        # (an outsider's find). Read once per process (the trigger's gate), not at every stream.
        await services.runs.before_body(dag_id, keyed=True)
    changes = services.feed.changes(
        dag_id, idle_s=services.settings.watch_heartbeat_s, caller=waiter_of(request.scope)
    )
    try:
        await anext(changes)  # set up: a change from now on is sent
    except BaseException:
        await changes.aclose()
        raise
    request.scope[STREAM_KIND] = "watcher"  # type: ignore[literal-required]
    return Stream(until_expiry(request, _events(changes)), media_type=EVENT_STREAM, headers=STREAM_HEADERS)


async def _events(
    changes: AsyncGenerator[list[RunChange] | Recheck | None, None],
) -> AsyncGenerator[bytes, None]:
    watchers().inc()
    try:
        yield b": watching\n\n"
        async for got in changes:
            if got is None:
                yield b": heartbeat\n\n"
            elif isinstance(got, Recheck):
                yield b"event: recheck\ndata: {}\n\n"
            else:
                yield b"".join(
                    b"event: run\ndata: "
                    + _encode(RunEvent(dag_id=c.dag_id, dag_run_id=c.run_id, state=c.state))
                    + b"\n\n"
                    for c in got
                )
    except StateportError as exc:
        yield error_event(exc)
    finally:
        watchers().dec()
        await changes.aclose()


def handlers() -> list[HTTPRouteHandler]:
    return [list_workers, run_events]
