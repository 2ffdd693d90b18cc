"""Rows to models and back, for the run-metadata stores: the columns they read, how a row (read by column
name) becomes a ``Run`` or a ``TaskInstance``, a task instance's insert parameters, and the decoded DAG
specs they share.

Times are microseconds since the epoch in the tables (see ``tables.py``) and datetimes in the models.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from stateport.adapters.shared.timestamps import from_us, to_us
from stateport.adapters.sql import tables
from stateport.adapters.sql.database import Params, Row
from stateport.domain.errors import UnreadableDag
from stateport.domain.jsontext import JsonDecoder
from stateport.domain.lru import Lru
from stateport.domain.models import DagSpec, Outcome, Run, RunState, TaskInstance, TIState

# The decoded specs a process keeps, by the length of their stored text (their objects take a few times more).
SPEC_CACHE_BYTES = 32 * 1024 * 1024

encode = msgspec.json.Encoder().encode
_decode_spec = msgspec.json.Decoder(DagSpec).decode
# A run's outcome and conf hold JSON clients sent: decoded without msgspec's slow floats.
_decode_outcome = JsonDecoder(Outcome).decode
_decode_conf = JsonDecoder(dict[str, Any]).decode

_runs, _tis = tables.dag_runs, tables.task_instances

# What ``run_from`` reads.
RUN_COLUMNS: tuple[sa.Column[Any], ...] = (
    _runs.c.dag_id,
    _runs.c.run_id,
    _runs.c.dag_version,
    _runs.c.conf,
    _runs.c.state,
    _runs.c.run_after_us,
    _runs.c.created_at_us,
    _runs.c.outcome,
    _runs.c.idempotency_key,
    _runs.c.request_hash,
    _runs.c.started_at_us,
    _runs.c.ended_at_us,
    _runs.c.traceparent,
    _runs.c.deadline_at_us,
    _runs.c.held_by,
    _runs.c.priority,
    _runs.c.caller,
    _runs.c.note,
)

# What ``ti_from`` reads.
TI_COLUMNS: tuple[sa.Column[Any], ...] = (
    _tis.c.id,
    _tis.c.dag_id,
    _tis.c.run_id,
    _tis.c.task_id,
    _tis.c.map_index,
    _tis.c.try_number,
    _tis.c.state,
    _tis.c.queue,
    _tis.c.lease_owner,
    _tis.c.lease_expires_at_us,
    _tis.c.lease_claimant,
    _tis.c.result,
    _tis.c.error,
    _tis.c.result_ref,
    _tis.c.timeout_us,
    _tis.c.retries_used,
    _tis.c.started_at_us,
    _tis.c.ended_at_us,
    _tis.c.priority_rank,
    _tis.c.not_before_us,
)


def run_from(row: Row) -> Run:
    outcome = row["outcome"]
    return Run(
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        dag_version=row["dag_version"],
        conf=_decode_conf(row["conf"]),
        state=RunState(row["state"]),
        run_after=from_us(row["run_after_us"]),
        created_at=from_us(row["created_at_us"]),
        outcome=None if outcome is None else _decode_outcome(outcome),
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        started_at=_time(row["started_at_us"]),
        ended_at=_time(row["ended_at_us"]),
        traceparent=row["traceparent"],
        deadline_at=_time(row["deadline_at_us"]),
        held_by=row["held_by"],
        priority=row["priority"],
        caller=row["caller"],
        note=row["note"],
    )


def ti_from(row: Row) -> TaskInstance:
    result, timeout_us = row["result"], row["timeout_us"]
    return TaskInstance(
        id=uuid.UUID(row["id"]),
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        map_index=row["map_index"],
        try_number=row["try_number"],
        state=_ti_state(row["state"]),
        queue=row["queue"],
        lease_owner=row["lease_owner"],
        lease_expires_at=_time(row["lease_expires_at_us"]),
        lease_claimant=row["lease_claimant"],
        result=None if result is None else result.encode(),
        result_ref=row["result_ref"],
        error=row["error"],
        timeout_s=None if timeout_us is None else timeout_us / 1_000_000,
        retries_used=row["retries_used"],
        started_at=_time(row["started_at_us"]),
        ended_at=_time(row["ended_at_us"]),
        priority=-row["priority_rank"],
        not_before=_time(row["not_before_us"]),
    )


def ti_params(ti: TaskInstance, now_us: int, caller: str | None) -> Params:
    """The parameters of an insert of ``ti``, created and last changed at ``now_us``, of a run triggered by
    ``caller`` (``Run.caller``)."""
    return {
        "id": str(ti.id),
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
        "state": ti.state.value,
        "queue": ti.queue,
        "lease_owner": ti.lease_owner,
        "lease_expires_at_us": _us(ti.lease_expires_at),
        "lease_claimant": ti.lease_claimant,
        "result": None if ti.result is None else ti.result.decode(),
        "error": ti.error,
        "created_at_us": now_us,
        "updated_at_us": now_us,
        "result_ref": ti.result_ref,
        "timeout_us": None if ti.timeout_s is None else round(ti.timeout_s * 1_000_000),
        "retries_used": ti.retries_used,
        "started_at_us": _us(ti.started_at),
        "ended_at_us": _us(ti.ended_at),
        "priority_rank": -ti.priority,
        "not_before_us": _us(ti.not_before),
        "caller": caller or "",
        "pushed_result": None,
    }


# The order task instances are listed in: by task, map index, try. A C-level key: a report of a run sorts
# all of its task instances (10,000 in a large run).
list_order = operator.attrgetter("task_id", "map_index", "try_number")


def leased() -> dict[str, Any]:
    """What a claim (or a hand-off to a waiting claim) sets: running, leased to ``worker_id`` until
    ``until_us``, started at ``now_us``, handed out to a claim of ``claimant`` (a caller key, or NULL)."""
    return {
        "state": TIState.RUNNING.value,
        "lease_owner": sa.bindparam("worker_id"),
        "lease_claimant": sa.bindparam("claimant"),
        "lease_expires_at_us": sa.bindparam("until_us"),
        "started_at_us": sa.bindparam("now_us"),
        "updated_at_us": sa.bindparam("now_us"),
    }


def in_order_of(
    keys: Sequence[tuple[str, str]], rows: Sequence[Row], key_of: Callable[[Row], tuple[str, str]]
) -> list[Row]:
    """The rows of these keys that were found, in the keys' order (a read by ``Dialect.pairs_among``
    answers in no order)."""
    found = {key_of(row): row for row in rows}
    return [found[key] for key in keys if key in found]


class Specs:
    """Decoded DAG specs by (dag_id, version). Versions are content hashes and never change, so a decoded
    spec stays valid for the process.

    Bounded by the bytes of the specs' stored text, not by their count: a spec may be 16 MiB
    (``STATEPORT_DAG_MAX_BYTES``), and 1,024 of them were a cache of gigabytes (an outsider listed 20 specs
    of 4.7 MB and the process kept them all)."""

    def __init__(self, max_bytes: int = SPEC_CACHE_BYTES) -> None:
        self._cache: Lru[tuple[str, str], tuple[DagSpec, int]] = Lru(max_bytes, weigh=lambda held: held[1])

    def decode(self, dag_id: str, version: str, text: str) -> DagSpec:
        """The spec stored as ``text``; UnreadableDag if it cannot be read (a spec of an incompatible
        release)."""
        key = (dag_id, version)
        held = self._cache.get(key)
        if held is not None:
            return held[0]
        try:
            spec = _decode_spec(text)
        except (msgspec.MsgspecError, RecursionError) as exc:
            detail = f"DAG '{dag_id}' version '{version}' cannot be read: {exc}"
            raise UnreadableDag(detail, dag_id=dag_id, version=version) from exc
        self._cache.put(key, (spec, len(text)))
        return spec

    def clear(self) -> None:
        """Forget every spec (what a fresh process knows)."""
        self._cache.clear()


# A dict lookup rather than ``TIState(value)``: the enum's call took a fifth of a report's time on a run
# of 10,000 task instances (each report reads them all, see ``SqlRunUnit.task_instances``).
_TI_STATES = {state.value: state for state in TIState}


def _ti_state(value: str) -> TIState:
    """The state stored as ``value``; ValueError for one that is not a state, as ``TIState(value)``."""
    state = _TI_STATES.get(value)
    return TIState(value) if state is None else state


def _time(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_us(value)
