"""What workers say of the tries they run: heartbeats and reports."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from stateport.domain.engine import progress
from stateport.domain.engine.advancing import RunAdvancer
from stateport.domain.engine.progress import REPORT_NOT_APPLIED, reschedules
from stateport.domain.engine.reports import Report, Success, TaskNotRunning
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.errors import Invalid, NotFound, UnreadableDag
from stateport.domain.lru import Lru
from stateport.domain.models import JsonText, TaskInstance, TIState
from stateport.domain.ports import Clock, LeaseStore, RunStore
from stateport.domain.values import check_result

# XCom keys one try may keep besides its return value: a task pushes a few (its outputs, a triggered run's
# id); a bound keeps one task from filling the database with keys.
MAX_XCOM_KEYS = 1000

HANDED_OUT_CACHE_SIZE = 16384
# A heartbeat of a try this process extended less than this long ago (or a tenth of the lease, if less) is
# answered from that extension, without a write: its lease (STATEPORT_LEASE_S, 30 s by default) moves by at
# most this much less. Workers heartbeat every few seconds; one token heartbeating 500 times a second made
# each a database write and slowed every other caller's requests from 8 ms to 290 ms (an outsider's find).
HEARTBEAT_COALESCE_S = 1.0


class TaskReports:
    """Heartbeats and reports of running tries.

    Task instances handed out by this process are kept by id until reported, so a report goes straight to
    locking its run. A task instance never moves to another run, so an entry never goes stale.
    """

    def __init__(
        self,
        runs: RunStore,
        leases: LeaseStore,
        advancer: RunAdvancer,
        results: ResultStore,
        clock: Clock,
        *,
        lease_s: float,
    ) -> None:
        self.runs = runs
        self.leases = leases
        self.advancer = advancer
        self.results = results
        self.clock = clock
        self.lease_s = lease_s
        self._handed_out: Lru[uuid.UUID, TaskInstance] = Lru(HANDED_OUT_CACHE_SIZE)
        # The last lease extension of each try here: when it was written, and the expiry it set.
        self._extended: Lru[uuid.UUID, tuple[datetime, datetime]] = Lru(HANDED_OUT_CACHE_SIZE)
        # A tenth of the lease at most: short leases (tests run 1 s ones) lose no more than that of theirs.
        self._coalesce = timedelta(seconds=min(HEARTBEAT_COALESCE_S, lease_s / 10))

    def remember(self, ti: TaskInstance) -> None:
        """``ti`` was handed out by this process: its report will not read it from the store again."""
        self._handed_out.put(ti.id, ti)

    async def task_instance(self, ti_id: uuid.UUID) -> TaskInstance | None:
        """The task instance as handed out here, else as the store has it; None if it does not exist."""
        return self._handed_out.peek(ti_id) or await self.runs.get_task_instance(ti_id)

    async def heartbeat(self, ti_id: uuid.UUID) -> datetime:
        """Extend a running task instance's lease and return its new expiry; TaskNotRunning otherwise.

        Within ``HEARTBEAT_COALESCE_S`` of this process's last extension of the try, that one stands (no
        write): a try that ended meanwhile on another process is told at the next heartbeat after it; one
        reported here is forgotten at its report."""
        now = self.clock.now()
        extended = self._extended.get(ti_id)
        if extended is not None and timedelta(0) <= now - extended[0] < self._coalesce:
            return extended[1]
        until = now + timedelta(seconds=self.lease_s)
        state = await self.leases.extend_lease(ti_id, until, now=now)
        if state is None:
            raise NotFound(f"Task instance {ti_id} not found")
        if state is not TIState.RUNNING:
            self._extended.pop(ti_id)
            raise TaskNotRunning(f"Task instance {ti_id} is {state}, not running", state)
        self._extended.put(ti_id, (now, until))
        return until

    async def reschedules(self, ti: TaskInstance) -> list[TaskInstance]:
        """The tries rescheduled one after the other just before ``ti`` (``progress.reschedules``): what
        the Airflow Task SDK's start and a sensor's "when did my wait begin" ask. A first try has none, and
        costs no read."""
        if ti.try_number == 1:
            return []
        return reschedules(await self.runs.list_task_tries(ti.dag_id, ti.run_id, ti.task_id), ti)

    async def reportable(self, ti_id: uuid.UUID) -> None:
        """NotFound unless the task instance exists: checked before a report's body (up to the result
        limit) is read, so a report for a task instance that does not exist costs no body."""
        if ti_id in self._handed_out:
            return
        ti = await self.runs.get_task_instance(ti_id)
        if ti is None:
            raise NotFound(f"Task instance {ti_id} not found")
        # The report that follows reads it from here rather than from the store again.
        self.remember(ti)

    async def push_result(self, ti_id: uuid.UUID, result: JsonText, *, checked: bool = False) -> None:
        """The Airflow Task SDK pushes what the running try ``ti_id`` returned (its XCom ``return_value``)
        before it reports success without it: kept as the try's result to be (``pushed_result``).
        Invalid for a result no report could make (``checked``: checked already); TaskNotRunning (409) once
        the try is not running."""
        if not checked:
            check_result(result)
        if not await self.runs.push_result(ti_id, result):
            # Refused only for a try that is not running (or gone), which no try becomes again.
            await self._running_try(ti_id, "nothing to push")

    async def push_xcom(self, ti_id: uuid.UUID, key: str, value: JsonText, *, checked: bool = False) -> None:
        """The Airflow Task SDK pushes an XCom of the running try ``ti_id`` under a key other than its return
        value (``ti.xcom_push(key=...)``, each output of a ``multiple_outputs`` task, a triggered run's id):
        kept with the try until its run goes. Invalid for a value no result could be (``checked``: checked
        already) or a key past ``MAX_XCOM_KEYS``; TaskNotRunning (409) once the try is not running."""
        if not checked:
            check_result(value)
        if await self.runs.push_xcom(ti_id, key, value, max_keys=MAX_XCOM_KEYS):
            return
        await self._running_try(ti_id, "nothing to push")
        raise Invalid(f"a try keeps at most {MAX_XCOM_KEYS} XCom keys", field="key")

    async def upstream_xcom(self, caller: uuid.UUID, task_id: str, map_index: int, key: str) -> JsonText:
        """``task_id``'s XCom ``key`` (not its return value) at ``map_index`` in the run of the try
        ``caller``: what its latest try pushed under it, whatever that try's state (Airflow clears a task
        instance's XComs when a new try starts, and keeps them after it ends). NotFound if it pushed none
        (the SDK then takes None)."""
        latest = (await self._latest_of(caller, task_id)).get((task_id, map_index))
        value = None if latest is None else await self.runs.xcom(latest.id, key)
        if value is None:
            raise NotFound(f"Task '{task_id}' (map index {map_index}) has no XCom '{key}' in this run")
        return value

    async def mapped_xcoms(self, caller: uuid.UUID, task_id: str, key: str) -> list[JsonText]:
        """``task_id``'s XComs ``key`` in the run of the try ``caller``, by map index: each instance's latest
        try's, for those that pushed one (the Task SDK's sequence of an XCom, which it reads for a pull
        that names no map index)."""
        latest = await self._latest_of(caller, task_id)
        if not latest:
            return []
        some = next(iter(latest.values()))
        kept = await self.runs.task_xcoms(some.dag_id, some.run_id, task_id, key)
        return [kept[t.id] for t in sorted(latest.values(), key=lambda t: t.map_index) if t.id in kept]

    async def delete_xcom(self, ti_id: uuid.UUID, key: str) -> None:
        """Forget the running try ``ti_id``'s XCom ``key``; nothing if it has none (as Airflow's delete).
        TaskNotRunning (409) once the try ended, as a push: what it left is its downstream's to read (an
        outsider deleted a finished try's XCom with its token)."""
        await self._running_try(ti_id, "its XComs stay")
        await self.runs.delete_xcom(ti_id, key)

    async def _running_try(self, ti_id: uuid.UUID, otherwise: str) -> TaskInstance:
        """The try ``ti_id``, running; NotFound, or TaskNotRunning saying what ``otherwise`` follows."""
        ti = await self.runs.get_task_instance(ti_id)
        if ti is None:
            raise NotFound(f"Task instance {ti_id} not found")
        if ti.state is not TIState.RUNNING:
            raise TaskNotRunning(f"Task instance {ti_id} is {ti.state}, not running: {otherwise}", ti.state)
        return ti

    async def skip_downstream(self, ti_id: uuid.UUID, tasks: list[tuple[str, int]]) -> None:
        """The Airflow Task SDK's branch of the running try ``ti_id`` (``RunAdvancer.skip_downstream``)."""
        ti = await self.task_instance(ti_id)
        if ti is None:
            raise NotFound(f"Task instance {ti_id} not found")
        await self.advancer.skip_downstream(ti, tasks)

    async def pushed_result(self, ti_id: uuid.UUID) -> JsonText | None:
        """What the Airflow Task SDK pushed for the try (``push_result``), or None."""
        return await self.runs.pushed_result(ti_id)

    async def mapped_results(self, caller: uuid.UUID, task_id: str) -> list[Any]:
        """The results of ``task_id``'s instances in the run of the try ``caller``, by map index: those
        whose latest try succeeded (the Task SDK's sequence of a mapped task's ``return_value``)."""
        latest = await self._latest_of(caller, task_id)
        done = sorted((t for t in latest.values() if t.state is TIState.SUCCESS), key=lambda t: t.map_index)
        return [await self.results.input_value(t) for t in done]

    async def upstream_result(self, caller: uuid.UUID, task_id: str, map_index: int) -> Any:
        """The result of ``task_id``'s instance ``map_index`` in the run of the try ``caller``, as the Task
        SDK pulls it (an upstream's XCom ``return_value``): its latest try's, once that try succeeded.
        NotFound otherwise (the SDK then takes None, as Airflow's XCom of a task that returned nothing)."""
        latest = (await self._latest_of(caller, task_id)).get((task_id, map_index))
        if latest is None or latest.state is not TIState.SUCCESS:
            raise NotFound(f"Task '{task_id}' (map index {map_index}) has no result in this run")
        return await self.results.input_value(latest)

    async def _latest_of(self, caller: uuid.UUID, task_id: str) -> progress.Latest:
        """The latest try of each of ``task_id``'s instances in the run of the try ``caller``."""
        ti = await self.task_instance(caller)
        if ti is None:
            raise NotFound(f"Task instance {caller} not found")
        return progress.latest(await self.runs.list_task_tries(ti.dag_id, ti.run_id, task_id))

    async def report_of_worker(self, ti_id: uuid.UUID, report: Report) -> None:
        """``report``, as a worker sends it. A report whose run cannot go on (its DAG version cannot be
        read) ends the run at once, failed, naming this try (``RunAdvancer.end_broken_run``), and is
        TaskNotRunning, so the worker stops: the report itself is valid, and refusing it as invalid left the
        try running (heartbeats still extend it) until its lease ran out."""
        try:
            await self.report(ti_id, report)
        except UnreadableDag as exc:
            ti = await self.runs.get_task_instance(ti_id)
            if ti is None:
                raise NotFound(f"Task instance {ti_id} not found") from exc
            await self.advancer.end_broken_run(ti, f"{REPORT_NOT_APPLIED}: {exc.detail}")
            raise TaskNotRunning(
                f"Task instance {ti_id} cannot be reported: its run cannot go on ({exc.detail})",
                TIState.FAILED,
            ) from exc

    async def report(self, ti_id: uuid.UUID, report: Report) -> None:
        """Apply a report (see ``RunAdvancer.apply_report``); UnreadableDag if its run's DAG version cannot
        be read (``report_of_worker`` for a worker's)."""
        self._extended.pop(ti_id)
        ti = self._handed_out.pop(ti_id) or await self.runs.get_task_instance(ti_id)
        if ti is None:
            raise NotFound(f"Task instance {ti_id} not found")
        stored = None
        # A try that has ended (read from the store: not handed out by this process, or reported already)
        # only compares the report with how it ended (``RunAdvancer.apply_report``): its result is neither
        # checked nor stored again, so a worker repeating a large report costs no second validation (0.25-
        # 0.45 s of the event loop for 60 MiB) and no second blob.
        if isinstance(report, Success) and ti.state is TIState.RUNNING:
            # Refused before anything changes: the try stays running and the worker may report again.
            if not report.checked:
                check_result(report.result)
            # The run's plan first: a report whose run cannot go on uploads no blob.
            await self.advancer.plans.of_run(ti.dag_id, ti.run_id)
            stored = await self.results.store(ti, report.result)
        await self.advancer.apply_report(ti, report, stored)
