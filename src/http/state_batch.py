"""State batches, as every batch route takes and answers them: the body, its decoding, the answer.

``POST`` on a scope's own path (``/execution/state/ti/<id>``, ``/execution/state/asset/<name>``, and the
raw admin scopes under ``/api/v2/state-store``) with ``{"operations": [{"op": "get" | "put" | "delete",
"key", "value"?, "expires_at"?, "if_version"?}, ...]}``: 1..100 operations applied in order, all or nothing
(``StateStore.batch``). The answer is ``{"results": [...]}``, one per operation in order. A key always
lives one segment below its scope, so a POST on the scope itself can never be taken for a key's address:
see docs/api.md "Batches".
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

import msgspec
from litestar import Response
from msgspec import Meta, Struct

from stateport.domain.errors import VersionMismatch
from stateport.domain.jsontext import MAX_BATCH_DEPTH
from stateport.domain.models import (
    MAX_BATCH_OPERATIONS,
    BatchDelete,
    BatchGet,
    BatchOp,
    BatchPut,
    BatchResult,
)
from stateport.http.errors import JSON, RequestInvalid, decode_body
from stateport.http.listing import only_known
from stateport.http.members import is_object, pairs_of, unique
from stateport.http.providers import AnyRequest
from stateport.http.schemas import AwareDatetime, JsonValue

IfVersion = Annotated[
    int,
    Meta(
        ge=0,
        description="The operation (and so the batch) goes ahead only if the key's live entry is at this "
        "version; 0: only if the key is absent.",
    ),
]


class GetOp(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op", tag="get"):
    """Read the key as the batch has it at this point."""

    key: str
    if_version: IfVersion | None = None


class PutOp(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op", tag="put"):
    """Write the key; ``expires_at`` null or left out: never expires."""

    key: str
    value: JsonValue
    expires_at: AwareDatetime | None = None
    if_version: IfVersion | None = None


class DeleteOp(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op", tag="delete"):
    """Remove the key (a missing key is not an error)."""

    key: str
    if_version: IfVersion | None = None


class BatchBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST`` of a state batch: 1..100 operations on the scope, applied in order, all or nothing."""

    operations: Annotated[list[GetOp | PutOp | DeleteOp], Meta(min_length=1, max_length=MAX_BATCH_OPERATIONS)]


class BatchEntryOut(Struct, frozen=True, kw_only=True):
    """A live entry as a batch's get found it."""

    value: JsonValue
    version: int
    updated_at: datetime
    expires_at: datetime | None


class GetResult(Struct, frozen=True, kw_only=True, tag_field="op", tag="get"):
    """A get's answer: the live entry at that point of the batch, or null if the key was absent."""

    key: str
    entry: BatchEntryOut | None


class PutResult(Struct, frozen=True, kw_only=True, tag_field="op", tag="put"):
    """A put's answer: the entry's new version (its ETag), when it was written, when it expires."""

    key: str
    version: int
    updated_at: datetime
    expires_at: datetime | None


class DeleteResult(Struct, frozen=True, kw_only=True, tag_field="op", tag="delete"):
    """A delete's answer: whether a live entry was removed."""

    key: str
    deleted: bool


class BatchOut(Struct, frozen=True, kw_only=True):
    """One result per operation, in the order of the operations."""

    results: list[GetResult | PutResult | DeleteResult]


_decoder = msgspec.json.Decoder(BatchBody)
_encode = msgspec.json.Encoder().encode


async def read_batch(request: AnyRequest) -> list[BatchOp]:
    """A batch's operations, from a request that names no query parameter (422 otherwise: one was passed
    over, an outsider's find), then from its body (``decode_batch``)."""
    only_known(request, ())
    return decode_batch(request, await request.body())


def decode_batch(request: AnyRequest, body: bytes) -> list[BatchOp]:
    """The operations of a batch body, or a 422 naming the part at fault (``loc``: ``["body",
    "operations", 3, "value"]``). Values stay raw JSON text; the use case checks keys, values and versions
    as the single-key routes have them checked.

    ``If-Match`` or ``If-None-Match`` on a batch is a 412, as on a clear: a scope has no ETag, and
    ignoring the header would apply a batch its sender meant to be conditional.
    """
    for name in ("if-match", "if-none-match"):
        if name in request.headers:
            raise VersionMismatch(
                f"{name} cannot hold on a batch: a scope has no ETag (give each operation its if_version)"
            )
    if not body.strip():
        raise RequestInvalid.one("missing", ["body"], "Field required")
    try:
        parsed: BatchBody = decode_body(_decoder, body, depth=MAX_BATCH_DEPTH)
    except RequestInvalid:
        # The decoder read one of a repeated member's values (``"op"`` twice is "an unknown field op" to
        # it, a bad first ``if_version`` a type error): the repetition is what the caller must fix.
        _refuse_repeated_members(body, checked=False)
        raise
    _refuse_repeated_members(body)
    return [_operation(op) for op in parsed.operations]


def _operation(op: GetOp | PutOp | DeleteOp) -> BatchOp:
    match op:
        case PutOp():
            value = bytes(op.value)
            return BatchPut(key=op.key, value=value, expires_at=op.expires_at, if_version=op.if_version)
        case GetOp():
            return BatchGet(key=op.key, if_version=op.if_version)
        case DeleteOp():
            return BatchDelete(key=op.key, if_version=op.if_version)


def _refuse_repeated_members(body: bytes, *, checked: bool = True) -> None:
    """A 422 for a member named twice in the body or in an operation (``{"if_version": 3, "if_version":
    null}``): the decoder would keep the last silently, and a batch must not guess which precondition was
    meant. Values may repeat members as any stored JSON may; they are kept verbatim. ``checked``: as
    ``members.pairs_of``."""
    top = pairs_of(body, checked=checked)
    if top is None:
        return
    unique(top, ["body"])
    for name, operations in top:
        if name == "operations" and isinstance(operations, list):
            for index, op in enumerate(operations):
                if is_object(op):
                    unique(op, ["body", "operations", index])


def batch_response(results: list[BatchResult], operations: list[BatchOp]) -> Response[BatchOut]:
    """The 200 of a batch that applied, encoded here once: Litestar's own serialization of a returned
    Struct (checking it against the handler's annotation, its type encoders) cost about as much as the
    encoding itself. Typed as the ``BatchOut`` it encodes, which is what the OpenAPI document says."""
    body = _encode(batch_out(results, operations))
    return cast("Response[BatchOut]", Response(body, status_code=200, media_type=JSON))


def batch_out(results: list[BatchResult], operations: list[BatchOp]) -> BatchOut:
    """The answer of a batch that applied."""
    out: list[GetResult | PutResult | DeleteResult] = []
    for op, result in zip(operations, results, strict=True):
        match op:
            case BatchGet():
                entry = result.entry
                found = None
                if entry is not None:
                    found = BatchEntryOut(
                        value=msgspec.Raw(entry.value),
                        version=entry.version,
                        updated_at=entry.updated_at,
                        expires_at=entry.expires_at,
                    )
                out.append(GetResult(key=op.key, entry=found))
            case BatchPut():
                assert result.entry is not None  # a put answers its entry
                written = result.entry
                out.append(
                    PutResult(
                        key=op.key,
                        version=written.version,
                        updated_at=written.updated_at,
                        expires_at=written.expires_at,
                    )
                )
            case BatchDelete():
                out.append(DeleteResult(key=op.key, deleted=result.deleted))
    return BatchOut(results=out)
