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

import math
from collections.abc import AsyncGenerator, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from stateport.bootstrap import Services
from stateport.domain.errors import StateportError
from stateport.domain.models import Run
from stateport.http.auth import api_claims
from stateport.http.context import services
from stateport.http.errors import JSON, RequestInvalid
from stateport.http.schemas import RunResponse

NDJSON = "application/x-ndjson"
TAGS = ["DAG Runs"]
# Longest wait one request may ask for: beyond it load balancers and proxies commonly cut idle requests,
# and a caller is better served by a 202 it can wait on again than by a dropped connection.
MAX_WAIT_S = 300.0
DEFAULT_OUTCOME_TIMEOUT_S = 30.0
RUN = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}"
# Proxies (nginx) buffer responses unless told not to; every line must reach the caller as it happens.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_encode = msgspec.json.Encoder().encode


class WaitingResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202: the outcome is not known yet; wait again on the run."""

    dag_run_id: str
    state: str


class RunOutcomeResponse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """200 of trigger-and-wait: the run, with ``state`` and ``results`` taken from its outcome."""

    dag_run_id: str
    dag_id: str
    state: str
    results: dict[str, Any]
    failed_task: str | None = None
    reason: str | None = None
    conf: dict[str, Any]
    run_after: datetime
    # Always present and always null, as on every run body.
    logical_date: None
    dag_version: str | None = None
    outcome: dict[str, Any] | None = None


def run_body(run: Run) -> RunResponse:
    """A run as the public API shows it (``GET .../dagRuns/{dag_run_id}``)."""
    return RunResponse(
        dag_run_id=run.run_id,
        dag_id=run.dag_id,
        state=str(run.state),
        conf=run.conf,
        run_after=run.run_after,
        logical_date=None,
        dag_version=run.dag_version,
        outcome=msgspec.to_builtins(run.outcome) if run.outcome is not None else None,
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(content=_encode(body), status_code=status, media_type=JSON, headers=headers)


def _authorized(request: Request[Any, Any, Any], scope: str) -> Services:
    svc = services(request)
    api_claims(request, svc.tokens, scope)
    return svc


def _address(request: Request[Any, Any, Any]) -> tuple[str, str]:
    return request.path_params["dag_id"], request.path_params["dag_run_id"]


def wait_location(run: Run) -> str:
    """Where to wait on a run: its NDJSON stream (``interval`` is required there, as in Airflow)."""
    return f"/api/v2/dags/{quote(run.dag_id, safe='')}/dagRuns/{quote(run.run_id, safe='')}/wait?interval=1"


def _seconds(request: Request[Any, Any, Any], name: str, default: float | None, *, positive: bool) -> float:
    """A number of seconds from the query: finite, and > 0 (``positive``) or >= 0."""
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise RequestInvalid.one("missing", ["query", name], "Field required")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RequestInvalid.one("float_parsing", ["query", name], f"{name} must be a number", raw) from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise RequestInvalid.one("value_error", ["query", name], f"{name} must be {bound}", raw)
    return value


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
    return line


async def _final_results(svc: Services, run: Run, result_tasks: Sequence[str]) -> dict[str, Any]:
    assert run.outcome is not None
    if result_tasks:
        return await svc.waits.results(run, result_tasks)
    return dict(run.outcome.results)


@get(
    RUN + "/wait",
    tags=TAGS,
    summary="Stream the run's state as NDJSON until its outcome is known (scope runs:read)",
    description=(
        "Airflow's wait endpoint. One `{\"state\": ...}` line at once and one per change of the run's "
        "state; the last line is the outcome (`results` keyed by task_id, `failed_task` and `reason` on "
        "failure), sent as soon as the outcome is set, even while teardown tasks still run. `interval` is "
        "required (> 0) and ignored: lines are pushed as changes happen. `result` (repeatable) asks for the "
        "results of those tasks instead of the result task's."
    ),
    media_type=NDJSON,
)
async def wait_stream(request: Request[Any, Any, Any]) -> Stream:
    svc = _authorized(request, "runs:read")
    _seconds(request, "interval", None, positive=True)
    result_tasks = request.query_params.getall("result", [])
    changes = svc.waits.changes(*_address(request))
    try:
        # Read before answering, so an unknown run is a 404 rather than a broken stream.
        first = await anext(changes)
    except BaseException:
        await changes.aclose()
        raise
    return Stream(_lines(svc, first, changes, result_tasks), media_type=NDJSON, headers=STREAM_HEADERS)


async def _lines(
    svc: Services, first: Run, changes: AsyncGenerator[Run, None], result_tasks: Sequence[str]
) -> AsyncGenerator[bytes, None]:
    try:
        run: Run | None = first
        while run is not None:
            if run.outcome is not None:
                line = _final_line(run, await _final_results(svc, run, result_tasks))
                yield _encode(line) + b"\n"
                return
            yield _encode({"state": str(run.state)}) + b"\n"
            run = await anext(changes, None)
    finally:
        await changes.aclose()


@get(
    RUN + "/outcome",
    tags=TAGS,
    summary="Long-poll for the run's outcome (scope runs:read): 200 outcome, or 202 when timeout passes",
)
async def wait_outcome(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:read")
    timeout = min(_seconds(request, "timeout", DEFAULT_OUTCOME_TIMEOUT_S, positive=False), MAX_WAIT_S)
    run = await svc.waits.wait_for_outcome(*_address(request), timeout)
    if run.outcome is None:
        return _json(WaitingResponse(dag_run_id=run.run_id, state=str(run.state)), 202)
    return _json(run.outcome)


@post(RUN + "/cancel", tags=TAGS, summary="Cancel a run (scope runs:write); returns the run", status_code=200)
async def cancel_run(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:write")
    return _json(run_body(await svc.core.advancer.cancel(*_address(request))))


# --- trigger-and-wait ------------------------------------------------------------------------------------


def prefer_wait(request: Request[Any, Any, Any]) -> float | None:
    """The ``wait`` preference of the request's ``Prefer`` headers (RFC 7240), capped, or None.

    Preferences are comma-separated, each ``token [= value] *(; parameter)``, names case-insensitive;
    only the first ``wait`` counts, and one whose value is not delta-seconds is ignored (RFC 7240 §2:
    a preference that is not understood is ignored).
    """
    for header in request.headers.getall("prefer", []):
        for preference in header.split(","):
            name, _, value = preference.split(";", 1)[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            value = value.strip().strip('"')
            if not value.isdigit():
                return None
            return min(float(value), MAX_WAIT_S)
    return None


async def trigger_and_wait(svc: Services, run: Run, wait_s: float) -> Response[bytes]:
    """Answer a trigger that asked to wait: 200 with the outcome if it is set in time, else 202."""
    applied = {"Preference-Applied": f"wait={wait_s:g}"}
    # Should the store fail now, the run exists and goes on: tell the caller where to wait for it.
    with suppress(StateportError):
        run = await svc.waits.wait_for_outcome(run.dag_id, run.run_id, wait_s)
    outcome = run.outcome
    if outcome is None:
        return _json(run_body(run), 202, {**applied, "Location": wait_location(run)})
    body = RunOutcomeResponse(
        dag_run_id=run.run_id,
        dag_id=run.dag_id,
        state=str(outcome.state),
        results=outcome.results,
        failed_task=outcome.failed_task,
        reason=outcome.reason,
        conf=run.conf,
        run_after=run.run_after,
        logical_date=None,
        dag_version=run.dag_version,
        outcome=msgspec.to_builtins(outcome),
    )
    return _json(body, 200, applied)


def handlers() -> list[HTTPRouteHandler]:
    """The wait, outcome and cancel routes (small bodies)."""
    return [wait_stream, wait_outcome, cancel_run]
