"""Preconditions on every state route: ``If-Match`` / ``If-None-Match: *`` on writes and deletes (412 on a
mismatch, value unchanged), a 412 for any precondition on a clear, and 304 for a GET whose ``If-None-Match``
matches.

The tables below name every state route of the app; ``test_the_tables_cover_every_state_route`` fails when a
route is added without a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from stateport.domain.models import AssetScope, Scope, TaskScope
from stateport.http.app import create_app
from tests.http.conftest import World
from tests.services import unique


@dataclass(frozen=True)
class Target:
    """One state address as a route family sees it: the URL, query, token and the scope it lands in."""

    url: str
    scope: Scope
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)

    @property
    def airflow(self) -> bool:
        return self.url.startswith("/execution")


def _task_scope(world: World) -> TaskScope:
    return TaskScope(dag_id=world.dag_id, run_id=world.run_id, task_id="extract", map_index=-1)


def _public_task(world: World) -> str:
    return f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/extract/state-store"


def _admin_task(world: World) -> str:
    return f"/api/v2/state-store/task/{world.dag_id}/{quote(world.run_id, safe='')}/extract/-1"


def _admin(world: World) -> dict[str, str]:
    return world.api("state:admin")


# Each route family that reads, writes and deletes one key, addressed for ``key``.
KEY_ROUTES: dict[str, Callable[[World, str], Target]] = {
    "own-task": lambda w, k: Target(
        f"/execution/state/ti/{w.tis['extract'].id}/{k}", _task_scope(w), w.auth("extract")
    ),
    "airflow-task": lambda w, k: Target(
        f"/execution/store/ti/{w.tis['extract'].id}/{k}", _task_scope(w), w.auth("extract")
    ),
    "own-asset": lambda w, k: Target(
        f"/execution/state/asset/{quote(w.asset_in, safe='')}/{k}",
        AssetScope(name=w.asset_in),
        w.auth("extract"),
    ),
    "airflow-asset-by-name": lambda w, k: Target(
        "/execution/store/asset/by-name/value",
        AssetScope(name=w.asset_in),
        w.auth("extract"),
        {"name": w.asset_in, "key": k},
    ),
    "airflow-asset-by-uri": lambda w, k: Target(
        "/execution/store/asset/by-uri/value",
        AssetScope(name=w.asset_out),
        w.auth("extract"),
        {"uri": w.asset_out_uri, "key": k},
    ),
    "public-task": lambda w, k: Target(f"{_public_task(w)}/{k}", _task_scope(w), _admin(w)),
    "public-asset": lambda w, k: Target(
        f"/api/v2/assets/{w.asset_ids[w.asset_in]}/state-store/{k}", AssetScope(name=w.asset_in), _admin(w)
    ),
    "admin-task": lambda w, k: Target(f"{_admin_task(w)}/{k}", _task_scope(w), _admin(w)),
    "admin-asset": lambda w, k: Target(
        f"/api/v2/state-store/asset/{quote(w.asset_in, safe='')}/{k}", AssetScope(name=w.asset_in), _admin(w)
    ),
}

# Each route that clears a whole scope.
CLEAR_ROUTES: dict[str, Callable[[World], Target]] = {
    "own-task": lambda w: Target(
        f"/execution/state/ti/{w.tis['extract'].id}", _task_scope(w), w.auth("extract")
    ),
    "airflow-task": lambda w: Target(
        f"/execution/store/ti/{w.tis['extract'].id}", _task_scope(w), w.auth("extract")
    ),
    "own-asset": lambda w: Target(
        f"/execution/state/asset/{quote(w.asset_in, safe='')}", AssetScope(name=w.asset_in), w.auth("extract")
    ),
    "airflow-asset-by-name": lambda w: Target(
        "/execution/store/asset/by-name/clear",
        AssetScope(name=w.asset_in),
        w.auth("extract"),
        {"name": w.asset_in},
    ),
    "airflow-asset-by-uri": lambda w: Target(
        "/execution/store/asset/by-uri/clear",
        AssetScope(name=w.asset_out),
        w.auth("extract"),
        {"uri": w.asset_out_uri},
    ),
    "public-task": lambda w: Target(_public_task(w), _task_scope(w), _admin(w)),
    "public-asset": lambda w: Target(
        f"/api/v2/assets/{w.asset_ids[w.asset_in]}/state-store", AssetScope(name=w.asset_in), _admin(w)
    ),
    "admin-task": lambda w: Target(_admin_task(w), _task_scope(w), _admin(w)),
    "admin-asset": lambda w: Target(
        f"/api/v2/state-store/asset/{quote(w.asset_in, safe='')}", AssetScope(name=w.asset_in), _admin(w)
    ),
}

# Each route that lists a scope (no ETag: only ``If-None-Match: *`` matches it, and ``If-Match`` never).
LIST_ROUTES: dict[str, Callable[[World], Target]] = {
    name: CLEAR_ROUTES[name]
    for name in ("own-task", "own-asset", "public-task", "public-asset", "admin-task", "admin-asset")
}

# The route templates the tables above exercise, by method: compared with the app's own routes.
COVERED = {
    "/execution/state/ti/{task_instance_id:str}/{key:path}": {"GET", "PUT", "DELETE"},
    # DELETE is the clear; GET and PUT catch an empty key (422 before any state is touched). POST is the
    # batch, whose preconditions are in its body (tests/http/test_state_batch.py; a header is a 412 here).
    "/execution/state/ti/{task_instance_id:str}": {"DELETE", "GET", "PUT", "POST"},
    # POST: an asset name holding %2F batches here; a key's address answers 405.
    "/execution/state/asset/{name:str}/{key:path}": {"GET", "PUT", "DELETE", "POST"},
    # DELETE is the clear; GET and PUT catch an empty key; POST is the batch.
    "/execution/state/asset/{name:str}": {"DELETE", "GET", "PUT", "POST"},
    "/execution/store/ti/{task_instance_id:str}/{key:path}": {"GET", "PUT", "DELETE"},
    "/execution/store/ti/{task_instance_id:str}": {"DELETE", "GET", "PUT"},
    "/execution/store/asset/by-name/value": {"GET", "PUT", "DELETE"},
    "/execution/store/asset/by-uri/value": {"GET", "PUT", "DELETE"},
    "/execution/store/asset/by-name/clear": {"DELETE"},
    "/execution/store/asset/by-uri/clear": {"DELETE"},
    "/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances/{task_id:str}/state-store": {
        "GET",
        "DELETE",
    },
    # PATCH: Airflow's update of a key that exists (its preconditions: tests/http/test_airflow_task_state.py).
    "/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances/{task_id:str}/state-store/{key:path}": {
        "GET",
        "PUT",
        "PATCH",
        "DELETE",
    },
    "/api/v2/assets/{asset_id:str}/state-store": {"GET", "DELETE"},
    "/api/v2/assets/{asset_id:str}/state-store/{key:path}": {"GET", "PUT", "DELETE"},
    # GET lists, DELETE clears; PUT catches the missing key; POST is the batch (its preconditions are in
    # its body, tests/http/test_state_batch.py), on the key template too for ids holding %2F (else 405).
    "/api/v2/state-store/task/{dag_id:str}/{run_id:str}/{task_id:str}/{map_index:str}": {
        "GET",
        "PUT",
        "DELETE",
        "POST",
    },
    "/api/v2/state-store/task/{dag_id:str}/{run_id:str}/{task_id:str}/{map_index:str}/{key:path}": {
        "GET",
        "PUT",
        "DELETE",
        "POST",
    },
    # Addresses missing segments: 422 naming the first one missing.
    "/api/v2/state-store/task/{dag_id:str}": {"GET", "PUT", "DELETE"},
    "/api/v2/state-store/task/{dag_id:str}/{run_id:str}": {"GET", "PUT", "DELETE"},
    "/api/v2/state-store/task/{dag_id:str}/{run_id:str}/{task_id:str}": {"GET", "PUT", "DELETE"},
    "/api/v2/state-store/asset/{name:str}": {"GET", "PUT", "DELETE", "POST"},
    "/api/v2/state-store/asset/{name:str}/{key:path}": {"GET", "PUT", "DELETE", "POST"},
}


# Where state routes live (a task instance's ``.../state`` report route is run state, not the state store).
STATE_PREFIXES = ("/execution/state/", "/execution/store/", "/api/v2/state-store/", "/api/v2/assets/")
STATE_MARK = "/state-store"


def test_the_tables_cover_every_state_route(services: Any) -> None:
    app = create_app(services.settings, services)
    found: dict[str, set[str]] = {}
    for route in app.routes:
        path = route.path
        if path.startswith(STATE_PREFIXES) or STATE_MARK in path:
            if path in (
                "/api/v2/state-store/purge",
                "/api/v2/state-store/capabilities",
                "/api/v2/assets/{asset_id:str}",  # the asset registry: no state
            ):
                continue  # no key, no version
            methods = {m for m in getattr(route, "methods", set()) if m not in {"HEAD", "OPTIONS"}}
            found.setdefault(path, set()).update(methods)
    assert found == COVERED


async def _stored(world: World, target: Target, key: str) -> bytes | None:
    entry = await world.services.state.store.get(target.scope, key, now=datetime.now(UTC))
    return None if entry is None else entry.value


def _assert_412(response: httpx.Response, target: Target) -> None:
    assert response.status_code == 412, response.text
    assert response.headers["content-type"] == "application/json"
    if target.airflow:
        assert response.json()["detail"]["reason"] == "version_mismatch"
    else:
        assert isinstance(response.json()["detail"], str)


async def _put(client: httpx.AsyncClient, target: Target, value: int, **headers: str) -> httpx.Response:
    return await client.put(
        target.url, params=target.params, json={"value": value}, headers={**target.headers, **headers}
    )


async def _delete(client: httpx.AsyncClient, target: Target, **headers: str) -> httpx.Response:
    return await client.delete(target.url, params=target.params, headers={**target.headers, **headers})


IF_MATCH = "If-Match"
IF_NONE_MATCH = "If-None-Match"


@pytest.mark.parametrize("route", KEY_ROUTES)
async def test_a_write_honours_if_match_and_if_none_match(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("k")
    target = KEY_ROUTES[route](world, key)
    created = await client.put(
        target.url, params=target.params, json={"value": 1}, headers={**target.headers, IF_NONE_MATCH: "*"}
    )
    assert created.status_code in (200, 204), created.text
    assert created.headers["etag"] == '"1"'
    # Create-only on an existing key: 412, unchanged.
    again = await client.put(
        target.url, params=target.params, json={"value": 9}, headers={**target.headers, IF_NONE_MATCH: "*"}
    )
    _assert_412(again, target)
    # A stale, a weak, a zero and a foreign If-Match: 412, unchanged.
    for stale in ('"2"', 'W/"1"', '"0"', '"abc"', '"99999999999999999999999"'):
        refused = await client.put(
            target.url, params=target.params, json={"value": 9}, headers={**target.headers, IF_MATCH: stale}
        )
        _assert_412(refused, target)
    assert await _stored(world, target, key) == b"1"
    # The current version (alone or in a list with tags that cannot match) writes.
    ok = await client.put(
        target.url,
        params=target.params,
        json={"value": 2},
        headers={**target.headers, IF_MATCH: 'W/"7", "1"'},
    )
    assert ok.status_code in (200, 204), ok.text
    assert ok.headers["etag"] == '"2"'
    assert await _stored(world, target, key) == b"2"
    # "0" is no version: it never creates an absent key (If-None-Match: * does).
    absent_key = unique("absent")
    absent = KEY_ROUTES[route](world, absent_key)
    _assert_412(await _put(client, absent, 1, **{IF_MATCH: '"0"'}), absent)
    assert await _stored(world, absent, absent_key) is None


@pytest.mark.parametrize("route", KEY_ROUTES)
async def test_a_delete_honours_if_match_and_if_none_match(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("k")
    target = KEY_ROUTES[route](world, key)
    assert (
        await client.put(target.url, params=target.params, json={"value": 1}, headers=target.headers)
    ).status_code in (
        200,
        204,
    )
    for headers in ({IF_MATCH: '"2"'}, {IF_MATCH: 'W/"1"'}, {IF_NONE_MATCH: "*"}):
        refused = await client.delete(target.url, params=target.params, headers={**target.headers, **headers})
        _assert_412(refused, target)
        assert await _stored(world, target, key) == b"1", headers
    deleted = await client.delete(
        target.url, params=target.params, headers={**target.headers, IF_MATCH: '"1"'}
    )
    assert deleted.status_code in (200, 204), deleted.text
    assert await _stored(world, target, key) is None
    # Now absent: "must be absent" holds, a version does not.
    absent = await client.delete(
        target.url, params=target.params, headers={**target.headers, IF_NONE_MATCH: "*"}
    )
    assert absent.status_code in (200, 204), absent.text
    _assert_412(
        await client.delete(target.url, params=target.params, headers={**target.headers, IF_MATCH: '"1"'}),
        target,
    )


@pytest.mark.parametrize("route", KEY_ROUTES)
async def test_a_get_with_a_matching_if_none_match_is_304(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("k")
    target = KEY_ROUTES[route](world, key)
    await client.put(target.url, params=target.params, json={"value": 1}, headers=target.headers)
    await client.put(target.url, params=target.params, json={"value": 2}, headers=target.headers)
    full = await client.get(target.url, params=target.params, headers=target.headers)
    assert full.status_code == 200
    assert full.headers["etag"] == '"2"'
    for matching in ('"2"', 'W/"2"', '"1", "2"', '"9",W/"2"', "*"):
        cached = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_NONE_MATCH: matching}
        )
        assert cached.status_code == 304, (matching, cached.text)
        assert cached.content == b""
        assert cached.headers["etag"] == '"2"'
    for other in ('"1"', '"1", W/"3"', "garbage"):
        served = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_NONE_MATCH: other}
        )
        assert served.status_code == 200, other
        assert served.content == full.content
    # A missing key is not a representation: "*" does not match, the answer is 404.
    missing = KEY_ROUTES[route](world, unique("absent"))
    gone = await client.get(
        missing.url, params=missing.params, headers={**missing.headers, IF_NONE_MATCH: "*"}
    )
    assert gone.status_code == 404


@pytest.mark.parametrize("route", KEY_ROUTES)
async def test_a_get_honours_if_match_as_a_write_does(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("k")
    target = KEY_ROUTES[route](world, key)
    await _put(client, target, 1)
    await _put(client, target, 2)
    full = await client.get(target.url, params=target.params, headers=target.headers)
    for current in ('"2"', ' "2" ', 'W/"9", "2"'):
        got = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_MATCH: current}
        )
        assert got.status_code == 200, (current, got.text)
        assert got.content == full.content
        assert got.headers["etag"] == '"2"'
    # A stale, weak, zero, foreign or malformed tag: 412 in the route's error shape.
    for stale in ('"1"', 'W/"2"', '"0"', '"abc"', '"2', "2", "W/", '"99999999999999999999999"'):
        refused = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_MATCH: stale}
        )
        _assert_412(refused, target)
    # A long tag is quoted to 200 characters, as every message quotes input (a 30 KB answer before).
    for long in ('"' + "9" * 30_000 + '"', ", ".join(['W/"1"'] * 3_000)):
        refused = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_MATCH: long}
        )
        _assert_412(refused, target)
        assert len(refused.content) < 1_000, len(refused.content)
    # What no write can check either: 422 naming the header.
    for unusable in ("*", '"1", "2"'):
        refused = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_MATCH: unusable}
        )
        assert refused.status_code == 422, (unusable, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["header", "if-match"]
    # If-Match is checked first; then a matching If-None-Match is a 304.
    both = {**target.headers, IF_MATCH: '"2"', IF_NONE_MATCH: '"2"'}
    assert (await client.get(target.url, params=target.params, headers=both)).status_code == 304
    both = {**target.headers, IF_MATCH: '"1"', IF_NONE_MATCH: '"2"'}
    _assert_412(await client.get(target.url, params=target.params, headers=both), target)
    # A missing key is 404 whatever the headers say.
    missing = KEY_ROUTES[route](world, unique("absent"))
    gone = await client.get(missing.url, params=missing.params, headers={**missing.headers, IF_MATCH: '"1"'})
    assert gone.status_code == 404


@pytest.mark.parametrize("route", KEY_ROUTES)
async def test_a_malformed_precondition_is_a_4xx_json_answer(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("k")
    target = KEY_ROUTES[route](world, key)
    await _put(client, target, 1)
    odd: list[bytes] = [b'"\xff"', b"\xff\xfe", b'"1" "2"', b",,,", b'W/"1', b'"' + b"9" * 5000 + b'"', b"\t"]
    for value in odd:
        for header in (IF_MATCH, IF_NONE_MATCH):
            headers: dict[str, Any] = {**target.headers, header: value}
            for method in ("GET", "PUT", "DELETE"):
                body = {"value": 2} if method == "PUT" else None
                got = await client.request(
                    method, target.url, params=target.params, headers=headers, json=body
                )
                assert got.status_code < 500, (method, header, value, got.text)
                if got.status_code >= 400:
                    assert got.headers["content-type"] == "application/json", got.text
                    assert got.status_code in (412, 422), (method, header, value, got.text)
    assert await _stored(world, target, key) == b"1"


@pytest.mark.parametrize("route", CLEAR_ROUTES)
async def test_a_clear_with_a_precondition_is_412_and_clears_nothing(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    target = CLEAR_ROUTES[route](world)
    now = datetime.now(UTC)
    await world.services.state.store.put(target.scope, "k", b"1", expires_at=None, now=now)
    for headers in ({IF_MATCH: '"1"'}, {IF_NONE_MATCH: "*"}):
        refused = await client.delete(target.url, params=target.params, headers={**target.headers, **headers})
        _assert_412(refused, target)
        assert await _stored(world, target, "k") == b"1"
    cleared = await client.delete(target.url, params=target.params, headers=target.headers)
    assert cleared.status_code in (200, 204), cleared.text
    assert await _stored(world, target, "k") is None


@pytest.mark.parametrize("route", LIST_ROUTES)
async def test_a_listing_has_no_etag_so_only_star_matches(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    target = LIST_ROUTES[route](world)
    await world.services.state.store.put(target.scope, "k", b"1", expires_at=None, now=datetime.now(UTC))
    cached = await client.get(
        target.url, params=target.params, headers={**target.headers, IF_NONE_MATCH: "*"}
    )
    assert cached.status_code == 304
    assert cached.content == b""
    served = await client.get(
        target.url, params=target.params, headers={**target.headers, IF_NONE_MATCH: '"1"'}
    )
    assert served.status_code == 200
    # Nothing to compare an If-Match with: it never holds (412), and is never ignored.
    for value in ('"1"', "*"):
        refused = await client.get(
            target.url, params=target.params, headers={**target.headers, IF_MATCH: value}
        )
        _assert_412(refused, target)


async def test_admin_put_checks_the_body_and_the_header_together(
    client: httpx.AsyncClient, world: World
) -> None:
    target = KEY_ROUTES["admin-asset"](world, "k")
    await client.put(target.url, json={"value": 1}, headers=target.headers)
    differ = await client.put(
        target.url, json={"value": 2, "if_version": 1}, headers={**target.headers, IF_MATCH: '"2"'}
    )
    _assert_412(differ, target)
    same = await client.put(
        target.url, json={"value": 2, "if_version": 1}, headers={**target.headers, IF_MATCH: '"1"'}
    )
    assert same.status_code == 200
    assert same.json()["version"] == 2


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({IF_MATCH: "*"}, 422),
        ({IF_NONE_MATCH: '"1"'}, 422),
        ({IF_MATCH: '"1", "2"'}, 422),
        ({IF_MATCH: '"1"', IF_NONE_MATCH: "*"}, 412),
    ],
)
async def test_preconditions_a_write_cannot_check_are_refused(
    client: httpx.AsyncClient, world: World, headers: dict[str, str], status: int
) -> None:
    for route in ("airflow-asset-by-name", "public-asset"):
        target = KEY_ROUTES[route](world, "k")
        await client.put(target.url, params=target.params, json={"value": 1}, headers=target.headers)
        for send in (_put(client, target, 2, **headers), _delete(client, target, **headers)):
            refused = await send
            assert refused.status_code == status, (route, refused.text)
            assert refused.headers["content-type"] == "application/json"
        assert await _stored(world, target, "k") == b"1"


async def test_if_match_lines_are_one_list(client: httpx.AsyncClient, world: World) -> None:
    """RFC 9110: two If-Match lines are one list (an outsider's probe: only one line was read)."""
    auth = list(world.auth("extract").items())
    for n, lines in enumerate((['"foo"', '"2"'], ['"2"', '"foo"'])):  # version 2, whichever line holds it
        url = f"/execution/state/ti/{world.tis['extract'].id}/lines-{n}"
        for version in (1, 2):
            assert (await client.put(url, json={"value": version}, headers=auth)).status_code == 204
        headers = httpx.Headers([*auth, *(("If-Match", line) for line in lines)])
        got = await client.put(url, json={"value": 3}, headers=headers)
        assert (got.status_code, got.headers.get("etag")) == (204, '"3"'), (lines, got.text)
    # Two versions on two lines are two versions, as on one line: 422, never one of them picked.
    two = httpx.Headers([*auth, ("If-Match", '"2"'), ("If-Match", '"3"')])
    got = await client.put(url, json={"value": 9}, headers=two)
    assert got.status_code == 422, got.text
    assert (await client.get(url, headers=auth)).json() == {"value": 3}


async def test_a_header_refused_is_echoed_as_its_sender_wrote_it(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: UTF-8 in a header came back as mojibake ("é" as "Ã©"): the server reads header
    # bytes as Latin-1. A 412 quotes it, and a 422 echoes it.
    target = KEY_ROUTES[sorted(KEY_ROUTES)[0]](world, unique("k"))
    headers: dict[str, Any] = {**target.headers, IF_MATCH: '"é"'.encode()}
    got = await client.put(target.url, params=target.params, headers=headers, json={"value": 1})
    assert (got.status_code, got.json()) == (
        412,
        {"detail": 'If-Match "é" does not match the current version'},
    )
    headers = {**target.headers, IF_NONE_MATCH: "é".encode()}
    got = await client.put(target.url, params=target.params, headers=headers, json={"value": 1})
    assert got.status_code == 422 and got.json()["detail"][0]["input"] == "é", got.text
