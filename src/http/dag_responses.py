"""Airflow 3.3.2's response models for DAGs, DAG runs and task instances, and how Stateport fills them.

The Structs are named as Airflow's OpenAPI components and carry every field of them
(tests/fixtures/airflow/v2-rest-api-generated.yaml): a field Airflow requires has no default here, so it
is always sent, ``null`` where Airflow allows it and Stateport has nothing to say (no scheduler, bundles,
pools, notes or logical dates). docs/dev/airflow-rest-gaps.md section 5 says where each value comes from.
Stateport's own fields come after Airflow's (the run's ``dag_version`` hash and ``outcome``, the DAG's spec,
a try's ``error``): the official client drops fields it does not know.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from stateport.domain.models import (
    DagVersionInfo,
    Outcome,
    ParamSpec,
    Run,
    RunState,
    TaskInstance,
    TaskSpec,
    TIState,
    spec_of,
)
from stateport.domain.runs import held_reason
from stateport.domain.task_listing import duration_s

# Airflow's words for a DAG with ``schedule=None``, which every Stateport DAG is: runs come from triggers.
TIMETABLE_SUMMARY = "None"
TIMETABLE_DESCRIPTION = "Never, external triggers only"
# Stateport limits no DAG's concurrent tasks; Airflow's default ``max_active_tasks`` is the closest truthful
# number a required integer can hold (docs/api.md says so).
MAX_ACTIVE_TASKS = 16
DEFAULT_POOL = "default_pool"


class DagRunState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class DagRunType(enum.StrEnum):
    BACKFILL = "backfill"
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    OPERATOR_TRIGGERED = "operator_triggered"
    ASSET_TRIGGERED = "asset_triggered"
    ASSET_MATERIALIZATION = "asset_materialization"


class DagRunTriggeredByType(enum.StrEnum):
    CLI = "cli"
    OPERATOR = "operator"
    REST_API = "rest_api"
    UI = "ui"
    TEST = "test"
    TIMETABLE = "timetable"
    ASSET = "asset"
    BACKFILL = "backfill"


class TaskInstanceState(enum.StrEnum):
    REMOVED = "removed"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    RESTARTING = "restarting"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"
    UP_FOR_RESCHEDULE = "up_for_reschedule"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"
    AWAITING_INPUT = "awaiting_input"


# --- DAG versions and DAG runs ------------------------------------------------------------------------


class DagVersionResponse(Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    version_number: int
    dag_id: str
    bundle_name: str | None
    bundle_version: str | None
    created_at: datetime
    dag_display_name: str
    bundle_url: str | None


class OutcomeResponse(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A run's outcome as the API sends it (design section 5): ``{"state": "success", "results": {...}}``,
    ``results`` keyed by task_id and ``{}`` for a DAG without a result task; a failure names
    ``failed_task`` (when a task failed), ``reason`` and ``error`` (the failed try's) instead (``results``
    only if there are any)."""

    state: RunState
    results: dict[str, Any] | None = None
    failed_task: str | None = None
    reason: str | None = None
    error: str | None = None


def outcome_response(outcome: Outcome) -> OutcomeResponse:
    shown = outcome.results or (outcome.state is RunState.SUCCESS)
    return OutcomeResponse(
        state=outcome.state,
        results=outcome.results if shown else None,
        failed_task=outcome.failed_task,
        reason=outcome.reason,
        error=outcome.error,
    )


class DAGRunResponse(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A run. ``dag_version`` (the spec's content hash) and ``outcome`` (once set) are Stateport's."""

    dag_run_id: str
    dag_id: str
    logical_date: datetime | None
    queued_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    run_after: datetime
    last_scheduling_decision: datetime | None
    run_type: DagRunType
    state: DagRunState
    triggered_by: DagRunTriggeredByType | None
    triggering_user_name: str | None
    conf: dict[str, Any] | None
    note: str | None
    dag_versions: list[DagVersionResponse]
    bundle_version: str | None
    dag_display_name: str
    partition_key: str | None
    partition_date: datetime | None
    dag_version: str | None = None
    outcome: OutcomeResponse | None = None
    # Stateport's: when the run fails with reason deadline_exceeded unless finished, and (on a read of one
    # run) why it waits: "queued: max_active_runs", "queued: no worker serving DAG 'd' claimed queue 'gpu'
    # for 61 s".
    deadline: datetime | None = None
    waiting: str | None = None
    # Stateport's: the trigger's priority (Airflow's priority_weight of the run's task instances); left out
    # when 0, the default.
    priority: int = 0


class DAGRunOutcomeResponse(DAGRunResponse, frozen=True, kw_only=True, omit_defaults=True):
    """The 200 of a trigger with ``Prefer: wait``: the run, ``state`` its outcome's, and what the outcome
    says (``results`` always; ``failed_task``, ``reason`` and ``error`` on failure)."""

    results: dict[str, Any]
    failed_task: str | None = None
    reason: str | None = None
    error: str | None = None


class DAGRunCollectionResponse(Struct, frozen=True, kw_only=True):
    """A page of runs. Airflow's cursor fields are null: Stateport pages by ``offset`` only."""

    dag_runs: list[DAGRunResponse]
    # Optional in Airflow's schema, always sent here.
    total_entries: int | None = None
    total_entries_limit: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


def dag_details_response(dag: DagVersionInfo, active_runs: int) -> DAGDetailsResponse:
    """The DAG at ``dag`` as Airflow details it, ``active_runs`` of its runs running."""
    shown = dag_response(dag)
    return DAGDetailsResponse(
        **msgspec.structs.asdict(shown),
        catchup=False,
        dag_run_timeout=None if shown.deadline_s is None else iso_duration(shown.deadline_s),
        asset_expression=None,
        doc_md=None,
        start_date=None,
        end_date=None,
        is_paused_upon_creation=None,
        render_template_as_native_obj=False,
        template_search_path=None,
        timezone="UTC",
        last_parsed=None,
        default_args=None,
        owner_links=None,
        is_favorite=False,
        active_runs_count=active_runs,
        concurrency=shown.max_active_tasks,  # Airflow's deprecated name for it
        latest_dag_version=dag_version_response(dag),
        rerun_with_latest_version=None,
    )


def iso_duration(seconds: float) -> str:
    """``seconds`` as an ISO 8601 duration, as Airflow's API (pydantic) writes a ``timedelta`` (whose
    precision is the microsecond): ``PT30S``, ``P1D``, ``P1DT1H1M1S``, ``PT0.5S``, ``PT0S``."""
    span = timedelta(seconds=seconds)
    hours, rest = divmod(span.seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n]
    if span.microseconds:
        parts.append(f"{secs}.{span.microseconds:06d}".rstrip("0") + "S")
    elif secs:
        parts.append(f"{secs}S")
    time = "".join(parts)
    if span.days:
        return f"P{span.days}D" + (f"T{time}" if time else "")
    return f"PT{time or '0S'}"


def dag_version_response(dag: DagVersionInfo) -> DagVersionResponse:
    return DagVersionResponse(
        id=dag.version_id,
        version_number=dag.version_number,
        dag_id=dag.dag_id,
        bundle_name=None,
        bundle_version=None,
        created_at=dag.created_at,
        dag_display_name=dag.dag_id,
        bundle_url=None,
    )


def _run_fields(run: Run, dag: DagVersionInfo) -> dict[str, Any]:
    duration = None
    if run.started_at is not None and run.ended_at is not None:
        duration = (run.ended_at - run.started_at).total_seconds()
    return {
        "dag_run_id": run.run_id,
        "dag_id": run.dag_id,
        "logical_date": None,
        "queued_at": run.created_at,
        "start_date": run.started_at,
        "end_date": run.ended_at,
        "duration": duration,
        "data_interval_start": None,
        "data_interval_end": None,
        "run_after": run.run_after,
        "last_scheduling_decision": None,
        # Every Stateport run is triggered by a caller: Airflow's manual run.
        "run_type": DagRunType.MANUAL,
        "triggered_by": None,  # not recorded
        "triggering_user_name": None,
        "conf": run.conf,
        "note": run.note,
        "dag_versions": [dag_version_response(dag)],  # a run uses one version of its DAG
        "bundle_version": None,
        "dag_display_name": run.dag_id,
        "partition_key": None,
        "partition_date": None,
        "dag_version": run.dag_version,
        "outcome": None if run.outcome is None else outcome_response(run.outcome),
        "deadline": run.deadline_at,
        "priority": run.priority,
    }


def dag_run_response(run: Run, dag: DagVersionInfo, *, waiting: str | None = None) -> DAGRunResponse:
    """The run as Airflow shows it; ``dag`` is the version the run uses; ``waiting``: why it waits (read
    for one run; a held run says so in every answer, its row tells)."""
    why = waiting or held_reason(run)
    return DAGRunResponse(state=DagRunState(run.state.value), waiting=why, **_run_fields(run, dag))


def dag_run_outcome_response(run: Run, dag: DagVersionInfo) -> DAGRunOutcomeResponse:
    """The run with its outcome (which must be set), for a trigger that waited for it."""
    outcome = run.outcome
    assert outcome is not None
    return DAGRunOutcomeResponse(
        state=DagRunState(outcome.state.value),
        results=outcome.results,
        failed_task=outcome.failed_task,
        reason=outcome.reason,
        error=outcome.error,
        **_run_fields(run, dag),
    )


# --- task instances -------------------------------------------------------------------------------------


class TriggerResponse(Struct, frozen=True, kw_only=True):
    """Airflow's deferral trigger (documented only: Stateport tasks never defer, ``trigger`` is null)."""

    id: int
    classpath: str
    kwargs: str
    created_date: datetime
    queue: str | None
    triggerer_id: int | None


class JobResponse(Struct, frozen=True, kw_only=True):
    """Airflow's triggerer job (documented only: ``triggerer_job`` is null)."""

    id: int
    dag_id: str | None
    state: str | None
    job_type: str | None
    start_date: datetime | None
    end_date: datetime | None
    latest_heartbeat: datetime | None
    executor_class: str | None
    hostname: str | None
    unixname: str | None
    dag_display_name: str | None = None


class TaskInstanceResponse(Struct, frozen=True, kw_only=True):
    """The latest try of a task instance. ``error`` (why the try ended when it did not succeed) and
    ``lease_expires_at`` (while it runs: when its worker's lease ends unless heartbeated) are Stateport's."""

    id: uuid.UUID
    task_id: str
    dag_id: str
    dag_run_id: str
    map_index: int
    logical_date: datetime | None
    run_after: datetime
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    state: TaskInstanceState | None
    try_number: int
    max_tries: int
    task_display_name: str
    dag_display_name: str
    hostname: str | None
    unixname: str | None
    pool: str
    pool_slots: int
    queue: str | None
    priority_weight: int | None
    operator: str | None
    operator_name: str | None
    queued_when: datetime | None
    scheduled_when: datetime | None
    pid: int | None
    executor: str | None
    executor_config: str
    note: str | None
    rendered_map_index: str | None
    trigger: TriggerResponse | None
    triggerer_job: JobResponse | None
    dag_version: DagVersionResponse | None
    rendered_fields: dict[str, Any] = msgspec.field(default_factory=dict)
    error: str | None = None
    lease_expires_at: datetime | None = None


class TaskInstanceCollectionResponse(Struct, frozen=True, kw_only=True):
    task_instances: list[TaskInstanceResponse]
    # Optional in Airflow's schema, always sent here.
    total_entries: int | None = None
    total_entries_limit: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None


def task_instance_response(ti: TaskInstance, run: Run, dag: DagVersionInfo) -> TaskInstanceResponse:
    """A try as Airflow shows a task instance; ``run`` is its run and ``dag`` the version that run uses
    (without its spec when the stored spec cannot be read: the try is shown with what it stores)."""
    spec = spec_of(dag)
    task = None if spec is None else spec.task(ti.task_id)
    return TaskInstanceResponse(
        id=ti.id,
        task_id=ti.task_id,
        dag_id=ti.dag_id,
        dag_run_id=ti.run_id,
        map_index=ti.map_index,
        logical_date=None,
        run_after=run.run_after,
        start_date=ti.started_at,
        end_date=ti.ended_at,
        duration=duration_s(ti),
        state=TaskInstanceState(ti.state.value),
        try_number=ti.try_number,
        # Airflow's max_tries is the retries the task is allowed (its first try is not counted).
        max_tries=0 if task is None else task.retries,
        task_display_name=ti.task_id,
        dag_display_name=ti.dag_id,
        hostname=ti.lease_owner,  # the worker that claimed the try
        unixname=None,
        pool=DEFAULT_POOL,
        pool_slots=1,
        queue=ti.queue,
        priority_weight=ti.priority,  # the run's priority, given to each of its task instances
        operator=None,
        operator_name=None,
        queued_when=None,
        scheduled_when=None,
        pid=None,
        executor=None,
        executor_config="{}",
        note=None,
        rendered_map_index=None,
        trigger=None,
        triggerer_job=None,
        dag_version=dag_version_response(dag),
        error=ti.error,
        lease_expires_at=ti.lease_expires_at if ti.state is TIState.RUNNING else None,
    )


# --- DAGs -----------------------------------------------------------------------------------------------


class DagTagResponse(Struct, frozen=True, kw_only=True):
    """A DAG's tag (documented only: Stateport DAGs have no tags)."""

    name: str
    dag_id: str
    dag_display_name: str


class DAGResponse(Struct, frozen=True, kw_only=True):
    """A DAG at its current version. ``version`` (the content hash), ``tasks`` and ``result_task`` are
    Stateport's: the spec, as design section 5 has ``GET /api/v2/dags/{dag_id}`` return it."""

    dag_id: str
    dag_display_name: str
    is_paused: bool
    is_stale: bool
    last_parsed_time: datetime | None
    last_parse_duration: float | None
    last_expired: datetime | None
    bundle_name: str | None
    bundle_version: str | None
    relative_fileloc: str | None
    fileloc: str
    description: str | None
    timetable_summary: str | None
    timetable_description: str | None
    timetable_partitioned: bool
    timetable_periodic: bool
    tags: list[DagTagResponse]
    max_active_tasks: int
    max_active_runs: int | None
    max_consecutive_failed_dag_runs: int
    has_task_concurrency_limits: bool
    has_import_errors: bool
    next_dagrun_logical_date: datetime | None
    next_dagrun_data_interval_start: datetime | None
    next_dagrun_data_interval_end: datetime | None
    next_dagrun_run_after: datetime | None
    allowed_run_types: list[DagRunType] | None
    owners: list[str]
    is_backfillable: bool
    file_token: str
    version: str
    tasks: list[TaskSpec]
    result_task: str | None
    # The spec's other run policies (Airflow's DAGResponse has none of them): an operator meeting 429s or
    # runs failed ``deadline_exceeded`` could not see which limits the DAG carried (an outsider's find).
    max_queued_runs: int | None
    deadline_s: float | None
    # What a trigger's conf is checked against (null: none), as registered.
    params: dict[str, ParamSpec] | None


class DAGDetailsResponse(DAGResponse, frozen=True, kw_only=True):
    """Airflow's ``DAGDetailsResponse`` (``GET /api/v2/dags/{dag_id}/details``): ``DAGResponse`` and what a
    DAG file would add. A spec has no schedule, file, owners or templates: those are Airflow's defaults or
    null. ``dag_run_timeout`` is the spec's ``deadline_s`` (a run past it fails, as Airflow's
    ``dagrun_timeout``), ``active_runs_count`` its runs in ``running`` (Airflow's count), ``params`` the
    spec's, and ``latest_dag_version`` the current version."""

    catchup: bool
    dag_run_timeout: Annotated[str, Meta(extra_json_schema={"format": "duration"})] | None
    asset_expression: dict[str, Any] | None
    doc_md: str | None
    start_date: datetime | None
    end_date: datetime | None
    is_paused_upon_creation: bool | None
    render_template_as_native_obj: bool
    template_search_path: list[str] | None
    timezone: str | None
    last_parsed: datetime | None
    default_args: dict[str, Any] | None
    owner_links: dict[str, str] | None
    is_favorite: bool
    active_runs_count: int
    concurrency: int
    latest_dag_version: DagVersionResponse | None
    rerun_with_latest_version: bool | None


class DAGCollectionResponse(Struct, frozen=True, kw_only=True):
    dags: list[DAGResponse]
    total_entries: int


def dag_response(dag: DagVersionInfo) -> DAGResponse:
    """The DAG at ``dag``; one whose stored spec cannot be read (one of an incompatible release) is shown
    with Airflow's ``has_import_errors`` and no tasks, as Airflow shows a DAG whose file no longer parses."""
    spec = spec_of(dag)
    return DAGResponse(
        dag_id=dag.dag_id,
        dag_display_name=dag.dag_id,
        is_paused=False,
        is_stale=False,
        last_parsed_time=None,
        last_parse_duration=None,
        last_expired=None,
        bundle_name=None,
        bundle_version=None,
        relative_fileloc=None,
        fileloc="",  # no DAG file
        description=None,
        timetable_summary=TIMETABLE_SUMMARY,
        timetable_description=TIMETABLE_DESCRIPTION,
        timetable_partitioned=False,
        timetable_periodic=False,
        tags=[],
        max_active_tasks=MAX_ACTIVE_TASKS,
        max_active_runs=None if spec is None else spec.max_active_runs,
        max_consecutive_failed_dag_runs=0,  # off
        has_task_concurrency_limits=False,
        has_import_errors=spec is None,
        next_dagrun_logical_date=None,
        next_dagrun_data_interval_start=None,
        next_dagrun_data_interval_end=None,
        next_dagrun_run_after=None,
        allowed_run_types=[DagRunType.MANUAL],
        owners=[],
        is_backfillable=False,
        file_token="",  # no DAG file
        version=dag.version,
        tasks=[] if spec is None else spec.tasks,
        result_task=None if spec is None else spec.result_task,
        max_queued_runs=None if spec is None else spec.max_queued_runs,
        deadline_s=None if spec is None else spec.deadline_s,
        params=None if spec is None else spec.params,
    )
