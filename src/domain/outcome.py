"""Outcome rules: a run's answer (set once) and its state, read from the states of its task instances.

``stateport.domain.rules`` walks the DAG once in topological order, keeps a ``Board`` (the latest state of
every task instance, with its own decisions already applied) and feeds each task's settled states to a
``Tally``; this module turns the two into the run's outcome and state without another scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stateport.domain.models import Outcome, RunState, TaskSpec, TIState

FAILURES = frozenset({TIState.FAILED, TIState.UPSTREAM_FAILED})
# How much of the failed try's error a failed outcome quotes: enough for a traceback's last lines, while
# every answer carrying the outcome (each waiter's, each stream's line) stays small. The task instance
# keeps all of it.
OUTCOME_ERROR_CHARS = 2000
# A run is "queued" until a worker has claimed something or a rule has settled a task instance.
_NOT_STARTED = frozenset({TIState.SCHEDULED, TIState.QUEUED})


class Board:
    """The working picture of one run: ``states[task_id][map_index]`` and the results of successes.

    A task missing from ``states`` has no task instance yet (a mapped task waiting for its expansion), and
    counts as one unfinished instance. ``empty`` holds the mapped tasks whose list was empty: each is
    recorded as one skipped instance at -1, yet counts as a success with the value ``[]`` for what expands
    over it and for the outcome (its downstream trigger rules still see it skipped, as in Airflow).
    ``errors`` holds what the failed instances' tries reported, by (task_id, map_index).
    """

    __slots__ = ("empty", "errors", "results", "states")

    def __init__(self) -> None:
        self.states: dict[str, dict[int, TIState]] = {}
        self.results: dict[str, dict[int, Any]] = {}
        self.errors: dict[tuple[str, int], str] = {}
        self.empty: set[str] = set()


class Tally:
    """What the outcome and the run's state need, gathered task by task in topological order."""

    __slots__ = ("first_failed", "first_upstream_failed", "key_failed", "unfinished", "unfinished_work")

    def __init__(self) -> None:
        self.first_failed: str | None = None
        self.first_upstream_failed: str | None = None
        self.key_failed = False
        self.unfinished = False
        self.unfinished_work = False  # something that is not a teardown

    def add(
        self, task: TaskSpec, decides_outcome: bool, done: bool, failed: bool, upstream_failed: bool
    ) -> None:
        """Count one task: whether all its instances are done, and whether any failed or upstream_failed."""
        if not done:
            self.unfinished = True
            self.unfinished_work = self.unfinished_work or not task.teardown
        if failed or upstream_failed:
            self.key_failed = self.key_failed or task.is_key
            if decides_outcome:
                if failed and self.first_failed is None:
                    self.first_failed = task.task_id
                if upstream_failed and self.first_upstream_failed is None:
                    self.first_upstream_failed = task.task_id


def result_value(task: TaskSpec, results: Mapping[int, Any]) -> Any:
    """A task's value as its downstream sees it: the result, or for a mapped task the list in map order."""
    if task.expand is None:
        return results.get(-1)
    return [results[i] for i in sorted(results) if i >= 0]


def succeeded(task: TaskSpec, board: Board) -> bool:
    """Whether every instance of the task succeeded (a mapped task: once expanded, or expanded empty)."""
    if task.task_id in board.empty:
        return True
    states = board.states.get(task.task_id)
    if not states:
        return False
    if task.expand is not None and -1 in states:
        return False  # a mapped task settled at -1 was never expanded: skipped, failed or upstream_failed
    return all(s is TIState.SUCCESS for s in states.values())


def _failure(board: Board, tally: Tally) -> Outcome | None:
    # Topological order, failed before upstream_failed: name the root cause, not one of its echoes.
    for task_id, wanted, verb in (
        (tally.first_failed, TIState.FAILED, "failed"),
        (tally.first_upstream_failed, TIState.UPSTREAM_FAILED, "is upstream_failed"),
    ):
        if task_id is not None:
            states = board.states[task_id]
            map_index = min(i for i, s in states.items() if s is wanted)
            where = "" if map_index < 0 else f" (map_index {map_index})"
            return Outcome(
                state=RunState.FAILED,
                failed_task=task_id,
                reason=f"task '{task_id}'{where} {verb}",
                error=quoted_error(board.errors.get((task_id, map_index))),
            )
    return None


def quoted_error(error: str | None) -> str | None:
    """The error as a failed outcome quotes it: its last ``OUTCOME_ERROR_CHARS`` characters."""
    return None if error is None else end_of(error, OUTCOME_ERROR_CHARS)


def end_of(error: str, limit: int) -> str:
    """At most ``limit`` characters of ``error``: its end (a traceback ends with its exception), starting
    ``...`` when cut."""
    if len(error) <= limit:
        return error
    return "..." + error[len(error) - limit + 3 :]


def outcome_of(result: TaskSpec | None, board: Board, tally: Tally) -> Outcome | None:
    """The run's outcome if the board already determines it, else None; teardown tasks never count.

    Success wins over a failure seen at the same time: the answer exists, and the run's state still
    records the failure.
    """
    if result is None:
        if tally.first_failed is None and tally.first_upstream_failed is None and tally.unfinished_work:
            return None
        return _failure(board, tally) or Outcome(state=RunState.SUCCESS)
    rid = result.task_id
    states = board.states.get(rid)
    if succeeded(result, board):
        return Outcome(
            state=RunState.SUCCESS, results={rid: result_value(result, board.results.get(rid, {}))}
        )
    failure = _failure(board, tally)
    if failure is None and states and all(s is TIState.SKIPPED for s in states.values()):
        return Outcome(state=RunState.FAILED, failed_task=rid, reason=f"result task '{rid}' was skipped")
    return failure


def run_state_of(result: TaskSpec | None, board: Board, tally: Tally) -> RunState:
    """Queued or running while anything is unfinished; then failed if a key task failed or the result task
    gave no result, else success (so a failed teardown fails the run only when it is marked ``key``)."""
    if tally.unfinished:
        started = any(s not in _NOT_STARTED for states in board.states.values() for s in states.values())
        return RunState.RUNNING if started else RunState.QUEUED
    if tally.key_failed:
        return RunState.FAILED
    if result is not None and not succeeded(result, board):
        return RunState.FAILED
    return RunState.SUCCESS
