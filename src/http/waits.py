"""Synchronous execution over HTTP: the wait stream, the outcome long-poll, trigger-and-wait, cancel.

- ``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait?interval=S[&result=T...]``: Airflow's NDJSON
  stream. A ``{"state": ...}`` line at once and one per change of the run's state, each sent as it
  happens; the last line carries the outcome (``state`` success or failed, ``results`` when there are any,
  ``failed_task`` and ``reason`` on failure) and is sent the moment the outcome is set, teardowns or not.
  ``interval`` is required (> 0) as in Airflow and otherwise ignored: lines are pushed by events, not
  polled. ``result`` (repeatable) names the tasks whose results the last line carries instead of the
  result task's.
- ``GET .../outcome?timeout=S``: 200 with the outcome, or 202 ``{"dag_run_id", "state"}`` when ``timeout``
  seconds (default 30, at most 300) pass first.
- ``POST /api/v2/dags/{dag_id}/dagRuns`` with ``Prefer: wait=N`` (RFC 7240) is answered here once the
  trigger route has created the run: 200 with the outcome within N seconds (capped at 300), else 202 with
  ``Location`` pointing at the run's wait stream.
- ``POST .../cancel``: stop the run (outcome failed, reason ``cancelled``, if none was set).

A timed-out wait never touches the run; waiting again re-attaches to it, in any process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import suppress
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from stateport.domain.disconnects import OnDisconnect
from stateport.domain.errors import NotFound, StateportError, Unavailable
from stateport.domain.models import DagVersionInfo, Run
from stateport.domain.seats import Seat
from stateport.domain.waiting import Follow
from stateport.http import openapi
from stateport.http.auth import waiter_of
from stateport.http.dag_responses import (
    DAGRunResponse,
    DagRunState,
    OutcomeResponse,
    dag_run_outcome_response,
    dag_run_response,
    outcome_response,
)
from stateport.http.disconnects import (
    PREFERENCE,
    QUERY_NAME,
    attended,
    policy_param,
    watched,
)
from stateport.http.errors import CallerGone, NoFields, RequestInvalid, client_closed, refuse_body
from stateport.http.listing import only_known, sent_once
from stateport.http.metrics import STREAM_ENDS
from stateport.http.params import DagId, RunId, query
from stateport.http.prefer import MAX_WAIT_S, preferences, wait_preference
from stateport.http.providers import Callers, Core, Runs, RunServices, Waits, api_caller, services_of

log = logging.getLogger("stateport.http")
NDJSON = "application/x-ndjson"
# A wait stream said nothing while its run kept one state, and a proxy's read timeout (nginx's 60 s by
# default) cut it (an outsider's find: README asked for 300 s, and a run may wait longer). It now sends an
# empty line, which NDJSON readers skip (Stateport's clients and console do): a stream the route serves
# after ``STATEPORT_WATCH_HEARTBEAT_S`` without a line; a handed-over one at its run's safety re-reads
# (every 0.5-1.5 times ``STATEPORT_WAIT_RECHECK_S``) that come half that heartbeat or more after its last.
KEEPALIVE = b"\n"
TAGS = ["DagRun"]  # Airflow's (DagRunApi)
DEFAULT_OUTCOME_TIMEOUT_S = 30.0
RUN = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}"
# Proxies (nginx) buffer responses unless told not to; every line must reach the caller as it happens.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_encode = msgspec.json.Encoder().encode
# The key of the scope's state under which a request parked by ``stateport.http.parking`` carries the run
# as its watch last saw it (a client cannot set the scope's state).
PARKED_RUN = "stateport.parked_run"


class WaitingResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202: the outcome is not known yet; wait again on the run."""

    dag_run_id: str
    state: str


def wait_location(run: Run) -> str:
    """Where to wait on a run: its NDJSON stream (``interval`` is required there, as in Airflow)."""
    return f"/api/v2/dags/{quote(run.dag_id, safe='')}/dagRuns/{quote(run.run_id, safe='')}/wait?interval=1"


_SECONDS = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def seconds_param(raw: str | None, name: str, default: float | None, *, positive: bool) -> float:
    """A number of seconds from the query: finite, and > 0 (``positive``) or >= 0."""
    if raw is None:
        if default is None:
            raise RequestInvalid.one("missing", ["query", name], "Field required")
        return default
    # Digits with an optional fraction only: float() also reads "1_0" (as 10), " 1", "1e3", "inf" and "nan".
    if _SECONDS.fullmatch(raw) is None:
        raise RequestInvalid.one(
            "float_parsing", ["query", name], f"{name} must be a number (digits, an optional fraction)", raw
        )
    value = float(raw)
    if not math.isfinite(value):  # more digits than a float holds
        raise RequestInvalid.one("finite_number", ["query", name], f"{name} must be a finite number", raw)
    if value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise RequestInvalid.one("value_error", ["query", name], f"{name} must be {bound}", raw)
    return value


def outcome_timeout(raw: str | None) -> float:
    """How long an outcome long-poll waits for ``?timeout=``: 0..300 s (more is capped), default 30."""
    return min(seconds_param(raw, "timeout", DEFAULT_OUTCOME_TIMEOUT_S, positive=False), MAX_WAIT_S)


# --- the outcome, as lines and as JSON -------------------------------------------------------------------


def _final_line(run: Run, results: dict[str, Any]) -> dict[str, Any]:
    assert run.outcome is not None
    line: dict[str, Any] = {"state": str(run.outcome.state)}
    if results:
        line["results"] = results
    if run.outcome.failed_task is not None:
        line["failed_task"] = run.outcome.failed_task
    if run.outcome.reason is not None:
        line["reason"] = run.outcome.reason
    if run.outcome.error is not None:
        line["error"] = run.outcome.error
    return line


async def _final_results(waits: Waits, run: Run, result_tasks: Sequence[str]) -> dict[str, Any]:
    assert run.outcome is not None
    if result_tasks:
        return await waits.results(run, result_tasks)
    return dict(run.outcome.results)


class OutcomeLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A line of the wait stream: ``{"state"}`` while the run goes on; the last adds what the outcome says.

    As Airflow 3.3.2's lines (``DagRunWaiter._serialize_response``): ``state`` a DagRunState, and on the
    last line ``results`` keyed by task_id when there are any. ``failed_task``, ``reason`` and ``error``
    are Stateport's (design section 5), extra keys a reader of Airflow's lines passes over.
    """

    state: DagRunState
    results: dict[str, Any] | None = None
    failed_task: str | None = None
    reason: str | None = None
    error: str | None = None


Interval = Annotated[
    str | None,
    query(
        "interval",
        "Required, > 0 and otherwise ignored (as in Airflow): lines are pushed as changes happen.",
        type="number",
        exclusiveMinimum=0,
    ),
]
ResultTasks = Annotated[
    list[str] | None,
    query(
        "result",
        "Repeatable: the tasks whose results the last line carries, instead of the result task's.",
        type="array",
        items={"type": "string"},
    ),
]
Timeout = Annotated[
    str | None,
    query(
        "timeout",
        "Seconds to wait, 0..300 (more is capped); default 30.",
        type="number",
        minimum=0,
        default=30,
    ),
]
OnDisconnectParam = Annotated[
    str | None,
    query(
        QUERY_NAME,
        "`cancel`: cancel the run if this caller disconnects before the outcome and no other waiter that "
        "named a policy remains; `continue` (what no policy means): the run goes on, and this waiter holds "
        "it against the others' `cancel`. Either needs a token with `runs:write` as well (403 otherwise): "
        "it decides the run's fate.",
        type="string",
        enum=["cancel", "continue"],
    ),
]
RUNS_READ = {"caller": api_caller("runs:read")}


@get(
    RUN + "/wait",
    tags=[*TAGS, "experimental"],  # as Airflow tags it
    summary="Stream the run's state as NDJSON until its outcome is known (scope runs:read)",
    description=(
        "Airflow's wait endpoint. One `{\"state\": ...}` line at once and one per change of the run's "
        "state; the last line is the outcome (`results` keyed by task_id, `failed_task`, `reason` and "
        "`error` on failure), sent as soon as the outcome is set, even while teardown tasks still run."
    ),
    media_type=NDJSON,
    dependencies=RUNS_READ,
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=OutcomeLine,
            media_type=NDJSON,
            description=(
                "One JSON object per line, as the run goes; an empty line now and then while the run keeps "
                "one state (a keep-alive for proxies: skip it)"
            ),
        ),
        **openapi.public_responses(404, 429),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="wait_dag_run_until_finished",
)
async def wait_stream(
    request: Request[Any, Any, Any],
    run_services: RunServices,
    dag_id: DagId,
    dag_run_id: RunId,
    interval: Interval = None,
    result_tasks: ResultTasks = None,
    on_disconnect: OnDisconnectParam = None,
) -> Stream:
    waits, callers = run_services.waits, run_services.callers
    sent_once(request, ("interval", QUERY_NAME))
    seconds_param(interval, "interval", None, positive=True)
    policy = policy_param(request, on_disconnect)
    park: StreamPark | None = request.scope.pop(STREAM_PARK, None)  # type: ignore[misc]
    keepalive_s = services_of(request.scope).settings.watch_heartbeat_s
    changes = waits.changes(dag_id, dag_run_id, caller=waiter_of(request.scope))
    try:
        # Read before answering, so an unknown run is a 404 rather than a broken stream.
        first = await anext(changes)
        if result_tasks:
            await waits.check_tasks(first, result_tasks)  # a misspelt task would give no result, silently
    except BaseException:
        await changes.aclose()
        raise
    if park is not None and policy is None and first.outcome is None:
        # The server's protocol streams the rest with no task (``StreamHandoff``). A stream with a
        # disconnect policy streams here, where its attendance is held.
        handoff = StreamHandoff(request.scope, waits, first, changes, result_tasks or [], park, keepalive_s)
        return HandoffStream(handoff, media_type=NDJSON, headers=STREAM_HEADERS)
    lines = _lines(waits, first, changes, result_tasks or [], keepalive_s)
    if policy is not None:
        lines = _attended_lines(callers, policy, first, lines)
    return Stream(lines, media_type=NDJSON, headers=STREAM_HEADERS)


async def _lines(
    waits: Waits,
    first: Run,
    changes: AsyncGenerator[Run, None],
    result_tasks: Sequence[str],
    keepalive_s: float,
) -> AsyncGenerator[bytes, None]:
    following: asyncio.Future[Run | None] | None = None
    try:
        run: Run | None = first
        while run is not None:
            if run.outcome is not None:
                line = _final_line(run, await _final_results(waits, run, result_tasks))
                yield _encode(line) + b"\n"
                return
            yield _encode({"state": str(run.state)}) + b"\n"
            # The next change is awaited in a task of its own, so that waiting for it may pause for a
            # keep-alive without cancelling it (which would end the generator of changes).
            following = asyncio.ensure_future(anext(changes, None))
            while not (await asyncio.wait({following}, timeout=keepalive_s))[0]:
                yield KEEPALIVE
            run, following = following.result(), None
    finally:
        if following is not None:
            # Ended before the next change came (the client went, the server stops): the pending read
            # goes first, or closing the generator would find it still running.
            following.cancel()
            await asyncio.wait({following})
        await changes.aclose()


# --- the wait stream handed over to the server's protocol ---------------------------------------------------

# The key of the scope under which the server's protocol (``stateport.serving.HttpProtocol``) offers to
# stream a wait stream's lines itself once the route has answered (a ``StreamPark``); a client cannot set
# the scope.
STREAM_PARK = "stateport.stream_park"
# How the protocol writes a handed-over stream: a line (``last``: and the stream's end), the end alone
# (``b""``), or None to break the connection (the run could not be followed: as when the route's stream
# failed, the client sees no end).
StreamWrite = Callable[[bytes | None, bool], None]
# The protocol's offer: it calls the argument with its writer, which returns what it will cancel should the
# client go away, and answers whether it took the stream (False: the client is gone already).
StreamPark = Callable[[Callable[[StreamWrite], "StreamFollower"]], bool]
_final_tasks: set[asyncio.Task[None]] = set()


class StreamFollower:
    """A wait stream after its route answered, with no task: told each change by the run's watch
    (``RunWaits.follow``), it writes the lines as ``_lines`` would, through the protocol's writer. The
    last line (it may read the results) is written by a short task of its own.

    Waiting in the route's task cost a stream 25 KiB in Litestar's streaming response (its task group of
    two tasks and a cancel scope, the route's and the middleware's frames); handed over, a stream costs
    about what a parked outcome long-poll does (docs/benchmarks.md, waiters)."""

    __slots__ = ("ends", "follow", "keepalive_s", "result_tasks", "waits", "write", "written_at")

    def __init__(
        self, waits: Waits, result_tasks: Sequence[str], write: StreamWrite, keepalive_s: float
    ) -> None:
        self.keepalive_s = keepalive_s
        self.waits = waits
        self.result_tasks = result_tasks
        self.write = write
        self.follow: Follow | None = None
        self.written_at = asyncio.get_running_loop().time()  # the route wrote the first line
        # Called once when the stream ends or its client goes away: the metrics middleware's record.
        self.ends: list[Callable[[], None]] = []

    def start(self) -> None:
        """The route's task has ended: lines from here on are this object's."""
        if self.follow is not None:
            self.follow.start()

    def moved(self, run: Run) -> None:
        self.written_at = asyncio.get_running_loop().time()
        if run.outcome is None:
            self.write(_encode({"state": str(run.state)}) + b"\n", False)
            return
        task = asyncio.get_running_loop().create_task(self._last(run), name="stateport-wait-last-line")
        _final_tasks.add(task)
        task.add_done_callback(_final_tasks.discard)

    async def _last(self, run: Run) -> None:
        try:
            presented = await self.waits.presented(run)
            results = await _final_results(self.waits, presented, self.result_tasks)
            line: bytes | None = _encode(_final_line(presented, results)) + b"\n"
        except Exception:  # as when the route's stream failed: the connection breaks, the error is logged
            log.exception("the last line of a wait stream failed")
            line = None
        self._ended()
        self.write(line, True)

    def still(self, run: Run) -> None:
        # Half the heartbeat: the next re-read may come 1.5 x STATEPORT_WAIT_RECHECK_S later, so the gap
        # between two lines stays under heartbeat / 2 + 1.5 x recheck (52.5 s by default, under nginx's 60).
        now = asyncio.get_running_loop().time()
        if now - self.written_at >= self.keepalive_s / 2:
            self.written_at = now
            self.write(KEEPALIVE, False)

    def ended(self, error: StateportError | None) -> None:
        if error is not None:
            log.warning("a wait stream ended: %s", error.detail)
        self._ended()
        self.write(None if error is not None else b"", True)

    def cancel(self) -> None:
        """The client went away."""
        if self.follow is not None:
            self.follow.cancel()
        self._ended()

    def _ended(self) -> None:
        run_ends(self.ends)


def run_ends(ends: list[Callable[[], None]]) -> None:
    """Call what waits for a stream's end, once each (the list is the scope's ``STREAM_ENDS``: the
    middleware may add to it after the stream ended, before its task did; the protocol calls this then)."""
    while ends:
        ends.pop(0)()


class StreamHandoff:
    """What the route gives a wait stream's response to send when the server's protocol offers to stream
    it (``STREAM_PARK``): the first line, then the stream handed over. Iterated (another response class),
    it is the lines as the route streams them itself."""

    __slots__ = ("changes", "first", "keepalive_s", "park", "result_tasks", "scope", "waits")

    def __init__(
        self,
        scope: Any,
        waits: Waits,
        first: Run,
        changes: AsyncGenerator[Run, None],
        result_tasks: Sequence[str],
        park: StreamPark,
        keepalive_s: float,
    ) -> None:
        self.scope = scope
        self.waits = waits
        self.first = first
        self.changes = changes
        self.result_tasks = result_tasks
        self.park = park
        self.keepalive_s = keepalive_s

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _lines(self.waits, self.first, self.changes, self.result_tasks, self.keepalive_s)

    async def send(self, send: Send) -> None:
        """Send the first line, then hand the stream over (the protocol follows the run from the first
        line's run: ``changes`` is closed only once the follow holds the run's watch)."""
        try:
            line = _encode({"state": str(self.first.state)}) + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
            self.park(self._follower)
        finally:
            await self.changes.aclose()

    def _follower(self, write: StreamWrite) -> StreamFollower:
        follower = StreamFollower(self.waits, self.result_tasks, write, self.keepalive_s)
        follower.follow = self.waits.follow(self.first, follower, caller=waiter_of(self.scope))
        self.scope[STREAM_ENDS] = follower.ends
        return follower


class _HandoffStreamingResponse(ASGIStreamingResponse):
    """Litestar's streaming response, whose body a ``StreamHandoff`` sends and hands over."""

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        if isinstance(self.iterator, StreamHandoff):
            await self.iterator.send(send)
        else:
            await super().send_body(send, receive)


class HandoffStream(Stream):
    """``Stream`` with a ``StreamHandoff``: the same head (status, headers), then the handed-over body."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        response.__class__ = _HandoffStreamingResponse  # the same layout (no slots of its own)
        return response


async def _attended_lines(
    callers: Callers, policy: OnDisconnect, first: Run, lines: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """The lines of a stream whose caller named a disconnect policy. Litestar ends a stream whose caller
    disconnected by cancelling it (or closing it): the stream then ends before its last line, and that
    is the disconnect. A stream the server ends (shutting down) ends normally, and cancels nothing."""
    try:
        async with callers.waiting(first.dag_id, first.run_id, policy) as attendance:
            try:
                async for line in lines:
                    yield line
            except GeneratorExit:
                attendance.disconnected = True
                raise
    finally:
        await lines.aclose()


@get(
    RUN + "/outcome",
    tags=TAGS,
    summary="Long-poll for the run's outcome (scope runs:read): 200 outcome, or 202 when timeout passes",
    dependencies=RUNS_READ,
    responses={
        200: ResponseSpec(generate_examples=False, data_container=OutcomeResponse, description="The outcome"),
        202: ResponseSpec(
            generate_examples=False,
            data_container=WaitingResponse,
            description="The timeout passed first: wait again",
        ),
        **openapi.public_responses(404, 429),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="get_dag_run_outcome",
)
async def wait_outcome(
    request: Request[Any, Any, Any],
    run_services: RunServices,
    dag_id: DagId,
    dag_run_id: RunId,
    wait_timeout: Timeout = None,
    on_disconnect: OnDisconnectParam = None,
) -> Response[Any]:
    waits, callers = run_services.waits, run_services.callers
    # A misspelt ``timeout`` would otherwise wait the default 30 s, not what was asked.
    only_known(request, ("timeout", QUERY_NAME))
    sent_once(request, ("timeout", QUERY_NAME))
    seconds = min(
        seconds_param(wait_timeout, "timeout", DEFAULT_OUTCOME_TIMEOUT_S, positive=False), MAX_WAIT_S
    )
    policy = policy_param(request, on_disconnect)
    parked: Run | StateportError | None = request.scope["state"].get(PARKED_RUN)
    if isinstance(parked, Unavailable):
        # The store failed while the request was parked: reading again would cost a second timeout.
        raise parked
    if isinstance(parked, Run) and (parked.dag_id, parked.run_id) == (dag_id, dag_run_id):
        # It waited its time already, before the route (stateport.http.parking): this is where it ended.
        # (Parking takes no waiter with a disconnect policy: those wait here, watching their connection.)
        run = await waits.presented(parked)
    else:
        # Watching the connection: a caller gone gives its seat back now, not when its time runs out
        # (CallerGone: 499; with a disconnect policy, the policy applies).
        wait = waits.wait_for_outcome(dag_id, dag_run_id, seconds, caller=waiter_of(request.scope))
        if policy is None:
            run = await watched(request.receive, wait)
        else:
            run = await attended(callers, policy, (dag_id, dag_run_id), request.receive, wait)
    if run.outcome is None:
        return Response(WaitingResponse(dag_run_id=run.run_id, state=str(run.state)), status_code=202)
    return Response(outcome_response(run.outcome))


@post(
    RUN + "/cancel",
    tags=TAGS,
    summary="Cancel a run (scope runs:write); returns the run",
    description=(
        'The run is `failed`, its outcome `{"state": "failed", "reason": "cancelled"}` unless set. '
        "Takes no body (or `{}`): anything else is a 422."
    ),
    status_code=200,
    dependencies={"caller": api_caller("runs:write"), openapi.BODY: openapi.request_body(NoFields)},
    responses=openapi.public_responses(404, *openapi.WITH_BODY),
    security=openapi.API_SECURITY,
    operation_class=openapi.OptionalBodyOperation,
    operation_id="cancel_dag_run",
)
async def cancel_run(
    request: Request[Any, Any, Any], core: Core, runs: Runs, dag_id: DagId, dag_run_id: RunId
) -> DAGRunResponse:
    refuse_body(await request.body())
    run = await core.advancer.cancel(dag_id, dag_run_id)
    return dag_run_response(run, await runs.version_info(run.dag_id, run.dag_version))


# --- trigger-and-wait ------------------------------------------------------------------------------------


def _preferences(request: Request[Any, Any, Any]) -> Iterator[tuple[str, str]]:
    """The ``Prefer`` headers' preferences, in order: (name lower-cased, value unquoted)."""
    return preferences(request.headers.getall("prefer", []))


def prefer_on_disconnect(request: Request[Any, Any, Any]) -> OnDisconnect | None:
    """The ``on-disconnect`` preference (``cancel`` or ``continue``, case-insensitive), or None; only the
    first counts, and one with another value is ignored (RFC 7240 §2)."""
    for name, value in _preferences(request):
        if name == PREFERENCE:
            try:
                return OnDisconnect(value.lower())
            except ValueError:
                return None
    return None


def prefer_wait(request: Request[Any, Any, Any]) -> float | None:
    """The ``wait`` preference of the request's ``Prefer`` headers (RFC 7240), capped, or None
    (``stateport.http.prefer.wait_preference``)."""
    return wait_preference(request.headers.getall("prefer", []))


# What a trigger that waited answers with a 202, besides the run.
TRIGGER_WAIT_HEADERS = {
    "Location": "The run's wait stream, to wait on",
    "Preference-Applied": "`wait=N` (and `on-disconnect=...`), the preferences that were applied",
}


async def trigger_and_wait(
    waits: Waits,
    run: Run,
    dag: DagVersionInfo,
    wait_s: float,
    *,
    seat: Seat | None,
    caller: str,
    policy: OnDisconnect | None = None,
    callers: Callers,
    receive: Receive,
    waiting: Callable[[Run], Awaitable[str | None]],
) -> Response[Any]:
    """Answer a trigger that asked to wait: 200 with the outcome if it is set in time, else 202 with the
    run as ``GET`` shows it (``waiting``: why it waits, as ``RunService.waiting_reason`` says).
    ``dag``: the version the run uses (it stays the same while the run goes); ``seat``: the wait's, taken
    before the run was made (None for a wait of no time, which holds none); ``caller``: its key. The
    connection (``receive``) is watched while waiting: a caller gone ends the wait (with a disconnect
    ``policy``, the policy applies)."""
    applied = {"Preference-Applied": f"wait={wait_s:g}"}
    wait = waits.wait_for_outcome(run.dag_id, run.run_id, wait_s, caller=caller, seat=seat)
    if policy is not None:
        applied["Preference-Applied"] += f", {PREFERENCE}={policy}"
    try:
        if policy is None:
            run = await watched(receive, wait)
        else:
            run = await attended(callers, policy, (run.dag_id, run.run_id), receive, wait)
    except CallerGone:
        # Answered here, not raised: the trigger's trace span is around this, and a caller that left is no
        # error of the run's trace.
        return client_closed()
    except NotFound:
        raise  # the run was deleted while the caller waited: 404, as a long-poll on it answers
    except StateportError:
        pass  # should the store fail now, the run exists and goes on: tell the caller where to wait for it
    if run.outcome is None:
        headers = {**applied, "Location": wait_location(run)}
        why = None
        with suppress(StateportError):  # the store failing now: the run goes on, and its answer without it
            why = await waiting(run)
        return Response(dag_run_response(run, dag, waiting=why), status_code=202, headers=headers)
    return Response(dag_run_outcome_response(run, dag), headers=applied)


def handlers() -> list[HTTPRouteHandler]:
    """The wait, outcome and cancel routes (small bodies)."""
    return [wait_stream, wait_outcome, cancel_run]
