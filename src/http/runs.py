"""The public API's run routes (``/api/v2/dags/<dag_id>/dagRuns``): trigger, list and read runs, and list a
run's task instances.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec

from stateport.domain.models import MAX_IDENTIFIER, RunState
from stateport.http import openapi
from stateport.http.errors import RequestInvalid, decode_body
from stateport.http.params import NAME_PATTERN, DagId, Limit, Offset, RunId, header, query
from stateport.http.providers import AnyRequest, Runs, Waits
from stateport.http.public import common, limit_offset, scoped
from stateport.http.schemas import (
    RunResponse,
    RunsResponse,
    TaskInstanceOut,
    TaskInstancesResponse,
    TriggerBody,
    TriggerRequest,
)
from stateport.http.waits import (
    TRIGGER_WAIT_HEADERS,
    RunOutcomeResponse,
    prefer_wait,
    run_body,
    trigger_and_wait,
)

_trigger_decoder = msgspec.json.Decoder(TriggerBody)
RUN_TAGS = ["DAG Runs"]


async def _dag(runs: Runs, dag_id: DagId) -> Any:
    """The DAG a trigger names, looked up before the body (a conf of up to the DAG body limit) is read."""
    return await runs.get_dag(dag_id)


Prefer = Annotated[
    str | None,
    header(
        "Prefer",
        "`wait=N` (RFC 7240, whole seconds, capped at 300): wait for the outcome; 200 with it, else 202. "
        "A value that is not delta-seconds is ignored.",
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


# The trigger's 200: the run, or (after a Prefer: wait) the run with its outcome.
RUN_OR_OUTCOME: Any = RunResponse | RunOutcomeResponse


@post(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="Trigger a run (scope runs:write); Airflow's body, logical_date present and null",
    description=(
        "With `Prefer: wait=N` (RFC 7240, N <= 300 seconds) the call also waits for the outcome: 200 with "
        "the run, `state` and `results` from its outcome, or 202 with a `Location` to wait on."
    ),
    status_code=200,
    dependencies={
        **scoped("runs:write"),
        "dag": Provide(_dag),
        openapi.BODY: openapi.request_body(TriggerRequest),
    },
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=RUN_OR_OUTCOME,
            description="The run; with `Prefer: wait`, the run with its outcome's `state` and `results`",
        ),
        202: ResponseSpec(
            generate_examples=False,
            data_container=RunResponse,
            description="`Prefer: wait` ended first: wait on `Location`",
        ),
        **openapi.public_responses(*openapi.WITH_BODY, 404, 409),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.with_headers(202, TRIGGER_WAIT_HEADERS),
)
async def trigger_run(
    request: AnyRequest,
    runs: Runs,
    waits: Waits,
    dag: NamedDependency[Any],
    dag_id: DagId,
    prefer: Prefer = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    body: TriggerBody = decode_body(_trigger_decoder, await request.body())
    if body.logical_date is not None:
        raise RequestInvalid.one(
            "value_error",
            ["body", "logical_date"],
            "Stateport runs have no logical date: send logical_date as null",
            body.logical_date.isoformat(),
        )
    run = await runs.trigger(
        dag.dag_id,
        dag=dag,
        run_id=body.dag_run_id,
        conf=body.conf,
        run_after=body.run_after,
        idempotency_key=idempotency_key,
    )
    wait_s = prefer_wait(request)
    if wait_s is not None:
        return await trigger_and_wait(waits, run, wait_s)
    return Response(run_body(run))


ORDERS = {"created_at": False, "-created_at": True}
RUN_STATES = {state.value: state for state in RunState}
StateFilter = Annotated[
    list[str] | None,
    query(
        "state",
        "Repeatable: only runs in these states (every state if absent).",
        type="array",
        items={"type": "string", "enum": list(RUN_STATES)},
    ),
]
OrderBy = Annotated[
    str | None,
    query(
        "order_by",
        "`-created_at` (newest first, the default) or `created_at`.",
        type="string",
        enum=list(ORDERS),
        default="-created_at",
    ),
]


@get(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="List a DAG's runs (scope runs:read)",
    description="`total_entries` counts every run in those states. Runs past their retention are gone.",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
)
async def list_runs(
    runs: Runs,
    dag_id: DagId,
    run_states: StateFilter = None,
    order_by: OrderBy = None,
    limit: Limit = None,
    offset: Offset = None,
) -> RunsResponse:
    states = set()
    for raw in run_states or []:
        if raw not in RUN_STATES:
            raise RequestInvalid.one(
                "enum", ["query", "state"], f"state must be one of {', '.join(RUN_STATES)}", raw
            )
        states.add(RUN_STATES[raw])
    order = "-created_at" if order_by is None else order_by
    if order not in ORDERS:
        raise RequestInvalid.one(
            "enum", ["query", "order_by"], "order_by must be created_at or -created_at", order
        )
    page_size, skip = limit_offset(limit, offset)
    found, total = await runs.list_runs(
        dag_id, states=frozenset(states), newest_first=ORDERS[order], limit=page_size, offset=skip
    )
    return RunsResponse(dag_runs=[run_body(run) for run in found], total_entries=total)


@get(
    "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}",
    tags=RUN_TAGS,
    summary="Read a run (scope runs:read)",
    description="`outcome` once it is known.",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
)
async def get_run(runs: Runs, dag_id: DagId, dag_run_id: RunId) -> RunResponse:
    return run_body(await runs.get_run(dag_id, dag_run_id))


@get(
    "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances",
    tags=RUN_TAGS,
    summary="List a run's task instances, every try (scope runs:read)",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
)
async def list_task_instances(runs: Runs, dag_id: DagId, dag_run_id: RunId) -> TaskInstancesResponse:
    tis = await runs.task_instances(dag_id, dag_run_id)
    out = [
        TaskInstanceOut(
            id=str(ti.id),
            task_id=ti.task_id,
            map_index=ti.map_index,
            try_number=ti.try_number,
            state=str(ti.state),
            error=ti.error,
        )
        for ti in tis
    ]
    return TaskInstancesResponse(task_instances=out, total_entries=len(out))


def handlers() -> list[HTTPRouteHandler]:
    """Triggers share the DAG routes' larger body limit (a conf may be as large as a DAG spec)."""
    return [trigger_run, list_runs, get_run, list_task_instances]
