"""What the client returns: a run and its outcome, decoded from the server's JSON."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class Outcome(Struct, frozen=True, kw_only=True):
    """A run's answer, set once: ``success`` with ``results`` keyed by task_id, or ``failed`` naming
    the failing task and the reason."""

    state: str
    results: dict[str, Any] = msgspec.field(default_factory=dict)
    failed_task: str | None = None
    reason: str | None = None

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

    @property
    def run_id(self) -> str:
        return self.dag_run_id
