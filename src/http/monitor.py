"""Airflow 3.3.2's ``MonitorApi.get_health`` and ``VersionApi.get_version``: ``GET /api/v2/monitor/health``
and ``GET /api/v2/version``. As in Airflow, neither asks for a token.

Health in Airflow's terms (``airflow.api.common.airflow_health``), from what Stateport has:

- ``metadatabase``: the database would take a write, as ``/health/ready`` checks it (its check alone, shared
  by the monitor's callers of the moment), within ``STATEPORT_DB_TIMEOUT_S`` (``healthy``), else
  ``unhealthy``: a frozen or closed database makes the answer wait that long, never longer, and never 500.
  The state store is not Airflow's to report (``/health/ready`` does), and a frozen one does not hold it.
- ``scheduler``: what schedules in Stateport is every server process itself (runs advance as tasks report)
  and its lease sweeper, which ends the tries of lost workers. Its heartbeat is the last sweep this process
  completed; ``healthy`` when that was recent (Airflow's 30 s threshold, or three sweep intervals when they
  are longer), ``unhealthy`` otherwise or before the first sweep, with a null heartbeat, as Airflow says of
  a scheduler that never ran.
- ``triggerer`` and ``dag_processor``: Stateport has neither (no deferrable tasks; DAGs are registered with
  ``PUT /api/v2/dags/<dag_id>``, not parsed from files). Airflow answers a null status and heartbeat for a
  component that never ran, which is the truth here.
"""

from __future__ import annotations

from datetime import datetime

from litestar import get
from litestar.handlers import HTTPRouteHandler
from msgspec import Struct

from stateport import __version__
from stateport.http import openapi
from stateport.http.health import SHARED_DATABASE_CHECK
from stateport.http.providers import AnyRequest, AppServices

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
# Airflow's [scheduler] scheduler_health_check_threshold.
SCHEDULER_THRESHOLD_S = 30.0


class BaseInfoResponse(Struct, frozen=True, kw_only=True):
    status: str | None


class SchedulerInfoResponse(Struct, frozen=True, kw_only=True):
    status: str | None
    latest_scheduler_heartbeat: str | None


class TriggererInfoResponse(Struct, frozen=True, kw_only=True):
    status: str | None
    latest_triggerer_heartbeat: str | None


class DagProcessorInfoResponse(Struct, frozen=True, kw_only=True):
    status: str | None
    latest_dag_processor_heartbeat: str | None


class HealthInfoResponse(Struct, frozen=True, kw_only=True):
    metadatabase: BaseInfoResponse
    scheduler: SchedulerInfoResponse
    triggerer: TriggererInfoResponse
    dag_processor: DagProcessorInfoResponse | None = None


class VersionInfo(Struct, frozen=True, kw_only=True):
    version: str
    git_version: str | None


@get(
    "/monitor/health",
    tags=["Monitor"],
    summary="Health in Airflow's terms (no token needed)",
    description="Always 200; each component says `healthy`, `unhealthy` or null (Stateport has no such "
    "component). The database check answers within `STATEPORT_DB_TIMEOUT_S`.",
    operation_class=openapi.StateportOperation,
    operation_id="get_health",
)
async def get_health(request: AnyRequest, services: AppServices) -> HealthInfoResponse:
    checks = await request.app.state[SHARED_DATABASE_CHECK].checks(services)
    sweeper = services.core.sweeper
    threshold = max(SCHEDULER_THRESHOLD_S, 3 * services.settings.sweep_interval_s)
    return HealthInfoResponse(
        metadatabase=BaseInfoResponse(status=HEALTHY if checks["database"] == "ok" else UNHEALTHY),
        scheduler=_scheduler(sweeper.last_swept_at, sweeper.clock.now(), threshold),
        triggerer=TriggererInfoResponse(status=None, latest_triggerer_heartbeat=None),
        dag_processor=DagProcessorInfoResponse(status=None, latest_dag_processor_heartbeat=None),
    )


def _scheduler(last: datetime | None, now: datetime, threshold_s: float) -> SchedulerInfoResponse:
    if last is None:
        return SchedulerInfoResponse(status=UNHEALTHY, latest_scheduler_heartbeat=None)
    alive = (now - last).total_seconds() < threshold_s
    return SchedulerInfoResponse(
        status=HEALTHY if alive else UNHEALTHY, latest_scheduler_heartbeat=last.isoformat()
    )


@get(
    "/version",
    tags=["Version"],
    summary="Stateport's version (no token needed)",
    description="`version` is Stateport's own; `git_version` is null (not recorded in a build).",
    operation_class=openapi.StateportOperation,
    operation_id="get_version",
)
async def get_version() -> VersionInfo:
    return VersionInfo(version=__version__, git_version=None)


def handlers() -> list[HTTPRouteHandler]:
    return [get_health, get_version]
