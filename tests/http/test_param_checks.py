"""A trigger's conf is checked against its DAG's params in a checking process when the check may be long
(``stateport.http.param_checks``), and answered as a check in the event loop is (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import httpx

from stateport.bootstrap import Services
from stateport.domain.models import ParamSpec
from stateport.domain.params import CHEAP_CHECK, MAX_CHECK, MAX_MESSAGE, check_cost
from stateport.http.checking import CheckProcesses
from stateport.http.providers import PARAM_CHECKS
from tests.apps import app_for
from tests.http.test_workers import api
from tests.services import unique


def checks(services: Services) -> CheckProcesses:
    """The app's processes for params checks (not the large bodies')."""
    found: CheckProcesses = app_for(services).state[PARAM_CHECKS]
    return found


# Each branch looks at every item of the list: an outsider's schema held the event loop 59 s over 1 MiB.
COSTLY = {"anyOf": [{"contains": {"const": -1}}] * 40}


async def trigger(client: httpx.AsyncClient, services: Services, dag_id: str, conf: Any) -> httpx.Response:
    body = {"logical_date": None, "dag_run_id": unique("run"), "conf": conf}
    return await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body, headers=api(services, "runs:write"))


async def test_a_costly_params_check_runs_in_a_checking_process(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id = unique("dag")
    spec = {"tasks": [{"task_id": "a"}], "params": {"x": {"schema": COSTLY}}}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api(services, "dags:write"))
    assert put.status_code == 200, put.text
    long_list = list(range(10_000))
    assert check_cost({"x": ParamSpec(schema=COSTLY)}, {"x": long_list}) > CHEAP_CHECK
    before = checks(services).offloaded
    refused = await trigger(client, services, dag_id, {"x": long_list})
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("Invalid input for param x: ") and " ... " in detail
    # The validator's message quotes the value: 588 KB of it came back (an outsider's find).
    assert len(detail) <= len("Invalid input for param x: ") + MAX_MESSAGE + 5
    assert checks(services).offloaded == before + 1
    made = await trigger(client, services, dag_id, {"x": [-1, *long_list]})
    assert made.status_code == 200, made.text
    assert checks(services).offloaded == before + 2
    # A cheap check is made in the event loop, and answered alike.
    cheap = await trigger(client, services, dag_id, {"x": [1, 2]})
    assert cheap.status_code == 400 and cheap.json()["detail"].startswith("Invalid input for param x: ")
    assert (await trigger(client, services, dag_id, {"x": [-1]})).status_code == 200
    assert checks(services).offloaded == before + 2


async def test_a_params_check_too_costly_to_make_is_refused_unmade(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: checking a 1 MiB list against an anyOf of 400 contains took a minute and, each
    # branch's error quoting the value, 16 GB of memory. Past MAX_CHECK it is a 400 at once.
    dag_id = unique("dag")
    schema = {"anyOf": [{"contains": {"const": -1}}] * 400}
    spec = {"tasks": [{"task_id": "a"}], "params": {"x": {"schema": schema}}}
    assert (
        await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api(services, "dags:write"))
    ).status_code == 200
    huge = list(range(150_000))
    assert check_cost({"x": ParamSpec(schema=schema)}, {"x": huge}) > MAX_CHECK
    before = checks(services).offloaded
    refused = await trigger(client, services, dag_id, {"x": huge})
    assert refused.status_code == 400, refused.text
    assert "too large to check" in refused.json()["detail"]
    assert checks(services).offloaded == before  # not even handed to a process


async def test_a_check_with_a_regular_expression_runs_in_a_checking_process(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: a 34-byte pattern over a 470 KB value, "cheap" by its sizes, held the event
    # loop 37 s: what a regular expression's match costs, the sizes do not tell.
    dag_id = unique("dag")
    spec = {"tasks": [{"task_id": "a"}], "params": {"p": {"schema": {"pattern": "^[a-z]+$"}}}}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api(services, "dags:write"))
    assert put.status_code == 200, put.text
    before = checks(services).offloaded
    assert (await trigger(client, services, dag_id, {"p": "abc"})).status_code == 200
    refused = await trigger(client, services, dag_id, {"p": "ABC"})
    assert refused.status_code == 400 and "does not match" in refused.json()["detail"], refused.text
    assert checks(services).offloaded == before + 2


async def test_a_dag_whose_params_hold_a_pattern_is_compiled_in_a_checking_process(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: 16 patterns of a few kilobytes each held the event loop about a second at the
    # DAG's registration (compiled in a thread, but each compile holds the GIL).
    registered = api(services, "dags:write")
    before = checks(services).offloaded
    plain = {"tasks": [{"task_id": "a"}], "params": {"n": {"schema": {"type": "integer"}, "default": 1}}}
    assert (
        await client.put(f"/api/v2/dags/{unique('dag')}", json=plain, headers=registered)
    ).status_code == 200
    assert checks(services).offloaded == before  # no pattern: compiled here
    param: dict[str, Any] = {"schema": {"pattern": "^[a-z]+$"}, "default": "x"}
    patterned = {"tasks": [{"task_id": "a"}], "params": {"p": param}}
    dag_id = unique("dag")
    assert (await client.put(f"/api/v2/dags/{dag_id}", json=patterned, headers=registered)).status_code == 200
    assert checks(services).offloaded == before + 1
    # Refused there as it was here: a default the pattern refuses, a pattern too large to compile.
    param["default"] = "X"
    bad = await client.put(f"/api/v2/dags/{unique('dag')}", json=patterned, headers=registered)
    assert bad.status_code == 422, bad.text
    (problem,) = bad.json()["detail"]
    assert problem["loc"] == ["body", "params", "p", "default"] and "does not match" in problem["msg"], (
        problem
    )
    huge = {"tasks": [{"task_id": "a"}], "params": {"p": {"schema": {"pattern": "\\w{1000}" * 20}}}}
    refused = await client.put(f"/api/v2/dags/{unique('dag')}", json=huge, headers=registered)
    assert refused.status_code == 422 and "compiles to over" in refused.text, refused.text
    assert checks(services).offloaded == before + 3
    # Its triggers are checked there too, as before.
    assert (await trigger(client, services, dag_id, {})).status_code == 200
    assert checks(services).offloaded == before + 4
