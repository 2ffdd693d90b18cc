"""What the client returns: a run and its outcome, and state entries, decoded from the server's JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct


class Outcome(Struct, frozen=True, kw_only=True):
    """A run's answer, set once: ``success`` with ``results`` keyed by task_id, or ``failed`` naming
    the failing task, the reason and (when the task failed) its error."""

    state: str
    results: dict[str, Any] = msgspec.field(default_factory=dict)
    failed_task: str | None = None
    reason: str | None = None
    error: str | None = None  # the failed task's error, as its try reported it (its last 2,000 characters)

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def result(self) -> Any:
        """The single result (of the DAG's result task), or None when there is none."""
        return next(iter(self.results.values()), None)


class RunInfo(Struct, frozen=True, kw_only=True):
    """A run as the server shows it; ``state`` keeps moving (teardowns) after ``outcome`` is set."""

    dag_id: str
    dag_run_id: str
    state: str
    conf: dict[str, Any] = msgspec.field(default_factory=dict)
    run_after: str | None = None
    dag_version: str | None = None
    outcome: Outcome | None = None
    # When the run fails with reason deadline_exceeded unless finished (ISO 8601), and why it waits, as
    # the server says (``queued: max_active_runs``, ...; docs/runs.md, why a run waits).
    deadline: str | None = None
    waiting: str | None = None
    priority: int = 0

    @property
    def run_id(self) -> str:
        return self.dag_run_id


# --- state (``client.task_state(...)``, ``client.asset_state(...)``) ---------------------------------------


class StateEntry(Struct, frozen=True, kw_only=True):
    """A live key: its decoded ``value`` and its ``version`` (the ETag; what ``if_version`` compares)."""

    key: str
    value: Any
    version: int
    updated_at: datetime
    expires_at: datetime | None = None


class StateChange(Struct, frozen=True, kw_only=True):
    """What a watch saw (``AsyncStateScope.watch``): the key at a new ``version`` with its ``value``, or
    (``version`` 0, ``deleted``) missing, ``reason`` saying why: ``absent`` (missing when the watch
    started), ``deleted`` (deleted or cleared) or ``expired``."""

    key: str
    version: int
    value: Any = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    reason: str | None = None

    @property
    def deleted(self) -> bool:
        return self.version == 0


class StateGet(Struct, frozen=True, tag="get", tag_field="op", omit_defaults=True):
    """A batch's read of ``key``; with ``if_version`` the batch goes on only if the key is at that version
    (0: absent)."""

    key: str
    if_version: int | None = None


class StatePut(Struct, frozen=True, tag="put", tag_field="op", omit_defaults=True):
    """A batch's write of ``value`` (any JSON but None) to ``key``, expiring at ``expires_at`` (an aware
    datetime; None: never); ``if_version`` as ``StateGet``'s."""

    key: str
    value: Any
    if_version: int | None = None
    expires_at: datetime | None = None


class StateDelete(Struct, frozen=True, tag="delete", tag_field="op", omit_defaults=True):
    """A batch's removal of ``key``; a missing key is not an error; ``if_version`` as ``StateGet``'s."""

    key: str
    if_version: int | None = None


StateOperation = StateGet | StatePut | StateDelete


class BatchResult(Struct, frozen=True, kw_only=True):
    """What one operation of a batch did: a get's ``value`` and ``version`` (both None: absent), a put's
    new ``version``, a delete's ``deleted`` (whether a live entry was removed)."""

    op: str
    key: str
    value: Any = None
    version: int | None = None
    deleted: bool = False
