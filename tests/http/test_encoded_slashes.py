"""An encoded slash (``%2F``) or an empty segment (``//``) never moves a request to another resource.

Litestar routes on the decoded path and normalizes ``//`` away, so before the guard (``http.guards``) an
outsider overwrote DAG ``victim``'s spec with ``PUT /dags/victim%2F``, cancelled run ``r`` with
``POST .../dagRuns/r%2F/cancel``, deleted it with ``DELETE .../dagRuns/%2Fr``, and triggered ``hello`` with
``POST /dags/hello%2FdagRuns``; and the raw state admin routes answered 200 to a write they did not store
(``PUT .../task/hello/%2F/greet/-1/k``) and 500 to a read of ``.../task/%2F/r/t/-1``. The state routes still
take ``%2F`` inside a key or an asset name, where it is one (``http.paths``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tests.http.conftest import World

ALL = ("dags:write", "runs:write", "runs:read", "state:admin")


async def test_an_encoded_slash_or_an_empty_segment_names_no_dag_or_run(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world.api(*ALL)
    dag = f"/api/v2/dags/{world.dag_id}"
    spec_before = (await client.get(dag, headers=headers)).json()
    run = f"{dag}/dagRuns/{world.run_id}"
    refused = [
        ("PUT", f"{dag}%2F", {"tasks": [{"task_id": "replaced"}]}),
        ("PUT", f"{dag}%2f", {"tasks": [{"task_id": "replaced"}]}),
        ("POST", f"{run}%2F/cancel", None),
        ("PATCH", f"{dag}/dagRuns/%2F{world.run_id}", {"state": "failed"}),
        ("DELETE", f"{dag}/dagRuns/%2F{world.run_id}", None),
        ("POST", f"{dag}%2FdagRuns", {"logical_date": None, "dag_run_id": "via-slash"}),
        ("GET", "/api/v2/dags/%2F", None),
        ("GET", f"/api/v2/dags//{world.dag_id}", None),
        ("GET", f"{dag}/dagRuns//{world.run_id}", None),
        ("GET", f"{dag}/dagRuns/{world.run_id}/taskInstances/%2Fa", None),
        # Routed by the decoded path to a route without the method: they were 405 (an outsider's find).
        ("PUT", "/api/v2/dags/%2F", {"tasks": [{"task_id": "replaced"}]}),
        ("POST", "/api/v2/dags/%2F/dagRuns", {"logical_date": None}),
        ("GET", f"/execution/dag-runs/%2F/{world.run_id}/state", None),
    ]
    for method, url, body in refused:
        got = await client.request(method, url, json=body, headers=headers)
        assert (got.status_code, got.json()) == (404, {"detail": "Not Found"}), (method, url, got.text)
        assert got.headers.get("x-request-id"), (method, url)  # answered as any 404 is
    assert (await client.get(dag, headers=headers)).json() == spec_before
    after = (await client.get(run, headers=headers)).json()
    assert after["state"] != "failed" and after.get("outcome") is None
    listed = (await client.get(f"{dag}/dagRuns", headers=headers)).json()
    assert "via-slash" not in {r["dag_run_id"] for r in listed["dag_runs"]}


async def test_a_raw_state_address_whose_segment_is_only_slashes_is_a_422_and_stores_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    task = "/api/v2/state-store/task"
    for method, url, field in [
        ("PUT", f"{task}/{world.dag_id}/%2F/fan/-1/k", "run_id"),
        ("PUT", f"{task}/{world.dag_id}/%2F%2F/fan/-1/k", "run_id"),
        ("PUT", f"{task}/%2F/{world.run_id}/fan/-1/k", "dag_id"),
        ("GET", f"{task}/%2F/r/t/-1", "dag_id"),
        ("DELETE", f"{task}/{world.dag_id}/%2F/fan/-1", "run_id"),
        ("PUT", "/api/v2/state-store/asset/%2F/k1", "name"),
        ("GET", "/api/v2/state-store/asset/%2F/k1", "name"),
    ]:
        got = await client.request(
            method, url, json={"value": "x"} if method == "PUT" else None, headers=admin
        )
        assert got.status_code == 422, (method, url, got.status_code, got.text)
        assert got.json()["detail"][0]["loc"] == ["path", field], (url, got.text)
    listed = await client.get(f"{task}/{world.dag_id}/{world.run_id}/fan/-1", headers=admin)
    assert listed.json()["total_entries"] == 0


async def test_a_slash_inside_a_key_or_an_asset_name_still_works(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    name = quote("orders/eu", safe="")
    for url in (
        f"/api/v2/state-store/asset/{name}/wm%2F1",
        f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/fan/-1/a%2F%2Fb",
    ):
        assert (await client.put(url, json={"value": 1}, headers=admin)).status_code in (200, 201), url
        got = await client.get(url, headers=admin)
        assert (got.status_code, got.json()["value"]) == (200, 1), url
    keys = (await client.get(f"/api/v2/state-store/asset/{name}", headers=admin)).json()["entries"]
    assert [e["key"] for e in keys] == ["wm/1"]
    own = f"/execution/state/ti/{world.tis['extract'].id}/x%2Fy"
    assert (await client.put(own, json={"value": 2}, headers=world.auth("extract"))).status_code == 204
    assert (await client.get(own, headers=world.auth("extract"))).json()["value"] == 2


async def test_an_id_starting_with_state_store_is_no_way_around(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find in the first fix: a path merely containing "/state-store" was let through, so
    # ``PUT /api/v2/dags/state-store%2F`` still overwrote DAG "state-store"'s spec.
    headers = world.api(*ALL)
    dag_id = f"state-store-{world.dag_id}"
    dag = f"/api/v2/dags/{dag_id}"
    assert (await client.put(dag, json={"tasks": [{"task_id": "t"}]}, headers=headers)).status_code == 200
    for method, url in (("PUT", f"{dag}%2F"), ("PUT", f"{dag}//"), ("GET", f"{dag}/dagRuns%2F")):
        got = await client.request(method, url, json={"tasks": [{"task_id": "EVIL"}]}, headers=headers)
        assert (got.status_code, got.json()) == (404, {"detail": "Not Found"}), (method, url, got.text)
    assert [t["task_id"] for t in (await client.get(dag, headers=headers)).json()["tasks"]] == ["t"]


async def test_a_state_route_sent_with_its_literal_segments_otherwise_is_a_404(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: ``//`` before the address made the route read the decoded path, where the %2F
    # of an asset name is a separator: ``DELETE /api/v2/state-store//asset/victim%2F`` cleared "victim".
    admin = world.api("state:admin")
    victim = f"/api/v2/state-store/asset/{world.asset_other}"
    assert (await client.put(f"{victim}/k1", json={"value": 1}, headers=admin)).status_code in (200, 201)
    task = world.tis["extract"]
    for method, url, headers in (
        ("DELETE", f"/api/v2/state-store//asset/{world.asset_other}%2F", admin),
        ("PUT", f"/api/v2/state-store//asset/{world.asset_other}%2Fk/x", admin),
        ("POST", f"/api/v2/state-store//asset/{world.asset_other}%2F", admin),
        ("DELETE", f"/execution/state//asset/{quote(world.asset_in, safe='')}/k", world.auth("extract")),
        (
            "PUT",
            f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}//taskInstances/extract/state-store/k",
            admin,
        ),
        ("PUT", f"/execution/state/ti/{task.id}//k", world.auth("extract")),  # an empty segment in a key: ok
    ):
        body: dict[str, Any] | None = {"operations": []} if method == "POST" else None
        if method == "PUT":
            body = {"value": 2}
        got = await client.request(method, url, json=body, headers=headers)
        if url.endswith("//k"):
            assert got.status_code == 204, (url, got.text)  # the key "/k", as sent
            continue
        assert got.status_code == 404, (method, url, got.status_code, got.text)
    kept = await client.get(f"{victim}/k1", headers=admin)
    assert (kept.status_code, kept.json()["value"]) == (200, 1)


async def test_a_clear_of_a_scope_whose_ids_hold_an_encoded_slash_takes_its_flag(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: Litestar routes the decoded path of such a scope to the key route, which refused
    # the clear's all_map_indices (422 "this route takes no query parameter").
    admin = world.api("state:admin")
    task = f"/api/v2/state-store/task/{quote('d/x', safe='')}/r1/t"
    for map_index in (0, 1):
        put = await client.put(f"{task}/{map_index}/k", json={"value": map_index}, headers=admin)
        assert put.status_code in (200, 201), put.text
    misspelt = await client.delete(f"{task}/-1?all_map_index=true", headers=admin)
    assert misspelt.status_code == 422, misspelt.text
    cleared = await client.delete(f"{task}/-1?all_map_indices=true", headers=admin)
    assert (cleared.status_code, cleared.json()) == (200, {"cleared": 2}), cleared.text
    for map_index in (0, 1):
        assert (await client.get(f"{task}/{map_index}/k", headers=admin)).status_code == 404
