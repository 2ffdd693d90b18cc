"""``PATCH /execution/task-instances/{id}/run``: the Airflow Task SDK's start of a task instance.

In Stateport a claim starts a task instance: it is handed out ``running``, with its lease and token, so
there is nothing left to start (Stateport's worker never calls this). A task run by the Airflow Task SDK
unchanged calls it all the same before it runs, and reads Airflow's answer, the run context
(``TIRunContext``): so a running task instance answers 200 with that context, built from the run and the
task as Stateport has them, and one that is not running answers Airflow's 409 ``invalid_state`` naming its
``previous_state``. Nothing changes here: the try, its lease and its token are the claim's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Response, patch
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from msgspec import Meta, Struct

from stateport.domain.errors import NotFound, UnreadableDag
from stateport.domain.models import Run, TaskInstance, TIState
from stateport.domain.values import check_moment
from stateport.http import openapi
from stateport.http.auth import TaskCaller, note_ti_running
from stateport.http.errors import json_response
from stateport.http.members import decode_members
from stateport.http.providers import AnyRequest, Core
from stateport.http.workers import TAGS, TASK_INSTANCE, TI_CALLER, Hostname


class EnterRunningBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``TIEnterRunningPayload``: where the task runs (checked, not kept)."""

    state: Literal["running"] = "running"
    hostname: Hostname
    unixname: Annotated[str, Meta(max_length=1000)]
    pid: Annotated[int, Meta(ge=0, le=2**31 - 1)]
    start_date: Annotated[datetime, Meta(tz=True)]


class RunContextDagRun(Struct, frozen=True, kw_only=True):
    """The run, as the Task SDK's ``DagRun`` reads it (every field, none more: its model forbids extras)."""

    dag_id: str
    run_id: str
    logical_date: datetime | None = None
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    run_after: datetime
    start_date: datetime | None
    end_date: datetime | None
    clear_number: int = 0
    run_type: str = "manual"
    state: str
    conf: dict[str, Any]
    triggering_user_name: str | None = None
    consumed_asset_events: list[Any] = []  # msgspec copies a mutable default
    partition_key: str | None = None
    partition_date: datetime | None = None
    note: str | None = None
    team_name: str | None = None


class RunContext(Struct, frozen=True, kw_only=True):
    """Airflow's ``TIRunContext``: ``max_tries`` is the task's retries, ``should_retry`` whether a failure
    now would be retried; Stateport hands out no variables, connections or deferral state."""

    dag_run: RunContextDagRun
    task_reschedule_count: int = 0
    max_tries: int
    variables: list[Any] = []
    connections: list[Any] = []
    next_method: str | None = None
    next_kwargs: dict[str, Any] | None = None
    xcom_keys_to_clear: list[str] = []
    should_retry: bool
    start_date: datetime | None


class InvalidStateDetail(Struct, frozen=True, kw_only=True):
    reason: str
    message: str
    previous_state: str


class InvalidStateError(Struct, frozen=True, kw_only=True):
    """409: the task instance is not running (Airflow's ``invalid_state``, naming ``previous_state``)."""

    detail: InvalidStateDetail


_enter_decoder = msgspec.json.Decoder(EnterRunningBody)


@patch(
    TASK_INSTANCE + "/run",
    tags=TAGS,
    summary="The Airflow Task SDK's start of a running task instance (task-instance token); its run context",
    description=(
        "A claim hands a task instance out already running: this changes nothing, and answers a running "
        "task instance with Airflow's `TIRunContext` (its run, `max_tries` = the task's retries, "
        "`should_retry`), so that a task run by the Airflow Task SDK unchanged may call it as it does "
        "Airflow's. A task instance that is not running is 409 `invalid_state` with its `previous_state`."
    ),
    status_code=200,
    dependencies={**TI_CALLER, openapi.BODY: openapi.request_body(EnterRunningBody)},
    responses={
        200: ResponseSpec(generate_examples=False, data_container=RunContext, description="The run context"),
        **openapi.execution_responses(*openapi.WITH_BODY, 404, 409, conflict=InvalidStateError),
    },
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="ti_run",
)
async def run(request: AnyRequest, task_instance: NamedDependency[TaskCaller], core: Core) -> Response[Any]:
    body: EnterRunningBody = decode_members(_enter_decoder, await request.body())
    check_moment(body.start_date, "start_date")  # not kept, but checked as every time a caller sends
    runs = core.advancer.runs
    ti = await runs.get_task_instance(task_instance.ti_id)
    if ti is None:
        raise NotFound(f"Task instance {task_instance.ti_id} not found")
    note_ti_running(request, ti.state is TIState.RUNNING)
    if ti.state is not TIState.RUNNING:
        detail = InvalidStateDetail(
            reason="invalid_state",
            message=f"Task instance {ti.id} is {ti.state}, not running: it cannot start",
            previous_state=str(ti.state),
        )
        return json_response(409, InvalidStateError(detail=detail))
    found = await runs.get_run(ti.dag_id, ti.run_id)
    if found is None:
        raise NotFound(f"The run of task instance {ti.id} was deleted")
    try:
        task = (await core.advancer.plans.of_run(ti.dag_id, ti.run_id)).tasks.get(ti.task_id)
    except UnreadableDag:
        task = None  # its retries are in a spec that cannot be read; its report ends the run
    retries = 0 if task is None else task.retries
    # The Airflow Task SDK bounds its reschedules of a task whose DAG file it could not load by this count
    # (and a sensor asks when its wait began once it is not 0).
    return Response(_context(found, ti, retries, len(await core.reports.reschedules(ti))))


def _context(run: Run, ti: TaskInstance, retries: int, reschedule_count: int) -> RunContext:
    dag_run = RunContextDagRun(
        dag_id=run.dag_id,
        run_id=run.run_id,
        run_after=run.run_after,
        start_date=run.started_at,
        end_date=run.ended_at,
        state=str(run.state),
        conf=run.conf,
        note=run.note,
    )
    return RunContext(
        dag_run=dag_run,
        max_tries=retries,
        should_retry=ti.retries_used < retries,
        start_date=ti.started_at,
        task_reschedule_count=reschedule_count,
    )


def handlers() -> list[HTTPRouteHandler]:
    """The start route (a small body)."""
    return [run]
