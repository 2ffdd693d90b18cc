"""What a state batch does to a scope's entries, decided without I/O (``StateStore.batch``'s semantics).

An adapter that runs batches outside its database (the SQL stores: read the batch's rows locked, decide
here, write what changed) reads the stored rows of the batch's keys, live or not, calls ``apply``, and
writes ``Applied.writes``; nothing is written when ``apply`` raises. Redis decides the same in Lua,
inside its script.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from msgspec import Struct

from stateport.domain.errors import batch_mismatch
from stateport.domain.models import (
    BatchDelete,
    BatchGet,
    BatchOp,
    BatchPut,
    BatchResult,
    StateEntry,
)


class Applied(Struct, frozen=True, kw_only=True):
    """A batch's answers, one per operation, and its net writes: per key, the entry to store or None to
    remove the stored row. A key only read, or deleted with ``if_version=0``, is not in ``writes``."""

    results: list[BatchResult]
    writes: dict[str, StateEntry | None]


def batch_keys(operations: Sequence[BatchOp]) -> list[str]:
    """The distinct keys of a batch in byte order of their UTF-8 (``str`` order): the order its rows are
    locked in, so two batches never wait for each other in a cycle."""
    return sorted({op.key for op in operations})


def live(entry: StateEntry | None, now: datetime) -> StateEntry | None:
    """The entry if it is live at ``now``, else None."""
    if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
        return None
    return entry


def apply(
    operations: Sequence[BatchOp], stored: Mapping[str, StateEntry | None], *, now: datetime
) -> Applied:
    """Run ``operations`` in order over ``stored`` (each key of the batch: its stored row, expired or not,
    or None), each seeing the effects of the earlier ones; BatchMismatch at the first failed precondition.

    A put's version is the live one's plus one (1 over an absent or expired key) and its ``updated_at`` is
    ``now``. A delete removes the stored row even when it has expired, as ``StateStore.delete`` does, but
    reports only a live one; with ``if_version=0`` it only checks that the key is absent.
    """
    view = dict(stored)
    writes: dict[str, StateEntry | None] = {}
    results: list[BatchResult] = []
    for index, op in enumerate(operations):
        current = live(view.get(op.key), now)
        version = 0 if current is None else current.version
        if op.if_version is not None and op.if_version != version:
            raise batch_mismatch(index, op.key, op.if_version, version)
        match op:
            case BatchGet():
                results.append(BatchResult(entry=current))
            case BatchPut():
                entry = StateEntry(
                    key=op.key, value=op.value, updated_at=now, expires_at=op.expires_at, version=version + 1
                )
                view[op.key] = writes[op.key] = entry
                results.append(BatchResult(entry=entry))
            case BatchDelete():
                if op.if_version != 0:
                    view[op.key] = writes[op.key] = None
                results.append(BatchResult(deleted=current is not None))
    return Applied(results=results, writes=writes)
