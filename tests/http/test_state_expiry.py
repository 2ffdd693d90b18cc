"""``expires_at`` on every state route that writes one key (the tables of ``test_preconditions``): an entry
that expires is 404 everywhere and absent to every precondition; a time already passed is 422 where
Stateport defines ``expires_at``, and keeps the port's (and Airflow's) answer where Airflow defines it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.http.conftest import World
from tests.http.test_preconditions import IF_MATCH, IF_NONE_MATCH, KEY_ROUTES, Target, _assert_412, _stored
from tests.services import unique

# Where Airflow defines expires_at (its Execution API task PUT, its public API TaskStateStoreBody) and the
# raw admin routes (the StateStore port one to one): a time already passed is stored and absent at once.
TAKES_A_PAST_EXPIRY = ("airflow-task", "public-task", "admin-task", "admin-asset")
REFUSES_A_PAST_EXPIRY = tuple(route for route in KEY_ROUTES if route not in TAKES_A_PAST_EXPIRY)
OK = (200, 204)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _put(
    client: httpx.AsyncClient, target: Target, value: Any, expires_at: Any, **headers: str
) -> httpx.Response:
    return await client.put(
        target.url,
        params=target.params,
        json={"value": value, "expires_at": expires_at},
        headers={**target.headers, **headers},
    )


async def _get(client: httpx.AsyncClient, target: Target, **headers: str) -> httpx.Response:
    return await client.get(target.url, params=target.params, headers={**target.headers, **headers})


async def test_an_entry_that_expires_is_404_and_absent_on_every_route(
    client: httpx.AsyncClient, world: World
) -> None:
    # One write per route (its own key), one wait for all of them: each route's entry expires together.
    targets = {route: make(world, unique("ttl")) for route, make in KEY_ROUTES.items()}
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    for route, target in targets.items():
        put = await _put(client, target, route, _iso(expires))
        assert put.status_code in OK, (route, put.text)
        assert put.headers["etag"] == '"1"'
        live = await _get(client, target)
        assert live.status_code == 200, (route, live.text)
        assert live.headers["etag"] == '"1"'
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    for route, target in targets.items():
        assert (await _get(client, target)).status_code == 404, route
        assert (await _get(client, target, **{IF_NONE_MATCH: "*"})).status_code == 404, route
        # Expired is absent to every precondition: a version does not hold, "must be absent" does.
        _assert_412(await _put(client, target, 2, None, **{IF_MATCH: '"1"'}), target)
        deleted = await client.delete(
            target.url, params=target.params, headers={**target.headers, IF_MATCH: '"1"'}
        )
        _assert_412(deleted, target)
        created = await _put(client, target, 3, None, **{IF_NONE_MATCH: "*"})
        assert created.status_code in OK, (route, created.text)
        # A new life of the key: its versions start again at 1 (docs/api.md, "Preconditions").
        assert created.headers["etag"] == '"1"'
        assert (await _get(client, target)).status_code == 200


@pytest.mark.parametrize("route", REFUSES_A_PAST_EXPIRY)
async def test_an_expires_at_already_passed_is_422_where_stateport_defines_it(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("past")
    target = KEY_ROUTES[route](world, key)
    for moment in ("2000-01-01T00:00:00Z", _iso(datetime.now(UTC) - timedelta(seconds=1))):
        refused = await _put(client, target, 1, moment)
        assert refused.status_code == 422, (moment, refused.text)
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["detail"][0]["loc"] == ["body", "expires_at"]
        assert "not in the future" in refused.json()["detail"][0]["msg"]
    assert await _stored(world, target, key) is None
    # A live entry is left as it was.
    assert (await _put(client, target, 1, None)).status_code in OK
    assert (await _put(client, target, 2, "2000-01-01T00:00:00+00:00")).status_code == 422
    assert await _stored(world, target, key) == b"1"


@pytest.mark.parametrize("route", TAKES_A_PAST_EXPIRY)
async def test_an_expires_at_already_passed_keeps_airflows_answer_where_airflow_defines_it(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    key = unique("past")
    target = KEY_ROUTES[route](world, key)
    stored = await _put(client, target, 1, "2000-01-01T00:00:00Z")
    assert stored.status_code in OK, stored.text
    assert (await _get(client, target)).status_code == 404


@pytest.mark.parametrize("route", KEY_ROUTES)
@pytest.mark.parametrize("moment", ["tomorrow", "2030-01-01T00:00:00", 5, "", "9999-12-31T23:59:59-14:00"])
async def test_an_expires_at_that_is_no_time_is_422_on_every_route(
    client: httpx.AsyncClient, world: World, route: str, moment: Any
) -> None:
    key = unique("odd")
    target = KEY_ROUTES[route](world, key)
    refused = await _put(client, target, 1, moment)
    assert refused.status_code == 422, (moment, refused.text)
    assert refused.json()["detail"][0]["loc"] == ["body", "expires_at"]
    assert await _stored(world, target, key) is None
