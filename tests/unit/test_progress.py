"""The run core's pure half (``stateport.domain.engine.progress``) over random DAGs.

A simulated store holds every try as a TaskInstance; ``advance``, ``end_try`` and ``cancel`` change it
exactly as ``RunAdvancer`` applies them, and a random worker succeeds, fails, releases or abandons the
tries it is given. Checked at every step: transitions only move the latest try from the state they name,
no task instance is ever created twice, a change is a fixpoint (advancing again changes nothing), retries
are bounded by the task's, and every run ends; a run cancelled at a random step ends with every task
instance settled.
"""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from stateport.domain.engine import progress
from stateport.domain.engine.progress import CANCELLED, LEASE_EXPIRED, RELEASED, Progress
from stateport.domain.inputs import task_views
from stateport.domain.models import FINAL_STATES, DagSpec, Outcome, Run, RunState, TaskInstance, TIState
from stateport.domain.rules import DagPlan
from tests.unit.test_rules_properties import dags

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_STEPS = 400


class SimRun:
    """One run's tries in memory, changed only through the progress functions."""

    def __init__(self, spec: DagSpec, rng: random.Random) -> None:
        self.plan = DagPlan.of(spec)
        self.rng = rng
        counter = itertools.count()
        self.new_id = lambda: uuid.UUID(int=next(counter) + 1)
        self.now = NOW
        self.run = Run(
            dag_id="d",
            run_id="r",
            dag_version="v",
            conf={},
            state=RunState.QUEUED,
            run_after=NOW,
            created_at=NOW,
        )
        fresh = [
            progress.new_instance(self.run, t, -1, TIState.SCHEDULED, NOW, new_id=self.new_id)
            for t in spec.tasks
            if t.expand is None
        ]
        self.tis, needs_advance = progress.initial_states(self.plan, fresh)
        self.needs_advance = needs_advance
        self.sources = {t.expand for t in spec.tasks if t.expand is not None}

    @property
    def latest(self) -> progress.Latest:
        return progress.latest(self.tis)

    def decide(self) -> Progress:
        latest = self.latest
        return progress.advance(
            self.plan, self.run, latest, task_views(latest.values()), now=self.now, new_id=self.new_id
        )

    def apply(self, change: Progress) -> None:
        """As RunAdvancer applies a Progress: compare-and-set transitions, then creations, outcome, state."""
        latest = self.latest
        keys = {(ti.task_id, ti.map_index) for ti in self.tis}
        for t in change.transitions:
            key = (t.ti.task_id, t.ti.map_index)
            assert latest[key].id == t.ti.id, "a transition of a try that is not the latest"
            assert latest[key].state is t.from_state, f"{key} is {latest[key].state}, not {t.from_state}"
            self._set(t.ti.id, state=t.to_state, error=t.error)
        for ti in change.created:
            assert (ti.task_id, ti.map_index) not in keys, f"{ti.task_id}[{ti.map_index}] created twice"
            assert ti.try_number == 1
            keys.add((ti.task_id, ti.map_index))
        self.tis += change.created
        if change.outcome is not None and self.run.outcome is None:
            self.run = msgspec.structs.replace(self.run, outcome=change.outcome)
        if change.run_state is not None:
            self.run = msgspec.structs.replace(self.run, state=change.run_state)

    def _set(self, ti_id: uuid.UUID, **fields: Any) -> None:
        self.tis = [msgspec.structs.replace(ti, **fields) if ti.id == ti_id else ti for ti in self.tis]

    def end(self, ti: TaskInstance, error: str, *, retryable: bool = True, counts: bool = True) -> None:
        end = progress.end_try(
            ti,
            self.plan.tasks[ti.task_id].retries,
            error,
            retryable=retryable,
            counts=counts,
            new_id=self.new_id,
        )
        self._set(ti.id, state=end.state, error=error)
        if end.next_try is not None:
            assert end.state is TIState.UP_FOR_RETRY and end.next_try.try_number == ti.try_number + 1
            self.tis.append(end.next_try)

    def work(self) -> None:
        """A random worker: claims queued tries, and ends running ones every way a try can end."""
        self.now += timedelta(seconds=1)
        active = [ti for ti in self.latest.values() if ti.state in (TIState.QUEUED, TIState.RUNNING)]
        for ti in self.rng.sample(active, self.rng.randint(1, len(active))):
            if ti.state is TIState.QUEUED:
                self._set(ti.id, state=TIState.RUNNING, started_at=self.now, lease_expires_at=self.now)
                continue
            roll = self.rng.random()
            if roll < 0.1:
                self.end(ti, RELEASED, counts=False)
            elif roll < 0.2:
                assert progress.overdue(ti, self.now + timedelta(seconds=1)) == LEASE_EXPIRED
                self.end(ti, LEASE_EXPIRED)
            elif roll < 0.35:
                self.end(ti, "boom", retryable=self.rng.random() < 0.8)
            else:
                self._set(ti.id, state=TIState.SUCCESS, result=msgspec.json.encode(self.result_for(ti)))

    def result_for(self, ti: TaskInstance) -> Any:
        if ti.task_id in self.sources:
            return {"not": "a list"} if self.rng.random() < 0.1 else list(range(self.rng.randint(0, 3)))
        return f"{ti.task_id}[{ti.map_index}]"

    def check_retries(self) -> None:
        for (task_id, map_index), tries in itertools.groupby(
            sorted(self.tis, key=lambda t: (t.task_id, t.map_index, t.try_number)),
            key=lambda t: (t.task_id, t.map_index),
        ):
            tries_ = list(tries)
            assert [t.try_number for t in tries_] == list(range(1, len(tries_) + 1))
            counted = sum(1 for t in tries_[:-1] if t.error != RELEASED)
            assert counted <= self.plan.tasks[task_id].retries, f"{task_id}[{map_index}] retried too often"


def finished(run: Run) -> bool:
    return run.state in (RunState.SUCCESS, RunState.FAILED)


@given(spec=dags(), seed=st.integers(0, 2**32), cancel_at=st.one_of(st.none(), st.integers(0, 30)))
def test_random_runs_keep_every_invariant_and_end(spec: DagSpec, seed: int, cancel_at: int | None) -> None:
    sim = SimRun(spec, random.Random(seed))
    for step in range(MAX_STEPS):
        change = sim.decide()
        sim.apply(change)
        again = sim.decide()
        assert not again.transitions and not again.created and not again.changes_tasks, "not a fixpoint"
        assert again.outcome is None or sim.run.outcome is None, "an outcome decided twice"
        sim.check_retries()
        if step == cancel_at and not finished(sim.run):
            cancel = progress.cancel(sim.plan, sim.run, sim.latest, now=sim.now, new_id=sim.new_id)
            sim.apply(cancel)
            assert sim.run.state is RunState.FAILED and sim.run.outcome is not None
            assert {ti.task_id for ti in sim.tis} == set(sim.plan.tasks), "a task left without an instance"
            assert all(ti.state in FINAL_STATES for ti in sim.latest.values())
            if cancel.outcome == Outcome(state=RunState.FAILED, reason=CANCELLED):
                assert sim.run.outcome.reason == CANCELLED or sim.run.outcome != cancel.outcome
        if finished(sim.run):
            assert sim.run.outcome is not None
            assert progress.cancel(sim.plan, sim.run, sim.latest, now=sim.now) == Progress(), (
                "a finished run was changed"
            )
            return
        assert any(ti.state in (TIState.QUEUED, TIState.RUNNING) for ti in sim.latest.values()), "stuck"
        sim.work()
    raise AssertionError(f"the run did not finish in {MAX_STEPS} steps")


def test_a_finished_run_is_not_stopped_again() -> None:
    run = Run(
        dag_id="d",
        run_id="r",
        dag_version="v",
        conf={},
        state=RunState.SUCCESS,
        run_after=NOW,
        created_at=NOW,
    )
    outcome = Outcome(state=RunState.FAILED, reason="x")
    assert progress.stop(run, {}, now=NOW, error="x", outcome=outcome) == Progress()


def test_a_run_never_goes_back_to_queued() -> None:
    sim = SimRun(msgspec.convert({"tasks": [{"task_id": "a"}]}, DagSpec), random.Random(0))
    sim.apply(sim.decide())
    [a] = sim.tis
    sim._set(a.id, state=TIState.RUNNING, started_at=NOW)
    sim.run = msgspec.structs.replace(sim.run, state=RunState.RUNNING)
    sim.end(sim.tis[0], RELEASED, counts=False)  # the latest try is queued again: the rules see "queued"
    assert sim.decide().run_state is None


def test_a_try_past_its_timeout_is_overdue_before_its_lease() -> None:
    ti = TaskInstance(
        id=uuid.uuid4(),
        dag_id="d",
        run_id="r",
        task_id="t",
        map_index=-1,
        try_number=1,
        state=TIState.RUNNING,
        started_at=NOW,
        timeout_s=5,
        lease_expires_at=NOW + timedelta(seconds=60),
    )
    assert progress.overdue(ti, NOW + timedelta(seconds=4)) is None
    assert progress.overdue(ti, NOW + timedelta(seconds=6)) == "timed out after 5 s"
    assert (
        progress.overdue(msgspec.structs.replace(ti, timeout_s=None), NOW + timedelta(seconds=61))
        == LEASE_EXPIRED
    )
    assert (
        progress.overdue(msgspec.structs.replace(ti, state=TIState.SUCCESS), NOW + timedelta(days=1)) is None
    )


def test_a_tries_reschedules_are_those_just_before_it_and_a_failure_starts_them_anew() -> None:
    def try_(number: int, error: str | None, map_index: int = -1) -> TaskInstance:
        return TaskInstance(
            id=uuid.uuid4(),
            dag_id="d",
            run_id="r",
            task_id="t",
            map_index=map_index,
            try_number=number,
            state=TIState.UP_FOR_RETRY,
            error=error,
            started_at=NOW + timedelta(seconds=number),
        )

    rescheduled = progress.RESCHEDULED
    tries = [try_(1, rescheduled), try_(2, "boom"), try_(3, rescheduled), try_(4, rescheduled)]
    tries += [try_(4, rescheduled, map_index=0), try_(6, rescheduled)]  # another map index; a later try
    current = try_(5, None)
    chain = progress.reschedules([*tries, current], current)
    # Airflow's task_reschedule_count is the try's: the pokes since the failure, not the first one.
    assert [t.try_number for t in chain] == [4, 3]
    assert chain[-1].started_at == NOW + timedelta(seconds=3)  # when the sensor's wait began
    assert progress.reschedules(tries, try_(2, None)) == tries[:1]
    assert progress.reschedules(tries, try_(1, None)) == []
