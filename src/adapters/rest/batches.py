"""State batches on the wire, as the server's batch routes take and answer them (``POST`` on a scope, of
the Execution API or of the raw admin routes): one body, one answer, and their errors as domain errors."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import msgspec
from msgspec import Raw, Struct

from stateport.adapters.rest.transport import detail
from stateport.domain.errors import BatchMismatch, Unsupported
from stateport.domain.models import BatchDelete, BatchGet, BatchOp, BatchPut, BatchResult, StateEntry


class _Operation(Struct, frozen=True, kw_only=True, omit_defaults=True):
    op: str
    key: str
    value: Raw | None = None
    expires_at: datetime | None = None
    if_version: int | None = None


class _Batch(Struct, frozen=True, kw_only=True):
    operations: list[_Operation]


class _Found(Struct, frozen=True, kw_only=True):
    value: Raw
    version: int
    updated_at: datetime
    expires_at: datetime | None


class _Answer(Struct, frozen=True, kw_only=True):
    """One result, whatever its operation: the fields its ``op`` has are set."""

    op: str
    key: str
    entry: _Found | None = None
    version: int = 0
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    deleted: bool = False


class _Answers(Struct, frozen=True, kw_only=True):
    results: list[_Answer]


_encode = msgspec.json.Encoder().encode
_answers = msgspec.json.Decoder(_Answers)


def encode_batch(operations: Sequence[BatchOp]) -> bytes:
    """The body of a batch: ``{"operations": [...]}``."""
    return _encode(_Batch(operations=[_operation(op) for op in operations]))


def raise_batch_error(response: httpx.Response, what: str) -> None:
    """A batch's 412 as BatchMismatch naming the failed operation's index, its 501 as Unsupported; any
    other status is left to the caller."""
    if response.status_code == 501:
        raise Unsupported(f"{what}: {detail(response)}")
    if response.status_code != 412:
        return
    body: Any = msgspec.json.decode(response.content)
    # The Execution API nests the index in ``detail``; the public API puts it beside a string ``detail``.
    index = body["detail"].get("index") if isinstance(body.get("detail"), dict) else body.get("index")
    if isinstance(index, int):
        raise BatchMismatch(f"{what}: {detail(response)}", index=index)


def decode_results(operations: Sequence[BatchOp], content: bytes) -> list[BatchResult]:
    """The results of a batch that applied, one per operation."""
    answers = _answers.decode(content).results
    return [_result(op, answer) for op, answer in zip(operations, answers, strict=True)]


def _operation(op: BatchOp) -> _Operation:
    match op:
        case BatchPut():
            return _Operation(
                op="put", key=op.key, value=Raw(op.value), expires_at=op.expires_at, if_version=op.if_version
            )
        case BatchGet():
            return _Operation(op="get", key=op.key, if_version=op.if_version)
        case BatchDelete():
            return _Operation(op="delete", key=op.key, if_version=op.if_version)


def _result(op: BatchOp, answer: _Answer) -> BatchResult:
    match op:
        case BatchGet():
            found = answer.entry
            if found is None:
                return BatchResult()
            entry = StateEntry(
                key=op.key,
                value=bytes(found.value),
                version=found.version,
                updated_at=found.updated_at,
                expires_at=found.expires_at,
            )
            return BatchResult(entry=entry)
        case BatchPut():
            assert answer.updated_at is not None  # a put's answer carries it
            written = StateEntry(
                key=op.key,
                value=op.value,
                version=answer.version,
                updated_at=answer.updated_at,
                expires_at=answer.expires_at,
            )
            return BatchResult(entry=written)
        case BatchDelete():
            return BatchResult(deleted=answer.deleted)
