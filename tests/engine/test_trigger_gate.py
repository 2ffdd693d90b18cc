"""Before any trigger was refused, a process with as many triggers of a DAG under way as its
``max_queued_runs`` refuses the next before reading anything; a process that has not read the limit yet
lets one trigger read it for the others, before their bodies are read (issue 17: the first window of a
burst)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import msgspec
import pytest

from stateport.domain.errors import NotFound, Refused
from stateport.domain.models import DagSpec, DagVersion
from stateport.domain.runs import RunService
from tests.engine.conftest import Harness
from tests.services import unique


async def _register(harness: Harness, max_queued: int) -> str:
    dag_id = unique("dag")
    spec = {"tasks": [{"task_id": "t", "queue": harness.queue}], "max_queued_runs": max_queued}
    await harness.runs.register_dag(dag_id, msgspec.convert(spec, DagSpec))
    return dag_id


async def _enter(stack: AsyncExitStack, runs: RunService, dag_id: str, *, keyed: bool = False) -> None:
    await stack.enter_async_context(runs.triggering(dag_id, keyed=keyed))


async def test_as_many_under_way_as_the_limit_refuses_the_next_before_any_read(harness: Harness) -> None:
    dag_id = await _register(harness, 2)
    runs = harness.fresh().runs  # a process that has read nothing
    await runs.before_body(dag_id, keyed=False)  # the first reads the limit
    async with AsyncExitStack() as stack:
        await _enter(stack, runs, dag_id)
        await _enter(stack, runs, dag_id)
        with pytest.raises(Refused, match="2 triggers under way"):
            await _enter(stack, runs, dag_id)
        await _enter(stack, runs, dag_id, keyed=True)  # a keyed retry is never refused here
    # Those triggers are done (none created a run): the queue is empty and the next is accepted.
    async with runs.triggering(dag_id, keyed=False):
        run = await runs.trigger(dag_id)
    assert run.dag_id == dag_id
    async with runs.triggering(dag_id, keyed=False):
        await runs.trigger(dag_id)
    with pytest.raises(Refused, match="2 queued runs"):  # the store's own count, never the gate's
        async with runs.triggering(dag_id, keyed=False):
            await runs.trigger(dag_id)
    # Now known to be full: refused before a body is read, except a keyed retry.
    with pytest.raises(Refused, match="2 queued runs"):
        await runs.before_body(dag_id, keyed=False)
    await runs.before_body(dag_id, keyed=True)


async def test_a_fresh_process_reads_the_limit_once_while_the_others_wait(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag_id = await _register(harness, 1)
    runs = harness.fresh().runs
    reads = 0
    read = runs.dags.get_dag

    async def counted(dag: str, version: str | None = None) -> DagVersion | None:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)  # a read slow enough for the others to arrive while it is made
        return await read(dag, version)

    monkeypatch.setattr(runs.dags, "get_dag", counted)  # counts the reads of the real store
    await asyncio.gather(*(runs.before_body(dag_id, keyed=False) for _ in range(20)))
    assert reads == 1
    async with AsyncExitStack() as stack:
        await _enter(stack, runs, dag_id)
        with pytest.raises(Refused, match="1 triggers under way"):
            await _enter(stack, runs, dag_id)  # the limit was read before: nothing read now
    assert reads == 1


async def test_a_reader_that_never_reads_lets_the_others_go_on(harness: Harness) -> None:
    dag_id = await _register(harness, 1)
    runs = harness.fresh().runs
    async with runs.gate.learning(dag_id) as to_read:
        assert to_read  # the reader
        waiting = asyncio.create_task(runs.before_body(dag_id, keyed=False))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    # The reader's request ended before its read (cancelled, say): the other goes on, and reads.
    await asyncio.wait_for(waiting, 5)
    async with runs.gate.learning(dag_id) as to_read:
        assert not to_read  # read now


async def test_an_unknown_dag_is_not_held_up(harness: Harness) -> None:
    runs = harness.fresh().runs
    missing = unique("dag")
    for _ in range(3):
        with pytest.raises(NotFound):
            await runs.before_body(missing, keyed=False)
    # Several at once: each is told, none waits for ever on a read that failed.
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(runs.before_body(missing, keyed=False) for _ in range(5)), return_exceptions=True), 5
    )
    assert all(isinstance(outcome, NotFound) for outcome in outcomes), outcomes
