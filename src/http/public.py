"""The public API (``/api/v2``): DAG specs, runs, task instances and operators' state, for API tokens.

Errors carry a plain string ``detail``, as Airflow's public REST API does.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.handlers import HTTPRouteHandler

from stateport.bootstrap import Services
from stateport.domain.models import AssetScope, DagSpec, RunState, StatePage, TaskScope
from stateport.http.auth import api_claims
from stateport.http.context import services
from stateport.http.errors import JSON, RequestInvalid, decode_body
from stateport.http.paths import header_value, raw_segments
from stateport.http.schemas import (
    StateEntryOut,
    TaskInstanceOut,
    TaskInstancesResponse,
    TriggerBody,
)
from stateport.http.state_io import (
    decode_put,
    not_modified,
    precondition,
    stored_response,
    unconditional,
    valid_key,
)
from stateport.http.waits import prefer_wait, trigger_and_wait
from stateport.http.waits import run_body as _run_body

_encode = msgspec.json.Encoder().encode
_dag_decoder = msgspec.json.Decoder(DagSpec)
_trigger_decoder = msgspec.json.Decoder(TriggerBody)
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(content=_encode(body), status_code=status, media_type=JSON)


def _authorized(request: Request[Any, Any, Any], scope: str) -> Services:
    svc = services(request)
    api_claims(request, svc.tokens, scope)
    return svc


def _int_param(
    request: Request[Any, Any, Any], name: str, default: int, *, ge: int, le: int | None = None
) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestInvalid.one("int_parsing", ["query", name], f"{name} must be an integer", raw) from None
    if value < ge or (le is not None and value > le):
        bound = f"{ge}..{le}" if le is not None else f">= {ge}"
        raise RequestInvalid.one("value_error", ["query", name], f"{name} must be {bound}", raw)
    return value


def _bool_param(request: Request[Any, Any, Any], name: str) -> bool:
    raw = (request.query_params.get(name) or "false").lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise RequestInvalid.one("bool_parsing", ["query", name], f"{name} must be true or false", raw)


# --- DAGs and runs --------------------------------------------------------------------------------------

DAG_TAGS = ["DAGs"]
RUN_TAGS = ["DAG Runs"]


def _dag_body(dag_id: str, version: str, spec: DagSpec) -> Response[bytes]:
    body = msgspec.to_builtins(spec)
    return _json({"dag_id": dag_id, "version": version, **body})


@put("/dags/{dag_id:str}", tags=DAG_TAGS, summary="Register a DAG spec (scope dags:write)", status_code=200)
async def put_dag(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "dags:write")
    dag_id = request.path_params["dag_id"]
    spec: DagSpec = decode_body(_dag_decoder, await request.body())
    dag = await svc.runs.register_dag(_dag_id(dag_id), spec)
    return _dag_body(dag.dag_id, dag.version, dag.spec)


@get("/dags/{dag_id:str}", tags=DAG_TAGS, summary="Read a DAG's current spec (scope runs:read)")
async def get_dag(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:read")
    dag = await svc.runs.get_dag(request.path_params["dag_id"])
    return _dag_body(dag.dag_id, dag.version, dag.spec)


def _run_address(request: Request[Any, Any, Any]) -> tuple[str, str]:
    return request.path_params["dag_id"], request.path_params["dag_run_id"]


def _dag_id(dag_id: str) -> str:
    if not 1 <= len(dag_id) <= 250 or "\x00" in dag_id:
        raise RequestInvalid.one(
            "value_error", ["path", "dag_id"], "dag_id must be 1..250 characters", dag_id
        )
    return dag_id


@post(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="Trigger a run (scope runs:write); Airflow's body, logical_date present and null",
    description=(
        "With `Prefer: wait=N` (RFC 7240, N <= 300 seconds) the call also waits for the outcome: 200 with "
        "the run, `state` and `results` from its outcome, or 202 with a `Location` to wait on."
    ),
    status_code=200,
)
async def trigger_run(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:write")
    # The DAG is looked up before the body (a conf of up to the DAG body limit) is read.
    dag = await svc.runs.get_dag(request.path_params["dag_id"])
    body: TriggerBody = decode_body(_trigger_decoder, await request.body())
    if body.logical_date is not None:
        raise RequestInvalid.one(
            "value_error",
            ["body", "logical_date"],
            "Stateport runs have no logical date: send logical_date as null",
            body.logical_date.isoformat(),
        )
    run = await svc.runs.trigger(
        dag.dag_id,
        dag=dag,
        run_id=body.dag_run_id,
        conf=body.conf,
        run_after=body.run_after,
        idempotency_key=header_value(request.scope, b"idempotency-key"),
    )
    wait_s = prefer_wait(request)
    if wait_s is not None:
        return await trigger_and_wait(svc, run, wait_s)
    return _json(_run_body(run))


ORDERS = {"created_at": False, "-created_at": True}
RUN_STATES = {state.value: state for state in RunState}


@get(
    "/dags/{dag_id:str}/dagRuns",
    tags=RUN_TAGS,
    summary="List a DAG's runs (scope runs:read)",
    description=(
        "Query: `state` (repeatable: `queued`, `running`, `success`, `failed`; all if absent), "
        "`order_by` (`-created_at`, newest first, the default; or `created_at`), `limit` (1..1000, "
        'default 100), `offset`. Answers `{"dag_runs": [...], "total_entries": n}`, n counting '
        "every run in those states."
    ),
)
async def list_runs(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:read")
    states = set()
    for raw in request.query_params.getall("state", []):
        if raw not in RUN_STATES:
            raise RequestInvalid.one(
                "enum", ["query", "state"], f"state must be one of {', '.join(RUN_STATES)}", raw
            )
        states.add(RUN_STATES[raw])
    order_by = request.query_params.get("order_by", "-created_at")
    if order_by not in ORDERS:
        raise RequestInvalid.one(
            "enum", ["query", "order_by"], "order_by must be created_at or -created_at", order_by
        )
    limit, offset = _limit_offset(request)
    runs, total = await svc.runs.list_runs(
        request.path_params["dag_id"],
        states=frozenset(states),
        newest_first=ORDERS[order_by],
        limit=limit,
        offset=offset,
    )
    return _json({"dag_runs": [_run_body(run) for run in runs], "total_entries": total})


@get("/dags/{dag_id:str}/dagRuns/{dag_run_id:str}", tags=RUN_TAGS, summary="Read a run (scope runs:read)")
async def get_run(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:read")
    return _json(_run_body(await svc.runs.get_run(*_run_address(request))))


@get(
    "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances",
    tags=RUN_TAGS,
    summary="List a run's task instances, every try (scope runs:read)",
)
async def list_task_instances(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request, "runs:read")
    tis = await svc.runs.task_instances(*_run_address(request))
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
    return _json(TaskInstancesResponse(task_instances=out, total_entries=len(out)))


# --- operators' state -----------------------------------------------------------------------------------

STATE_TAGS = ["State (operators)"]
TASK_STATE = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances/{task_id:str}/state-store"
TASK_PREFIX = ("api", "v2", "dags")
ASSET_PREFIX = ("api", "v2", "assets")
ASSET_DOC = (
    "`address` is `<name>/state-store` or `<name>/state-store/<key>`: the asset name is one path segment "
    "(send `/` inside it as `%2F`); the key may contain `/`."
)


def _page(kind: str, page: StatePage) -> Response[bytes]:
    entries = [
        StateEntryOut(key=e.key, value=msgspec.Raw(e.value), updated_at=e.updated_at, expires_at=e.expires_at)
        for e in page.entries
    ]
    return _json({kind: entries, "total_entries": page.total})


def _entry_body(entry: Any) -> Response[bytes]:
    out = StateEntryOut(
        key=entry.key,
        value=msgspec.Raw(entry.value),
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )
    return Response(content=_encode(out), media_type=JSON, headers={"ETag": f'"{entry.version}"'})


def _task_address(request: Request[Any, Any, Any]) -> tuple[Services, TaskScope, str | None]:
    svc = _authorized(request, "state:admin")
    segments, key = raw_segments(request.scope, TASK_PREFIX, 6)
    dag_id, _, run_id, _, task_id, _ = segments
    scope = TaskScope(
        dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=_int_param(request, "map_index", -1, ge=-1)
    )
    return svc, scope, key


def _limit_offset(request: Request[Any, Any, Any]) -> tuple[int, int]:
    return _int_param(request, "limit", 100, ge=1, le=1000), _int_param(request, "offset", 0, ge=0)


@get(TASK_STATE, tags=STATE_TAGS, summary="List a task instance's state (scope state:admin)")
async def list_task_state(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, _ = _task_address(request)
    limit, offset = _limit_offset(request)
    page = await svc.state.list_entries(scope, limit=limit, offset=offset)
    return not_modified(request, None) or _page("task_state_store", page)


@get(TASK_STATE + "/{key:path}", tags=STATE_TAGS, summary="Read one key of a task instance's state")
async def get_task_state(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _task_address(request)
    entry = await svc.state.get(scope, valid_key(key, svc.state.limits, ["path", "key"]))
    return not_modified(request, entry.version) or _entry_body(entry)


@put(TASK_STATE + "/{key:path}", tags=STATE_TAGS, summary="Write one key of a task instance's state")
async def put_task_state(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _task_address(request)
    key = valid_key(key, svc.state.limits, ["path", "key"])
    value, expires_at = decode_put(await request.body(), svc.state.limits)
    scope = await svc.state.admin_task_scope(scope)
    entry = await svc.state.put(scope, key, value, expires_at=expires_at, if_version=precondition(request))
    return stored_response(entry)


@delete(TASK_STATE + "/{key:path}", tags=STATE_TAGS, summary="Delete one key of a task instance's state")
async def delete_task_state(request: Request[Any, Any, Any]) -> None:
    svc, scope, key = _task_address(request)
    key = valid_key(key, svc.state.limits, ["path", "key"])
    if_version = precondition(request)
    await svc.state.delete(await svc.state.admin_task_scope(scope), key, if_version=if_version)


@delete(
    TASK_STATE,
    tags=STATE_TAGS,
    summary="Delete every key of a task instance's state; all_map_indices=true clears every map index",
)
async def clear_task_state(request: Request[Any, Any, Any]) -> None:
    svc, scope, key = _task_address(request)
    if key is not None:
        valid_key(key, svc.state.limits, ["path", "key"])
    widen = _bool_param(request, "all_map_indices")
    scope = await svc.state.admin_task_scope(scope, any_map_index=widen)
    unconditional(request)
    await svc.state.clear(scope, all_map_indices=widen)


async def _asset_address(request: Request[Any, Any, Any]) -> tuple[Services, AssetScope, str | None]:
    svc = _authorized(request, "state:admin")
    (name, marker), key = raw_segments(request.scope, ASSET_PREFIX, 2)
    if marker != "state-store" or not name:
        raise RequestInvalid.one(
            "value_error", ["path"], "expected /api/v2/assets/<name>/state-store[/<key>]"
        )
    return svc, await svc.state.admin_asset_scope(name), key


ASSET_PATH = "/assets/{address:path}"


@get(
    ASSET_PATH,
    tags=STATE_TAGS,
    summary="List an asset's state, or read one key (scope state:admin)",
    description=ASSET_DOC,
)
async def get_asset_state(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = await _asset_address(request)
    if key is None:
        limit, offset = _limit_offset(request)
        page = await svc.state.list_entries(scope, limit=limit, offset=offset)
        return not_modified(request, None) or _page("asset_state_store", page)
    entry = await svc.state.get(scope, valid_key(key, svc.state.limits, ["path", "key"]))
    return not_modified(request, entry.version) or _entry_body(entry)


@put(ASSET_PATH, tags=STATE_TAGS, summary="Write one key of an asset's state", description=ASSET_DOC)
async def put_asset_state(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = await _asset_address(request)
    key = valid_key(key, svc.state.limits, ["path", "key"])
    value, expires_at = decode_put(await request.body(), svc.state.limits)
    entry = await svc.state.put(scope, key, value, expires_at=expires_at, if_version=precondition(request))
    return stored_response(entry)


@delete(
    ASSET_PATH,
    tags=STATE_TAGS,
    summary="Delete one key of an asset's state, or every key",
    description=ASSET_DOC,
)
async def delete_asset_state(request: Request[Any, Any, Any]) -> None:
    svc, scope, key = await _asset_address(request)
    if key is None:
        unconditional(request)
        await svc.state.clear(scope)
    else:
        key = valid_key(key, svc.state.limits, ["path", "key"])
        await svc.state.delete(scope, key, if_version=precondition(request))


def dag_handlers() -> list[HTTPRouteHandler]:
    """Routes whose bodies are DAG specs and run triggers (a larger body limit)."""
    return [put_dag, get_dag, trigger_run, list_runs, get_run, list_task_instances]


def state_handlers() -> list[HTTPRouteHandler]:
    """Operators' state routes (state-sized body limit)."""
    return [
        list_task_state,
        get_task_state,
        put_task_state,
        delete_task_state,
        clear_task_state,
        get_asset_state,
        put_asset_state,
        delete_asset_state,
    ]
