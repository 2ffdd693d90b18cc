"""Result blobs over HTTP: the route an outcome's reference points at when the server serves its blobs.

``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/blob?ref=<ref>`` streams one result blob of that run
(scope ``runs:read``), chunk by chunk from the BlobStore, never whole in memory. A reference outside the
run's own blob folder is 404 like a missing blob, so the route reaches no other run's blobs and no other
file. With presigned S3 URLs (``STATEPORT_BLOB_URLS``) references point at S3 instead, yet the route
serves S3 blobs too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from stateport.domain.engine.result_store import open_run_blob
from stateport.http.auth import api_claims
from stateport.http.context import services
from stateport.http.errors import JSON, RequestInvalid

RUN = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}"


def blob_location(dag_id: str, run_id: str, ref: str) -> str:
    """The route serving a run's blob, as a path on the server (resolved like a ``Location`` header)."""
    return (
        f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/blob"
        f"?ref={quote(ref, safe='')}"
    )


@get(
    RUN + "/blob",
    tags=["DAG Runs"],
    summary="Stream a result blob of the run (scope runs:read)",
    description=(
        "The `url` of a blob reference in the run's outcome (`__stateport_blob__`) when the server serves "
        "blobs. `ref` is the reference's `ref`; the body is the result's JSON, `content-length` its size. "
        "404 for a blob that is gone or is not one of this run's."
    ),
    media_type=JSON,
)
async def get_blob(request: Request[Any, Any, Any]) -> Stream:
    svc = services(request)
    api_claims(request, svc.tokens, "runs:read")
    ref = request.query_params.get("ref")
    if not ref:
        raise RequestInvalid.one("missing", ["query", "ref"], "Field required")
    dag_id, run_id = request.path_params["dag_id"], request.path_params["dag_run_id"]
    blob = await open_run_blob(svc.blobs, dag_id, run_id, ref)
    return Stream(blob.chunks, media_type=JSON, headers={"Content-Length": str(blob.size)})


def handlers() -> list[HTTPRouteHandler]:
    return [get_blob]
