"""The Execution API's DAG run calls a task makes through the Airflow Task SDK: trigger a run, read its state.

``TriggerDagRunOperator`` (the SDK's supervisor, for a task) triggers a run of another DAG with
``POST /execution/dag-runs/{dag_id}/{run_id}`` and, told to wait for it, reads its state every
``poke_interval`` with ``GET .../state``. Both were 404s, which failed the task (the SDK fails a try on any
error answer). What of the trigger's payload Stateport honours:

- ``conf``, ``run_after`` and ``note``: as on the public trigger (``stateport.http.runs``).
- ``logical_date`` not null: 422, as on the public trigger: a Stateport run has no logical date. The
  operator sends the time of the trigger unless it is given ``logical_date=None``.
- A run that exists: 409, which the SDK reads as "already exists" (the operator then fails, or skips with
  ``skip_when_already_exists``). ``reset_dag_run`` asks the SDK to clear that run then, which Stateport
  does not do: ``/clear`` answers 501 saying so.

The run counts against the DAG's admission (``max_queued_runs``, ``max_active_runs``) as any trigger, and is
the token's task instance's (its caller, for the queues' turns).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from msgspec import Struct

from stateport.domain.errors import Forbidden, Unsupported
from stateport.domain.jsontext import JsonDecoder
from stateport.domain.models import RunState
from stateport.domain.ports import TokenClaims
from stateport.http import openapi
from stateport.http.auth import holder
from stateport.http.errors import RequestInvalid
from stateport.http.members import decode_unrepeated
from stateport.http.params import DagId, RunId
from stateport.http.providers import AnyRequest, RunCore, RunServices, token_caller
from stateport.http.runs import admitted_trigger, trigger_body
from stateport.http.schemas import AwareDatetime, TriggerBody
from stateport.http.ti_sdk import token_try
from stateport.http.workers import TAGS

DAG_RUN = "/dag-runs/{dag_id:str}/{run_id:str}"


class TriggerPayload(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``TriggerDAGRunPayload`` (the SDK leaves out what is at its default)."""

    logical_date: AwareDatetime | None = None
    run_after: AwareDatetime | None = None
    conf: dict[str, Any] | None = None
    reset_dag_run: bool = False
    note: str | None = None


class DagRunStateResponse(Struct, frozen=True, kw_only=True):
    """Airflow's ``DagRunStateResponse``."""

    state: RunState


_payload = JsonDecoder(TriggerPayload)
MEMBERS = tuple(field.encode_name for field in msgspec.structs.fields(TriggerPayload))


@post(
    DAG_RUN,
    tags=TAGS,
    summary="The Airflow Task SDK's trigger of a DAG run by a task (task-instance token); 204",
    description=(
        "`TriggerDagRunOperator`: a run `run_id` of the DAG's current version with `conf`, as "
        "`POST /api/v2/dags/{dag_id}/dagRuns` makes one; a `logical_date` that is not null is 422 (a "
        "Stateport run has none); a run that exists is 409."
    ),
    status_code=204,
    dependencies={"caller": token_caller, openapi.BODY: openapi.request_body(TriggerPayload)},
    responses=openapi.execution_responses(*openapi.WITH_BODY, 403, 404, 409),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="dag_run_trigger",
)
async def trigger_dag_run(
    request: AnyRequest,
    caller: NamedDependency[TokenClaims],
    run_services: RunServices,
    dag_id: DagId,
    run_id: RunId,
) -> None:
    await _existing_try(caller, run_services.core)
    runs = run_services.runs
    # An unknown DAG is 404 (and one known to be full 429) before the body is read, as on the public route.
    await runs.before_body(dag_id, keyed=False)
    raw = await trigger_body(request, runs.max_conf_bytes)
    body: TriggerPayload = decode_unrepeated(_payload, raw, MEMBERS)
    if body.logical_date is not None:
        raise RequestInvalid.one(
            "value_error",
            ["body", "logical_date"],
            "Stateport runs have no logical date: give the TriggerDagRunOperator logical_date=None",
            body.logical_date.isoformat(),
        )
    public = TriggerBody(
        logical_date=None, dag_run_id=run_id, conf=body.conf, run_after=body.run_after, note=body.note
    )
    await admitted_trigger(runs, dag_id, public, None, None, holder(caller))


@get(
    DAG_RUN + "/state",
    tags=TAGS,
    summary="The Airflow Task SDK's read of a DAG run's state (task-instance token)",
    description='`TriggerDagRunOperator` waiting for the run it triggered: `{"state"}`, 404 for no such run.',
    dependencies={"caller": token_caller},
    responses=openapi.execution_responses(403, 404),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="dag_run_state",
)
async def dag_run_state(
    caller: NamedDependency[TokenClaims], run_services: RunServices, dag_id: DagId, run_id: RunId
) -> DagRunStateResponse:
    await _existing_try(caller, run_services.core)
    run = await run_services.runs.get_run(dag_id, run_id)
    return DagRunStateResponse(state=run.state)


@post(
    DAG_RUN + "/clear",
    tags=TAGS,
    summary="The Airflow Task SDK's clear of a DAG run (task-instance token): not done, 501",
    description=(
        "What `TriggerDagRunOperator(reset_dag_run=True)` asks when the run exists: Stateport does not run a "
        "run's tasks again; 501 says so, where a bare 404 said nothing (an outsider's find)."
    ),
    status_code=204,
    dependencies={"caller": token_caller},
    responses=openapi.execution_responses(403, 404, 501),
    security=openapi.TASK_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="dag_run_clear",
)
async def clear_dag_run(
    caller: NamedDependency[TokenClaims], run_services: RunServices, dag_id: DagId, run_id: RunId
) -> None:
    await _existing_try(caller, run_services.core)
    await run_services.runs.get_run(dag_id, run_id)  # no such run: 404, as Airflow's
    raise Unsupported(
        f"Stateport does not clear DAG run '{run_id}' of '{dag_id}' (reset_dag_run): trigger the DAG under "
        "another run id instead"
    )


async def _existing_try(caller: TokenClaims, core: RunCore) -> None:
    """Forbidden unless the task-instance token's try exists (a task's, not a forged or deleted one)."""
    if await token_try(caller, core) is None:
        raise Forbidden("this token's task instance does not exist")


def handlers() -> list[HTTPRouteHandler]:
    return [trigger_dag_run, dag_run_state, clear_dag_run]
