"""What the public API's route modules share (``/api/v2``: dags, runs, task_state, asset_state).

Every route declares its caller's scope, security and operation class alike, and pages alike; the operators'
state routes answer entries alike. Errors carry a plain string ``detail``, as Airflow's public REST API does.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response
from litestar.datastructures import ResponseHeader
from litestar.di import Provide

from stateport.domain.models import StateEntry
from stateport.domain.values import MAX_OFFSET
from stateport.http import openapi
from stateport.http.providers import api_caller
from stateport.http.queries import plain_int
from stateport.http.schemas import TaskStateStoreResponse
from stateport.http.state_io import etag


def scoped(scope: str) -> dict[str, Provide]:
    return {"caller": api_caller(scope)}


def common(scope: str) -> dict[str, Any]:
    """What every public route declares: who may call it, and the operation class."""
    return {"security": openapi.API_SECURITY, "operation_class": openapi.StateportOperation}


def limit_offset(limit: str | None, offset: str | None) -> tuple[int, int]:
    """The operators' state listings' paging, written plainly as on every state route."""
    return plain_int(limit, "limit", 100, ge=1, le=1000), plain_int(offset, "offset", 0, ge=0, le=MAX_OFFSET)


# --- operators' state (task_state, asset_state) ---------------------------------------------------------

# Airflow's (TaskStateStoreApi, AssetStateStoreApi).
TASK_STATE_TAGS = ["Task State Store"]
ASSET_STATE_TAGS = ["Asset State Store"]
STATE_ERRORS = openapi.public_responses(404, 412)
KEY_LOC: list[str | int] = ["path", "key"]
ETAG = ResponseHeader(name="ETag", description='The entry\'s version, `"<n>"`', documentation_only=True)


def entry_out(entry: StateEntry) -> TaskStateStoreResponse:
    return TaskStateStoreResponse(
        key=entry.key,
        value=msgspec.Raw(entry.value),
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )


def entry_response(entry: StateEntry) -> Response[TaskStateStoreResponse]:
    return Response(content=entry_out(entry), headers={"ETag": etag(entry.version)})
