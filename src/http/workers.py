"""The worker protocol (design §5): claim task instances, heartbeat them, report how they ended.

``POST /execution/workers/claim`` takes a public API token with scope ``worker``; heartbeats and reports
take the task-instance token handed out with the claim (``sub`` must be the path's id, as on every
Execution API route). Bodies and status codes follow Airflow's ``/execution/task-instances/{id}/...``
routes where they exist: 204 on success, and 409 ``{"detail": {"reason": "invalid_state", "message",
"current_state"}}`` when the task instance is no longer running.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Annotated, Any, get_args

import msgspec
from litestar import Response, patch, post, put
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from stateport.domain.engine import stops as stop_signals
from stateport.domain.engine.claims import Claimed
from stateport.domain.engine.progress import MAX_GIVE_BACKS
from stateport.domain.engine.reports import (
    Failure,
    GivenBack,
    Released,
    Report,
    Rescheduled,
    Skipped,
    Success,
    TaskNotRunning,
)
from stateport.domain.errors import NotFound, Overloaded, Refused, StateportError, TooLarge
from stateport.domain.models import MAX_TIMEOUT_S
from stateport.domain.values import check_moment, check_result, clean_text
from stateport.http import openapi
from stateport.http.auth import (
    TaskCaller,
    holder,
    holder_of,
    note_ti_running,
    poller_of,
    share_of,
    worker_claims,
)
from stateport.http.bodies import LARGE_BODY, announced_size
from stateport.http.disconnects import until_disconnected
from stateport.http.errors import (
    NAME_TEXT,
    NO_INPUT,
    NO_NUL_TEXT,
    RequestInvalid,
    decode_body,
    execution_detail,
    json_response,
)
from stateport.http.members import (
    decode_members,
    decode_unrepeated,
    members_of,
    pairs_of,
    unique_throughout,
)
from stateport.http.params import TaskInstanceId
from stateport.http.paths import header_value
from stateport.http.providers import (
    LONG_POLLS,
    AnyRequest,
    Core,
    api_caller,
    body_budget_of,
    checks_of,
    services_of,
    task_caller,
    task_core,
    tokens_of,
)
from stateport.http.schemas import AwareDatetime
from stateport.telemetry import tracing

TAGS = ["Workers"]
# Room around a result for the rest of a report body.
REPORT_HEADROOM = 64 * 1024

# As a queue name of a DAG spec: no control characters, which not every database can compare or store.
Name = Annotated[str, Meta(min_length=1, max_length=250, pattern=NAME_TEXT)]
# Where a worker runs, as it says: kept by the worker registry and shown, so no NUL, which PostgreSQL's text
# cannot hold (it was stored as U+FFFD, a value the worker never sent: an outsider's find).
Hostname = Annotated[str, Meta(max_length=1000, pattern=NO_NUL_TEXT)]
# The most DAGs one claim may name (each is one index probe of the claim's statement on PostgreSQL).
MAX_CLAIM_DAGS = 1000
MAX_SKIP_TASKS = 1000
# The most task instances one worker process runs at once (stateport.worker's bound on its concurrency):
# the most a stop poll, or a claim's ``running``, names.
MAX_WORKER_TASKS = 1000


# A failure reported with no error (the Airflow Task SDK's ``failed`` carries none): where the error is.
NO_ERROR_SENT = (
    "the task failed; its worker sent no error (the Airflow Task SDK sends none): the traceback is in the "
    "log of the worker named by the task instance's hostname"
)


class TaskRef(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task of a DAG, as a claim names one to skip."""

    dag_id: Name
    task_id: Name


# The tasks a claim may skip: those of the worker's DAGs its code lacks (a newer version added them).
SkipTasks = Annotated[list[TaskRef], Meta(max_length=MAX_SKIP_TASKS)]


def _skipped(tasks: list[TaskRef]) -> frozenset[tuple[str, str]]:
    return frozenset((t.dag_id, t.task_id) for t in tasks)


class ClaimBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    worker_id: Name
    queues: Annotated[list[Name], Meta(min_length=1, max_length=100)] = msgspec.field(
        default_factory=lambda: ["default"]
    )
    # 0 claims nothing and answers at once: a worker whose slots are all busy renews its token that way.
    max_tasks: Annotated[int, Meta(ge=0, le=100)] = 1
    wait_s: Annotated[float, Meta(ge=0, le=60)] = 10.0
    # The DAGs the worker has code for: it is handed only their task instances, and the others stay queued
    # for a worker that serves them. Absent (null): every DAG's. Empty: none (the claim only waits).
    dag_ids: Annotated[list[Name], Meta(max_length=MAX_CLAIM_DAGS)] | None = None
    # Tasks the worker has no code for: their task instances stay queued for a worker that has it.
    skip_tasks: SkipTasks = msgspec.field(default_factory=list)
    # Stateport's, optional: where the worker runs, shown by the worker registry (GET /api/v2/workers).
    hostname: Hostname | None = None
    pid: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    # Stateport's, optional: the tries the worker runs, sent when it may have missed an answer (a claim or
    # a report whose answer it never read). The running tries leased to ``worker_id`` that it lacks, handed
    # out to a claim of this token's subject, are handed out again first. Absent (null): nothing is.
    running: Annotated[list[uuid.UUID], Meta(max_length=MAX_WORKER_TASKS)] | None = None


class ClaimedOut(Struct, frozen=True, kw_only=True, omit_defaults=True):
    # Sent as text; documented as the task instance id (a UUID) the Execution API routes take.
    id: Annotated[str, Meta(extra_json_schema={"format": "uuid"})]
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    token: str
    conf: dict[str, Any]
    inputs: dict[str, Any]
    lease_expires_at: datetime | None
    # The run's W3C trace context, when it is traced: the worker's span of the task is its child.
    traceparent: str | None = None
    # Stateport's: handed out again, to a claim that named what its worker runs (``running``).
    again: bool = False


class ClaimResponse(Struct, frozen=True, kw_only=True):
    # Each entry an encoded ClaimedOut.
    task_instances: list[Raw]


class StopTask(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: uuid.UUID
    dag_id: Name
    run_id: Name


# The body of a claim or a stop-signal poll: lists of up to MAX_WORKER_TASKS entries of up to three ids of
# MAX_IDENTIFIER characters, 4 bytes of UTF-8 each at most (3 MB). The routes' 64 KiB held a worker running
# 400 tasks of ordinary run ids out of its stop signals (413 at every poll: an outsider's find).
WORKER_LIST_BODY = 4 * 1024 * 1024


class StopsBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    task_instances: Annotated[list[StopTask], Meta(min_length=1, max_length=MAX_WORKER_TASKS)]
    wait_s: Annotated[float, Meta(ge=0, le=60)] = 25.0


class StopsResponse(Struct, frozen=True, kw_only=True):
    """The named task instances that are no longer running: their worker must stop them."""

    stopped: list[uuid.UUID]


MAX_RENEWED_TOKENS = 100
# A task token as a renewal sends it back: far more than one minted here (about 500 characters; 1,100 with
# a 4096-bit RSA key).
MAX_HELD_TOKEN = 8192
# A renewal's body with its most ids and tokens, each at its longest: the router's 64 KiB refused 100 tries'
# own tokens signed with RS256 (113 KB: an outsider's find).
TOKENS_BODY = MAX_RENEWED_TOKENS * (MAX_HELD_TOKEN + 64) + 4096


class TokensBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    worker_id: Name
    task_instances: Annotated[list[uuid.UUID], Meta(min_length=1, max_length=MAX_RENEWED_TOKENS)]
    # The tries' own tokens, expired or not: a try is renewed only for the token that claimed it
    # (``Claims.renew_tokens``).
    tokens: Annotated[
        list[Annotated[str, Meta(max_length=MAX_HELD_TOKEN)]], Meta(max_length=MAX_RENEWED_TOKENS)
    ]


class TokensResponse(Struct, frozen=True, kw_only=True):
    """Fresh tokens, by task-instance id, of those named that run on the worker's lease."""

    tokens: dict[uuid.UUID, str]


class HeartbeatBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    hostname: Hostname
    pid: int


# The fields of the Airflow Task SDK's own state payloads (TISuccessStatePayload, TITerminalStatePayload,
# TIRetryStatePayload) that Stateport reads and does not keep: a task run by the SDK unchanged reports with
# them (docs/api.md). ``end_date`` is checked as Airflow checks it (an aware datetime); the server's own
# clock dates the end.
EndDate = Annotated[datetime, Meta(tz=True)] | None
RenderedMapIndex = Annotated[str, Meta(max_length=64 * 1024)] | None
# Airflow's asset events of a success; Stateport keeps asset state, not asset events.
Outlets = Annotated[list[Any], Meta(max_length=10_000)] | None


class SuccessBody(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="state", tag="success"
):
    # Raw: the result is stored as the worker sent it, never decoded and encoded again. Absent (the Airflow
    # Task SDK's success, whose return value it pushed to XCom before: ``ti_sdk``): what was pushed, else
    # null.
    result: Raw | UnsetType = UNSET
    end_date: EndDate = None
    task_outlets: Outlets = None
    outlet_events: Outlets = None
    rendered_map_index: RenderedMapIndex = None


class FailedBody(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="state", tag="failed"
):
    error: Annotated[str, Meta(max_length=64 * 1024)] | None = None
    # Absent: retried (within the task's retries) when the report names its error, as Stateport's worker's
    # do; not when it names none, as the Airflow Task SDK's ``failed`` does, which it sends only once it
    # has decided not to retry (its retry is ``up_for_retry``).
    retryable: bool | None = None
    end_date: EndDate = None
    rendered_map_index: RenderedMapIndex = None

    def failure(self) -> Failure:
        retryable = self.error is not None if self.retryable is None else self.retryable
        return Failure(error=clean_text(self.error or NO_ERROR_SENT), retryable=retryable)


class UpForRetryBody(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="state", tag="up_for_retry"
):
    """The Airflow Task SDK's failure to be retried: a retryable failure (the task's own retries apply;
    its retry is not handed out before ``retry_delay_seconds``, else the task's ``retry_delay_s``)."""

    end_date: EndDate = None
    rendered_map_index: RenderedMapIndex = None
    retry_delay_seconds: Annotated[float, Meta(ge=0, le=MAX_TIMEOUT_S)] | None = None
    retry_reason: Annotated[str, Meta(max_length=64 * 1024)] | None = None

    def failure(self) -> Failure:
        return Failure(
            error=clean_text(self.retry_reason or NO_ERROR_SENT + " (up_for_retry)"),
            retryable=True,
            retry_delay_s=self.retry_delay_seconds,
        )


class DeferredBody(Struct, frozen=True, kw_only=True, tag_field="state", tag="deferred"):
    """The Airflow Task SDK's ``deferred`` (``TIDeferredStatePayload``: a deferrable operator handing its
    wait to Airflow's triggerer). Stateport has no triggerer: the try fails at once, for good, saying so.
    It was a 422, after which the SDK's supervisor gave up and the try stayed running until its lease ran
    out, blamed on the worker ("lease expired"), and used a retry (an outsider's find). Its members (the
    trigger's class path and arguments) are not read."""

    end_date: EndDate = None  # not sent by the SDK: the end is dated by the server's clock, as any

    def failure(self) -> Failure:
        return Failure(
            error="the task deferred (a deferrable operator): Stateport has no triggerer; run the operator "
            "with deferrable=False",
            retryable=False,
        )


class UpForRescheduleBody(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="state", tag="up_for_reschedule"
):
    """The Airflow Task SDK's ``up_for_reschedule`` (``TIRescheduleStatePayload``): a sensor in reschedule
    mode, or a task whose DAG file could not be loaded (the SDK tries again a few times, counting them by
    ``task_reschedule_count``). The try ends; the next one waits until ``reschedule_date``, using no retry."""

    reschedule_date: AwareDatetime
    end_date: EndDate = None


class ReleasedBody(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="state", tag="released"
):
    # Absent: a worker that stops gives the try back; it never uses a retry. Given: the worker cannot run it
    # (no code for the task), which may happen again on every claim: the first give-backs of a task
    # instance use no retry, later ones do (GivenBack), so it cannot go round between workers for ever.
    reason: Annotated[str, Meta(min_length=1, max_length=4000)] | None = None


class SkippedBody(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="state", tag="skipped"
):
    """The Airflow Task SDK's ``skipped`` (the task raised ``AirflowSkipException``): the try ends skipped."""

    end_date: EndDate = None
    rendered_map_index: RenderedMapIndex = None


# A report: {"state": "success", "result"}, {"state": "failed", "error", "retryable"},
# {"state": "released", "reason"?}; or the Airflow Task SDK's success, failed, up_for_retry,
# up_for_reschedule, skipped and deferred.
ReportBody = (
    SuccessBody
    | FailedBody
    | ReleasedBody
    | UpForRetryBody
    | UpForRescheduleBody
    | SkippedBody
    | DeferredBody
)


class ReportClaim(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The claim a report may carry (header ``Stateport-Claim``, JSON): up to ``max_tasks`` task instances
    of the reported one's run that the report makes ready, handed to ``worker_id`` in the answer (200, a
    claim's body) rather than to a claim waiting elsewhere. Needs the worker's API token too (scope
    ``worker``, header ``Stateport-Worker-Token``): the task-instance token alone claims nothing. Without
    the header, the answer is Airflow's 204, as before."""

    worker_id: Name
    queues: Annotated[list[Name], Meta(min_length=1, max_length=100)]
    max_tasks: Annotated[int, Meta(ge=0, le=100)] = 1
    skip_tasks: SkipTasks = msgspec.field(default_factory=list)  # as a claim's


CLAIM_HEADER = b"stateport-claim"
WORKER_TOKEN_HEADER = b"stateport-worker-token"


class ClaimedResponse(Struct, frozen=True, kw_only=True):
    """What the claim answers, as documented (the handler sends each entry encoded on its own)."""

    task_instances: list[ClaimedOut]


_encode = msgspec.json.Encoder().encode
_claim_decoder = msgspec.json.Decoder(ClaimBody)
_heartbeat_decoder = msgspec.json.Decoder(HeartbeatBody)
_stops_decoder = msgspec.json.Decoder(StopsBody)
_tokens_decoder = msgspec.json.Decoder(TokensBody)
_state_decoder = msgspec.json.Decoder(ReportBody)
# Every member a report's body may have, whatever its state: one named twice is a 422, not the decoder's
# choice of the last (an outsider's find: `"retryable": true, "retryable": false` was a final failure).
REPORT_MEMBERS = ("state", *dict.fromkeys(name for body in get_args(ReportBody) for name in members_of(body)))


def check_report(body: bytes) -> RequestInvalid | StateportError | None:
    """Every check of a report's body, its result's included (``checking``: a large one runs in a process
    of its own, which imports this by name)."""
    try:
        parsed = decode_unrepeated(_state_decoder, body, REPORT_MEMBERS)
        if isinstance(parsed, SuccessBody) and isinstance(parsed.result, Raw):
            check_result(bytes(parsed.result))
    except (RequestInvalid, StateportError) as exc:
        return exc
    return None


_report_claim_decoder = msgspec.json.Decoder(ReportClaim)
_NO_CONTENT = 204


def _not_running(exc: TaskNotRunning) -> Response[Any]:
    """The 409 answered, not raised (the report's trace span and the heartbeat's token note see no error)."""
    return json_response(409, {"detail": execution_detail(exc)})


@post(
    "/workers/claim",
    tags=TAGS,
    summary="Claim ready task instances (long-poll; API token, scope worker)",
    description=(
        "Waits up to `wait_s` for work on `queues`, of the DAGs `dag_ids` names (every DAG's when it is "
        "absent). `max_tasks` 0 answers `[]` at once (a busy worker's token renewal). Fewer than `max_tasks` "
        "when their confs and inputs would pass `STATEPORT_MAX_CLAIM_BYTES` (at least one; the rest stay "
        "queued, the same try). A task instance that cannot be handed out is left out and failed or given "
        "back. `running` (optional) lists the tries a worker runs after it may have missed an answer: the "
        "running tries leased to `worker_id` that it lacks, handed out to a claim of this token's subject, "
        "are handed out again first."
    ),
    status_code=200,
    request_max_body_size=WORKER_LIST_BODY,
    dependencies={"caller": api_caller("worker"), openapi.BODY: openapi.request_body(ClaimBody)},
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=ClaimedResponse,
            description="The claimed task instances; `[]` when the wait ends",
        ),
        **openapi.execution_responses(*openapi.WITH_BODY),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="worker_claim",
)
# Answered as ``ClaimResponse`` (raw entries), documented as ``ClaimedResponse`` (``responses``): typed Any,
# so that the document holds no ``ClaimResponse`` schema that no operation uses (an outsider's linter).
async def claim(request: AnyRequest, core: Core) -> Any:
    raw = await request.body()
    body: ClaimBody = decode_members(_claim_decoder, raw)
    if body.skip_tasks:  # objects of their own, whose members may repeat too (read again: a small body)
        unique_throughout(pairs_of(raw), ["body"])
    # Noted in memory only (a dict entry): the registry writes it in the background (domain/workers.py).
    services_of(request.scope).workers.claimed(body.worker_id, body.queues, body.hostname, body.pid)
    if body.max_tasks == 0:
        return ClaimResponse(task_instances=[])
    with _long_poll(request, body.wait_s) as (ended, wait_s):
        claimed = await core.claims.claim(
            body.worker_id,
            body.queues,
            body.max_tasks,
            wait_s,
            dag_ids=body.dag_ids,
            skip_tasks=_skipped(body.skip_tasks),
            abandoned=ended,
            caller=holder_of(request.scope),
            known=body.running,
        )
    return await _claim_response(core, claimed)


@post(
    "/workers/stops",
    tags=TAGS,
    summary="Wait until task instances this worker runs must stop (long-poll; API token, scope worker)",
    description=(
        "Answers `stopped`: those of `task_instances` that are no longer running (their run was cancelled, "
        "hit its deadline, or the try ended otherwise), at once if there are any, else as soon as one "
        "stops within `wait_s`; `[]` when the wait ends. A worker holds one such poll for all its tasks, "
        "so that it stops a cancelled task within about a second instead of at its next heartbeat."
    ),
    status_code=200,
    request_max_body_size=WORKER_LIST_BODY,
    dependencies={"caller": api_caller("worker"), openapi.BODY: openapi.request_body(StopsBody)},
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=StopsResponse,
            description="The task instances to stop; `[]` when the wait ends",
        ),
        **openapi.execution_responses(*openapi.WITH_BODY),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="worker_stops",
)
async def stops(request: AnyRequest, core: Core) -> StopsResponse:
    body: StopsBody = decode_members(_stops_decoder, await request.body())
    with _long_poll(request, body.wait_s) as (ended, wait_s):
        found = await stop_signals.stopped(
            core.advancer.runs,
            core.events,
            [(task.id, task.dag_id, task.run_id) for task in body.task_instances],
            wait_s,
            abandoned=ended,
        )
    return StopsResponse(stopped=found)


async def _claim_response(core: Core, claimed: list[Claimed]) -> ClaimResponse:
    out: list[Raw] = []
    for c in claimed:
        entry = ClaimedOut(
            id=str(c.ti.id),
            dag_id=c.ti.dag_id,
            run_id=c.ti.run_id,
            task_id=c.ti.task_id,
            map_index=c.ti.map_index,
            try_number=c.ti.try_number,
            token=c.token,
            conf=c.conf,
            inputs=c.inputs,
            lease_expires_at=c.ti.lease_expires_at,
            traceparent=c.traceparent,
            again=c.again,
        )
        try:
            # Each one on its own: a value that cannot be sent (nested too deep) fails its task instance,
            # never the whole claim.
            out.append(Raw(_encode(entry)))
        except (RecursionError, msgspec.EncodeError, TypeError, ValueError) as exc:
            await core.claims.refuse(c.ti.id, f"its inputs cannot be sent: {type(exc).__name__}: {exc}")
    return ClaimResponse(task_instances=out)


@contextmanager
def _long_poll(request: AnyRequest, wait_s: float) -> Iterator[tuple[asyncio.Event, float]]:
    """An event that ends a worker's long-poll: set when the worker hangs up, or when the server shuts down
    (then the poll answers as if its wait had passed, and the worker asks a server that is up; an
    outsider's probe saw a claim hold a server's shutdown for its whole 50 s wait); and how long it waits.

    A long wait as any other, it takes one of the process's seats within its caller's share (its workers'
    polls at most half of it: stateport.domain.seats). One refused a seat does not wait: it is answered at
    once, as one that asks for no wait (which holds none), and the worker asks again a moment later.
    Refused outright (429), a worker's claims and stop polls were crowded out by its own tasks' waits, or
    by the other workers sharing its token, and it stopped claiming (outsiders' finds)."""
    seat = None
    if wait_s > 0:
        try:
            seat = services_of(request.scope).seats.reserve(poller_of(request.scope))
        except (Refused, Overloaded):
            wait_s = 0.0
    ended = asyncio.Event()
    watcher = asyncio.create_task(_until_disconnected(request, ended))
    try:
        with request.app.state[LONG_POLLS].open(ended):
            yield ended, wait_s
    finally:
        watcher.cancel()
        if seat is not None:
            seat.give()


async def _until_disconnected(request: AnyRequest, gone: asyncio.Event) -> None:
    """Set ``gone`` when the client hangs up during a long-poll claim.

    The body has been read, so the next ASGI message can only be ``http.disconnect``. Without this, a
    claim left open by a worker that stopped would take work for nobody, and the task would wait out its
    lease and lose a try.
    """
    await until_disconnected(request.receive)
    gone.set()


TASK_INSTANCE = "/task-instances/{task_instance_id:str}"


def _task_instance(task_instance_id: TaskInstanceId, caller: NamedDependency[TaskCaller]) -> TaskCaller:
    """The caller, for the path's task instance (documents the path parameter the caller is read from)."""
    return caller


TI_CALLER = {
    "caller": task_caller,
    "task_instance": Provide(_task_instance, sync_to_thread=False),
    "core": task_core,
}


@put(
    TASK_INSTANCE + "/heartbeat",
    tags=TAGS,
    summary="Extend the lease of a running task instance (task-instance token); 204",
    status_code=_NO_CONTENT,
    dependencies={**TI_CALLER, openapi.BODY: openapi.request_body(HeartbeatBody)},
    responses=openapi.execution_responses(*openapi.WITH_BODY, 404, 409, conflict=openapi.NotRunningError),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_heartbeat",
)
async def heartbeat(
    request: AnyRequest, task_instance: NamedDependency[TaskCaller], core: Core
) -> Response[None]:
    body: HeartbeatBody = decode_members(_heartbeat_decoder, await request.body())
    try:
        await core.reports.heartbeat(task_instance.ti_id)
    except TaskNotRunning as exc:
        note_ti_running(request, False)
        return _not_running(exc)
    note_ti_running(request, True)
    services_of(request.scope).workers.heartbeat(task_instance.ti_id, body.hostname, body.pid)
    return Response(content=None, status_code=_NO_CONTENT)


@patch(
    TASK_INSTANCE + "/state",
    tags=TAGS,
    summary="Report success (with the result), failure, or release of a running task instance; 204",
    description=(
        "The same report again is 204; a conflicting one 409. A task instance that does not exist is 404, "
        "answered before the body is read. `released` queues a next try without using a retry; with a "
        f"`reason` (the worker cannot run it), only the first {MAX_GIVE_BACKS} give-backs of a task instance "
        "are free. With a `Stateport-Claim` header (JSON: `worker_id`, `queues`, `max_tasks`) and the "
        "worker's API token in `Stateport-Worker-Token`, the answer is 200 with the task instances of the "
        "run that the report made ready, claimed for that worker (a claim's body)."
    ),
    status_code=_NO_CONTENT,
    dependencies={
        **TI_CALLER,
        openapi.BODY: openapi.request_body(ReportBody),
    },
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=ClaimedResponse,
            description=(
                "Only for a report with a `Stateport-Claim` header (and the worker's API token in "
                "`Stateport-Worker-Token`): the task instances of the run it made ready, claimed"
            ),
        ),
        **openapi.execution_responses(*openapi.WITH_BODY, 404, 409, conflict=openapi.NotRunningError),
    },
    security=openapi.TASK_SECURITY,
    operation_class=openapi.with_header_parameters(
        {
            "Stateport-Claim": (
                "A claim folded into the report (JSON: `worker_id`, `queues`, `max_tasks`): the answer is "
                "then 200 with the task instances of the run that the report made ready, claimed for that "
                "worker"
            ),
            "Stateport-Worker-Token": (
                "The worker's API token (scope `worker`), required with `Stateport-Claim`"
            ),
        }
    ),
    operation_id="ti_update_state",
)
async def report(
    request: AnyRequest, task_instance: NamedDependency[TaskCaller], core: Core
) -> Response[None]:
    ti_id = task_instance.ti_id
    # The cheap checks first: the tokens (the caller's, and the worker's for a claim), then that the task
    # instance exists, and only then the body, which may be up to STATEPORT_RESULT_MAX_BYTES.
    next_claim, worker = _report_claim(request)
    if next_claim is not None:  # a claim folded into the report: the worker is seen claiming
        services_of(request.scope).workers.claimed(next_claim.worker_id, next_claim.queues, None, None)
    await core.reports.reportable(ti_id)
    size = announced_size(request, report_body_limit(services_of(request.scope).settings.result_max_bytes))
    with body_budget_of(request.scope).reading(size, share_of(request.scope)):
        if size >= LARGE_BODY:
            # Its lease runs on while the body is read and checked (seconds for tens of MiB, more while
            # others' checks come first): a report that came within its lease is not answered 409
            # because the sweeper ended the try meanwhile (an outsider's find).
            with suppress(NotFound, TaskNotRunning):
                await core.reports.heartbeat(ti_id)
        reported = await _read_report(request, core, ti_id)
        # Whatever the answer, the try is over (or was already): its token is not renewed.
        note_ti_running(request, False)
        # A traced task's report carries its span's traceparent: the report (and what it makes the run
        # do) is a span of that trace.
        parent = header_value(request.scope, tracing.HEADER_BYTES)
        try:
            if parent is None:
                return await _report(core, ti_id, reported, next_claim, worker)
            attributes = {"stateport.ti_id": str(ti_id)}
            with tracing.span("stateport.report", parent=parent, kind="server", attributes=attributes):
                return await _report(core, ti_id, reported, next_claim, worker)
        finally:
            # A retry the report queued supersedes the try: this process stops trusting what it read of it
            # (``StateService._writing``; another process within ``BINDING_TRUST_S``).
            services_of(request.scope).state.forget_binding(ti_id)


async def _read_report(request: AnyRequest, core: Core, ti_id: uuid.UUID) -> Report:
    """The report the body says."""
    raw = await request.body()
    # A large body is checked in a process of its own (``checking``), a small one here.
    offloaded = await checks_of(request.scope).check(check_report, raw)
    if offloaded:
        body = decode_body(_state_decoder, raw, checked=True)
    else:
        body = decode_unrepeated(_state_decoder, raw, REPORT_MEMBERS)
    if not isinstance(body, ReleasedBody) and body.end_date is not None:
        check_moment(body.end_date, "end_date")  # not kept, but checked as every time a caller sends
    match body:
        case SuccessBody(result=Raw() as result):
            limit = services_of(request.scope).settings.result_max_bytes
            if len(result) > limit:
                # The body may be 64 KiB more, for the report's other fields; the result may not.
                raise TooLarge(f"the result is {len(result)} bytes: over STATEPORT_RESULT_MAX_BYTES, {limit}")
            # Checked here whatever the try's state, so that a report's answer does not depend on where
            # its body was checked (the engine checks only a running try's, when not checked before).
            result_text = bytes(result) if offloaded else check_result(bytes(result))
            return Success(result=result_text, checked=True)
        case SuccessBody():
            # The Task SDK's: its return value was pushed (checked then), or it returned nothing.
            pushed = await core.reports.pushed_result(ti_id)
            return Success(result=pushed or b"null", checked=True, pushed=True)
        case FailedBody() | UpForRetryBody() | DeferredBody():
            return body.failure()
        case SkippedBody():
            return Skipped()
        case UpForRescheduleBody(reschedule_date=until):
            check_moment(until, "reschedule_date")
            return Rescheduled(until=until)
        case ReleasedBody(reason=str(reason)):
            return GivenBack(reason=clean_text(reason), by_worker=True)
        case _:
            return Released()


async def _report(
    core: Core, ti_id: uuid.UUID, reported: Report, next_claim: ReportClaim | None, worker: str | None
) -> Response[None]:
    try:
        if next_claim is None:
            await core.reports.report_of_worker(ti_id, reported)
            return Response(content=None, status_code=_NO_CONTENT)
        claimed = await core.claims.report(
            ti_id,
            reported,
            worker_id=next_claim.worker_id,
            queues=next_claim.queues,
            room=next_claim.max_tasks,
            skip_tasks=_skipped(next_claim.skip_tasks),
            caller=worker,
        )
    except TaskNotRunning as exc:
        return _not_running(exc)
    return _claimed(await _claim_response(core, claimed))


def _claimed(body: ClaimResponse) -> Response[Any]:
    """A report's answer with what it claimed: 200 and a claim's body (the route's plain answer is 204)."""
    return json_response(200, body)


@post(
    "/workers/task-tokens",
    tags=TAGS,
    summary="Fresh task-instance tokens for the tries a worker runs (API token, scope worker)",
    description=(
        "Answers `tokens`: a new token for each of `task_instances` (at most 100) that is running on the "
        "lease of `worker_id` (as its claim named it); the others are left out. For a worker whose "
        "task-instance tokens expired while it could not reach the server (an outage longer than their "
        "life): its heartbeats and reports go on with the new ones."
    ),
    status_code=200,
    request_max_body_size=TOKENS_BODY,
    dependencies={"caller": api_caller("worker"), openapi.BODY: openapi.request_body(TokensBody)},
    responses={
        200: ResponseSpec(
            generate_examples=False, data_container=TokensResponse, description="The fresh tokens"
        ),
        **openapi.execution_responses(*openapi.WITH_BODY),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="worker_task_tokens",
)
async def task_tokens(request: AnyRequest, core: Core) -> TokensResponse:
    body: TokensBody = decode_members(_tokens_decoder, await request.body())
    held = []
    for token in body.tokens:
        try:
            held.append(tokens_of(request.scope).verify_held_task_token(token))
        except StateportError:
            continue  # not a token of this server's: it proves nothing, and its try is left out
    caller = holder_of(request.scope)
    renewed = await core.claims.renew_tokens(body.worker_id, body.task_instances, held, caller)
    return TokensResponse(tokens=renewed)


def _report_claim(request: AnyRequest) -> tuple[ReportClaim, str] | tuple[None, None]:
    """The claim the report carries, and who claims (its worker's token, verified); None, None when it
    carries none."""
    header = header_value(request.scope, CLAIM_HEADER)
    if header is None:
        return None, None
    # One line of each: which of two a proxy would read is not known (the first was used: an outsider's
    # find), as an Authorization header sent twice is refused.
    for name in (CLAIM_HEADER, WORKER_TOKEN_HEADER):
        lines = sum(1 for key, _ in request.scope["headers"] if key == name)
        if lines > 1:
            raise RequestInvalid.one(
                "value_error",
                ["header", name.decode()],
                f"send one {name.decode()} header, not {lines}",
                NO_INPUT,
            )
    worker = holder(worker_claims(request, tokens_of(request.scope), WORKER_TOKEN_HEADER))
    # A member named twice is refused, as in a claim's body (an outsider's find: the last `worker_id` took
    # the task instance the report handed out).
    claim: ReportClaim = decode_unrepeated(
        _report_claim_decoder,
        header.encode("latin-1"),
        members_of(ReportClaim),
        ("header", CLAIM_HEADER.decode()),
    )
    if claim.skip_tasks:  # as a claim's body (an outsider's find: the last dag_id of an item was taken)
        unique_throughout(pairs_of(header.encode("latin-1")), ["header", CLAIM_HEADER.decode()])
    return claim, worker


def claim_handlers() -> list[HTTPRouteHandler]:
    """Routes with small bodies."""
    return [claim, stops, heartbeat, task_tokens]


def report_handlers() -> list[HTTPRouteHandler]:
    """The report route, whose body carries a result of up to ``result_max_bytes``."""
    return [report]


def report_body_limit(result_max_bytes: int) -> int:
    return result_max_bytes + REPORT_HEADROOM
