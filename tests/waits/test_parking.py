"""Outcome long-polls parked before the routes (``stateport.http.parking``): which requests wait there, what
they carry on to the route, and that the route's answers are unchanged by it.

``OutcomeParking`` is driven as the server drives it, over the real services on SQLite and PostgreSQL;
the app behind it is a recorder of what reaches it, since what matters here is when a request goes on
and what it carries (the routes' own answers are tested through the whole app in test_http.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.types import HTTPDisconnectEvent

from stateport.bootstrap import Services
from stateport.domain.models import Run
from stateport.http.app import create_app
from stateport.http.parking import OutcomeParking
from stateport.http.waits import PARKED_RUN
from tests.waits.conftest import api, register
from tests.waits.test_http import SIMPLE, claim, run_url, succeed, trigger


class Recorder:
    """The app behind the parking: records when each request reached it and what its state carried."""

    def __init__(self) -> None:
        self.reached: list[tuple[float, Run | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append((time.monotonic(), scope["state"].get(PARKED_RUN)))


def scope_of(
    app: Litestar, path: str, query: str = "", headers: dict[str, str] | None = None, **kw: Any
) -> Any:
    return {
        "type": "http",
        "method": kw.get("method", "GET"),
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "app": app,
        "state": {},
    }


async def nothing() -> HTTPDisconnectEvent:
    return {"type": "http.disconnect"}


async def nowhere(message: Any) -> None:
    pass


@pytest.fixture
def app(services: Services) -> Litestar:
    return create_app(services.settings, services)


async def test_a_long_poll_waits_before_the_route_and_brings_the_run_it_ended_on(
    app: Litestar, services: Services, client: httpx.AsyncClient
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    recorder = Recorder()
    parking = OutcomeParking(recorder)
    scope = scope_of(app, run_url(dag_id, run_id, "/outcome"), "timeout=20", api(services, "runs:read"))
    poll = asyncio.ensure_future(parking(scope, nothing, nowhere))
    async with asyncio.timeout(10):
        while services.waits.watching() == 0:  # noqa: ASYNC110  # the watch has no event to wait on
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert recorder.reached == [], "the request reached the route before the run had an outcome"
    finished_at = time.monotonic()
    await succeed(services, await claim(services, queue, "answer"), {"n": 1})
    await asyncio.wait_for(poll, 10)
    [(reached_at, run)] = recorder.reached
    assert reached_at >= finished_at
    assert run is not None and run.outcome is not None and run.run_id == run_id
    assert services.waits.watching() == 0


async def test_a_long_poll_whose_time_passes_brings_the_run_as_it_stands(
    app: Litestar, services: Services, client: httpx.AsyncClient
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    recorder = Recorder()
    scope = scope_of(app, run_url(dag_id, run_id, "/outcome"), "timeout=0.3", api(services, "runs:read"))
    started = time.monotonic()
    await OutcomeParking(recorder)(scope, nothing, nowhere)
    [(reached_at, run)] = recorder.reached
    assert reached_at - started >= 0.3
    assert run is not None and run.outcome is None and run.state.value == "queued"


@pytest.mark.parametrize(
    ("tail", "query", "scopes", "method"),
    [
        ("/outcome", "timeout=20", (), "GET"),  # no token
        ("/outcome", "timeout=20", ("runs:write",), "GET"),  # the wrong scope
        ("/outcome", "timeout=20&x=1", ("runs:read",), "GET"),  # a parameter the route judges
        ("/outcome", "timeout=20&timeout=3", ("runs:read",), "GET"),
        ("/outcome", "timeout=soon", ("runs:read",), "GET"),
        ("/outcome", "timeout=%FF", ("runs:read",), "GET"),
        ("/outcome", "timeout=20", ("runs:read",), "POST"),
        ("/wait", "interval=1", ("runs:read",), "GET"),
        ("/outcome/x", "timeout=20", ("runs:read",), "GET"),
    ],
)
async def test_what_parking_is_not_sure_of_goes_on_to_the_route_at_once(
    app: Litestar,
    services: Services,
    client: httpx.AsyncClient,
    tail: str,
    query: str,
    scopes: tuple[str, ...],
    method: str,
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    recorder = Recorder()
    headers = api(services, *scopes) if scopes else {}
    scope = scope_of(app, run_url(dag_id, run_id, tail), query, headers, method=method)
    await asyncio.wait_for(OutcomeParking(recorder)(scope, nothing, nowhere), 2)
    assert [run for _, run in recorder.reached] == [None]


async def test_an_unknown_run_goes_on_to_the_route_at_once(app: Litestar, services: Services) -> None:
    recorder = Recorder()
    scope = scope_of(app, run_url("nope", "nope", "/outcome"), "timeout=20", api(services, "runs:read"))
    await asyncio.wait_for(OutcomeParking(recorder)(scope, nothing, nowhere), 5)
    assert [run for _, run in recorder.reached] == [None]


async def test_the_route_answers_a_parked_poll_as_it_answers_any(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Through the whole app: the parked poll's answer is the route's, correlation id and all.
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    headers = {**api(services, "runs:read"), "Correlation-ID": "c-1"}
    pending = await client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 0.2}, headers=headers)
    assert (pending.status_code, pending.json()) == (202, {"dag_run_id": run_id, "state": "queued"})
    assert pending.headers["correlation-id"] == "c-1"
    poll = asyncio.create_task(
        client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 20}, headers=headers)
    )
    await succeed(services, await claim(services, queue, "answer"), {"n": 2})
    done = await asyncio.wait_for(poll, 10)
    assert (done.status_code, done.json()) == (200, {"state": "success", "results": {"answer": {"n": 2}}})
    assert done.headers["correlation-id"] == "c-1"


async def test_a_token_that_expires_while_its_request_waits_still_gets_the_answer(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token is checked when the request arrives, as when the route itself waited: a caller is not
    # refused for the time the server made it wait.
    monkeypatch.setattr(services.tokens, "leeway_s", 0.0)
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    token = services.tokens.mint_api_token("tester", frozenset({"runs:read"}), ttl_s=2)
    headers = {"Authorization": f"Bearer {token}"}
    answer = await client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 3.5}, headers=headers)
    assert (answer.status_code, answer.json()) == (202, {"dag_run_id": run_id, "state": "queued"})
    late = await client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 0}, headers=headers)
    assert late.status_code == 401  # arriving with it expired is another matter
