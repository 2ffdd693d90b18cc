"""Trigger rules: whether a task instance may run, must wait, or is settled as skipped or upstream_failed.

Airflow's semantics (``TriggerRuleDep``), over the states of a task's direct upstream instances.
"""

from __future__ import annotations

import enum

from msgspec import Struct

from stateport.domain.models import TaskSpec, TriggerRule


class Verdict(enum.StrEnum):
    WAIT = "wait"
    RUN = "run"
    SKIP = "skip"
    UPSTREAM_FAILED = "upstream_failed"


class Counts(Struct, frozen=True, kw_only=True):
    """States of a task's direct upstream instances (a mapped upstream counts each map index; one not
    yet expanded counts as one unfinished instance)."""

    total: int = 0
    success: int = 0
    skipped: int = 0
    failed: int = 0
    upstream_failed: int = 0

    @property
    def done(self) -> int:
        return self.success + self.skipped + self.failed + self.upstream_failed


# --- trigger rules --------------------------------------------------------------------------------------


def verdict(rule: TriggerRule, c: Counts) -> Verdict:
    """Airflow's trigger rule over the upstream counts: run, wait, or settle as skipped/upstream_failed."""
    failures = c.failed + c.upstream_failed
    all_done = c.done >= c.total
    if c.total == 0 or rule is TriggerRule.ALWAYS:
        return Verdict.RUN
    match rule:
        case TriggerRule.ALL_SUCCESS:
            if failures:
                return Verdict.UPSTREAM_FAILED
            if c.skipped:
                return Verdict.SKIP
            return Verdict.RUN if c.success == c.total else Verdict.WAIT
        case TriggerRule.ALL_FAILED:
            if c.success or c.skipped:
                return Verdict.SKIP
            return Verdict.RUN if failures == c.total else Verdict.WAIT
        case TriggerRule.ALL_DONE:
            return Verdict.RUN if all_done else Verdict.WAIT
        case TriggerRule.ONE_SUCCESS:
            if c.success:
                return Verdict.RUN
            if all_done:
                return Verdict.SKIP if c.skipped == c.done else Verdict.UPSTREAM_FAILED
            return Verdict.WAIT
        case TriggerRule.ONE_FAILED:
            if failures:
                return Verdict.RUN
            return Verdict.SKIP if all_done else Verdict.WAIT
        case TriggerRule.NONE_FAILED:
            if failures:
                return Verdict.UPSTREAM_FAILED
            return Verdict.RUN if c.success + c.skipped == c.total else Verdict.WAIT
        case TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS:
            if failures:
                return Verdict.UPSTREAM_FAILED
            if c.skipped == c.total:
                return Verdict.SKIP
            return Verdict.RUN if c.success + c.skipped == c.total else Verdict.WAIT
    raise AssertionError(f"unknown trigger rule {rule!r}")  # pragma: no cover


def effective_rule(task: TaskSpec) -> TriggerRule:
    """A teardown runs once its upstream are done, whatever happened to them."""
    return TriggerRule.ALL_DONE if task.teardown else task.trigger_rule
