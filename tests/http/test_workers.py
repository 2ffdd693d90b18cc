"""The worker routes over the app from ``create_app`` (SQLite and PostgreSQL): claim, heartbeat, report."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stateport.bootstrap import Services, open_services
from stateport.config import Settings
from stateport.domain.engine.progress import MAX_GIVE_BACKS
from stateport.domain.errors import NotFound
from stateport.domain.models import DagSpec
from stateport.http.app import create_app
from tests.apps import app_for
from tests.http.conftest import make_settings, random_ti
from tests.services import unique

CLAIM = "/execution/workers/claim"


def api(services: Services, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.tokens.mint_api_token('tester', frozenset(scopes))}"}


def ti_auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """Services and an in-process client for one test that needs its own settings."""
    services = await open_services(settings, migrate=False)
    try:
        app = app_for(services)  # built once per worker and settings (tests/apps.py)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
        async with httpx.AsyncClient(transport=transport, base_url="http://stateport") as client:
            yield services, client
    finally:
        await services.close()


async def start(services: Services, tasks: list[dict[str, Any]], **spec: Any) -> tuple[str, str, str]:
    """Register a DAG whose tasks use a fresh queue and trigger it; return (dag_id, run_id, queue)."""
    queue = unique("q")
    for task in tasks:
        task.setdefault("queue", queue)
    dag_id = unique("dag")
    await services.runs.register_dag(dag_id, msgspec.convert({"tasks": tasks, **spec}, DagSpec))
    run = await services.runs.trigger(dag_id, conf={"who": "test"})
    return dag_id, run.run_id, queue


async def claim(
    client: httpx.AsyncClient, services: Services, queue: str, *, max_tasks: int = 1, wait_s: float = 0
) -> list[dict[str, Any]]:
    body = {"worker_id": "w1", "queues": [queue], "max_tasks": max_tasks, "wait_s": wait_s}
    response = await client.post(CLAIM, json=body, headers=api(services, "worker"))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["task_instances"]
    return found


async def test_claim_returns_the_task_instance_with_token_conf_inputs_and_lease(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, queue = await start(services, [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}])
    (a,) = await claim(client, services, queue, max_tasks=5)
    assert set(a) == {
        "id", "dag_id", "run_id", "task_id", "map_index", "try_number", "token", "conf", "inputs",
        "lease_expires_at",
    }  # fmt: skip
    assert (a["dag_id"], a["run_id"], a["task_id"], a["map_index"], a["try_number"]) == (
        dag_id, run_id, "a", -1, 1,
    )  # fmt: skip
    assert a["conf"] == {"who": "test"} and a["inputs"] == {} and a["lease_expires_at"]
    assert services.tokens.verify_task_token(a["token"]).subject == a["id"]
    response = await client.patch(
        f"/execution/task-instances/{a['id']}/state",
        json={"state": "success", "result": {"v": [1, 2]}},
        headers=ti_auth(a["token"]),
    )
    assert response.status_code == 204 and response.content == b""
    (b,) = await claim(client, services, queue)
    assert b["task_id"] == "b" and b["inputs"] == {"a": {"v": [1, 2]}}


async def test_a_claim_of_many_queues_takes_from_those_with_work_in_their_order(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Each queue's claim carries the claim's DAG ids and skipped tasks: 100 queues of a claim naming 2,000
    # held the database for seconds (an outsider's find). The queues with work are asked for first.
    first_dag, _, first = await start(services, [{"task_id": "a"}])
    second_dag, _, second = await start(services, [{"task_id": "b"}])
    queues = [unique("empty") for _ in range(97)]
    queues[40:40] = [second]
    queues[70:70] = [first, second]
    dag_ids = [first_dag, second_dag, *(unique("other") for _ in range(998))]
    skip = [{"dag_id": unique("other"), "task_id": "t"} for _ in range(1000)]
    body = {"worker_id": "w1", "queues": queues, "max_tasks": 5, "wait_s": 0, "dag_ids": dag_ids}
    answer = await client.post(CLAIM, json={**body, "skip_tasks": skip}, headers=api(services, "worker"))
    assert answer.status_code == 200, answer.text
    assert [ti["dag_id"] for ti in answer.json()["task_instances"]] == [second_dag, first_dag]


async def test_an_empty_claim_answers_an_empty_list(client: httpx.AsyncClient, services: Services) -> None:
    assert await claim(client, services, unique("q")) == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"queues": ["default"]}, "worker_id"),
        ({"worker_id": "w", "max_tasks": -1}, "max_tasks"),
        ({"worker_id": "w", "max_tasks": 101}, "max_tasks"),
        ({"worker_id": "w", "wait_s": 61}, "wait_s"),
        ({"worker_id": "w", "wait_s": -1}, "wait_s"),
        ({"worker_id": "w", "queues": []}, "queues"),
        ({"worker_id": "w", "extra": 1}, "extra"),
        ({"worker_id": "w", "dag_ids": [f"d{i}" for i in range(1001)]}, "dag_ids"),
        ({"worker_id": "w", "dag_ids": ["ok", ""]}, "dag_ids"),
        ({"worker_id": "w", "dag_ids": ["bad\nname"]}, "dag_ids"),
        ({"worker_id": "w", "dag_ids": "inference"}, "dag_ids"),
        ({"worker_id": "w", "dag_ids": [7]}, "dag_ids"),
    ],
)
async def test_claim_bodies_are_validated(
    client: httpx.AsyncClient, services: Services, body: dict[str, Any], where: str
) -> None:
    response = await client.post(CLAIM, json=body, headers=api(services, "worker"))
    assert response.status_code == 422, response.text
    assert where in str(response.json()["detail"][0]["loc"])


async def test_a_claim_naming_dags_is_handed_only_their_task_instances(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Two DAGs on one queue, the other's task queued first.
    other_dag, _, queue = await start(services, [{"task_id": "other"}])
    served = unique("dag")
    spec = {"tasks": [{"task_id": "mine", "queue": queue}]}
    await services.runs.register_dag(served, msgspec.convert(spec, DagSpec))
    await services.runs.trigger(served)

    async def claim_of(dag_ids: list[str] | None) -> list[dict[str, Any]]:
        body = {"worker_id": "w", "queues": [queue], "max_tasks": 5, "wait_s": 0, "dag_ids": dag_ids}
        response = await client.post(CLAIM, json=body, headers=api(services, "worker"))
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["task_instances"]
        return found

    assert await claim_of([]) == []
    assert await claim_of([unique("dag")]) == []
    (mine,) = await claim_of([served, unique("dag")])
    assert (mine["dag_id"], mine["task_id"]) == (served, "mine")
    # The other DAG's task is still queued; a claim naming no DAGs (null, as absent) takes it.
    (other,) = await claim_of(None)
    assert (other["dag_id"], other["task_id"]) == (other_dag, "other")


async def test_claim_needs_the_worker_scope(client: httpx.AsyncClient, services: Services) -> None:
    body = {"worker_id": "w", "queues": [unique("q")], "wait_s": 0}
    assert (await client.post(CLAIM, json=body)).status_code == 401
    lacking = await client.post(CLAIM, json=body, headers=api(services, "runs:read"))
    # A string detail, as every authentication error's (an outsider's find: this one's was {reason, message}).
    assert (lacking.status_code, lacking.json()) == (
        403,
        {"detail": "This token lacks the 'worker' scope required for this endpoint"},
    )
    ti_token = services.tokens.mint_task_token(uuid.uuid4())
    assert (await client.post(CLAIM, json=body, headers=ti_auth(ti_token))).status_code == 403


async def test_heartbeat_extends_the_lease_and_answers_409_once_the_try_ended(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": "t", "retries": 1}])
    (t,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{t['id']}/heartbeat"
    beat = {"hostname": "host", "pid": 42}
    response = await client.put(url, json=beat, headers=ti_auth(t["token"]))
    assert response.status_code == 204 and response.content == b""
    ti = await services.stores.runs.get_task_instance(uuid.UUID(t["id"]))
    assert ti is not None and ti.lease_expires_at is not None
    assert ti.lease_expires_at.isoformat() > t["lease_expires_at"].replace("Z", "+00:00")
    failed = {"state": "failed", "error": "flaky", "retryable": True}
    state_url = f"/execution/task-instances/{t['id']}/state"
    assert (await client.patch(state_url, json=failed, headers=ti_auth(t["token"]))).status_code == 204
    response = await client.put(url, json=beat, headers=ti_auth(t["token"]))
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail["reason"] == "invalid_state" and detail["current_state"] == "up_for_retry"
    assert detail["message"]


async def test_heartbeat_auth_and_bodies(client: httpx.AsyncClient, services: Services) -> None:
    _, _, queue = await start(services, [{"task_id": "t"}])
    (t,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{t['id']}/heartbeat"
    beat = {"hostname": "host", "pid": 42}
    assert (await client.put(url, json=beat)).status_code == 401
    other = services.tokens.mint_task_token(uuid.uuid4())
    response = await client.put(url, json=beat, headers=ti_auth(other))
    assert response.status_code == 403
    assert response.json() == {"detail": "Token subject does not match task instance ID"}
    assert (await client.put(url, json={"hostname": "h"}, headers=ti_auth(t["token"]))).status_code == 422
    missing = uuid.uuid4()
    response = await client.put(
        f"/execution/task-instances/{missing}/heartbeat",
        json=beat,
        headers=ti_auth(services.tokens.mint_task_token(missing)),
    )
    assert response.status_code == 404 and response.json()["detail"]["reason"] == "not_found"


async def test_reports_are_idempotent_and_conflicts_are_409(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
    (t,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{t['id']}/state"
    headers = ti_auth(t["token"])
    success = {"state": "success", "result": {"answer": 42}}
    assert (await client.patch(url, json=success, headers=headers)).status_code == 204
    assert (await client.patch(url, json=success, headers=headers)).status_code == 204
    other = {"state": "success", "result": {"answer": 43}}
    response = await client.patch(url, json=other, headers=headers)
    assert response.status_code == 409 and response.json()["detail"]["current_state"] == "success"
    failed = {"state": "failed", "error": "late"}
    assert (await client.patch(url, json=failed, headers=headers)).status_code == 409
    assert (await client.patch(url, json={"state": "bogus"}, headers=headers)).status_code == 422
    # No result (the Airflow Task SDK's success, whose value was pushed before): it says only that the try
    # succeeded, which it did: a repeat, 204, and the result stays the one reported.
    assert (await client.patch(url, json={"state": "success"}, headers=headers)).status_code == 204
    run = await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    assert run.json()["state"] == "success"
    assert run.json()["outcome"] == {"state": "success", "results": {"t": {"answer": 42}}}


def report_claim(
    services: Services, queue: str, *scopes: str, max_tasks: int = 1, worker_id: str = "w7"
) -> dict[str, str]:
    """The headers of a report that claims what it makes ready, with a worker's API token of ``scopes``."""
    token = services.tokens.mint_api_token("tester", frozenset(scopes or ("worker",)))
    claim = msgspec.json.encode({"worker_id": worker_id, "queues": [queue], "max_tasks": max_tasks}).decode()
    return {"Stateport-Claim": claim, "Stateport-Worker-Token": f"Bearer {token}"}


async def test_a_report_with_a_claim_answers_the_task_instances_it_made_ready(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, queue = await start(
        services, [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}], result_task="b"
    )
    (a,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{a['id']}/state"
    headers = {**ti_auth(a["token"]), **report_claim(services, queue)}
    response = await client.patch(url, json={"state": "success", "result": 1}, headers=headers)
    assert response.status_code == 200, response.text
    (b,) = response.json()["task_instances"]
    assert (b["dag_id"], b["run_id"], b["task_id"], b["inputs"]) == (dag_id, run_id, "b", {"a": 1})
    stored = await services.runs.task_instances(dag_id, run_id)
    assert [(ti.task_id, ti.state, ti.lease_owner) for ti in stored if ti.task_id == "b"] == [
        ("b", "running", "w7")
    ]
    # b's token is its own: it reports b, and the run ends with nothing more to hand out.
    last = f"/execution/task-instances/{b['id']}/state"
    headers = {**ti_auth(b["token"]), **report_claim(services, queue)}
    response = await client.patch(last, json={"state": "success", "result": 2}, headers=headers)
    assert response.status_code == 200 and response.json() == {"task_instances": []}
    # The same report again (a worker that retries it) is accepted and hands nothing out.
    response = await client.patch(last, json={"state": "success", "result": 2}, headers=headers)
    assert response.status_code == 200 and response.json() == {"task_instances": []}
    run = await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    assert run.json()["outcome"] == {"state": "success", "results": {"b": 2}}


async def test_a_report_claims_only_with_a_worker_token_and_a_valid_claim(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}])
    (a,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{a['id']}/state"
    success = {"state": "success", "result": 1}
    claim_only = {k: v for k, v in report_claim(services, queue).items() if k == "Stateport-Claim"}
    refused = [
        ({**claim_only}, 401),  # the task-instance token alone claims nothing
        ({**claim_only, "Stateport-Worker-Token": f"Bearer {a['token']}"}, 403),  # nor as a worker token
        (report_claim(services, queue, "runs:read"), 403),
        ({**report_claim(services, queue), "Stateport-Claim": "{not json"}, 422),
        ({**report_claim(services, queue), "Stateport-Claim": '{"worker_id": "w7", "queues": []}'}, 422),
        (report_claim(services, queue, max_tasks=101), 422),
        # Nested too deep, at its top and in a member (an outsider's find: reported at ["body"]).
        ({**report_claim(services, queue), "Stateport-Claim": "[" * 70 + "]" * 70}, 422),
        (
            {
                **report_claim(services, queue),
                "Stateport-Claim": msgspec.json.encode(
                    {
                        "worker_id": "w7",
                        "queues": [queue],
                        "skip_tasks": [{"dag_id": "a", "task_id": [[[[]]]]}],
                    }
                )
                .decode()
                .replace("[[[[]]]]", "[" * 70 + "]" * 70),
            },
            422,
        ),
        # A member named twice, as a claim's body refuses it (an outsider's find: the last worker_id got b).
        (
            {
                **report_claim(services, queue),
                "Stateport-Claim": f'{{"worker_id": "w7", "worker_id": "zz", "queues": ["{queue}"]}}',
            },
            422,
        ),
    ]
    # A header sent on two lines: which one a proxy would read is not known (the first was taken).
    twice = report_claim(services, queue)
    for doubled in ("Stateport-Claim", "Stateport-Worker-Token"):
        lines = [*ti_auth(a["token"]).items(), *twice.items(), (doubled, twice[doubled])]
        response = await client.patch(url, json=success, headers=lines)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["header", doubled.lower()], response.text
    for extra, status in refused:
        response = await client.patch(url, json=success, headers={**ti_auth(a["token"]), **extra})
        assert response.status_code == status, (extra, response.text)
        if status == 422:
            # The header is at fault, not the report's body: a worker resends the report without it.
            assert response.json()["detail"][0]["loc"][:2] == ["header", "stateport-claim"], response.text
    # None of them applied the report: a plain one still does, and b is queued for any claim.
    assert (await client.patch(url, json=success, headers=ti_auth(a["token"]))).status_code == 204
    (b,) = await claim(client, services, queue)
    assert b["task_id"] == "b"


async def test_release_requeues_without_a_retry(client: httpx.AsyncClient, services: Services) -> None:
    _, _, queue = await start(services, [{"task_id": "t"}])
    (first,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{first['id']}/state"
    released = {"state": "released"}
    assert (await client.patch(url, json=released, headers=ti_auth(first["token"]))).status_code == 204
    (second,) = await claim(client, services, queue)
    assert second["try_number"] == 2 and second["id"] != first["id"]


async def test_a_release_with_a_reason_is_a_bounded_give_back(
    client: httpx.AsyncClient, services: Services
) -> None:
    # A worker without code for the task gives it back: no retry used (the task has none), but only the
    # first MAX_GIVE_BACKS times, so a task no worker can run ends failed rather than going round for ever.
    dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
    reason = {"state": "released", "reason": "worker w1 has no task t"}
    for n in range(MAX_GIVE_BACKS + 1):
        (t,) = await claim(client, services, queue)
        assert t["try_number"] == n + 1
        url = f"/execution/task-instances/{t['id']}/state"
        assert (await client.patch(url, json=reason, headers=ti_auth(t["token"]))).status_code == 204
        # The same report again changes nothing.
        assert (await client.patch(url, json=reason, headers=ti_auth(t["token"]))).status_code == 204
    assert await claim(client, services, queue) == []
    tries = await services.stores.runs.list_task_tries(dag_id, run_id, "t")
    states = [ti.state.value for ti in tries]
    assert states == ["up_for_retry"] * MAX_GIVE_BACKS + ["failed"]
    assert {ti.error for ti in tries} == {"given back by the worker: worker w1 has no task t"}
    run = await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    assert run.json()["state"] == "failed"


@pytest.mark.parametrize("reason", ["", 7, "x" * 4001])
async def test_a_release_reason_is_validated(
    client: httpx.AsyncClient, services: Services, reason: Any
) -> None:
    _, _, queue = await start(services, [{"task_id": "t"}])
    (t,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{t['id']}/state"
    body = {"state": "released", "reason": reason}
    response = await client.patch(url, json=body, headers=ti_auth(t["token"]))
    assert response.status_code == 422, response.text
    assert "reason" in str(response.json()["detail"][0]["loc"])


async def test_a_failed_outcome_shows_on_the_run(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
    (t,) = await claim(client, services, queue)
    failed = {"state": "failed", "error": "boom", "retryable": False}
    url = f"/execution/task-instances/{t['id']}/state"
    assert (await client.patch(url, json=failed, headers=ti_auth(t["token"]))).status_code == 204
    run = (
        await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    ).json()
    assert run["state"] == "failed"
    assert run["outcome"] == {
        "state": "failed",
        "failed_task": "t",
        "reason": "task 't' failed",
        "error": "boom",
    }


async def test_a_success_outcome_carries_results_even_without_a_result_task(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Design section 5: the outcome is {"state", "results"}; a DAG without a result task has no results to
    # give, and its outcome said {"state": "success"} alone (an outsider's find).
    dag_id, run_id, queue = await start(services, [{"task_id": "t"}])
    (t,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{t['id']}/state"
    report = {"state": "success", "result": 5}
    assert (await client.patch(url, json=report, headers=ti_auth(t["token"]))).status_code == 204
    run_url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    run = (await client.get(run_url, headers=api(services, "runs:read"))).json()
    assert run["outcome"] == {"state": "success", "results": {}}
    outcome = await client.get(f"{run_url}/outcome", headers=api(services, "runs:read"))
    assert (outcome.status_code, outcome.json()) == (200, {"state": "success", "results": {}})


async def test_a_worker_renews_the_tokens_of_the_tries_it_runs(
    client: httpx.AsyncClient, services: Services
) -> None:
    # A task-instance token that expired while its worker could not reach the server (an outage longer
    # than its life) lost a try its worker still ran: the worker token gets fresh ones for its own tries.
    _, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b"}])
    a, b = await claim(client, services, queue, max_tasks=2)
    url = "/execution/workers/task-tokens"
    body = {
        "worker_id": "w1",
        "task_instances": [a["id"], b["id"], a["id"], str(random_ti())],
        "tokens": [a["token"], b["token"], "not a token"],
    }
    renewed = await client.post(url, json=body, headers=api(services, "worker"))
    assert renewed.status_code == 200, renewed.text
    tokens = renewed.json()["tokens"]
    assert set(tokens) == {a["id"], b["id"]}
    assert services.tokens.verify_task_token(tokens[a["id"]]).subject == a["id"]
    # The new token works where the old one did; a try that ended, or another worker's, gets none.
    state = f"/execution/task-instances/{a['id']}/state"
    done = await client.patch(state, json={"state": "success", "result": 1}, headers=ti_auth(tokens[a["id"]]))
    assert done.status_code == 204, done.text
    again = await client.post(url, json=body, headers=api(services, "worker"))
    assert set(again.json()["tokens"]) == {b["id"]}
    other = await client.post(url, json={**body, "worker_id": "w2"}, headers=api(services, "worker"))
    assert other.json()["tokens"] == {}
    # Only a worker token, and a bounded list.
    denied = await client.post(url, json=body, headers=api(services, "runs:write"))
    assert denied.status_code == 403, denied.text
    many = {"worker_id": "w1", "task_instances": [str(random_ti()) for _ in range(101)], "tokens": []}
    assert (await client.post(url, json=many, headers=api(services, "worker"))).status_code == 422


async def test_a_renewal_takes_its_most_tokens_at_an_rsa_tokens_length(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: 100 tries' own tokens signed with a 4096-bit RSA key (1,083 characters each) made
    # a 113 KB body, and the route's 64 KiB answered 413 where the documented maximum should pass.
    body = {
        "worker_id": "w1",
        "task_instances": [str(random_ti()) for _ in range(100)],
        "tokens": ["e" * 1100] * 100,
    }
    renewed = await client.post("/execution/workers/task-tokens", json=body, headers=api(services, "worker"))
    assert (renewed.status_code, renewed.json()) == (200, {"tokens": {}}), renewed.text[:300]


async def test_a_worker_token_gets_no_token_of_another_fleets_tries(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: any worker token naming another fleet's worker id (listed by the worker registry)
    # got fresh tokens for the tries it ran, then wrote their state and reported their results.
    _, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b"}])
    (a,) = await claim(client, services, queue, max_tasks=1)  # fleet A's worker w1 ("tester")
    other = {"Authorization": f"Bearer {services.tokens.mint_api_token('fleet-b', frozenset({'worker'}))}"}
    claimed = await client.post(
        "/execution/workers/claim",
        json={"worker_id": "w9", "queues": [queue], "max_tasks": 1, "wait_s": 5},
        headers=other,
    )
    (b,) = claimed.json()["task_instances"]  # fleet B's own try, its token B's
    url = "/execution/workers/task-tokens"
    for tokens in ([], [b["token"]], [a["token"]]):  # none, its own, A's (had it leaked): none proves A's
        asked = {"worker_id": "w1", "task_instances": [a["id"]], "tokens": tokens}
        taken = await client.post(url, json=asked, headers=other)
        assert (taken.status_code, taken.json()) == (200, {"tokens": {}}), (tokens, taken.text)
    # A's own worker token, with the try's token, still gets one.
    own = await client.post(
        url,
        json={"worker_id": "w1", "task_instances": [a["id"]], "tokens": [a["token"]]},
        headers=api(services, "worker"),
    )
    assert set(own.json()["tokens"]) == {a["id"]}


async def test_a_claim_naming_another_fleets_worker_is_not_handed_its_tries_again(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: a claim listing what its worker runs (`running`) is handed the tries leased to
    # its worker id that the list lacks. Any worker token naming another fleet's worker id (the registry
    # lists them) with `running: []` took over the tries that worker had not yet heartbeated.
    _, _, queue = await start(services, [{"task_id": "a"}])
    worker = f"w-{uuid.uuid4().hex}"  # of its own: the database holds other tests' tries of w1
    body = {"worker_id": worker, "queues": [queue], "max_tasks": 1, "wait_s": 0}
    handed = await client.post(CLAIM, json=body, headers=api(services, "worker"))  # fleet A's ("tester")
    (a,) = handed.json()["task_instances"]
    other = {"Authorization": f"Bearer {services.tokens.mint_api_token('fleet-b', frozenset({'worker'}))}"}
    body["running"] = []
    taken = await client.post(CLAIM, json=body, headers=other)
    assert (taken.status_code, taken.json()) == (200, {"task_instances": []}), taken.text
    # A's own worker token, which missed the answer, is handed it again.
    own = await client.post(CLAIM, json=body, headers=api(services, "worker"))
    (again,) = own.json()["task_instances"]
    assert (again["id"], again["again"]) == (a["id"], True), again


async def test_a_scrape_shows_how_long_a_queues_oldest_ready_task_instance_has_waited(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: a DAG whose workers were gone, in a queue another DAG's workers polled all the
    # time, set off no alert (claims reached the queue). Its waiting try's age shows it.
    _, _, queue = await start(services, [{"task_id": "a"}])
    other = unique("dag")
    await services.runs.register_dag(
        other, msgspec.convert({"tasks": [{"task_id": "b", "queue": queue}]}, DagSpec)
    )
    body = {"worker_id": unique("w"), "queues": [queue], "max_tasks": 1, "wait_s": 0, "dag_ids": [other]}
    await asyncio.sleep(1.1)
    polled = await client.post(CLAIM, json=body, headers=api(services, "worker"))  # the other DAG's worker
    assert polled.json() == {"task_instances": []}, polled.text

    def gauges(text: str) -> dict[str, float]:
        return {
            f.name: sample.value
            for f in text_string_to_metric_families(text)
            for sample in f.samples
            if sample.labels.get("queue") == queue and f.name.startswith("stateport_queue_")
        }

    scraped = gauges((await client.get("/metrics")).text)
    assert scraped["stateport_queue_depth"] == 1
    assert 1.0 <= scraped["stateport_queue_oldest_ready_seconds"] < 600, scraped
    await claim(client, services, queue)
    assert gauges((await client.get("/metrics")).text) == {}


async def test_an_outcome_wait_with_a_parameter_it_does_not_take_is_a_422_at_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    # A misspelt timeout waited the default 30 s.
    dag_id, run_id, _ = await start(services, [{"task_id": "t"}], result_task="t")
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/outcome"
    got = await asyncio.wait_for(
        client.get(url, params={"timeuot": "1"}, headers=api(services, "runs:read")), 5
    )
    assert got.status_code == 422, got.text
    assert got.json()["detail"][0]["loc"] == ["query", "timeuot"]
    waited = await client.get(url, params={"timeout": "0"}, headers=api(services, "runs:read"))
    assert waited.status_code == 202, waited.text


async def test_a_result_over_the_inline_limit_is_stored_whole(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
    (t,) = await claim(client, services, queue)
    value = {"blob": "x" * (200 * 1024)}  # over the 64 KiB inline limit and the state body limit
    url = f"/execution/task-instances/{t['id']}/state"
    response = await client.patch(
        url, json={"state": "success", "result": value}, headers=ti_auth(t["token"])
    )
    assert response.status_code == 204, response.text
    run = (
        await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    ).json()
    reference = run["outcome"]["results"]["t"]["__stateport_blob__"]
    assert reference["size"] == len(msgspec.json.encode(value))
    assert msgspec.json.decode(await services.blobs.get(reference["ref"])) == value
    served = await client.get(reference["url"], headers=api(services, "runs:read"))  # the server's route
    assert served.status_code == 200 and msgspec.json.decode(served.content) == value


async def test_a_waiting_claim_wakes_on_a_trigger(database_url: str, tmp_path: Path) -> None:
    # The safety re-check is 60 s here, so only the queue's event can answer well within 10 s.
    settings = make_settings(database_url, tmp_path, claim_recheck_s=60)
    async with opened(settings) as (services, client):
        queue = unique("q")
        body = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 60}
        waiting = asyncio.create_task(client.post(CLAIM, json=body, headers=api(services, "worker")))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        dag_id = unique("dag")
        await services.runs.register_dag(
            dag_id, msgspec.convert({"tasks": [{"task_id": "t", "queue": queue}]}, DagSpec)
        )
        await services.runs.trigger(dag_id)
        response = await asyncio.wait_for(waiting, 10)  # woken by the event, not by the 60 s re-check
        assert response.status_code == 200 and len(response.json()["task_instances"]) == 1


async def test_concurrent_claimers_over_http_get_each_task_instance_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": f"t{i}"} for i in range(40)])
    batches = await asyncio.gather(*(claim(client, services, queue, max_tasks=3) for _ in range(10)))
    ids = [t["id"] for batch in batches for t in batch]
    assert len(ids) == 30 and len(set(ids)) == 30
    rest = await claim(client, services, queue, max_tasks=100)
    assert len(rest) == 10 and not {t["id"] for t in rest} & set(ids)


async def test_a_retry_is_handed_to_a_waiting_claim_when_its_delay_ends(
    database_url: str, tmp_path: Path
) -> None:
    # An outsider's find: a retry came a re-check late (its delay plus up to 1.5 s): nothing announced it
    # when it became due. The re-check is 60 s here, so only its announcement can answer in time.
    settings = make_settings(database_url, tmp_path, claim_recheck_s=60)
    async with opened(settings) as (services, client):
        _, _, queue = await start(services, [{"task_id": "t", "retries": 1, "retry_delay_s": 1}])
        (t,) = await claim(client, services, queue)
        failed = {"state": "failed", "error": "blip", "retryable": True}
        url = f"/execution/task-instances/{t['id']}/state"
        assert (await client.patch(url, json=failed, headers=ti_auth(t["token"]))).status_code == 204
        failed_at = time.monotonic()
        retry = await asyncio.wait_for(claim(client, services, queue, wait_s=30), 20)
        waited = time.monotonic() - failed_at
        assert [(r["task_id"], r["try_number"]) for r in retry] == [("t", 2)]
        assert 0.9 <= waited < 10, waited  # its delay, and not the 60 s re-check


async def test_the_server_deletes_finished_runs_past_their_retention(
    database_url: str, tmp_path: Path
) -> None:
    # Retention of one second, checked every 0.1 s, by the cleanup the app's lifespan runs.
    settings = make_settings(database_url, tmp_path, run_retention_days=1 / 86400, cleanup_interval_s=0.1)
    async with opened(settings) as (services, client):
        app = create_app(services.settings, services)
        dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
        (t,) = await claim(client, services, queue)
        done = {"state": "success", "result": {"blob": "x" * (100 * 1024)}}  # stored as a blob
        url = f"/execution/task-instances/{t['id']}/state"
        assert (await client.patch(url, json=done, headers=ti_auth(t["token"]))).status_code == 204
        run_url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        run = (await client.get(run_url, headers=api(services, "runs:read"))).json()
        ref = run["outcome"]["results"]["t"]["__stateport_blob__"]["ref"]
        async with app.lifespan():
            for _ in range(300):
                response = await client.get(run_url, headers=api(services, "runs:read"))
                if response.status_code == 404:
                    break
                await asyncio.sleep(0.1)
        assert response.status_code == 404, response.text
        with pytest.raises(NotFound):
            await services.blobs.get(ref)


async def test_a_claim_hands_out_the_good_task_instances_and_fails_the_one_it_cannot_read(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Issue #12 item 2: an upstream result blob that cannot be read back (written straight into the blob
    # store here; the report route refuses such results) once made every claim on its queue answer 500.
    tasks: list[dict[str, Any]] = [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}]
    dag_id, run_id, queue = await start(services, tasks, result_task="b")
    (a,) = await claim(client, services, queue)
    big = {"blob": "x" * (100 * 1024)}  # over the 64 KiB inline limit: kept as a blob
    url = f"/execution/task-instances/{a['id']}/state"
    ok = await client.patch(url, json={"state": "success", "result": big}, headers=ti_auth(a["token"]))
    assert ok.status_code == 204, ok.text
    (stored,) = [ti for ti in await services.runs.task_instances(dag_id, run_id) if ti.task_id == "a"]
    assert stored.result_ref is not None
    services.settings.blob_path.joinpath(*stored.result_ref.split("/")).write_bytes(b'{"blob": 1e999}')
    others = []
    for _ in range(4):
        others.append(await start(services, [{"task_id": "g", "queue": queue}]))
    claimed = await claim(client, services, queue, max_tasks=5)
    assert sorted(c["run_id"] for c in claimed) == sorted(o[1] for o in others)
    listed = await client.get(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", headers=api(services, "runs:read")
    )
    (b,) = [ti for ti in listed.json()["task_instances"] if ti["task_id"] == "b"]
    assert b["state"] == "failed" and "upstream task 'a' cannot be read" in b["error"], b
    run = await client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=api(services, "runs:read"))
    outcome = run.json()["outcome"]
    assert outcome.pop("error") == b["error"]
    assert outcome == {"state": "failed", "failed_task": "b", "reason": "task 'b' failed"}
    assert await claim(client, services, queue, max_tasks=5) == []  # no new try of b


async def test_a_token_past_its_share_of_rechecked_queues_still_parks_and_gets_work(
    database_url: str, tmp_path: Path
) -> None:
    # Parked claims that agree on queues and filters share one re-read; claims that differ each cost
    # theirs. Past the token's share (3 queues here) its groups re-read less often, but no claim is
    # refused: a refused fleet (workers skipping different tasks in a rolling deploy) would get no work.
    settings = make_settings(database_url, tmp_path, max_claim_rechecks_per_caller=3)
    async with opened(settings) as (services, client):
        mine = api(services, "worker")
        queues = [unique("q") for _ in range(5)]

        def parked(queue: str) -> asyncio.Task[httpx.Response]:
            body = {"worker_id": unique("w"), "queues": [queue], "wait_s": 60}
            return asyncio.create_task(client.post(CLAIM, json=body, headers=mine))

        waiting = [parked(q) for q in queues]
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waiting), [w.result().text for w in waiting if w.done()]
        # A task queued on the last queue reaches its claim at once (its event).
        dag_id = unique("dag")
        spec = {"tasks": [{"task_id": "t", "queue": queues[-1]}]}
        assert (
            await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api(services, "dags:write"))
        ).status_code == 200
        trigger = await client.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=api(services, "runs:write")
        )
        assert trigger.status_code == 200, trigger.text
        got = await asyncio.wait_for(waiting[-1], 10)
        for w in waiting[:-1]:
            w.cancel()
        await asyncio.gather(*waiting[:-1], return_exceptions=True)
        assert got.status_code == 200, got.text
        assert [ti["task_id"] for ti in got.json()["task_instances"]] == ["t"]


async def test_a_skip_tasks_item_naming_a_member_twice_is_422(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: the last dag_id was taken, and the worker skipped another DAG's task than it named.
    _, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}])
    item = '{"dag_id": "d2", "dag_id": "x", "task_id": "t1"}'
    body = (
        f'{{"worker_id": "w7", "queues": ["{queue}"], "max_tasks": 1, "wait_s": 0, "skip_tasks": [{item}]}}'
    )
    worker = api(services, "worker") | {"content-type": "application/json"}
    got = await client.post("/execution/workers/claim", content=body, headers=worker)
    assert got.status_code == 422, got.text
    assert got.json()["detail"][0]["loc"] == ["body", "skip_tasks", 0, "dag_id"], got.text
    (a,) = await claim(client, services, queue)
    header = {
        **report_claim(services, queue),
        "Stateport-Claim": f'{{"worker_id": "w7", "queues": ["{queue}"], "skip_tasks": [{item}]}}',
    }
    url = f"/execution/task-instances/{a['id']}/state"
    refused = await client.patch(
        url, json={"state": "success", "result": 1}, headers={**ti_auth(a["token"]), **header}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["header", "stateport-claim", "skip_tasks", 0, "dag_id"]
    assert (
        await client.patch(url, json={"state": "success", "result": 1}, headers=ti_auth(a["token"]))
    ).status_code == 204
