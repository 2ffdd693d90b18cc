"""Large results: every blob reference an outcome carries has a URL its caller can GET, on every route.

Filesystem blobs (the embedded default) are served by the server's own route; S3 blobs by presigned URLs
(or by the route with ``STATEPORT_BLOB_URLS=server``). Each runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest

from stateport.bootstrap import Services
from stateport.domain.errors import NotFound
from stateport.domain.results import BLOB_KEY
from tests.http.conftest import make_settings
from tests.http.test_workers import api, claim, opened, start, ti_auth
from tests.services import unique

BIG = 200 * 1024  # over the 64 KiB inline limit
RUN = "/api/v2/dags/{}/dagRuns/{}"


@pytest.fixture(params=["filesystem", "s3-presigned", "s3-server"])
async def served(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    options: dict[str, Any] = {}
    if request.param.startswith("s3"):
        request.getfixturevalue("s3_credentials")
        options = {
            "blob_backend": "s3",
            "s3_bucket": request.getfixturevalue("s3_bucket"),
            "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
            "blob_urls": request.param.removeprefix("s3-"),
        }
    async with opened(make_settings(database_url, tmp_path, **options)) as pair:
        yield pair


def big_value(tag: str) -> dict[str, str]:
    return {"tag": tag, "blob": "x" * BIG}


async def report(client: httpx.AsyncClient, ti: dict[str, Any], result: Any) -> None:
    body = {"state": "success", "result": result}
    url = f"/execution/task-instances/{ti['id']}/state"
    response = await client.patch(url, json=body, headers=ti_auth(ti["token"]))
    assert response.status_code == 204, response.text


async def fetched(client: httpx.AsyncClient, services: Services, reference: dict[str, Any]) -> Any:
    """GET the reference's URL as a caller would, check size and sha256, and decode the JSON."""
    inner = reference[BLOB_KEY]
    url = inner["url"]
    assert isinstance(url, str), reference
    if url.startswith("/"):  # the server's own route, relative to the server
        response = await client.get(url, headers=api(services, "runs:read"))
        assert response.headers["content-length"] == str(inner["size"])
    else:  # presigned: no token
        async with httpx.AsyncClient() as outside:
            response = await outside.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(response.content) == inner["size"]
    assert hashlib.sha256(response.content).hexdigest() == inner["sha256"]
    return msgspec.json.decode(response.content)


def final_line(text: str) -> dict[str, Any]:
    line: dict[str, Any] = msgspec.json.decode(text.strip().splitlines()[-1])
    return line


async def test_every_route_gives_blob_references_a_url_that_serves_them(
    served: tuple[Services, httpx.AsyncClient],
) -> None:
    services, client = served
    tasks: list[dict[str, Any]] = [
        {"task_id": "split"},
        {"task_id": "solo", "upstream": ["split"]},
        {"task_id": "big", "upstream": ["split", "solo"], "expand": "split"},
    ]
    queue = unique("q")
    for task in tasks:
        task["queue"] = queue
    dag_id = unique("dag")
    spec = {"tasks": tasks, "result_task": "big"}
    assert (
        await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api(services, "dags:write"))
    ).is_success
    trigger = asyncio.create_task(
        client.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None},
            headers={**api(services, "runs:write"), "Prefer": "wait=60"},
        )
    )
    (split,) = await claim(client, services, queue, wait_s=10)
    await report(client, split, [0, 1])
    (solo,) = await claim(client, services, queue, wait_s=10)
    await report(client, solo, big_value("solo"))
    bigs = await claim(client, services, queue, max_tasks=2, wait_s=10)
    for ti in bigs:
        await report(client, ti, big_value(f"big-{ti['map_index']}"))
    expected = [big_value("big-0"), big_value("big-1")]

    waited = await trigger
    assert waited.status_code == 200, waited.text
    run_id = waited.json()["dag_run_id"]
    run_url = RUN.format(dag_id, run_id)
    read = api(services, "runs:read")
    outcomes = {
        "Prefer: wait": waited.json()["results"],
        "Prefer: wait, outcome": waited.json()["outcome"]["results"],
        "GET run": (await client.get(run_url, headers=read)).json()["outcome"]["results"],
        "/outcome": (await client.get(run_url + "/outcome", headers=read)).json()["results"],
        "/wait": final_line((await client.get(run_url + "/wait?interval=1", headers=read)).text)["results"],
        "list runs": (await client.get(f"/api/v2/dags/{dag_id}/dagRuns", headers=read)).json()["dag_runs"][0][
            "outcome"
        ]["results"],
        "cancel (already settled)": (
            await client.post(run_url + "/cancel", headers=api(services, "runs:write"))
        ).json()["outcome"]["results"],
    }
    for where, results in outcomes.items():
        assert set(results) == {"big"}, where
        assert [await fetched(client, services, ref) for ref in results["big"]] == expected, where
    chosen = (await client.get(run_url + "/wait?interval=1&result=solo&result=big", headers=read)).text
    results = final_line(chosen)["results"]
    assert await fetched(client, services, results["solo"]) == big_value("solo")
    assert [await fetched(client, services, ref) for ref in results["big"]] == expected


async def test_the_blob_route_serves_only_the_runs_own_blobs(
    client: httpx.AsyncClient, services: Services
) -> None:
    refs = {}
    for name in ("mine", "other"):
        dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
        (t,) = await claim(client, services, queue)
        await report(client, t, big_value(name))
        run = (await client.get(RUN.format(dag_id, run_id), headers=api(services, "runs:read"))).json()
        refs[name] = (dag_id, run_id, run["outcome"]["results"]["t"][BLOB_KEY])
    dag_id, run_id, mine = refs["mine"]
    route = RUN.format(dag_id, run_id) + "/blob"
    read = api(services, "runs:read")

    served = await client.get(mine["url"], headers=read)
    assert served.status_code == 200 and msgspec.json.decode(served.content) == big_value("mine")

    other_ref = refs["other"][2]["ref"]
    climbing = mine["ref"].rsplit("/", 3)[0] + "/../../" + other_ref.split("/", 1)[1]
    for ref in (other_ref, climbing, mine["ref"] + ".missing", "../jwt_secret", "results"):
        refused = await client.get(route, params={"ref": ref}, headers=read)
        assert refused.status_code == 404, (ref, refused.text)
        assert "detail" in refused.json()
    assert (await client.get(route, headers=read)).status_code == 422
    # ref twice: the last one was served (an outsider's find); now a 422 naming it, whichever they are.
    for twice in ((mine["ref"], other_ref), (other_ref, mine["ref"])):
        refused = await client.get(route, params=[("ref", ref) for ref in twice], headers=read)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["query", "ref"]
    assert (await client.get(mine["url"])).status_code == 401
    assert (await client.get(mine["url"], headers=api(services, "runs:write"))).status_code == 403


async def test_a_result_of_ids_too_long_for_a_file_name_is_stored_served_and_deleted(
    served: tuple[Services, httpx.AsyncClient],
) -> None:
    # An outsider's find: an 86-character CJK DAG id (258 bytes of UTF-8, 774 percent-encoded) made every
    # large result of it a 503 for ever ("File name too long"), until its try's lease ran out.
    services, client = served
    queue = unique("q")
    dag_id = unique("d") + "数" * 200
    task_id = "é" * 250
    spec = {"tasks": [{"task_id": task_id, "queue": queue}], "result_task": task_id}
    write = api(services, "dags:write", "runs:write")
    assert (await client.put(f"/api/v2/dags/{quote(dag_id)}", json=spec, headers=write)).is_success
    run_id = "運" * 250
    trigger = {"logical_date": None, "dag_run_id": run_id}
    triggered = await client.post(f"/api/v2/dags/{quote(dag_id)}/dagRuns", json=trigger, headers=write)
    assert triggered.status_code == 200, triggered.text
    (ti,) = await claim(client, services, queue)
    await report(client, ti, big_value("long"))
    run_url = RUN.format(quote(dag_id), quote(run_id))
    run = (await client.get(run_url, headers=api(services, "runs:read"))).json()
    reference = run["outcome"]["results"][task_id]
    assert max(len(part.encode()) for part in reference[BLOB_KEY]["ref"].split("/")) <= 255
    assert await fetched(client, services, reference) == big_value("long")
    deleted = await client.delete(run_url, headers=api(services, "runs:write"))
    assert deleted.status_code == 204, deleted.text
    with pytest.raises(NotFound):
        await services.blobs.get(reference[BLOB_KEY]["ref"])
