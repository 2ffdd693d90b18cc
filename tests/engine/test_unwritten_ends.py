"""A change the store would not write is neither told (logs, metrics) nor blamed on a worker (an outsider's
find, on a full disk: the sweeper logged and counted a lease expiry and a failed run at each sweep that
tried, 72 failed runs in the metrics for 2 real ones, and the try's error then blamed the worker, whose
heartbeats the same store had refused).

The store's refusal is real: a PostgreSQL constraint trigger raises ``disk_full`` when the try's end
commits, as a full disk makes PostgreSQL do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from stateport.domain.engine.progress import LEASE_EXPIRED
from stateport.domain.models import Run, TaskInstance, TIState
from stateport.domain.ports.observer import Observer, install, observer
from tests.engine.conftest import Harness

pytestmark = pytest.mark.postgres

LEASE_S = 30.0  # the harness's


class Told(Observer):
    """What the observer is told of ``dag_id``'s runs (the database is shared with this process's other
    tests, whose leftover tries the sweeps end too)."""

    def __init__(self) -> None:
        self.dag_id = ""
        self.said: list[str] = []

    def lease_expired(self, ti: TaskInstance, reason: str) -> None:
        if ti.dag_id == self.dag_id:
            self.said.append(f"lease_expired {ti.task_id}: {reason}")

    def run_finished(self, run: Run) -> None:
        if run.dag_id == self.dag_id:
            self.said.append(f"run_finished {run.state.value}")

    def task_state(self, ti: TaskInstance, state: TIState) -> None:
        if ti.dag_id == self.dag_id:
            self.said.append(f"task_state {ti.task_id} {state.value}")


@pytest.fixture
def told() -> Iterator[Told]:
    before = observer()
    recorder = Told()
    install(recorder)
    try:
        yield recorder
    finally:
        install(before)


@pytest.fixture
async def refusing(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres_url)
    try:
        yield connection
    finally:
        await connection.execute("DROP TRIGGER IF EXISTS refuse_ends ON task_instances")
        await connection.close()


async def _refuse_ends_of(connection: asyncpg.Connection, dag_id: str) -> None:
    """The store refuses, as a full disk, to end a try of ``dag_id`` (and nothing else)."""
    await connection.execute(
        "CREATE OR REPLACE FUNCTION refuse_ends() RETURNS trigger AS $$ BEGIN "
        "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; "
        "END $$ LANGUAGE plpgsql"
    )
    await connection.execute(
        # At the commit, as a full disk refuses a commit (the write-ahead log cannot grow): after the unit
        # of work did everything it does, its telling of the change included.
        "CREATE CONSTRAINT TRIGGER refuse_ends AFTER UPDATE ON task_instances "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        f"WHEN (NEW.dag_id = '{dag_id}' AND NEW.state <> 'running') EXECUTE FUNCTION refuse_ends()"
    )


@pytest.mark.parametrize("stores", ["postgres"], indirect=True)
async def test_a_lease_end_the_store_would_not_write_is_not_told_and_waits_out_a_grace(
    harness: Harness, told: Told, refusing: asyncpg.Connection
) -> None:
    run = await harness.start({"tasks": [{"task_id": "a"}]})
    claimed = await harness.claim_one("a")
    told.dag_id = run.dag_id
    await _refuse_ends_of(refusing, run.dag_id)
    harness.clock.advance(LEASE_S + 1)  # the lease expired: its worker's heartbeats were refused too
    sweeper = harness.core.sweeper
    # (The sweeps' counts are not asserted: the database is shared with this process's other tests.)

    async def running() -> bool:
        (ti,) = await harness.tis(run)
        return ti.state is TIState.RUNNING

    await sweeper.sweep()
    assert await running()
    assert told.said == [], "nothing the store did not write is told"
    # The next sweeps, the store still refusing: a grace from the first that works, so no lease ends.
    await sweeper.sweep()
    await refusing.execute("DROP TRIGGER refuse_ends ON task_instances")
    harness.clock.advance(LEASE_S / 2)
    await sweeper.sweep()
    assert await running(), "in the grace, the worker may heartbeat again"
    await harness.core.reports.heartbeat(claimed.ti.id)  # it does: the try goes on
    harness.clock.advance(LEASE_S + 1)
    await sweeper.sweep()
    assert not await running()  # its worker has now stopped for real
    assert told.said.count(f"lease_expired a: {LEASE_EXPIRED}") == 1, told.said
    assert told.said.count("run_finished failed") == 1, told.said
    assert (await harness.run(run)).state.value == "failed"


@pytest.mark.parametrize("stores", ["postgres"], indirect=True)
async def test_a_store_that_keeps_refusing_is_said_to_answer_once_not_at_every_sweep(
    harness: Harness, refusing: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # An outsider's find: on a read-only database every sweep's write failed after its read, and each next
    # sweep logged "the store answers: no lease expires before ...", a line a second, while the failure
    # itself was said once.
    run = await harness.start({"tasks": [{"task_id": "a"}]})
    await harness.claim_one("a")
    await _refuse_ends_of(refusing, run.dag_id)
    sweeper = harness.core.sweeper
    caplog.set_level("INFO", logger="stateport.engine")
    for _ in range(5):
        harness.clock.advance(LEASE_S + 1)  # past each grace: every sweep tries to end the lease, refused
        await sweeper.sweep()
    answers = [r for r in caplog.records if r.getMessage().startswith("the store answers")]
    assert len(answers) == 1, [r.getMessage() for r in caplog.records]
    await refusing.execute("DROP TRIGGER refuse_ends ON task_instances")
    await sweeper.sweep()  # the store writes again: a grace begins, unsaid
    harness.clock.advance(LEASE_S + 1)
    await sweeper.sweep()  # past the grace the lease ends: a sweep that failed nothing
    sweeper.store_failed()  # a new outage: its grace is said again
    await sweeper.sweep()
    answers = [r for r in caplog.records if r.getMessage().startswith("the store answers")]
    assert len(answers) == 2, [r.getMessage() for r in caplog.records]
