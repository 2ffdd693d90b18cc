"""The server's Observer: each point of interest of the run core counted in the metrics and, for the
lifecycle events an operator follows, logged at INFO on ``stateport.lifecycle`` with its fields."""

from __future__ import annotations

import logging
import time

from stateport.domain.models import Run, TaskInstance, TIState
from stateport.domain.ports.observer import Observer
from stateport.domain.quiet import Repeated
from stateport.telemetry.metrics import DomainMetrics, domain

log = logging.getLogger("stateport.lifecycle")
# A store's failures this far apart are two outages, each said as it begins.
OUTAGE_QUIET_S = 10.0


def _run_fields(run: Run) -> dict[str, object]:
    return {"dag_id": run.dag_id, "run_id": run.run_id}


def _ti_fields(ti: TaskInstance) -> dict[str, object]:
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "ti_id": str(ti.id),
        "try_number": ti.try_number,
    }


# The most queue names a claim's metrics label with that are no task's queue (those every claim may name:
# a worker token could otherwise make a series of every name it invents, kept for ever, until each scrape
# took seconds: an outsider's find). Past it, such claims are counted under OTHER_QUEUE.
MAX_CLAIMED_QUEUES = 256
OTHER_QUEUE = "(other)"


class QueueLabels:
    """The queue label values of the claim metrics: every queue a task instance was claimed from, and up
    to ``most`` other names claims asked for, the rest as OTHER_QUEUE."""

    def __init__(self, most: int = MAX_CLAIMED_QUEUES) -> None:
        self.most = most
        self._tasks: set[str] = set()  # queues of claimed task instances: a registered DAG's
        self._asked: set[str] = set()

    def of_task(self, queue: str) -> str:
        self._tasks.add(queue)
        return queue

    def asked(self, queue: str) -> str:
        if queue in self._tasks or queue in self._asked:
            return queue
        if len(self._asked) < self.most:
            self._asked.add(queue)
            return queue
        return OTHER_QUEUE


class TelemetryObserver(Observer):
    """Counts into ``metrics`` (the process's domain metrics) and logs lifecycle events."""

    def __init__(self, metrics: DomainMetrics | None = None) -> None:
        self.m = metrics or domain()
        self.queues = QueueLabels()
        # A store's failures, said once a minute per backend: an S3 state outage of 3,000 503s left no line
        # in the server's log (an outsider's find); the counter alone told it.
        # With the time of its last failure.
        self.store_failures: dict[str, tuple[Repeated, float]] = {}

    def run_triggered(self, run: Run) -> None:
        self.m.runs_triggered.labels(run.dag_id).inc()
        log.info(
            "run triggered", extra={"event": "run_triggered", **_run_fields(run), "state": run.state.value}
        )

    def run_finished(self, run: Run) -> None:
        self.m.runs_finished.labels(run.dag_id, run.state.value).inc()
        outcome = run.outcome
        reason = None if outcome is None else outcome.reason
        failed_task = None if outcome is None else outcome.failed_task
        log.info(
            "run finished: %s%s",
            run.state.value,
            f" ({reason})" if reason else "",
            extra={
                "event": "run_finished",
                **_run_fields(run),
                "state": run.state.value,
                "data": {"reason": reason, "failed_task": failed_task},
            },
        )

    def run_cancelled(self, run: Run) -> None:
        self.m.runs_cancelled.labels(run.dag_id).inc()
        log.info(
            "run cancelled", extra={"event": "run_cancelled", **_run_fields(run), "state": run.state.value}
        )

    def task_state(self, ti: TaskInstance, state: TIState) -> None:
        self.m.task_instances.labels(state.value).inc()

    def task_put_back(self, ti: TaskInstance) -> None:
        self.m.task_instances.labels(TIState.QUEUED.value).inc()
        self.m.put_back.labels(self.queues.of_task(ti.queue)).inc()
        log.info(
            "task put back: its claim's answer was full",
            extra={
                "event": "task_put_back",
                **_ti_fields(ti),
                "worker_id": ti.lease_owner,
                "data": {"queue": ti.queue},
            },
        )

    def task_claimed(self, ti: TaskInstance, worker_id: str, *, handed_off: bool) -> None:
        self.m.task_instances.labels(TIState.RUNNING.value).inc()
        # The DAG's lease-expiry series exists from its first claim, at 0: made by its first expiry, it
        # began at the burst's size, and increase() could not see that burst (a worker killed with its tries
        # expires them all at once: an outsider's find, the alert fired only at the second burst).
        self.m.lease_expiries.labels(ti.dag_id)
        queue = self.queues.of_task(ti.queue)
        self.m.claimed.labels(queue).inc()
        if handed_off:
            self.m.handoffs.labels(queue).inc()
        log.info(
            "task claimed%s",
            " (handed off)" if handed_off else "",
            extra={
                "event": "task_claimed",
                **_ti_fields(ti),
                "worker_id": worker_id,
                "data": {"queue": ti.queue},
            },
        )

    def claim_polled(self, queues: tuple[str, ...], waited_s: float, got: int) -> None:
        result = "tasks" if got else "empty"
        for queue in dict.fromkeys(self.queues.asked(q) for q in queues):
            self.m.claims.labels(queue, result).inc()
            if got:
                self.m.claim_wait.labels(queue).observe(waited_s)

    def lease_expired(self, ti: TaskInstance, reason: str) -> None:
        self.m.lease_expiries.labels(ti.dag_id).inc()
        log.info(
            # ``reason`` says why (a lease expired, or a timeout passed): not repeated before it.
            "try ended by the sweeper: %s",
            reason,
            extra={
                "event": "lease_expired",
                **_ti_fields(ti),
                "worker_id": ti.lease_owner,
                "data": {"reason": reason},
            },
        )

    def retry_scheduled(self, ti: TaskInstance, next_try: TaskInstance) -> None:
        self.m.retries.labels(ti.dag_id).inc()
        log.info(
            "retry scheduled: try %d",
            next_try.try_number,
            extra={
                "event": "retry_scheduled",
                **_ti_fields(ti),
                "data": {"next_try_number": next_try.try_number, "next_ti_id": str(next_try.id)},
            },
        )

    def try_requeued(self, ti: TaskInstance, next_try: TaskInstance, reason: str) -> None:
        self.m.requeued.labels(ti.dag_id).inc()
        log.info(
            "try queued again (%s): try %d",
            reason,
            next_try.try_number,
            extra={
                "event": "try_requeued",
                **_ti_fields(ti),
                "data": {
                    "next_try_number": next_try.try_number,
                    "next_ti_id": str(next_try.id),
                    "reason": reason,
                },
            },
        )

    def store_error(self, backend: str, detail: str = "") -> None:
        self.m.store_errors.labels(backend).inc()
        now = time.monotonic()
        said, last = self.store_failures.get(backend, (None, 0.0))
        if said is None or now - last > OUTAGE_QUIET_S:
            # A failure after a quiet spell begins another outage: said at once, its count its own (an
            # outsider saw a cut a minute after another counted as "64 more failures" of the first, and one
            # within a minute of the last line not said at all).
            said = Repeated(logging.getLogger("stateport.stores"), f"an operation of the {backend} store")
        self.store_failures[backend] = (said, now)
        # The error's own words (an outsider found every line the same, naming no cause).
        counted = "a request it fails answers 503; stateport_store_errors_total counts them"
        said.failed(f"{detail or 'unavailable'} ({counted})")

    def bus_reconnect(self, backend: str) -> None:
        self.m.bus_reconnects.labels(backend).inc()

    def blob_written(self, backend: str, size: int) -> None:
        self.m.blob_bytes.labels(backend).inc(size)
