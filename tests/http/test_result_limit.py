"""STATEPORT_RESULT_MAX_BYTES bounds a result, whichever way it comes (an outsider's find: a report's body
may be 64 KiB more, for its other fields, and that headroom let a result through over the limit)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from stateport.config import Settings
from tests.http.conftest import World, make_settings
from tests.http.test_ti_sdk import JSON, _claim, _xcom

LIMIT = 2000


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, result_max_bytes=LIMIT)


def result_of(size: int) -> bytes:
    """A JSON string of ``size`` bytes."""
    return b'"' + b"x" * (size - 2) + b'"'


async def test_a_reported_result_over_the_limit_is_413_and_the_try_goes_on(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = await _claim(client, world)
    url = f"/execution/task-instances/{ti['id']}/state"
    auth = {"Authorization": f"Bearer {ti['token']}"} | JSON
    over = b'{"state": "success", "result": ' + result_of(LIMIT + 1) + b"}"
    refused = await client.patch(url, content=over, headers=auth)
    assert refused.status_code == 413, refused.text
    assert f"over STATEPORT_RESULT_MAX_BYTES, {LIMIT}" in refused.json()["detail"]["message"]
    at_limit = b'{"state": "success", "result": ' + result_of(LIMIT) + b"}"
    assert (await client.patch(url, content=at_limit, headers=auth)).status_code == 204


async def test_a_pushed_return_value_over_the_limit_is_413(client: httpx.AsyncClient, world: World) -> None:
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"} | JSON
    url = _xcom(world, "extract")
    assert (await client.post(url, content=result_of(LIMIT + 1), headers=auth)).status_code == 413
    assert (await client.post(url, content=result_of(LIMIT), headers=auth)).status_code == 201
