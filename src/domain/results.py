"""Task results: inline JSON text, or a reference to a blob for results over the inline limit.

A blob-backed result is stored on its task instance as the reference object

    {"__stateport_blob__": {"ref": "<BlobStore reference>", "size": <bytes>, "sha256": "<hex>", "url": null}}

which is what the rules and the outcome see. Task inputs always get the value itself (the blob's text, as
it was reported, once its digest matches); the outcome keeps the reference, and ``url`` is filled in
whenever a run is shown (``with_links``), so a caller never meets an expired one: a presigned S3 URL, or
the server's own route that streams the blob. Whether a result is a blob is told by the task instance's
``result_ref`` column, never by the shape of a value: a task may return an object that happens to look
like a reference, and it stays a plain value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import msgspec

from stateport.domain.errors import Invalid
from stateport.domain.jsontext import decode_json
from stateport.domain.models import JsonText, TaskInstance

BLOB_KEY = "__stateport_blob__"

_encode = msgspec.json.Encoder().encode


def decode_result(data: bytes) -> Any:
    """A stored result's value; Invalid when it cannot be read back (not JSON, a number out of range,
    nested deeper than the decoder goes), so that one bad result is an error about that result."""
    try:
        return decode_json(data)
    except (msgspec.MsgspecError, RecursionError, ValueError) as exc:
        raise Invalid(f"the stored result cannot be read back: {exc}") from exc


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reference(ref: str, size: int, sha256: str) -> JsonText:
    """The reference object stored in place of a blob-backed result of ``size`` bytes and that digest."""
    return _encode({BLOB_KEY: {"ref": ref, "size": size, "sha256": sha256, "url": None}})


def stored_digest(ti: TaskInstance) -> str | None:
    """The sha256 of a blob-backed result, as its reference keeps it (None for an inline one)."""
    if ti.result_ref is None:
        return None
    found = decode_json(ti.result or b"{}").get(BLOB_KEY, {}).get("sha256")
    return found if isinstance(found, str) else None


def stored_size(ti: TaskInstance) -> int:
    """The bytes of a result as it was reported: a blob's size as its reference keeps it, else the text's."""
    if ti.result_ref is None:
        return len(ti.result or b"")
    found = decode_json(ti.result or b"{}").get(BLOB_KEY, {}).get("size")
    return found if isinstance(found, int) else 0


def blob_name(ti: TaskInstance, sha256: str) -> str:
    """Where a task instance's result goes: one path per try and content (its digest), readable by an
    operator."""
    parts = (ti.task_id, str(ti.map_index), f"{ti.id}-{sha256[:16]}.json")
    return run_blob_prefix(ti.dag_id, ti.run_id) + "/" + "/".join(_segment(p) for p in parts)


def run_blob_prefix(dag_id: str, run_id: str) -> str:
    """The folder holding every result blob of a run (``blob_name`` puts them there)."""
    return f"results/{_segment(dag_id)}/{_segment(run_id)}"


def is_run_blob(dag_id: str, run_id: str, ref: str) -> bool:
    """Whether ``ref`` names a blob inside the run's own folder (and cannot climb out of it)."""
    prefix = run_blob_prefix(dag_id, run_id) + "/"
    if not ref.startswith(prefix) or "\x00" in ref:
        return False
    return all(part not in ("", ".", "..") for part in ref[len(prefix) :].split("/"))


# The longest segment kept as it is: a file name's limit on Linux file systems (NAME_MAX, in bytes). An id
# of 250 characters percent-encodes to up to 2,250 (three bytes of UTF-8 for a CJK character, nine
# characters encoded): an outsider's 86-character DAG id made every large result of it a 503 for ever
# ("File name too long").
MAX_SEGMENT = 255
# Kept of a longer segment before its digest, so that an operator still sees whose it is.
SHOWN = 64


def _segment(text: str) -> str:
    # Identifiers may be "." or "..": encode every dot of such a segment so no path can climb out.
    quoted = quote(text, safe="")
    if quoted.strip(".") == "":
        return quoted.replace(".", "%2E")
    if len(quoted) <= MAX_SEGMENT:
        return quoted
    # Its start, cut before an escape, and a digest of the whole id. "%-" is no percent-encoding, so no
    # segment kept as it is looks like one shortened so.
    shown = quoted[:SHOWN]
    cut = shown.rfind("%", len(shown) - 2)
    if cut != -1:
        shown = shown[:cut]
    return f"{shown}%-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def same_result(ti: TaskInstance, data: bytes) -> bool:
    """Whether ``data`` (a reported result) is the result the task instance already holds."""
    if ti.result_ref is not None:
        return stored_digest(ti) == digest(data)
    if ti.result is None:
        return False
    if ti.result == data:
        return True
    try:
        return bool(decode_json(ti.result) == decode_json(data))
    except (msgspec.MsgspecError, RecursionError):  # ``data`` was not checked: not JSON any result is
        return False


# The URL a caller fetches a run's blob from, given (dag_id, run_id, ref); None when there is none.
BlobLink = Callable[[str, str, str], Awaitable[str | None]]


async def with_links(results: dict[str, Any], dag_id: str, run_id: str, link: BlobLink) -> dict[str, Any]:
    """``results`` (task_id to value, a list for a mapped task) with the ``url`` of each reference filled in.

    Only where the engine puts references is looked at: a task's value, or an item of a mapped task's list;
    never deeper (a value may be nested far). Only references inside the run's own folder get a URL: a
    task may return a value shaped like a reference, and must not get a link to another run's blob.
    """
    linked: dict[str, Any] = {}
    for task_id, value in results.items():
        if isinstance(value, list):
            linked[task_id] = [await _linked(item, dag_id, run_id, link) for item in value]
        else:
            linked[task_id] = await _linked(value, dag_id, run_id, link)
    return linked


async def _linked(value: Any, dag_id: str, run_id: str, link: BlobLink) -> Any:
    inner = value.get(BLOB_KEY) if isinstance(value, dict) and len(value) == 1 else None
    if not isinstance(inner, dict) or not isinstance(inner.get("ref"), str):
        return value
    if not is_run_blob(dag_id, run_id, inner["ref"]):
        return value
    return {BLOB_KEY: {**inner, "url": await link(dag_id, run_id, inner["ref"])}}
