"""What the worker's log line of a failed try says comes next (an outsider read "retryable" on the try
that failed a run whose task had no retries)."""

from __future__ import annotations

from stateport.worker.execution import _failure_kind


def test_the_line_names_the_tasks_retries_not_only_the_errors_kind() -> None:
    assert _failure_kind(retryable=False, retries=3) == "not retryable"
    assert _failure_kind(retryable=True, retries=0) == "the task has no retries"
    assert _failure_kind(retryable=True, retries=1) == (
        "a retryable error: tried again unless the task's 1 retry is used up"
    )
    assert _failure_kind(retryable=True, retries=2).endswith("unless the task's 2 retries are used up")
