"""One task instance that cannot be handed out never fails a claim (issue #12, item 2), on SQLite and
PostgreSQL.

A result blob that cannot be read back is written straight into the blob store: the report route refuses
such results, but a blob can still be damaged or lost where it is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from stateport.domain.engine.progress import GIVEN_BACK, MAX_GIVE_BACK_DELAY_S, MAX_GIVE_BACKS, NOT_HANDED_OUT
from stateport.domain.errors import Unavailable
from stateport.domain.models import Run, RunState, TIState
from tests.engine.conftest import Harness
from tests.fixtures.broken_dags import break_spec, mend_spec

BIG = ["x" * 100 for _ in range(40)]  # over the harness's 1 KiB inline limit: stored as a blob
POISONS = {
    "out_of_range": b"[1e999]",
    "too_deep": b"[" * 5000 + b"]" * 5000,
    "not_json": b'{"cut short',
    "missing": None,
}


async def _blob_run(harness: Harness) -> tuple[Run, str, Path]:
    """A run whose task ``a`` succeeded with a blob result (its reference and file), so that ``b``
    (downstream of ``a``) is queued with it as its input."""
    spec = {"tasks": [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}], "result_task": "b"}
    run = await harness.start(spec)
    await harness.succeed(await harness.claim_one("a"), BIG)
    (a,) = [ti for ti in await harness.tis(run) if ti.task_id == "a"]
    assert a.result_ref is not None
    return run, a.result_ref, harness.blobs.root.joinpath(*a.result_ref.split("/"))


async def _poisoned_run(harness: Harness, poison: bytes | None) -> tuple[Run, str]:
    """A run whose task ``a`` succeeded with a blob result that ``poison`` then replaced (None: deleted),
    so that ``b`` is queued with an input that cannot be read."""
    run, ref, path = await _blob_run(harness)
    if poison is None:
        path.unlink()
    else:
        path.write_bytes(poison)
    return run, ref


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
async def test_a_task_whose_input_cannot_be_read_is_failed_and_the_others_are_handed_out(
    harness: Harness, poison: bytes | None
) -> None:
    bad_run, _ = await _poisoned_run(harness, poison)
    good = [await harness.start({"tasks": [{"task_id": "g"}], "result_task": "g"}) for _ in range(4)]
    claimed = await harness.claim(5)
    assert sorted(c.ti.run_id for c in claimed) == sorted(r.run_id for r in good)
    # The bad one failed at once, with the reason on it, and the run's outcome names it.
    b_tries = [ti for ti in await harness.tis(bad_run) if ti.task_id == "b"]
    assert [ti.state for ti in b_tries] == [TIState.FAILED]
    error = b_tries[0].error or ""
    assert error.startswith(NOT_HANDED_OUT) and "upstream task 'a'" in error, error
    after = await harness.run(bad_run)
    assert after.state is RunState.FAILED
    assert after.outcome is not None and after.outcome.failed_task == "b"
    # Nothing was queued again: the next claim finds nothing, and the good runs go on.
    assert await harness.claim(5) == []
    for c in claimed:
        await harness.succeed(c, "ok")
    assert [(await harness.run(r)).state for r in good] == [RunState.SUCCESS] * len(good)


async def test_a_give_back_that_keeps_happening_is_bounded(harness: Harness) -> None:
    # The blob's path is a link to itself: reading it fails as an unavailable store would (ELOOP, an
    # error of the file system, a cause that may pass), so the try is given back rather than failed, but
    # not forever. (A directory there is a blob that is not found.)
    bad_run, ref = await _poisoned_run(harness, b"[]")
    path = harness.blobs.root.joinpath(*ref.split("/"))
    path.unlink()
    os.symlink(path.name, path)
    good = await harness.start({"tasks": [{"task_id": "g"}]})
    claimed: list[Any] = await harness.claim(5)  # the good one is handed out, the bad one given back
    assert [c.ti.run_id for c in claimed] == [good.run_id]
    unavailable = 0
    for _ in range(2 * MAX_GIVE_BACKS + 5):  # more claims than the bound: the tries must end by themselves
        harness.clock.advance(MAX_GIVE_BACK_DELAY_S)  # each next try waits before it goes out again
        try:
            assert await harness.claim(5) == []
        except Unavailable:  # only the bad one, given back again: the worker is told to back off
            unavailable += 1
    assert unavailable == MAX_GIVE_BACKS  # then it failed, and claims find nothing
    b_tries = [ti for ti in await harness.tis(bad_run) if ti.task_id == "b"]
    # Free give-backs first, then one that uses the task's only try (retries: 0): failed.
    assert [ti.state for ti in b_tries] == [TIState.UP_FOR_RETRY] * MAX_GIVE_BACKS + [TIState.FAILED]
    assert all((ti.error or "").startswith(GIVEN_BACK) for ti in b_tries)
    assert (await harness.run(bad_run)).state is RunState.FAILED


async def test_a_try_the_server_gave_back_waits_longer_each_time_before_it_goes_out_again(
    harness: Harness,
) -> None:
    # An outsider's find: during a blob store's blip of ~4 s, a worker claiming at once gave the same task
    # back 12 times, spent its 10 free give-backs, then its retries, and the run failed.
    run, _, path = await _blob_run(harness)
    stored = path.read_bytes()
    path.unlink()
    os.symlink(path.name, path)  # reading it fails as an unavailable store would (ELOOP): may pass

    async def claimed() -> str:
        try:
            return "handed out" if await harness.claim(5) else "nothing"
        except Unavailable:
            return "given back"

    # The next try waits 1 s after the first give-back, 2 s after the second, 4 s after the third.
    seen = [await claimed()]
    for wait in (1.0, 2.0, 4.0):
        seen.append(await claimed())  # at once: nothing to hand out
        harness.clock.advance(wait - 0.1)
        seen.append(await claimed())  # not yet
        harness.clock.advance(0.2)
        seen.append(await claimed())
    assert seen == ["given back"] + ["nothing", "nothing", "given back"] * 3
    # The store is back: the next try goes out once its wait is over, no retry used.
    path.unlink()
    path.write_bytes(stored)
    harness.clock.advance(8.1)
    (b,) = await harness.claim(5)
    assert b.ti.task_id == "b" and b.ti.try_number == 5 and b.ti.retries_used == 0
    tries = [ti for ti in await harness.tis(run) if ti.task_id == "b"]
    assert [ti.state for ti in tries] == [TIState.UP_FOR_RETRY] * 4 + [TIState.RUNNING]
    assert all((ti.error or "").startswith(GIVEN_BACK) for ti in tries[:4])


async def test_a_mapped_task_over_a_result_that_cannot_be_read_fails_and_its_run_goes_on(
    harness: Harness,
) -> None:
    # The mapped task cannot expand while "other" runs, so every change of the run needs the list again:
    # one that cannot be read back must fail the mapped task, not every report of the run.
    spec = {
        "tasks": [
            {"task_id": "src"},
            {"task_id": "other"},
            {"task_id": "fan", "upstream": ["src", "other"], "expand": "src"},
            {"task_id": "after", "upstream": ["other"]},
        ],
    }
    run = await harness.start(spec)
    claimed = {c.ti.task_id: c for c in await harness.claim(5)}
    await harness.succeed(claimed["src"], BIG)
    (src,) = [ti for ti in await harness.tis(run) if ti.task_id == "src"]
    assert src.result_ref is not None
    harness.blobs.root.joinpath(*src.result_ref.split("/")).write_bytes(b"[1e999]")
    harness = harness.fresh()  # a fresh process: nothing cached
    await harness.succeed(claimed["other"], 1)  # answered, not refused: the run goes on
    tis = {ti.task_id: ti for ti in await harness.tis(run)}
    assert tis["fan"].state is TIState.FAILED and tis["fan"].map_index == -1
    assert "cannot expand over 'src': its result cannot be read back" in (tis["fan"].error or "")
    assert tis["after"].state is TIState.QUEUED
    await harness.succeed(await harness.claim_one("after"), 2)
    assert (await harness.run(run)).state is RunState.FAILED


async def break_dag_version(harness: Harness, dag_id: str) -> Harness:
    """Make the stored spec of the DAG's version undecodable; the harness of a process that has not read it
    yet. ``mend_spec`` puts it back."""
    await break_spec(harness.stores.dags, dag_id)
    return harness.fresh()


async def test_a_run_whose_dag_version_cannot_be_read_ends_failed_and_the_others_are_handed_out(
    harness: Harness,
) -> None:
    spec: dict[str, Any] = {"tasks": [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}]}
    bad = await harness.start(spec)
    good = await harness.start({"tasks": [{"task_id": "g"}]})
    # The stored spec of the bad run's version no longer decodes (as a later release might find an old
    # one), seen by a process that has not read it yet.
    harness = await break_dag_version(harness, bad.dag_id)
    claimed = await harness.claim(5)
    assert [c.ti.run_id for c in claimed] == [good.run_id]
    after = await harness.run(bad)
    assert after.state is RunState.FAILED
    assert after.outcome is not None and after.outcome.failed_task == "a"
    states = {ti.task_id: (ti.state, ti.error or "") for ti in await harness.tis(bad)}
    assert states["a"][0] is TIState.FAILED and states["a"][1].startswith(NOT_HANDED_OUT)
    assert "cannot be read" in states["a"][1] and states["b"][0] is TIState.SKIPPED
    assert await harness.claim(5) == []
    await mend_spec(harness.stores.dags, bad.dag_id, spec)


async def test_a_try_the_sweeper_cannot_end_does_not_stop_it_ending_the_others(harness: Harness) -> None:
    # One overdue try whose run cannot be read (here: its DAG version no longer decodes) once stopped every
    # sweep at its first row, so no lease in the process expired any more.
    spec: dict[str, Any] = {"tasks": [{"task_id": "a"}]}
    bad = await harness.start(spec)
    await harness.claim_one("a")
    good = await harness.start({"tasks": [{"task_id": "g"}]})
    await harness.claim_one("g")
    harness = await break_dag_version(harness, bad.dag_id)
    harness.clock.advance(31)
    # Sweeps take the oldest overdue tries of the whole (shared) database first, 100 at a time: sweep until
    # this test's turn has come. Each sweep ends every try it takes, so the loop always gets there.
    for _ in range(100):
        await harness.core.sweeper.sweep()
        [g] = await harness.tis(good)
        if g.state is not TIState.RUNNING:
            break
    assert g.state is TIState.FAILED and g.error is not None and "lease" in g.error
    # The try that could not be ended by the rules ends with its run, so no later sweep takes it again.
    [a] = await harness.tis(bad)
    assert a.state is TIState.FAILED and a.error is not None and "cannot go on" in a.error
    assert (await harness.run(bad)).state is RunState.FAILED
    await mend_spec(harness.stores.dags, bad.dag_id, spec)


async def test_a_list_longer_than_max_map_length_fails_the_mapped_task_and_creates_nothing(
    harness: Harness,
) -> None:
    # A wide list used to create one task instance per item, without bound (issue #15's outsider probe:
    # 100,000 zeros locked every write of a SQLite server for minutes).
    harness = harness.fresh(max_map_length=3)
    spec = {
        "tasks": [
            {"task_id": "src"},
            {"task_id": "fan", "upstream": ["src"], "expand": "src"},
            {"task_id": "after", "upstream": ["fan"], "trigger_rule": "all_done"},
        ],
    }
    run = await harness.start(spec)
    await harness.succeed(await harness.claim_one("src"), [0, 0, 0, 0])
    fan = [ti for ti in await harness.tis(run) if ti.task_id == "fan"]
    assert [(ti.map_index, ti.state) for ti in fan] == [(-1, TIState.FAILED)]
    assert fan[0].error == (
        "cannot expand over 'src': its result has 4 items, more than the limit of 3"
        " (STATEPORT_MAX_MAP_LENGTH)"
    )
    await harness.succeed(await harness.claim_one("after"), 1)
    assert (await harness.run(run)).state is RunState.FAILED
