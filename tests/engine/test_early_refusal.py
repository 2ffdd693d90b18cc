"""A DAG found full (max_queued_runs) refuses its next triggers in this process without a read, for at most
``FULL_FOR_S``; acceptance is always the store's (issue 17: a burst's surplus is refused early)."""

from __future__ import annotations

import pytest

from stateport.domain.admission import FULL_FOR_S, PROBE_S
from stateport.domain.errors import Refused
from tests.engine.conftest import Harness


async def test_a_full_dag_refuses_at_once_for_a_bounded_time_and_room_is_found_after(
    harness: Harness,
) -> None:
    first = await harness.start({"tasks": [{"task_id": "t"}], "max_queued_runs": 1})
    dag_id = first.dag_id
    harness.runs.gate.refuse_if_full(dag_id)  # not refused yet: nothing says it is full
    with pytest.raises(Refused):
        await harness.runs.trigger(dag_id)  # the store counts one queued run: full
    with pytest.raises(Refused, match="max_queued_runs"):
        harness.runs.gate.refuse_if_full(dag_id)  # remembered: refused without asking the store
    # Room opens (the queued run is cancelled); within FULL_FOR_S the refusal may still stand ...
    await harness.core.advancer.cancel(dag_id, first.run_id)
    harness.clock.advance(FULL_FOR_S / 2)
    with pytest.raises(Refused):
        harness.runs.gate.refuse_if_full(dag_id)
    # ... and not past it: one trigger finds out (the others are refused while it does) ...
    harness.clock.advance(FULL_FOR_S)
    harness.runs.gate.refuse_if_full(dag_id)
    with pytest.raises(Refused):
        harness.runs.gate.refuse_if_full(dag_id)
    second = await harness.runs.trigger(dag_id)  # ... and the store has room: accepted
    assert second.run_id != first.run_id
    harness.runs.gate.refuse_if_full(dag_id)  # there was room since the refusal: everyone asks again
    with pytest.raises(Refused):
        await harness.runs.trigger(dag_id)  # never past the limit


async def test_a_finder_that_never_comes_back_holds_the_others_for_a_bounded_time(harness: Harness) -> None:
    first = await harness.start({"tasks": [{"task_id": "t"}], "max_queued_runs": 1})
    with pytest.raises(Refused):
        await harness.runs.trigger(first.dag_id)
    harness.clock.advance(FULL_FOR_S)
    harness.runs.gate.refuse_if_full(first.dag_id)  # this one's request then fails before its trigger
    harness.clock.advance(PROBE_S / 2)
    with pytest.raises(Refused):
        harness.runs.gate.refuse_if_full(first.dag_id)
    harness.clock.advance(PROBE_S)
    harness.runs.gate.refuse_if_full(first.dag_id)  # the next one finds out


async def test_other_dags_are_not_refused(harness: Harness) -> None:
    full = await harness.start({"tasks": [{"task_id": "t"}], "max_queued_runs": 1})
    other = await harness.start({"tasks": [{"task_id": "t"}], "max_queued_runs": 1})
    with pytest.raises(Refused):
        await harness.runs.trigger(full.dag_id)
    harness.runs.gate.refuse_if_full(other.dag_id)
