"""The claim metrics' queue label stays bounded whatever queue names claims make up (unit)."""

from __future__ import annotations

import logging
import uuid

import pytest

from stateport.domain.models import TaskInstance, TIState
from stateport.telemetry.metrics import DomainMetrics
from stateport.telemetry.observer import MAX_CLAIMED_QUEUES, OTHER_QUEUE, TelemetryObserver


def queue_labels(metrics: DomainMetrics) -> set[str]:
    (family,) = metrics.claims.collect()
    return {sample.labels["queue"] for sample in family.samples}


def test_made_up_queue_names_are_counted_under_other_past_the_bound_and_real_queues_always_by_name() -> None:
    # An outsider's find: 500 claims of 100 invented queues made 50,000 series and scrapes of seconds.
    metrics = DomainMetrics()
    observer = TelemetryObserver(metrics)
    ti = TaskInstance(
        id=uuid.uuid4(), dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1,
        state=TIState.RUNNING, queue="real",
    )  # fmt: skip
    observer.task_claimed(ti, "w", handed_off=False)
    for batch in range(50):
        observer.claim_polled(tuple(f"made-up-{batch}-{i}" for i in range(100)), 0.0, 0)
    observer.claim_polled(("real", "made-up-0-0"), 0.1, 1)
    labels = queue_labels(metrics)
    assert len(labels) == MAX_CLAIMED_QUEUES + 2, len(labels)  # the bound, OTHER and the real queue
    assert {"real", OTHER_QUEUE, "made-up-0-0"} <= labels
    (family,) = metrics.claims.collect()
    counted = {
        (s.labels["queue"], s.labels["result"]): s.value for s in family.samples if s.name.endswith("_total")
    }
    assert counted[("real", "tasks")] == 1 and counted[("made-up-0-0", "tasks")] == 1
    # Once per claim naming any queue past the bound: the 3rd batch's claim (its last 44) and the 47 after.
    assert counted[(OTHER_QUEUE, "empty")] == 48


def test_a_store_failing_is_logged_once_a_minute_with_every_failure_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An outsider's find: an S3 state outage of 3,000 503s left no line in the server's log.
    metrics = DomainMetrics()
    observer = TelemetryObserver(metrics)
    with caplog.at_level(logging.WARNING, logger="stateport.stores"):
        for _ in range(300):
            observer.store_error("s3")
        observer.store_error("redis")
    lines = [r.getMessage() for r in caplog.records if r.name == "stateport.stores"]
    assert [line.split(" failed:")[0] for line in lines] == [
        "an operation of the s3 store",
        "an operation of the redis store",
    ], lines
    (family,) = metrics.store_errors.collect()
    counted = {s.labels["backend"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counted == {"s3": 300, "redis": 1}


def test_a_store_failure_line_names_the_error_and_a_later_outage_is_said_as_it_begins(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An outsider's find: every line said only "unavailable", a cut a minute after another was counted as
    # "64 more failures" of the first, and one within a minute of the last line was not said at all.
    import time

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    told = TelemetryObserver(DomainMetrics())
    with caplog.at_level(logging.WARNING, logger="stateport.stores"):
        for _ in range(5):
            told.store_error("postgres", "database error: ConnectionRefusedError")
            clock[0] += 1
        clock[0] += 20  # quiet: the store worked, or nothing asked it
        told.store_error("postgres", "the database will not write: read-only")
    lines = [r.getMessage() for r in caplog.records if r.name == "stateport.stores"]
    assert len(lines) == 2, lines
    assert "ConnectionRefusedError" in lines[0] and "read-only" in lines[1], lines
    assert "more failures" not in lines[1], lines


def test_a_dags_lease_expiry_series_exists_at_zero_from_its_first_claim() -> None:
    # An outsider's find: the series was made by the DAG's first expiry, at the burst's size, so increase()
    # could not see that first burst and the LeaseExpiriesRising alert missed it.
    metrics = DomainMetrics()
    observer = TelemetryObserver(metrics)
    ti = TaskInstance(
        id=uuid.uuid4(), dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1,
        state=TIState.RUNNING, queue="q",
    )  # fmt: skip
    observer.task_claimed(ti, "w", handed_off=False)
    assert expiries(metrics) == {("d", 0.0)}
    observer.lease_expired(ti, "lease expired")
    assert expiries(metrics) == {("d", 1.0)}


def expiries(metrics: DomainMetrics) -> set[tuple[str, float]]:
    (family,) = metrics.lease_expiries.collect()
    return {(s.labels["dag_id"], s.value) for s in family.samples if s.name.endswith("_total")}
