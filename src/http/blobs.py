"""Result blobs over HTTP: the route an outcome's reference points at when the server serves its blobs.

``GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/blob?ref=<ref>`` streams one result blob of that run
(scope ``runs:read``), chunk by chunk from the BlobStore, never whole in memory. A reference outside the
run's own blob folder is 404 like a missing blob, so the route reaches no other run's blobs and no other
file. With presigned S3 URLs (``STATEPORT_BLOB_URLS``) references point at S3 instead, yet the route
serves S3 blobs too.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.response import Stream

from stateport.domain.engine.result_store import open_run_blob
from stateport.http import openapi
from stateport.http.errors import JSON, RequestInvalid
from stateport.http.listing import sent_once
from stateport.http.params import DagId, RunId, query
from stateport.http.providers import AnyRequest, Blobs, api_caller

RUN = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}"


def blob_location(dag_id: str, run_id: str, ref: str) -> str:
    """The route serving a run's blob, as a path on the server (resolved like a ``Location`` header)."""
    return (
        f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/blob"
        f"?ref={quote(ref, safe='')}"
    )


Ref = Annotated[
    str | None,
    query(
        "ref", "Required: the `ref` of a blob reference of this run's outcome.", type="string", minLength=1
    ),
]


@get(
    RUN + "/blob",
    tags=["DagRun"],
    summary="Stream a result blob of the run (scope runs:read)",
    description=(
        "The `url` of a blob reference in the run's outcome (`__stateport_blob__`) when the server serves "
        "blobs. `ref` is the reference's `ref`; the body is the result's JSON, `content-length` its size. "
        "404 for a blob that is gone or is not one of this run's."
    ),
    media_type=JSON,
    dependencies={"caller": api_caller("runs:read")},
    responses={
        200: ResponseSpec(
            generate_examples=False,
            data_container=Any,
            description="The result's JSON, as the task returned it",
        ),
        **openapi.public_responses(404),
    },
    security=openapi.API_SECURITY,
    operation_class=openapi.StateportOperation,
    operation_id="get_dag_run_blob",
)
async def get_blob(
    request: AnyRequest, blobs: Blobs, dag_id: DagId, dag_run_id: RunId, ref: Ref = None
) -> Stream:
    # ``ref`` twice is a 422: the last of two was served (an outsider's find), where the other routes refuse
    # a parameter they take once and got twice.
    sent_once(request, ["ref"])
    if not ref:
        raise RequestInvalid.one("missing", ["query", "ref"], "Field required")
    blob = await open_run_blob(blobs, dag_id, dag_run_id, ref)
    return Stream(blob.chunks, media_type=JSON, headers={"Content-Length": str(blob.size)})


def handlers() -> list[HTTPRouteHandler]:
    return [get_blob]
