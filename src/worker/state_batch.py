"""Batches from task code: ``state.batch([Get(...), Put(...), Delete(...)])`` on the task's own state or
an asset's, all or nothing.

Values go in and come out as Python values (encoded with the same rules as ``set``); versions are the
entries' ETags, for compare-and-set across keys: ``Put("cursor", 7, if_version=3)``, 0 for "must be
absent". A failed precondition raises ``BatchMismatch`` (a ``VersionMismatch``) whose ``index`` names the
operation, and nothing is written; a backend that cannot batch atomically (S3) raises ``Unsupported``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from stateport.domain.errors import Invalid
from stateport.domain.jsontext import decode_json
from stateport.domain.models import (
    MAX_BATCH_OPERATIONS,
    BatchDelete,
    BatchGet,
    BatchOp,
    BatchPut,
    BatchResult,
)
from stateport.domain.values import MAX_VERSION, Limits, check_key, encode_value


class Get(msgspec.Struct, frozen=True):
    """Read ``key`` as the batch has it at this point; with ``if_version`` the batch goes on only if the
    key is at that version (0: absent)."""

    key: str
    if_version: int | None = None


class Put(msgspec.Struct, frozen=True):
    """Write ``value`` to ``key`` (``if_version`` as ``Get``'s); it expires after ``retention`` (None: the
    accessor's default, NEVER_EXPIRE: never), as ``set``."""

    key: str
    value: Any
    if_version: int | None = None
    retention: timedelta | None = None


class Delete(msgspec.Struct, frozen=True):
    """Remove ``key`` (``if_version`` as ``Get``'s); a missing key is not an error."""

    key: str
    if_version: int | None = None


Operation = Get | Put | Delete


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one operation did: a get's ``value`` (None: absent; no stored value is null) and ``version``,
    a put's new ``version``, a delete's ``deleted`` (whether a live entry was removed)."""

    key: str
    value: Any = None
    version: int | None = None
    deleted: bool = False


def to_store(
    operations: Sequence[Operation], limits: Limits, expires_at: Callable[[timedelta | None], datetime | None]
) -> list[BatchOp]:
    """The operations as the store takes them, each checked as its single-key call checks it (Invalid or
    TooLarge naming ``operations[i]`` otherwise)."""
    if not 1 <= len(operations) <= MAX_BATCH_OPERATIONS:
        raise Invalid(f"a batch holds 1..{MAX_BATCH_OPERATIONS} operations, not {len(operations)}")
    converted: list[BatchOp] = []
    for index, op in enumerate(operations):
        where = f"operations[{index}]"
        if op.if_version is not None and not 0 <= op.if_version <= MAX_VERSION:
            raise Invalid(f"{where}: if_version must be 0 (absent) or a version", field=f"{where}.if_version")
        key = check_key(op.key, limits, new=isinstance(op, Put))
        match op:
            case Put():
                value = encode_value(op.value, limits)
                converted.append(
                    BatchPut(
                        key=key, value=value, expires_at=expires_at(op.retention), if_version=op.if_version
                    )
                )
            case Get():
                converted.append(BatchGet(key=key, if_version=op.if_version))
            case Delete():
                converted.append(BatchDelete(key=key, if_version=op.if_version))
            case _:
                raise Invalid(f"{where}: not a Get, Put or Delete: {op!r}")
    return converted


def outcomes(operations: Sequence[BatchOp], results: Sequence[BatchResult]) -> list[Outcome]:
    """The store's results as task code reads them, values decoded."""
    out: list[Outcome] = []
    for op, result in zip(operations, results, strict=True):
        entry = result.entry
        match op:
            case BatchGet() if entry is not None:
                out.append(Outcome(key=op.key, value=decode_json(entry.value), version=entry.version))
            case BatchPut() if entry is not None:
                out.append(Outcome(key=op.key, version=entry.version))
            case _:
                out.append(Outcome(key=op.key, deleted=result.deleted))
    return out
