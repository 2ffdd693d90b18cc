"""The public API's DAG routes (``/api/v2/dags/<dag_id>``): register a spec, read the current one."""

from __future__ import annotations

import msgspec
from litestar import get, put
from litestar.handlers import HTTPRouteHandler

from stateport.domain.models import DagSpec
from stateport.http import openapi
from stateport.http.errors import RequestInvalid, decode_body
from stateport.http.params import DagId
from stateport.http.providers import AnyRequest, Runs
from stateport.http.public import common, scoped
from stateport.http.schemas import DagOut

_dag_decoder = msgspec.json.Decoder(DagSpec)
DAG_TAGS = ["DAGs"]


def _dag_body(dag_id: str, version: str, spec: DagSpec) -> DagOut:
    return DagOut(dag_id=dag_id, version=version, tasks=spec.tasks, result_task=spec.result_task)


def _dag_id(dag_id: str) -> str:
    if not 1 <= len(dag_id) <= 250 or "\x00" in dag_id:
        raise RequestInvalid.one(
            "value_error", ["path", "dag_id"], "dag_id must be 1..250 characters", dag_id
        )
    return dag_id


@put(
    "/dags/{dag_id:str}",
    tags=DAG_TAGS,
    summary="Register a DAG spec (scope dags:write)",
    description="Makes the spec the DAG's current version (content-hashed; a no-op when it already is).",
    status_code=200,
    dependencies={**scoped("dags:write"), openapi.BODY: openapi.request_body(DagSpec)},
    responses=openapi.public_responses(*openapi.WITH_BODY),
    **common("dags:write"),
)
async def put_dag(request: AnyRequest, runs: Runs, dag_id: DagId) -> DagOut:
    spec: DagSpec = decode_body(_dag_decoder, await request.body())
    dag = await runs.register_dag(_dag_id(dag_id), spec)
    return _dag_body(dag.dag_id, dag.version, dag.spec)


@get(
    "/dags/{dag_id:str}",
    tags=DAG_TAGS,
    summary="Read a DAG's current spec (scope runs:read)",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
)
async def get_dag(runs: Runs, dag_id: DagId) -> DagOut:
    dag = await runs.get_dag(dag_id)
    return _dag_body(dag.dag_id, dag.version, dag.spec)


def handlers() -> list[HTTPRouteHandler]:
    """In the order the OpenAPI document lists them (``app`` registers these before ``runs.handlers``)."""
    return [put_dag, get_dag]
