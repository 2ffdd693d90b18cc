"""The public API's run routes (``/api/v2/dags/<dag_id>/dagRuns``): trigger, list, read, mark failed and
delete runs, answered with Airflow 3.3.2's ``DAGRunResponse`` (``stateport.http.dag_responses``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec

from stateport.domain.errors import Invalid
from stateport.domain.jsontext import JsonDecoder
from stateport.domain.models import MAX_IDENTIFIER, DagVersion, DagVersionInfo, Run, RunState
from stateport.domain.queries import RUN_FIELD_ALIASES, RunField, RunQuery, TimeRange, parse_order
from stateport.domain.values import check_identifier
from stateport.http import openapi
from stateport.http.auth import holder_of, share_of, waiter_of
from stateport.http.bodies import SMALL_BODY, announced_size, bounded_body
from stateport.http.dag_responses import (
    DAGRunCollectionResponse,
    DAGRunOutcomeResponse,
    DAGRunResponse,
    DagRunState,
    DagRunType,
    dag_run_response,
)
from stateport.http.errors import NO_INPUT, RequestInvalid
from stateport.http.listing import AirflowLimit, AirflowOffset, OrderBy, airflow_page, given, ranges, refuse
from stateport.http.members import decode_members, decode_unrepeated, members_of
from stateport.http.params import NAME_PATTERN, DagId, RunId, header, query
from stateport.http.paths import header_value
from stateport.http.providers import AnyRequest, Core, Runs, RunServices, body_budget_of
from stateport.http.public import common, scoped
from stateport.http.schemas import DAGRunPatchBody, TriggerBody, TriggerDAGRunPostBody
from stateport.http.streamed_pages import streamed_page
from stateport.http.waits import TRIGGER_WAIT_HEADERS, prefer_on_disconnect, prefer_wait, trigger_and_wait
from stateport.telemetry import tracing

_trigger_decoder = JsonDecoder(TriggerBody)
TRIGGER_MEMBERS = members_of(TriggerBody)
_patch_decoder = msgspec.json.Decoder(DAGRunPatchBody)
RUN_TAGS = ["DagRun"]  # Airflow's (DagRunApi)
RUN = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}"
# Airflow's wildcard for "every DAG" in a listing's path.
EVERY = "~"
_RUN_STATES = frozenset(state.value for state in DagRunState)
_RUN_TYPES = frozenset(run_type.value for run_type in DagRunType)


async def run_response(runs: Runs, run: Run, dag: DagVersionInfo | None = None) -> DAGRunResponse:
    """The run as Airflow shows it; ``dag``: the DAG version the caller holds, used if it is the run's."""
    if dag is None or (dag.dag_id, dag.version) != (run.dag_id, run.dag_version):
        dag = await runs.version_info(run.dag_id, run.dag_version)
    return dag_run_response(run, dag)


Prefer = Annotated[
    str | None,
    header(
        "Prefer",
        "`wait=N` (RFC 7240, whole seconds, capped at 300): wait for the outcome; 200 with it, else 202. "
        "A value that is not delta-seconds is ignored. `on-disconnect=cancel` (with `wait`): cancel the run "
        "if the caller disconnects before the outcome and no other waiter that named a policy remains; "
        "`continue` (the default) lets it go on.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    header(
        "Idempotency-Key",
        "Triggers with the same key and body create one run; the same key with another body is 422.",
        minLength=1,
        maxLength=MAX_IDENTIFIER,
        pattern=NAME_PATTERN,
    ),
]


# The trigger's 200: the run, or (after a Prefer: wait) the run with its outcome. The outcome first: every
# answer is a run (no run schema forbids more fields), so a client trying the branches in order took every
# outcome for a plain run, its results untyped (an outsider's generated client); an outcome has ``results``.
RUN_OR_OUTCOME: Any = DAGRunOutcomeResponse | DAGRunResponse


def _honourable(body: TriggerBody) -> None:
    """Refuse what of Airflow's trigger body Stateport cannot do; the rest is honoured or, where Airflow
    itself would ignore it, ignored.

    - ``logical_date`` not null: 422 (as before issue 14): a Stateport run has no logical date, and the
      date would mean nothing to it.
    - ``data_interval_start``/``_end``: both or neither (Airflow's 422); with ``logical_date`` null Airflow
      itself does not use them (``TriggerDAGRunPostBody.validate_context``), so they are ignored.
    - ``partition_key`` not null: 400 in Airflow's words: no Stateport DAG is partitioned, and running
      with the key dropped would process other data than asked.
    - ``note``: kept with the run (at most 1,000 characters, as Airflow's), shown in every reply, and
      changed by ``PATCH``.
    - ``dag_run_id`` that no run may have: 422 naming the body's member.
    """
    if body.logical_date is not None:
        raise RequestInvalid.one(
            "value_error",
            ["body", "logical_date"],
            "Stateport runs have no logical date: send logical_date as null",
            body.logical_date.isoformat(),
        )
    if (body.data_interval_start is None) != (body.data_interval_end is None):
        raise RequestInvalid.one(
            "value_error",
            ["body"],
            "Either both data_interval_start and data_interval_end must be provided or both must be None",
            NO_INPUT,  # a rule over two fields: no one input is at fault
        )
    if body.partition_key is not None:
        raise ClientException(detail="Stateport DAGs are not partitioned and do not accept a partition_key.")
    if body.dag_run_id is not None:
        # The domain names a bad run id ``dag_run_id``, which elsewhere is the path's; here it is the body's.
        try:
            check_identifier(body.dag_run_id, "dag_run_id", new=True)
        except Invalid as exc:
            loc: list[str | int] = ["body", "dag_run_id"]
            raise RequestInvalid.one("value_error", loc, exc.detail, body.dag_run_id) from exc


# What a trigger's body may hold besides its conf (a run id, dates, a note), in bytes.
TRIGGER_HEADROOM = 64 * 1024


async def trigger_body(request: AnyRequest, max_conf_bytes: int) -> bytes:
    """A trigger's body (at most ``trigger_body_limit``), read under the process's body budget as every
    large body is (an outsider's find: six triggers of 60 MiB confs at once, none of them counted, took a
    server with a 2 MiB budget past 1 GiB)."""
    limit = trigger_body_limit(max_conf_bytes)
    with body_budget_of(request.scope).reading(announced_size(request, limit), share_of(request.scope)):
        return await bounded_body(request, limit)


def trigger_body_limit(max_conf_bytes: int) -> int:
    """The largest body of a trigger: its conf's limit and room for the other fields."""
    return max_conf_bytes + TRIGGER_HEADROOM


@post(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="Trigger a run (scope runs:write); Airflow's body, logical_date present and null",
    description=(
        "With `Prefer: wait=N` (RFC 7240, N <= 300 seconds) the call also waits for the outcome: 200 with "
        "the run, `state` and `results` from its outcome, or 202 with a `Location` to wait on. "
        "`data_interval_*` are ignored (as Airflow does without a logical date), `note` is kept (at most "
        "1,000 characters), a `partition_key` is 400."
    ),
    status_code=200,
    dependencies={
        **scoped("runs:write"),
        openapi.BODY: openapi.request_body(TriggerDAGRunPostBody),
    },
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=RUN_OR_OUTCOME,
            description="The run; with `Prefer: wait`, the run with its outcome's `state` and `results`",
        ),
        202: ResponseSpec(
            generate_examples=False,
            data_container=DAGRunResponse,
            description="`Prefer: wait` ended first: wait on `Location`",
        ),
        **openapi.public_responses(*openapi.WITH_BODY, 404, 409, 429),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.with_headers(
        202,
        TRIGGER_WAIT_HEADERS,
        sometimes={200: {"Preference-Applied": TRIGGER_WAIT_HEADERS["Preference-Applied"]}},
    ),
    operation_id="trigger_dag_run",
)
async def trigger_run(
    request: AnyRequest,
    run_services: RunServices,
    dag_id: DagId,
    prefer: Prefer = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    runs, waits, callers = run_services.runs, run_services.waits, run_services.callers
    _one_idempotency_key(request)
    # Callers take turns in the run's queues (stateport.domain.fairness).
    caller = holder_of(request.scope)
    wait_s = prefer_wait(request)
    # The trigger starts the run's trace (in the caller's, when it sends a traceparent); with
    # ``Prefer: wait`` the span lasts until the outcome, so it spans the whole synchronous run.
    parent = header_value(request.scope, tracing.HEADER_BYTES)
    with tracing.span(
        "stateport.trigger", parent=parent, kind="server", attributes={"stateport.dag_id": dag_id}
    ) as traceparent:
        # An unknown DAG is 404 (and one known to be full 429) before the body is read; the body is read
        # before the trigger counts as under way, so a client sending it slowly holds none of the DAG's
        # max_queued_runs places meanwhile.
        await runs.before_body(dag_id, keyed=idempotency_key is not None)
        raw = await trigger_body(request, runs.max_conf_bytes)
        # A member sent twice is refused, as on state writes: msgspec keeps the last silently, so a
        # conf sent twice ran with the second (an outsider's find).
        body: TriggerBody = decode_unrepeated(_trigger_decoder, raw, TRIGGER_MEMBERS)
        _honourable(body)
        if wait_s is None:
            run, version = await admitted_trigger(runs, dag_id, body, idempotency_key, traceparent, caller)
            return Response(dag_run_response(run, version))
        # The wait's seat is taken before the run is made: a process that can hold no more waiters (or
        # none more of this caller's) says so before there is a run, even to a burst of such triggers.
        # One of no time (wait=0) holds none (``Waits.changes``).
        # The run's caller is the token's holder, as without a wait (its turns, its Idempotency-Key's
        # owner); the wait's seat counts against the waiter's share.
        waiter = waiter_of(request.scope)
        seat = waits.seats.reserve(waiter) if wait_s > 0 else None
        try:
            run, version = await admitted_trigger(runs, dag_id, body, idempotency_key, traceparent, caller)
            return await trigger_and_wait(
                waits,
                run,
                version,
                wait_s,
                seat=seat,
                caller=waiter,
                policy=prefer_on_disconnect(request),
                callers=callers,
                receive=request.receive,
                waiting=runs.waiting_reason,
            )
        finally:
            if seat is not None:
                seat.give()


async def admitted_trigger(
    runs: Runs,
    dag_id: str,
    body: TriggerBody,
    idempotency_key: str | None,
    traceparent: str | None,
    caller: str,
) -> tuple[Run, DagVersionInfo]:
    """The run the trigger made (or the one its Idempotency-Key made before), under the DAG's admission
    (also a task's trigger on the Execution API, ``sdk_dag_runs``)."""
    async with runs.triggering(dag_id, keyed=idempotency_key is not None):
        dag = await runs.get_dag(dag_id)
        return await _trigger(runs, dag, body, idempotency_key, traceparent, caller)


def _one_idempotency_key(request: AnyRequest) -> None:
    """422 for an ``Idempotency-Key`` sent twice, empty or not ASCII: one of two would be picked, and an
    empty one read as no key, so a retry the caller believed safe would create a second run. A header
    arrives as bytes read as Latin-1, so a UTF-8 key would be stored as other characters than sent (and
    refused further on for "control characters" it never had)."""
    sent = request.headers.getall("idempotency-key", [])
    problem = None
    if len(sent) > 1:
        problem = f"was sent {len(sent)} times: send one key"
    elif sent and not sent[0].strip():
        problem = "is empty: send a key"
    elif sent and not sent[0].isascii():
        problem = "must be ASCII text: send another key (a non-ASCII one percent-encoded, say)"
    if problem is not None:
        raise RequestInvalid.one(
            "value_error", ["header", "idempotency-key"], f"Idempotency-Key {problem}", sent
        )


async def _trigger(
    runs: Runs,
    dag: DagVersion,
    body: TriggerBody,
    idempotency_key: str | None,
    traceparent: str | None,
    caller: str,
) -> tuple[Run, DagVersionInfo]:
    """The run the trigger created (or, with an Idempotency-Key, found), and its DAG version."""
    run = await runs.trigger(
        dag.dag_id,
        dag=dag,
        run_id=body.dag_run_id,
        conf=body.conf,
        run_after=body.run_after,
        idempotency_key=idempotency_key,
        traceparent=traceparent,
        deadline_s=body.deadline_s,
        priority=body.priority,
        caller=caller,
        note=body.note,
    )
    tracing.set_attributes({"stateport.run_id": run.run_id})
    # An Idempotency-Key may answer with an earlier run, of an earlier version of the DAG.
    version = dag if run.dag_version == dag.version else await runs.version_info(run.dag_id, run.dag_version)
    return run, version


# --- listing ----------------------------------------------------------------------------------------------

StateFilter = Annotated[
    list[str] | None,
    query(
        "state",
        "Repeatable: only runs in these states (`none`: runs without a state, of which there are none).",
        type="array",
        items={"type": "string", "enum": [*DagRunState, "none"]},
    ),
]
RunTypeFilter = Annotated[
    list[str] | None,
    query(
        "run_type",
        "Repeatable: only runs of these types. Every Stateport run is `manual`.",
        type="array",
        items={"type": "string", "enum": [*DagRunType, "none"]},
    ),
]
RunIdPattern = Annotated[
    str | None, query("run_id_pattern", "Airflow's pattern on the run id (`%`, `_`, `|`, `~`).")
]
RunIdPrefixPattern = Annotated[
    str | None, query("run_id_prefix_pattern", "Airflow's prefix pattern on the run id (`|`, `~`).")
]
RUN_RANGES = ranges("run_after", "start_date", "end_date", "updated_at", "logical_date")
# Airflow's filters on what no Stateport run has (null on every run, as logical_date): given any value,
# no run matches.
NULL_ON_EVERY_RUN = (
    "partition_date_gte",
    "partition_date_lte",
    "partition_key_pattern",
    "partition_key_prefix_pattern",
    "triggering_user_name_pattern",
    "triggering_user_name_prefix_pattern",
    "bundle_version",
)
# Airflow's filters Stateport cannot apply: refused by name (400) rather than ignored.
UNSUPPORTED_RUN_FILTERS = (
    "duration_gte",
    "duration_gt",
    "duration_lte",
    "duration_lt",
    "conf_contains",
    "dag_id_pattern",
    "dag_id_prefix_pattern",
    "consuming_asset_pattern",
    "dag_version",
    "cursor",
)


def _run_states(values: list[str]) -> frozenset[RunState] | None:
    """The states asked for (empty: no filter), or None when only ``none`` (no state) was asked."""
    states: set[RunState] = set()
    for value in values:
        if value == "none":
            continue
        if value not in _RUN_STATES:
            raise RequestInvalid.one(
                "enum",
                ["query", "state"],
                f"Invalid value for state. Valid values are {', '.join(DagRunState)}",
                value,
            )
        states.add(RunState(value))
    return frozenset(states) if states or not values else None


def _manual_asked(values: list[str]) -> bool:
    """Whether a ``run_type`` filter lets manual runs (every Stateport run) through."""
    for value in values:
        if value != "none" and value not in _RUN_TYPES:
            raise RequestInvalid.one(
                "enum",
                ["query", "run_type"],
                f"Invalid value for run type. Valid values are {', '.join(DagRunType)}",
                value,
            )
    return not values or DagRunType.MANUAL in values


@get(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="List a DAG's runs, or every DAG's with dag_id `~` (scope runs:read)",
    description=(
        "Airflow's `get_dag_runs`: ordered by `order_by` (default `id`, the order runs were created in), "
        "`limit` 50 by default and at most 100. `total_entries` counts every run the filters match. "
        "Filters on what no Stateport run has (`logical_date_*`, `partition_*`, `triggering_user_name_*`, "
        "`bundle_version`) match no run; `duration_*`, `conf_contains`, `dag_id_*pattern`, "
        "`consuming_asset_pattern`, `dag_version` and `cursor` are 400. Runs past their retention are gone."
    ),
    dependencies={**scoped("runs:read"), **RUN_RANGES},
    responses=openapi.public_responses(404, 429),
    **common("runs:read"),
    operation_id="get_dag_runs",
)
async def list_runs(
    request: AnyRequest,
    runs: Runs,
    dag_id: DagId,
    run_after_range: NamedDependency[TimeRange],
    start_date_range: NamedDependency[TimeRange],
    end_date_range: NamedDependency[TimeRange],
    updated_at_range: NamedDependency[TimeRange],
    logical_date_range: NamedDependency[TimeRange],
    run_states: StateFilter = None,
    run_type: RunTypeFilter = None,
    run_id_pattern: RunIdPattern = None,
    run_id_prefix_pattern: RunIdPrefixPattern = None,
    order_by: OrderBy = None,
    limit: AirflowLimit = None,
    offset: AirflowOffset = None,
) -> Response[DAGRunCollectionResponse]:
    refuse(request, UNSUPPORTED_RUN_FILTERS, "the runs listing does not implement this filter")
    states = _run_states(run_states or [])
    manual = _manual_asked(run_type or [])
    size, skip = airflow_page(limit, offset)
    run_query = RunQuery(
        dag_id=None if dag_id == EVERY else dag_id,
        states=states or frozenset(),
        run_after=run_after_range,
        start_date=start_date_range,
        end_date=end_date_range,
        updated_at=updated_at_range,
        run_id_pattern=run_id_pattern,
        run_id_prefix_pattern=run_id_prefix_pattern,
        order_by=parse_order(order_by or [], RunField, aliases=RUN_FIELD_ALIASES),
        limit=size,
        offset=skip,
    )
    nothing = states is None or not manual or logical_date_range.bounded or given(request, NULL_ON_EVERY_RUN)
    if nothing:
        # No run can match; the query still runs with no rows asked, so that an unknown DAG is a 404 and
        # a bad pattern a 422, as without this filter.
        await runs.query_runs(msgspec.structs.replace(run_query, limit=0, offset=0))
        return Response(DAGRunCollectionResponse(dag_runs=[], total_entries=0))
    parts = await runs.query_runs(run_query)
    # Each DAG version read once for the whole page, not once per part.
    versions: dict[tuple[str, str], DagVersionInfo] = {}

    async def render(part: list[Run]) -> list[DAGRunResponse]:
        versions.update(
            await runs.version_infos([run for run in part if (run.dag_id, run.dag_version) not in versions])
        )
        return [dag_run_response(run, versions[(run.dag_id, run.dag_version)]) for run in part]

    # Airflow's cursor fields, null: Stateport pages by offset only (DAGRunCollectionResponse).
    nulls = {"total_entries_limit": None, "next_cursor": None, "previous_cursor": None}
    return await streamed_page(request, "dag_runs", parts, render, **nulls)


# --- one run ----------------------------------------------------------------------------------------------


@get(
    RUN,
    tags=RUN_TAGS,
    summary="Read a run (scope runs:read)",
    description=(
        "`outcome` once it is known; `deadline` when it has one; `waiting`: why a run not finished waits "
        "(`queued: max_active_runs`, `queued: no worker serving DAG 'd' claimed queue 'gpu' for 61 s`), "
        "else null."
    ),
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_dag_run",
)
async def get_run(runs: Runs, dag_id: DagId, dag_run_id: RunId) -> DAGRunResponse:
    run = await runs.get_run(dag_id, dag_run_id)
    dag = await runs.version_info(run.dag_id, run.dag_version)
    return dag_run_response(run, dag, waiting=await runs.waiting_reason(run))


UpdateMask = Annotated[
    list[str] | None,
    query(
        "update_mask",
        "Repeatable: only these fields of the body are applied (Airflow's; absent: every field sent).",
        type="array",
        items={"type": "string"},
    ),
]


@patch(
    RUN,
    tags=RUN_TAGS,
    summary="Mark a run failed or set its note (scope runs:write): Airflow's DAGRunPatchBody",
    description=(
        '`{"state": "failed"}` cancels the run (as `POST .../cancel`: its outcome is failed, reason '
        "`cancelled`, unless it was set; a finished run keeps its state). `success` and `queued` are 400: "
        "Stateport's runs end by their tasks or a cancel. `note` sets the run's note (at most 1,000 "
        "characters; `null` clears it), whatever its state. `update_mask` limits the fields applied, as in "
        "Airflow."
    ),
    status_code=200,
    dependencies={**scoped("runs:write"), openapi.BODY: openapi.request_body(DAGRunPatchBody)},
    responses=openapi.public_responses(*openapi.WITH_BODY, 404),
    **common("runs:write"),
    operation_id="patch_dag_run",
)
async def patch_run(
    request: AnyRequest,
    runs: Runs,
    core: Core,
    dag_id: DagId,
    dag_run_id: RunId,
    update_mask: UpdateMask = None,
) -> DAGRunResponse:
    # In the DAG routes' router (its path is the run's), but a body of a few fields.
    body: DAGRunPatchBody = decode_members(_patch_decoder, await bounded_body(request, SMALL_BODY))
    run = await runs.get_run(dag_id, dag_run_id)
    fields = {name for name in ("state", "note") if getattr(body, name) is not msgspec.UNSET}
    if update_mask:
        fields &= set(update_mask)
    state = body.state if "state" in fields and isinstance(body.state, str) else None
    if state is not None and state != "failed":
        raise ClientException(
            detail=f"Stateport cannot set a run's state to {state}: only failed (a cancel) is supported"
        )
    if state == "failed":
        run = await core.advancer.cancel(run.dag_id, run.run_id)
    if "note" in fields:
        note = body.note if isinstance(body.note, str) else None
        run = await runs.set_note(run.dag_id, run.run_id, note)
    return await run_response(runs, run)


@delete(
    RUN,
    tags=RUN_TAGS,
    summary="Delete a run (scope runs:write)",
    description=(
        "As Airflow: a queued, successful or failed run is deleted with its task instances and result "
        "blobs, and its task state (every task's, at every map index); a running one is 409."
    ),
    dependencies=scoped("runs:write"),
    responses=openapi.public_responses(404, 409),
    **common("runs:write"),
    operation_id="delete_dag_run",
)
async def delete_run(runs: Runs, dag_id: DagId, dag_run_id: RunId) -> None:
    await runs.delete_run(dag_id, dag_run_id)


def handlers() -> list[HTTPRouteHandler]:
    """Triggers are in the DAG routes' router, whose body limit is the DAG spec's; a trigger reads its
    body under the conf's (``trigger_body_limit``)."""
    return [trigger_run, list_runs, get_run, patch_run, delete_run]
