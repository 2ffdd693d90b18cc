"""The state exchanges both clients share: the raw state admin routes (``/api/v2/state-store``, scope
``state:admin``), their bodies, and their answers read into models or errors. Free of I/O, as ``_wire``.

Why these routes and not Airflow's operator routes (``.../taskInstances/{task_id}/state-store``,
``/api/v2/assets/{asset_id}/state-store``): they address a scope by name (an asset by its name, not its
integer id), answer every entry with its version, page by cursor, and take batches; Airflow's keep
Airflow's shapes, which have none of these.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import msgspec

from stateport.adapters.rest.transport import detail, segment
from stateport.client import _wire
from stateport.client.errors import ServerUnavailable, Unsupported, VersionConflict
from stateport.client.models import BatchResult, StateChange, StateEntry, StateGet, StateOperation, StatePut

ROOT = "/api/v2/state-store"
# A watch's stream silent this long is taken for dead and opened again: the server sends a heartbeat
# whenever it was idle for STATEPORT_WATCH_HEARTBEAT_S (15 s by default, 300 s at most).
WATCH_IDLE_S = 330.0
# Entries per page while ``list`` and ``keys`` walk a scope (the routes' largest page).
PAGE = 1000


class _Page(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[dict[str, Any]]
    next_cursor: str | None = None


class _Deleted(msgspec.Struct, frozen=True, kw_only=True):
    deleted: bool


class _Cleared(msgspec.Struct, frozen=True, kw_only=True):
    cleared: int


class _Results(msgspec.Struct, frozen=True, kw_only=True):
    results: list[dict[str, Any]]


class _Batch(msgspec.Struct, frozen=True):
    operations: list[StateOperation]


_entry = msgspec.json.Decoder(StateEntry)
_page = msgspec.json.Decoder(_Page)
_deleted = msgspec.json.Decoder(_Deleted)
_cleared = msgspec.json.Decoder(_Cleared)
_results = msgspec.json.Decoder(_Results)


def task_scope(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    return f"{ROOT}/task/{segment(dag_id)}/{segment(run_id)}/{segment(task_id)}/{int(map_index)}"


def asset_scope(name: str) -> str:
    return f"{ROOT}/asset/{segment(name)}"


def key_path(scope: str, key: str) -> str:
    return f"{scope}/{segment(key)}"


def put_body(value: Any, expires_at: Any, if_version: int | None) -> bytes:
    if value is None:
        raise ValueError("state values cannot be None (it could not be told from a missing key): delete it")
    return _wire.finite_json({"value": value, "expires_at": expires_at, "if_version": if_version}, "value")


def json_headers() -> dict[str, str]:
    return {"content-type": "application/json"}


def delete_headers(if_version: int | None) -> dict[str, str]:
    """``if_version`` as the route's headers: ``If-Match: "<n>"``, or ``If-None-Match: *`` for 0."""
    if if_version is None:
        return {}
    return {"if-none-match": "*"} if if_version == 0 else {"if-match": f'"{if_version}"'}


def list_params(prefix: str, cursor: str | None, keys_only: bool) -> dict[str, str]:
    params = {"cursor": cursor or "", "limit": str(PAGE)}
    if prefix:
        params["prefix"] = prefix
    if keys_only:
        params["keys_only"] = "true"
    return params


def batch_body(operations: list[StateOperation]) -> bytes:
    if any(isinstance(op, StatePut) and op.value is None for op in operations):
        raise ValueError("state values cannot be None: delete the key instead")
    return _wire.finite_json(_Batch(operations), "batch")


def checked(
    response: httpx.Response, *, key: str | None = None, if_version: int | None = None
) -> httpx.Response:
    """The response if it is a success; VersionConflict (412), Unsupported (501), else as ``_wire``."""
    if response.status_code == 412:
        body = _body(response)
        index = body.get("index") if isinstance(body, dict) else None
        raise VersionConflict(
            detail(response) or "a precondition failed",
            key=key,
            expected=if_version,
            index=index if isinstance(index, int) else None,
        )
    if response.status_code == 501:
        raise Unsupported(detail(response) or "not implemented", status=501)
    return _wire.checked(response)


def entry(response: httpx.Response) -> StateEntry:
    return _entry.decode(response.content)


def page(response: httpx.Response) -> tuple[list[dict[str, Any]], str | None]:
    decoded = _page.decode(response.content)
    return decoded.entries, decoded.next_cursor


def deleted(response: httpx.Response) -> bool:
    return _deleted.decode(response.content).deleted


def cleared(response: httpx.Response) -> int:
    return _cleared.decode(response.content).cleared


def results(operations: list[StateOperation], response: httpx.Response) -> list[BatchResult]:
    """One ``BatchResult`` per operation, in order, from the answer's ``results``."""
    out: list[BatchResult] = []
    for op, result in zip(operations, _results.decode(response.content).results, strict=True):
        found = result.get("entry")
        if isinstance(op, StateGet):
            if isinstance(found, dict):
                out.append(BatchResult(op="get", key=op.key, value=found["value"], version=found["version"]))
            else:
                out.append(BatchResult(op="get", key=op.key))
        elif isinstance(op, StatePut):
            out.append(BatchResult(op="put", key=op.key, version=result["version"]))
        else:
            out.append(BatchResult(op="delete", key=op.key, deleted=bool(result.get("deleted"))))
    return out


def _body(response: httpx.Response) -> Any:
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None


# --- watches: the Server-Sent Events of the key and prefix streams ---------------------------------------


class _EventData(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    version: int
    value: Any = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    reason: str | None = None


class _ErrorData(msgspec.Struct, frozen=True, kw_only=True):
    reason: str = "unavailable"
    message: str = "the server ended the stream"


class _TokenData(msgspec.Struct, frozen=True, kw_only=True):
    token: str


_token_data = msgspec.json.Decoder(_TokenData)
_event_data = msgspec.json.Decoder(_EventData)
_error_data = msgspec.json.Decoder(_ErrorData)


def watch_headers(version: int | None) -> dict[str, str]:
    """A stream's headers; with the version known, ``Last-Event-ID`` so that the server sends the key's
    state at once only if it is at another version."""
    headers = {"accept": "text/event-stream"}
    if version is not None:
        if version < 0:
            raise ValueError("version must be 0 (the key is missing) or a version")
        headers["last-event-id"] = str(version)
    return headers


def prefix_params(prefix: str) -> dict[str, str]:
    return {"prefix": prefix} if prefix else {}


class EventReader:
    """The changes in a stream's lines: ``feed`` each line; an event's blank line hands back its change.
    Comments (``: watching``, ``: heartbeat``) and ids (the data carries the version) are passed over;
    an ``error`` event (the server shuts down, its store failed, the token expired) raises
    ``ServerUnavailable``, so that the watch opens the stream again; a ``token`` event (the stream renewed
    its token) goes to ``on_token``."""

    def __init__(self, on_token: Callable[[str], None]) -> None:
        self._event = ""
        self._data: list[str] = []
        self._on_token = on_token

    def feed(self, line: str) -> StateChange | None:
        if line == "":
            event, data = self._event, self._data
            self._event, self._data = "", []
            if event == "token" and data:
                # The stream renewed its token (it goes on under the new one): the client's from now on.
                self._on_token(_token_data.decode("\n".join(data)).token)
                return None
            return _change(event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def _change(event: str, data: str) -> StateChange | None:
    if event == "error":
        ended = _error_data.decode(data)
        raise ServerUnavailable(f"the server ended the watch ({ended.reason}): {ended.message}")
    if event not in ("put", "delete"):
        return None  # an event this client does not know: a newer server's, passed over
    got = _event_data.decode(data)
    return StateChange(
        key=got.key,
        version=got.version,
        value=got.value,
        updated_at=got.updated_at,
        expires_at=got.expires_at,
        reason=got.reason,
    )
