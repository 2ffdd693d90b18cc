"""No one caller takes every waiter of a server process (``STATEPORT_MAX_WAITERS_PER_CALLER``).

A ``stateport serve`` with room for 6 long waits, 2 per caller (1 per task instance, 2 for a caller's
workers' claim and stop polls): one token that holds its 2 (parked outcome long-polls, wait streams handed
over to the server's protocol, state watch streams) is told 429 with ``Retry-After`` for its next wait of
any kind, a trigger-and-wait included (before any run is made), while another caller still waits; and
once its waits end, by the clients going away, it may wait again (the seats came back: none leaks on a
cancelled parked wait or a closed stream). A wait of no time takes no seat.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stateport.client import AsyncStateportClient, Outcome, WaitTimeout
from stateport.worker import Dag, SyncTaskContext, Worker, WorkerClient
from stateport.worker.state import AsyncTaskStateAccessor
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = pytest.mark.slow

SCOPES = ("dags:write", "runs:write", "runs:read")
BOUND_S = 20.0  # the longest any awaited condition may take on a busy machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(
        tmp_path_factory.mktemp("shares"),
        max_waiters="6",
        max_waiters_per_caller="2",
        watch_heartbeat_s="300",
    ) as running:
        yield running


def _auth(server: Server, subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_token(*SCOPES, subject=subject)}"}


async def _open_run(client: httpx.AsyncClient, auth: dict[str, str]) -> tuple[str, str]:
    """A DAG whose run stays queued (no worker here) and one run of it."""
    dag_id = unique("shares")
    spec = {"tasks": [{"task_id": "t"}], "result_task": "t"}
    assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=auth)).status_code < 300
    run = await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=auth)
    assert run.status_code == 200
    return dag_id, run.json()["dag_run_id"]


async def _outcome_now(client: httpx.AsyncClient, url: str, auth: dict[str, str]) -> httpx.Response:
    """An outcome long-poll that waits a moment: it takes a seat for that moment."""
    return await client.get(f"{url}/outcome", params={"timeout": "0.01"}, headers=auth)


async def _until_status(client: httpx.AsyncClient, url: str, auth: dict[str, str], status: int) -> None:
    """Poll with ``_outcome_now`` until it answers ``status`` (the waits sent before it are held, or
    ended)."""
    async with asyncio.timeout(BOUND_S):
        while (await _outcome_now(client, url, auth)).status_code != status:  # noqa: ASYNC110  # a poll
            await asyncio.sleep(0.05)


Send = Callable[[], Awaitable[httpx.Response]]


class Held:
    """Waits of one caller, each sent by its own ``Send`` (on a connection of its own), held until
    cancelled."""

    def __init__(self, sends: list[Send]) -> None:
        self.sends = sends
        self.tasks: list[asyncio.Task[httpx.Response]] = [asyncio.ensure_future(send()) for send in sends]

    async def held(self, probe: Send) -> None:
        """Until they hold the caller's seats: ``probe``, a wait of the caller's own, is refused. One that
        arrived while the probe held a seat for its moment was refused itself: it is sent again."""
        async with asyncio.timeout(BOUND_S):
            while (await probe()).status_code != 429:
                for i, task in enumerate(self.tasks):
                    if task.done():
                        assert task.result().status_code == 429, task.result().text
                        self.tasks[i] = asyncio.ensure_future(self.sends[i]())
                await asyncio.sleep(0.05)

    async def cancel(self) -> None:
        """The clients go away: their connections close mid-wait."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class LongPolls(Held):
    """Outcome long-polls of one caller, each on a connection of its own."""

    def __init__(self, clients: list[httpx.AsyncClient], url: str, auth: dict[str, str]) -> None:
        self.url, self.auth = url, auth
        super().__init__([functools.partial(self._get, http) for http in clients])

    async def _get(self, http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(f"{self.url}/outcome", params={"timeout": "60"}, headers=self.auth)

    async def held_on(self, probe: httpx.AsyncClient) -> None:
        """``held``, probing with an outcome long-poll of no time on ``probe``."""
        await self.held(functools.partial(_outcome_now, probe, self.url, self.auth))


def _refused(response: httpx.Response) -> bool:
    body: Any = response.json()
    return (
        response.status_code == 429
        and response.headers["retry-after"].isdigit()
        and "STATEPORT_MAX_WAITERS_PER_CALLER" in str(body["detail"])
    )


async def _stream(stack: AsyncExitStack, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
    """Open a stream and read its first line; it stays open until ``stack`` closes."""
    response = await stack.enter_async_context(client.stream("GET", url, headers=headers))
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()
    # Kept by the stack: an iterator dropped here would be closed by the garbage collector, and the stream
    # with it (httpx closes the connection of a stream whose reading was abandoned).
    stack.callback(lambda: lines)
    line: str = await anext(lines)
    return line


async def _runs_of(client: httpx.AsyncClient, dag_id: str, auth: dict[str, str]) -> int:
    listing = await client.get(f"/api/v2/dags/{dag_id}/dagRuns", headers=auth)
    total: int = listing.json()["total_entries"]
    return total


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as http:
        yield http


async def test_a_caller_past_its_share_gets_429_for_every_wait_and_others_still_wait(
    server: Server, client: httpx.AsyncClient
) -> None:
    greedy, other = _auth(server, unique("greedy")), _auth(server, unique("other"))
    dag_id, run_id = await _open_run(client, greedy)
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    # Two parked long-polls of its own, each on a connection of its own.
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as a,
        httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as b,
    ):
        held = LongPolls([a, b], url, greedy)
        await held.held_on(client)

        assert _refused(await _outcome_now(client, url, greedy))
        stream = await client.get(f"{url}/wait?interval=1", headers=greedy)
        assert _refused(stream)
        events = await client.get("/api/v2/dagRuns/events", headers=greedy)
        assert _refused(events)
        before = await _runs_of(client, dag_id, greedy)
        trigger = await client.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None},
            headers={**greedy, "Prefer": "wait=5"},
        )
        assert _refused(trigger)
        assert await _runs_of(client, dag_id, greedy) == before  # refused before any run was made
        # Waits of no time read where the run stands and hold nothing: never refused for the seats (an
        # outsider's find: the client's wait(timeout=0), documented to read the outcome now, was a 429).
        now = await client.get(f"{url}/outcome", params={"timeout": "0"}, headers=greedy)
        assert now.status_code == 202 and now.json()["state"] == "queued", now.text
        trigger = await client.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None},
            headers={**greedy, "Prefer": "wait=0"},
        )
        assert trigger.status_code == 202 and trigger.headers["preference-applied"] == "wait=0", trigger.text

        # Another caller is not refused: it waits, and is answered where the run stands.
        waited = await client.get(f"{url}/outcome", params={"timeout": "1"}, headers=other)
        assert waited.status_code == 202 and waited.json()["state"] == "queued"
        async with AsyncExitStack() as stack:
            assert await _stream(stack, client, f"{url}/wait?interval=1", other) == '{"state":"queued"}'

        assert not any(task.done() for task in held.tasks)  # the first two still wait
        await held.cancel()
    # Their clients went away: the seats are given back, and the caller may wait again.
    await _until_status(client, url, greedy, 202)


async def test_wait_streams_handed_to_the_protocol_give_their_seats_back(
    server: Server, client: httpx.AsyncClient
) -> None:
    greedy = _auth(server, unique("streams"))
    dag_id, run_id = await _open_run(client, greedy)
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    async with AsyncExitStack() as streams:
        for _ in range(2):
            assert await _stream(streams, client, f"{url}/wait?interval=1", greedy) == '{"state":"queued"}'
        assert _refused(await client.get(f"{url}/wait?interval=1", headers=greedy))
        assert _refused(await _outcome_now(client, url, greedy))
    async with AsyncExitStack() as streams:  # the first two closed: two more fit, and no third
        await _until_status(client, url, greedy, 202)
        for _ in range(2):
            assert await _stream(streams, client, f"{url}/wait?interval=1", greedy) == '{"state":"queued"}'
        assert _refused(await client.get(f"{url}/wait?interval=1", headers=greedy))


async def test_a_task_instance_past_its_share_of_state_watches_gets_429(
    server: Server, client: httpx.AsyncClient
) -> None:
    api = _auth(server, unique("ti-owner"))
    dag_id, run_id = await _open_run(client, api)
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    second_dag, second_run = await _open_run(client, api)
    tis = [
        (await client.get(f"{run}/taskInstances", headers=api)).json()["task_instances"][0]["id"]
        for run in (url, f"/api/v2/dags/{second_dag}/dagRuns/{second_run}")
    ]
    watch = {"Accept": "text/event-stream"}
    ti, neighbour = ({"Authorization": f"Bearer {server.ti_token(t)}", **watch} for t in tis)
    key = f"/execution/state/ti/{tis[0]}/k"
    async with AsyncExitStack() as streams:
        for _ in range(2):
            assert await _stream(streams, client, key, ti) == ": watching"
        refused = await client.get(key, headers=ti)
        assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
        assert refused.json()["detail"]["reason"] == "too_many_requests"
        # A long-poll of the key is a wait too.
        polled = await client.get(
            key, params={"wait": "1"}, headers={**ti, "Accept": "*/*", "If-None-Match": '"0"'}
        )
        assert polled.status_code == 429, polled.text
        async with AsyncExitStack() as other:
            line = await _stream(other, client, f"/execution/state/ti/{tis[1]}/k", neighbour)
            assert line == ": watching"
    async with AsyncExitStack() as streams, asyncio.timeout(BOUND_S):
        while True:  # the two closed streams' seats come back as the server sees them end
            response = await streams.enter_async_context(client.stream("GET", key, headers=ti))
            if response.status_code == 200:
                break
            await response.aread()
            await asyncio.sleep(0.05)


async def test_a_worker_whose_polls_find_no_seat_still_claims_and_a_refused_waiter_waits_its_turn(
    server: Server, client: httpx.AsyncClient
) -> None:
    """Claim long-polls count too, at most half their caller's share: past it a claim is answered at once,
    as one that does not wait, and the worker claims again a moment later. Refused outright (429), workers
    sharing a token stopped claiming while runs stayed queued (an outsider's find). An application's wait
    refused for its share waits it out, and its last try, waiting no time, reads the outcome."""
    fleet_token = server.api_token("worker", subject=unique("fleet"))
    fleet = {"Authorization": f"Bearer {fleet_token}"}
    app_token = server.api_token(*SCOPES, subject=unique("app"))
    app = {"Authorization": f"Bearer {app_token}"}
    dag = Dag(unique("turn"), result_task="answer", queue=unique("q"))

    @dag.task
    def answer(ctx: SyncTaskContext) -> int:
        return 42

    async with WorkerClient.create(server.base_url, app_token) as api:
        await dag.push(api)
    parked = await _open_run(client, app)  # a run nobody claims, for the app's held waits
    parked_url = f"/api/v2/dags/{parked[0]}/dagRuns/{parked[1]}"
    claim = {"worker_id": unique("w"), "queues": [unique("nobody")], "max_tasks": 1}

    async def claim_now(wait_s: float, http: httpx.AsyncClient = client) -> httpx.Response:
        return await http.post("/execution/workers/claim", json={**claim, "wait_s": wait_s}, headers=fleet)

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S))
            for _ in range(3)
        ]
        holding = asyncio.create_task(claim_now(60, clients[0]))  # the polls' one seat (half of 2)
        async with asyncio.timeout(BOUND_S):
            while True:  # until it holds the seat: a claim of 1 s is then answered at once
                if holding.done():  # the probe came first, and this one found no seat: again
                    holding = asyncio.create_task(claim_now(60, clients[0]))
                await asyncio.sleep(0.2)
                started = time.monotonic()
                probe = await claim_now(1)
                if time.monotonic() - started < 0.5:
                    break
        assert probe.status_code == 200 and probe.json() == {"task_instances": []}, probe.text
        assert not holding.done()

        run = await client.post(
            f"/api/v2/dags/{dag.dag_id}/dagRuns", json={"logical_date": None}, headers=app
        )
        run_id = run.json()["dag_run_id"]
        worker = Worker(server.base_url, fleet_token, [dag], queues=[dag.queue], wait_s=2.0)
        working = asyncio.create_task(worker.run())
        try:
            held = LongPolls(clients[1:], parked_url, app)
            await held.held_on(client)
            async with AsyncStateportClient(server.base_url, app_token) as waiter:
                # The worker claims with its polls' seat held: the run is done while the app's share is
                # full. A wait refused for the share is tried again up to its timeout (an outsider's find:
                # not given up a backoff short of it); its last try waits no time and reads the outcome.
                started = time.monotonic()
                outcome = await waiter.wait(dag.dag_id, run_id, timeout=1.5)
                assert outcome.results == {"answer": 42}
                assert time.monotonic() - started >= 1.45
                # A trigger-and-wait refused for the share is tried again up to its timeout (as a wait
                # is); its last try, at the deadline, waits no time and so holds no seat: the run is
                # made then (and, the worker being quick, may be done when its outcome is read).
                before = await _runs_of(client, dag.dag_id, app)
                started = time.monotonic()
                late: Outcome | None = None
                with contextlib.suppress(WaitTimeout):
                    late = await waiter.run(dag.dag_id, timeout=1.5, idempotency_key="turn-key")
                assert time.monotonic() - started >= 1.45
                assert await _runs_of(client, dag.dag_id, app) == before + 1
                again = await client.post(
                    f"/api/v2/dags/{dag.dag_id}/dagRuns",
                    json={"logical_date": None},
                    headers={**app, "Idempotency-Key": "turn-key"},
                )
                await held.cancel()
                finished = await waiter.wait(dag.dag_id, again.json()["dag_run_id"], timeout=BOUND_S)
            assert late is None or late.results == {"answer": 42}
            assert finished.results == {"answer": 42}
        finally:
            worker.stop(force=True)
            await asyncio.wait_for(working, BOUND_S)
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)


async def _abandon(requests: list[asyncio.Task[httpx.Response]]) -> None:
    """The clients of ``requests`` go away: their connections close mid-wait."""
    for task in requests:
        task.cancel()
    await asyncio.gather(*requests, return_exceptions=True)


QUICK_S = 10.0  # well before the abandoned waits' own time (60 s) would end them


async def test_waits_whose_caller_went_away_give_their_seats_back_at_once(
    server: Server, client: httpx.AsyncClient
) -> None:
    """An outsider's find: a trigger-and-wait without a disconnect policy, an outcome long-poll the server
    did not park (one with a disconnect policy), and state long-polls kept their seats until their own time
    ran out, so a client with a shorter timeout than its wait, retrying, locked itself out with 429."""
    leaver = _auth(server, unique("leaver"))
    dag_id, run_id = await _open_run(client, leaver)
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S))
            for _ in range(2)
        ]
        trigger = {**leaver, "Prefer": "wait=60"}
        unparked = {"timeout": "60", "on_disconnect": "continue"}  # a disconnect policy: not parked
        waits = Held(
            [
                lambda: a.post(
                    f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=trigger
                ),
                lambda: b.get(f"{url}/outcome", params=unparked, headers=leaver),
            ]
        )
        await waits.held(lambda: _outcome_now(client, url, leaver))
        await waits.cancel()
        async with asyncio.timeout(QUICK_S):
            await _until_status(client, url, leaver, 202)

    # State long-polls, on a task instance's token (its own caller).
    ti = (await client.get(f"{url}/taskInstances", headers=leaver)).json()["task_instances"][0]["id"]
    token = {"Authorization": f"Bearer {server.ti_token(ti)}", "If-None-Match": '"0"'}
    key = f"/execution/state/ti/{ti}/absent"

    async def poll(http: httpx.AsyncClient, seconds: str) -> httpx.Response:
        return await http.get(key, params={"wait": seconds}, headers=token)

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S))
            for _ in range(2)
        ]
        polls = Held([functools.partial(poll, http, "60") for http in clients])
        await polls.held(functools.partial(poll, client, "0.1"))
        await polls.cancel()
        async with asyncio.timeout(QUICK_S):
            while (await poll(client, "0.1")).status_code != 304:  # noqa: ASYNC110  # a poll
                await asyncio.sleep(0.05)


async def test_a_burst_of_trigger_and_waits_past_the_share_makes_no_runs_it_cannot_wait_on(
    server: Server, client: httpx.AsyncClient
) -> None:
    """An outsider's find: six at once passed the share's check together, all made their run, and five
    answered 202 with Preference-Applied: wait=5 having waited for nothing. The wait's seat is now taken
    before the run is made: past the share, 429 and no run."""
    burst = _auth(server, unique("burst"))
    dag_id, run_id = await _open_run(client, burst)
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as other:
        held = LongPolls([other], url, burst)  # one of the share's two
        await asyncio.sleep(0.5)
        before = await _runs_of(client, dag_id, burst)
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/api/v2/dags/{dag_id}/dagRuns",
                    json={"logical_date": None},
                    headers={**burst, "Prefer": "wait=2"},
                )
                for _ in range(6)
            )
        )
        await held.cancel()
    statuses = sorted(a.status_code for a in answers)
    # One seat of the share's two was held (or, had the long-poll not arrived yet, none): one or two waited.
    assert statuses.count(429) >= 4, statuses
    assert await _runs_of(client, dag_id, burst) - before == 6 - statuses.count(429)
    for answer in answers:
        if answer.status_code == 202:
            assert answer.headers["preference-applied"] == "wait=2"


async def test_a_token_and_its_tasks_hold_one_share_and_no_task_holds_all_of_it(
    server: Server, client: httpx.AsyncClient
) -> None:
    """Outsiders' finds. Each task token a caller of its own let a worker holding several task instances
    (a mapped task's) hold every waiter of the process with their state watches. Counted as one share of
    their own beside the token's, a worker token with its tasks held every seat of the process (two
    shares of half each), and one task's six watches took all its siblings' room: a sibling's one watch
    was refused for 60 s and failed its task. Counted as the worker itself, they crowded out its claims,
    and it stopped claiming."""
    owner = unique("fleet")
    api = _auth(server, owner)
    dag_ids = []
    for _ in range(2):
        dag_id, _run = await _open_run(client, api)
        dag_ids.append(dag_id)
    worker = {"Authorization": f"Bearer {server.api_token('worker', subject=owner)}"}
    claim = {"worker_id": unique("w"), "queues": ["default"], "max_tasks": 2, "wait_s": 0, "dag_ids": dag_ids}
    claimed = (await client.post("/execution/workers/claim", json=claim, headers=worker)).json()
    first, second = claimed["task_instances"]

    def watch_of(ti: dict[str, Any]) -> tuple[str, dict[str, str]]:
        url = f"/execution/state/ti/{ti['id']}/k"
        return url, {"Authorization": f"Bearer {ti['token']}", "Accept": "text/event-stream"}

    async with AsyncExitStack() as streams:
        assert await _stream(streams, client, *watch_of(first)) == ": watching"
        refused = await client.get(*watch_of(first)[:1], headers=watch_of(first)[1])
        assert refused.status_code == 429, refused.text  # one task instance: half its caller's share
        assert "this task instance holds 1 waits" in refused.json()["detail"]["message"]
        # Its sibling, through another token of the same claim, still watches.
        assert await _stream(streams, client, *watch_of(second)) == ": watching"
        # The two hold the caller's share: the token's own waits are refused too, not a share apart.
        dag_id, run_id = await _open_run(client, api)
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        assert _refused(await _outcome_now(client, url, api))
        # Its workers' claim and stop polls find no seat: they are answered at once, not refused.
        own = {**claim, "max_tasks": 1, "wait_s": 0.5, "dag_ids": [unique("none")]}
        waited_claim = await client.post("/execution/workers/claim", json=own, headers=worker)
        assert waited_claim.status_code == 200, waited_claim.text
        running = {name: first[name] for name in ("id", "dag_id", "run_id")}
        stops = {"task_instances": [running], "wait_s": 0.5}
        waited_stops = await client.post("/execution/workers/stops", json=stops, headers=worker)
        assert waited_stops.status_code == 200, waited_stops.text
        other = _auth(server, unique("other"))  # another caller still waits
        dag_id, run_id = await _open_run(client, other)
        waited = await _outcome_now(client, f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", other)
        assert waited.status_code == 202, waited.text  # it waited (a moment), and the run goes on


async def _claims_counted(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    prefix = 'stateport_http_requests_total{method="POST",route="/execution/workers/claim"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def test_a_claim_past_its_polls_share_is_answered_at_once_and_holds_no_seat(
    server: Server, client: httpx.AsyncClient
) -> None:
    """Half the caller's share: a claim or stop poll past it does not wait, and is not refused; the
    token's other waits still fit (its polls are inside its share)."""
    owner = unique("polls")
    worker = {"Authorization": f"Bearer {server.api_token('worker', *SCOPES, subject=owner)}"}
    claim = {"worker_id": unique("w"), "queues": [unique("nobody")], "max_tasks": 1, "wait_s": 60}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as other:

        def hold() -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(other.post("/execution/workers/claim", json=claim, headers=worker))

        holding = hold()
        dag_id, run_id = await _open_run(client, worker)
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        probe = {**claim, "wait_s": 1}
        async with asyncio.timeout(BOUND_S):
            while True:  # until it holds the seat: a claim of 1 s is then answered at once
                if holding.done():
                    holding = hold()
                await asyncio.sleep(0.2)
                started = time.monotonic()
                answer = await client.post("/execution/workers/claim", json=probe, headers=worker)
                if time.monotonic() - started < 0.5:
                    break
        assert answer.status_code == 200 and answer.json() == {"task_instances": []}
        ti = (await client.get(f"{url}/taskInstances", headers=worker)).json()["task_instances"][0]
        stops = {"task_instances": [{"id": ti["id"], "dag_id": dag_id, "run_id": run_id}], "wait_s": 5}
        started = time.monotonic()
        answered = await client.post("/execution/workers/stops", json=stops, headers=worker)
        assert answered.status_code == 200 and time.monotonic() - started < 2.5, answered.text
        waited = await _outcome_now(client, url, worker)  # the share's other seat
        assert waited.status_code == 202, waited.text
        # A worker answered at once asks again a moment later, not in a loop.
        idle = Worker(server.base_url, worker["Authorization"][7:], [], queues=[unique("none")], wait_s=20.0)
        before = await _claims_counted(client)
        working = asyncio.create_task(idle.run())
        await asyncio.sleep(3.0)
        idle.stop(force=True)
        await asyncio.wait_for(working, BOUND_S)
        assert 1 <= await _claims_counted(client) - before <= 8
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)


async def test_a_tasks_watch_refused_a_seat_reads_instead_and_keeps_its_timeout(
    server: Server, client: httpx.AsyncClient
) -> None:
    """An outsider's find: a task's ``watch(timeout=5)`` refused a seat (429) was tried again for 60 s, past
    its own timeout, and then failed its task. Refused, a watch reads the key (no seat) and waits on the
    worker's side: it answers a change it reads, and None at its own timeout."""
    ti, token, held = await _a_task(server, client, "watcher")
    async with (
        AsyncExitStack() as streams,
        await AsyncTaskStateAccessor.for_task_instance(ti, token, server.base_url) as state,
    ):
        for _ in range(2):  # the task instance's share (a token of its own: its caller's 2)
            assert await _stream(streams, client, f"/execution/state/ti/{ti}/held", held) == ": watching"
        started = time.monotonic()
        assert await state.watch("k", version=0, timeout=1.5) is None
        assert 1.4 <= time.monotonic() - started < 10
        await state.set("k", {"n": 1})
        started = time.monotonic()
        change = await state.watch("k", version=0, timeout=30)
        assert change is not None and change.value == {"n": 1} and change.version == 1
        assert time.monotonic() - started < 10
        watching = asyncio.create_task(state.watch("k", version=1, timeout=30))
        await asyncio.sleep(1.5)
        await state.set("k", {"n": 2})
        change = await asyncio.wait_for(watching, BOUND_S)
        assert change is not None and change.value == {"n": 2}


def _refused_state_reads(server: Server) -> float:
    """How many state requests the server refused 429, by its own metrics."""
    families = text_string_to_metric_families(httpx.get(f"{server.base_url}/metrics", timeout=30).text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "stateport_http_requests_total"
        and sample.labels.get("status") == "429"
        and sample.labels.get("route", "").startswith("/execution/state/ti/")
    )


async def test_a_tasks_watch_refused_a_seat_again_and_again_asks_less_and_less_often(
    server: Server, client: httpx.AsyncClient
) -> None:
    """An outsider's find: a watch refused a seat asked again every second for as long as it was refused
    (40 such watches of one task cost the server about 9% of a core). Its pauses double, up to 5 s: in 9 s,
    asked at 0, 1, 3 and 7 s, not 9 times."""
    ti, token, held = await _a_task(server, client, "backoff")
    async with (
        AsyncExitStack() as streams,
        await AsyncTaskStateAccessor.for_task_instance(ti, token, server.base_url) as state,
    ):
        for _ in range(2):  # the task instance's share, as above
            assert await _stream(streams, client, f"/execution/state/ti/{ti}/held", held) == ": watching"
        before = await asyncio.to_thread(_refused_state_reads, server)
        assert await state.watch("k", version=0, timeout=9) is None
        refused = await asyncio.to_thread(_refused_state_reads, server) - before
        assert 2 <= refused <= 5, refused


async def _a_task(server: Server, client: httpx.AsyncClient, who: str) -> tuple[str, str, dict[str, str]]:
    """A task instance of a run opened by a caller of its own: its id, a token of its own, and the headers
    of a state stream opened with that token."""
    api = _auth(server, unique(who))
    dag_id, run_id = await _open_run(client, api)
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    ti: str = (await client.get(f"{url}/taskInstances", headers=api)).json()["task_instances"][0]["id"]
    token = server.ti_token(ti)
    return ti, token, {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
