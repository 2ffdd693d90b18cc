"""Watching state over HTTP (issue #16, item 3): the key long-poll and the Server-Sent Events streams, on
both databases.

The long-polls go through the in-process transport; the streams through uvicorn serving the same app in
this event loop (the in-process transport hands a body over only once it is complete, and a stream never
completes).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import uvicorn

from stateport.bootstrap import Services
from stateport.config import Settings
from tests.apps import app_for
from tests.http.conftest import World, make_settings, validation_errors
from tests.services import free_port, unique

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def settings(database_url: str, tmp_path: Any) -> Settings:
    # A short heartbeat, so that a test sees one; no leeway past a token's expiry, so that a stream's end
    # at its token's expiry comes within a test's patience.
    return make_settings(database_url, tmp_path, watch_heartbeat_s=0.5, jwt_leeway_s=0)


def key_url(world: World, key: str, task: str = "extract") -> str:
    return f"/execution/state/ti/{world.tis[task].id}/{quote(key, safe='')}"


def asset_key_url(name: str, key: str) -> str:
    return f"/execution/state/asset/{quote(name, safe='')}/{quote(key, safe='')}"


async def put(client: httpx.AsyncClient, url: str, auth: dict[str, str], value: Any, **body: Any) -> str:
    got = await client.put(url, json={"value": value, **body}, headers=auth)
    assert got.status_code == 204, got.text
    return got.headers["etag"]


async def later(delay: float, action: Any) -> Any:
    await asyncio.sleep(delay)
    return await action


# --- long-poll -------------------------------------------------------------------------------------------


async def test_a_long_poll_wakes_on_a_put(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "cursor")
    tag = await put(client, url, auth, 1)
    started = time.monotonic()
    poll = asyncio.create_task(client.get(url, params={"wait": "20"}, headers={**auth, "If-None-Match": tag}))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await put(client, url, auth, 2)
    got = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - started < 5
    assert got.status_code == 200, got.text
    assert got.json() == {"value": 2}
    assert got.headers["etag"] == '"2"'


async def test_a_long_poll_answers_at_once_when_the_version_already_differs(
    client: httpx.AsyncClient, world: World
) -> None:
    auth, url = world.auth("extract"), key_url(world, "k")
    await put(client, url, auth, "a")
    await put(client, url, auth, "b")
    got = await client.get(url, params={"wait": "30"}, headers={**auth, "If-None-Match": '"1"'})
    assert got.status_code == 200
    assert got.json() == {"value": "b"}


async def test_a_long_poll_wakes_on_a_delete_with_404(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "gone")
    tag = await put(client, url, auth, 1)
    poll = asyncio.create_task(client.get(url, params={"wait": "20"}, headers={**auth, "If-None-Match": tag}))
    await asyncio.sleep(0.2)
    assert (await client.delete(url, headers=auth)).status_code == 204
    got = await asyncio.wait_for(poll, 5)
    assert got.status_code == 404
    assert got.json()["detail"]["reason"] == "not_found"


async def test_a_long_poll_wakes_when_the_entry_expires(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "ttl")
    expires = datetime.now(UTC) + timedelta(seconds=1)
    tag = await put(client, url, auth, 1, expires_at=expires.isoformat())
    started = time.monotonic()
    got = await client.get(url, params={"wait": "20"}, headers={**auth, "If-None-Match": tag})
    assert got.status_code == 404
    # Nothing writes on expiry: the watch re-reads at expires_at itself.
    assert 0.5 < time.monotonic() - started < 3


async def test_a_long_poll_on_a_missing_key_waits_for_it(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "later")
    poll = asyncio.create_task(
        client.get(url, params={"wait": "20"}, headers={**auth, "If-None-Match": '"0"'})
    )
    await asyncio.sleep(0.2)
    assert not poll.done()
    await put(client, url, auth, "here")
    got = await asyncio.wait_for(poll, 5)
    assert got.status_code == 200
    assert got.json() == {"value": "here"}


async def test_a_long_poll_answers_304_after_the_wait(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "still")
    tag = await put(client, url, auth, 1)
    started = time.monotonic()
    got = await client.get(url, params={"wait": "0.5"}, headers={**auth, "If-None-Match": tag})
    assert got.status_code == 304
    assert got.headers["etag"] == tag
    assert 0.4 < time.monotonic() - started < 3
    # wait=0 checks once.
    assert (
        await client.get(url, params={"wait": "0"}, headers={**auth, "If-None-Match": tag})
    ).status_code == 304


async def test_without_if_none_match_a_wait_answers_at_once(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "plain")
    await put(client, url, auth, 7)
    got = await client.get(url, params={"wait": "30"}, headers=auth)
    assert got.status_code == 200
    assert got.json() == {"value": 7}


async def test_an_asset_long_poll_wakes_on_a_put(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), asset_key_url(world.asset_out, "watermark")
    tag = await put(client, url, auth, "2026-12-01")
    poll = asyncio.create_task(client.get(url, params={"wait": "20"}, headers={**auth, "If-None-Match": tag}))
    await asyncio.sleep(0.2)
    await put(client, url, world.auth("extract"), "2026-12-02")
    got = await asyncio.wait_for(poll, 5)
    assert got.json() == {"value": "2026-12-02"}


async def test_a_task_watches_only_what_it_may_read(client: httpx.AsyncClient, world: World) -> None:
    # Another task instance's key: the token's subject is not the path's task instance.
    other = key_url(world, "k", task="load")
    got = await client.get(
        other, params={"wait": "1"}, headers={**world.auth("extract"), "If-None-Match": '"1"'}
    )
    assert got.status_code == 403
    # An asset the task does not declare.
    undeclared = asset_key_url(world.asset_other, "k")
    got = await client.get(undeclared, params={"wait": "1"}, headers={**world.auth("extract"), **SSE})
    assert got.status_code == 403


@pytest.mark.parametrize(
    ("params", "headers", "loc"),
    [
        ({"wait": "-1"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        ({"wait": "abc"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        ({"wait": "inf"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        ({"wait": "nan"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        # float() reads "1_0" as 10 and " 1" as 1: a number is digits with an optional fraction.
        ({"wait": "1_0"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        ({"wait": " 1"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        ({"wait": "1e3"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        # A stream answers each change as it comes: a wait with it was silently ignored.
        ({"wait": "1"}, SSE, ["query", "wait"]),
        ({"wait": "5"}, {"If-None-Match": "*"}, ["header", "if-none-match"]),
        ({"wait": "5"}, {"If-None-Match": '"1", "2"'}, ["header", "if-none-match"]),
        ({"wait": "5"}, {"If-None-Match": '"abc"'}, ["header", "if-none-match"]),
        ({"wait": "5"}, {"If-None-Match": "1"}, ["header", "if-none-match"]),
        ({"wait": "5"}, {"If-None-Match": '"99999999999999999999"'}, ["header", "if-none-match"]),
        ({}, {**SSE, "Last-Event-ID": "x"}, ["header", "last-event-id"]),
        ({}, {**SSE, "Last-Event-ID": "-1"}, ["header", "last-event-id"]),
        ({}, {**SSE, "Last-Event-ID": "99999999999999999999"}, ["header", "last-event-id"]),
    ],
)
async def test_hostile_watch_input_is_a_422_naming_it(
    client: httpx.AsyncClient, world: World, params: dict[str, str], headers: dict[str, str], loc: list[str]
) -> None:
    for url in (key_url(world, "k"), asset_key_url(world.asset_in, "k")):
        got = await client.get(url, params=params, headers={**world.auth("extract"), **headers})
        assert [item["loc"] for item in validation_errors(got)] == [loc]


async def test_a_huge_wait_is_capped(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "capped")
    tag = await put(client, url, auth, 1)
    poll = asyncio.create_task(
        client.get(url, params={"wait": "1" + "0" * 300}, headers={**auth, "If-None-Match": tag})
    )
    await asyncio.sleep(0.2)
    await put(client, url, auth, 2)
    assert (await asyncio.wait_for(poll, 5)).status_code == 200


async def test_the_airflow_route_does_not_watch(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    await put(client, key_url(world, "af"), auth, 1)
    url = f"/execution/store/ti/{world.tis['extract'].id}/af"
    started = time.monotonic()
    got = await client.get(url, params={"wait": "10"}, headers={**auth, "If-None-Match": '"1"'})
    assert got.status_code == 304  # Airflow's route: a plain conditional GET, at once
    assert time.monotonic() - started < 2


# --- streams ---------------------------------------------------------------------------------------------


@pytest.fixture
async def live(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """The app served by uvicorn in this loop, and a client of it."""
    port = free_port()
    config = uvicorn.Config(
        app_for(services),  # built once per worker and settings (tests/apps.py)
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
        assert not task.done(), task
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        yield c
    server.should_exit = True
    await task


class Events:
    """Server-Sent Events read from a streamed response, comments kept apart."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, within_s: float = 5.0) -> dict[str, Any]:
        """The next event: its fields, ``data`` decoded from JSON."""
        event: dict[str, Any] = {}
        data: list[str] = []
        async with asyncio.timeout(within_s):
            while True:
                line = await anext(self.lines)
                if line == "":
                    if event or data:
                        if data:
                            event["data"] = msgspec.json.decode("\n".join(data))
                        return event
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                else:
                    event[name] = value

    async def comment(self, within_s: float = 5.0) -> str:
        async with asyncio.timeout(within_s):
            while True:
                line = await anext(self.lines)
                if line.startswith(":"):
                    return line[1:].strip()
                assert line == "", line


async def test_a_key_stream_sends_each_change_with_its_version(live: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "multi\nline")
    async with live.stream("GET", url, headers={**auth, **SSE}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = Events(response)
        assert await events.comment() == "watching"
        first = await events.next()
        assert first == {
            "event": "delete",
            "id": "0",
            "data": {"key": "multi\nline", "version": 0, "reason": "absent"},
        }
        got = await live.put(
            url, content=b'{"value": {"a":\n 1}}', headers={**auth, "content-type": "application/json"}
        )
        assert got.status_code == 204
        put1 = await events.next()
        assert put1["event"] == "put" and put1["id"] == "1"
        assert put1["data"]["value"] == {"a": 1} and put1["data"]["version"] == 1
        assert set(put1["data"]) == {"key", "version", "value", "updated_at", "expires_at"}
        await put(live, url, auth, 2)
        assert (await events.next())["id"] == "2"
        assert (await live.delete(url, headers=auth)).status_code == 204
        deleted = await events.next()
        assert deleted == {
            "event": "delete",
            "id": "0",
            "data": {"key": "multi\nline", "version": 0, "reason": "deleted"},
        }
        expires = datetime.now(UTC) + timedelta(seconds=0.8)
        await put(live, url, auth, 3, expires_at=expires.isoformat())
        assert (await events.next())["id"] == "1"
        expired = await events.next()
        assert expired["data"]["reason"] == "expired"
        # Idle: heartbeats keep proxies from closing it.
        assert await events.comment(within_s=3) == "heartbeat"


async def test_last_event_id_resumes_the_stream(live: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), key_url(world, "resume")
    await put(live, url, auth, "a")
    await put(live, url, auth, "b")
    # Up to date: nothing is sent until the next change.
    async with live.stream("GET", url, headers={**auth, **SSE, "Last-Event-ID": "2"}) as response:
        events = Events(response)
        assert await events.comment() == "watching"
        await put(live, url, auth, "c")
        event = await events.next()
        assert (event["id"], event["data"]["value"]) == ("3", "c")
    # Behind: the current state at once.
    async with live.stream("GET", url, headers={**auth, **SSE, "Last-Event-ID": "1"}) as response:
        events = Events(response)
        event = await events.next()
        assert (event["id"], event["data"]["value"]) == ("3", "c")


async def test_an_asset_key_stream(live: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), asset_key_url(world.asset_in, "cursor")
    async with live.stream("GET", url, headers={**auth, **SSE, "Last-Event-ID": "0"}) as response:
        events = Events(response)
        assert await events.comment() == "watching"
        await put(live, url, world.auth("extract"), 5)
        assert (await events.next())["data"]["value"] == 5


async def test_a_prefix_stream_sends_an_event_per_changed_key(live: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    scope = f"/execution/state/ti/{world.tis['extract'].id}"
    await put(live, key_url(world, "files/old"), auth, 0)
    async with live.stream("GET", scope, params={"prefix": "files/"}, headers={**auth, **SSE}) as response:
        assert response.status_code == 200
        events = Events(response)
        assert await events.comment() == "watching"
        await put(live, key_url(world, "other"), auth, 1)  # not under the prefix
        await put(live, key_url(world, "files/a.csv"), auth, 1)
        event = await events.next()
        assert (event["event"], event["id"], event["data"]["key"]) == ("put", "1", "files/a.csv")
        await live.delete(key_url(world, "files/old"), headers=auth)
        event = await events.next()
        assert (event["event"], event["data"]) == (
            "delete",
            {"key": "files/old", "version": 0, "reason": "deleted"},
        )
        # A clear names no key: the watch lists the prefix again and sends what went.
        await live.delete(scope, headers=auth)
        event = await events.next()
        assert event["data"]["key"] == "files/a.csv" and event["event"] == "delete"


async def test_an_asset_prefix_stream(live: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    scope = f"/execution/state/asset/{quote(world.asset_out, safe='')}"
    async with live.stream("GET", scope, params={"prefix": "p/"}, headers={**auth, **SSE}) as response:
        events = Events(response)
        assert await events.comment() == "watching"
        await put(live, asset_key_url(world.asset_out, "p/1"), auth, 1)
        assert (await events.next())["data"]["key"] == "p/1"


async def test_a_prefix_watch_takes_no_paging(client: httpx.AsyncClient, world: World) -> None:
    scope = f"/execution/state/ti/{world.tis['extract'].id}"
    got = await client.get(
        scope, params={"prefix": "a", "limit": "5"}, headers={**world.auth("extract"), **SSE}
    )
    assert [item["loc"] for item in validation_errors(got)] == [["query", "limit"]]


async def test_a_stream_leaves_its_watch_when_the_client_goes(
    live: httpx.AsyncClient, world: World, services: Services
) -> None:
    auth = world.auth("extract")
    before = services.watches.watching()
    async with live.stream("GET", key_url(world, unique("k")), headers={**auth, **SSE}) as response:
        events = Events(response)
        assert await events.comment() == "watching"
        assert services.watches.watching() == before + 1
    for _ in range(100):
        if services.watches.watching() == before:
            break
        await asyncio.sleep(0.05)
    assert services.watches.watching() == before


async def test_a_stream_the_server_ends_says_why(
    live: httpx.AsyncClient, world: World, services: Services
) -> None:
    auth = world.auth("extract")
    async with live.stream("GET", key_url(world, "ending"), headers={**auth, **SSE}) as response:
        events = Events(response)
        assert (await events.next())["event"] == "delete"
        await services.watches.close()  # as at shutdown
        last = await events.next()
        assert last["event"] == "error"
        assert last["data"] == {"reason": "unavailable", "message": "the server is shutting down"}


async def test_every_stream_ends_when_the_token_that_opened_it_expires(
    live: httpx.AsyncClient, world: World
) -> None:
    ti = world.tis["extract"].id
    tokens = world.services.tokens
    # 3 s: time for the streams to open on a busy machine (``exp`` is a whole second, so 3 to 4 s). The
    # task instance does not run, so its token is never renewed.
    task_token = tokens.mint_task_token(ti, ttl_s=3)
    streams = [
        (key_url(world, "k"), {}, task_token),
        (f"/execution/state/ti/{ti}", {"prefix": "p/"}, task_token),
    ]

    async def watch(url: str, params: dict[str, str], token: str) -> tuple[dict[str, Any], float]:
        headers = {"Authorization": f"Bearer {token}", **SSE}
        async with live.stream("GET", url, params=params, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            events = Events(response)
            assert await events.comment() == "watching"
            while (event := await events.next(10.0)).get("event") != "error":
                pass  # a key's first state, heartbeats
            ended = time.time()
            assert [line async for line in events.lines] == []  # and nothing after it
        return event, ended

    ends = await asyncio.gather(*(watch(*stream) for stream in streams))
    for (event, ended), (_, _, token) in zip(ends, streams, strict=True):
        assert event["data"] == {
            "reason": "forbidden",
            "message": "the token that opened this stream has expired",
        }
        exp = msgspec.json.decode(_payload(token))["exp"]
        assert exp - 0.1 <= ended < exp + 3, (ended, exp)


async def test_a_stream_opened_with_a_short_lived_token_renews_it_halfway_through_its_life(
    live: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: a token living less than the renewal window's 30 s floor is in its window from the
    # start, so the stream's renewal point fell before it opened; streams opened with tokens of 16 s or less
    # never renewed them and ended "expired" (answers renewed them all along).
    api_token = world.services.tokens.mint_api_token(
        "tester", frozenset({"state:admin", "runs:read"}), ttl_s=4
    )
    exp = msgspec.json.decode(_payload(api_token))["exp"]
    headers = {"Authorization": f"Bearer {api_token}", **SSE}

    async def renewed(url: str) -> dict[str, Any]:
        async with live.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            events = Events(response)
            assert await events.comment() == "watching"
            while (event := await events.next(10.0)).get("event") not in ("token", "error"):
                pass  # a key's first state, heartbeats
            return event

    for event in await asyncio.gather(renewed(f"{admin_scope(world)}/k"), renewed("/api/v2/dagRuns/events")):
        assert event["event"] == "token", event
        assert msgspec.json.decode(_payload(event["data"]["token"]))["exp"] > exp


async def test_a_stream_renews_its_token_and_goes_on_under_it(live: httpx.AsyncClient, world: World) -> None:
    # A 20 s token is in its renewal window (the last 30 s) from the start: the opening answer renews it
    # (once a second has passed: a renewal must extend the token), and the stream lives by the renewed
    # one; halfway through that one's life (it is shorter than the window), 10 s before it expires, the
    # stream renews it again itself and sends it (event: token), and goes on. A prefix stream that
    # reconnected instead lost a change.
    token = world.services.tokens.mint_api_token("tester", frozenset({"state:admin"}), ttl_s=20)
    await asyncio.sleep(1.1)
    headers = {"Authorization": f"Bearer {token}", **SSE}
    scope = admin_scope(world)
    async with live.stream("GET", scope, params={"prefix": "p"}, headers=headers) as response:
        opened_with = response.headers["Refreshed-API-Token"]
        exp = msgspec.json.decode(_payload(opened_with))["exp"]
        events = Events(response)
        assert await events.comment() == "watching"
        renewal = await events.next(10.0)
        renewed_at = time.time()
        assert renewal["event"] == "token", renewal
        fresh = renewal["data"]["token"]
        assert msgspec.json.decode(_payload(fresh))["exp"] > exp
        assert exp - 10.1 <= renewed_at < exp - 8, (renewed_at, exp)
        # The stream goes on, and the renewed token is good.
        put = await live.put(f"{scope}/p1", json={"value": 1}, headers={"Authorization": f"Bearer {fresh}"})
        assert put.status_code in (200, 204), put.text
        change = await events.next(5.0)
        assert (change["event"], change["data"]["key"]) == ("put", "p1")


async def test_a_stream_whose_token_cannot_be_renewed_ends_at_its_expiry(
    live: httpx.AsyncClient, world: World
) -> None:
    # A task token whose task instance does not run is not renewed: no token event, the end at expiry.
    ti = world.tis["extract"].id
    token = world.services.tokens.mint_task_token(ti, ttl_s=20)
    exp = msgspec.json.decode(_payload(token))["exp"]
    await asyncio.sleep(1.1)
    headers = {"Authorization": f"Bearer {token}", **SSE}
    async with live.stream("GET", key_url(world, "k"), headers=headers) as response:
        assert "Refreshed-API-Token" not in response.headers
        events = Events(response)
        assert (await events.next())["event"] == "delete"
        last = await events.next(25.0)
        ended = time.time()
    assert (last["event"], last["data"]["reason"]) == ("error", "forbidden"), last
    assert exp - 0.1 <= ended < exp + 3, (ended, exp)


def _payload(token: str) -> bytes:
    """A JWT's claims, unverified (the test minted it)."""
    body = token.split(".")[1]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


async def test_a_last_event_id_is_checked_whenever_it_is_sent(
    client: httpx.AsyncClient, world: World
) -> None:
    url = key_url(world, "k")
    for value in ("", "x"):
        got = await client.get(url, headers={**world.auth("extract"), "Last-Event-ID": value})
        assert [item["loc"] for item in validation_errors(got)] == [["header", "last-event-id"]]


async def test_last_event_id_sent_twice_is_a_422(client: httpx.AsyncClient, world: World) -> None:
    # The first of two was read and the second passed over (an outsider's probe).
    for url, auth in (
        (key_url(world, "k"), world.auth("extract")),
        (f"{admin_scope(world)}/k", world.api("state:admin")),
    ):
        headers = [*auth.items(), *SSE.items(), ("Last-Event-ID", "1"), ("Last-Event-ID", "2")]
        got = await client.get(url, headers=headers)
        (item,) = validation_errors(got)
        assert item["loc"] == ["header", "last-event-id"] and "more than once" in item["msg"]


@pytest.mark.parametrize(
    "accept",
    ["text/event-stream;q=0", "text/event-stream; Q=0.000, */*", "application/json, text/event-stream;q=0"],
)
async def test_an_accept_that_refuses_event_streams_gets_a_plain_answer(
    client: httpx.AsyncClient, world: World, accept: str
) -> None:
    # q=0 is "not acceptable" (RFC 9110 §12.5.1): it was answered with a stream (an outsider's probe).
    for url, auth in (
        (key_url(world, "plain"), world.auth("extract")),
        (f"{admin_scope(world)}/plain", world.api("state:admin")),
    ):
        got = await asyncio.wait_for(client.get(url, headers={**auth, "Accept": accept}), 10)
        assert got.status_code == 404 and got.headers["content-type"] == "application/json", got.text


# --- the operators' raw routes (/api/v2/state-store): the same watches, answering whole entries -----------


def admin_scope(world: World) -> str:
    return f"/api/v2/state-store/asset/{quote(world.asset_out, safe='')}"


def admin_task_scope(world: World) -> str:
    return f"/api/v2/state-store/task/{unique('dag')}/r%2F1/t/-1"


async def admin_put(client: httpx.AsyncClient, url: str, auth: dict[str, str], value: Any) -> int:
    got = await client.put(url, json={"value": value}, headers=auth)
    assert got.status_code == 200, got.text
    version: int = got.json()["version"]
    return version


async def test_an_operator_long_poll_answers_the_entry_when_it_changes(
    client: httpx.AsyncClient, world: World
) -> None:
    auth = world.api("state:admin")
    for scope in (admin_scope(world), admin_task_scope(world)):
        url = f"{scope}/wm"
        version = await admin_put(client, url, auth, "a")
        tag = {**auth, "If-None-Match": f'"{version}"'}
        poll = asyncio.create_task(client.get(url, params={"wait": "20"}, headers=tag))
        await asyncio.sleep(0.3)
        assert not poll.done()
        await admin_put(client, url, auth, "b")
        got = await asyncio.wait_for(poll, 5)
        assert got.status_code == 200, got.text
        assert (got.json()["key"], got.json()["value"], got.json()["version"]) == ("wm", "b", version + 1)
        assert got.headers["etag"] == f'"{version + 1}"'
        still = await client.get(
            url, params={"wait": "0.3"}, headers={**auth, "If-None-Match": got.headers["etag"]}
        )
        assert (still.status_code, still.headers["etag"]) == (304, got.headers["etag"])
        poll = asyncio.create_task(
            client.get(url, params={"wait": "20"}, headers={**auth, "If-None-Match": got.headers["etag"]})
        )
        await asyncio.sleep(0.2)
        assert (await client.delete(url, headers=auth)).status_code == 200
        gone = await asyncio.wait_for(poll, 5)
        assert gone.status_code == 404 and "'wm' not found" in gone.text


@pytest.mark.parametrize(
    ("query", "name"),
    [("wait=1&wait=2", "wait"), ("wait=1&timeout=2", "timeout"), ("prefix=a", "prefix")],
)
async def test_an_operator_key_read_takes_wait_once_and_nothing_else(
    client: httpx.AsyncClient, world: World, query: str, name: str
) -> None:
    got = await client.get(
        f"{admin_scope(world)}/k?{query}", headers={**world.api("state:admin"), "If-None-Match": '"1"'}
    )
    assert [item["loc"] for item in validation_errors(got)] == [["query", name]], got.text


async def test_hostile_operator_watch_input_is_a_422_naming_it(
    client: httpx.AsyncClient, world: World
) -> None:
    url, auth = f"{admin_scope(world)}/k", world.api("state:admin")
    cases = [
        ({"wait": "-1"}, {"If-None-Match": '"1"'}, ["query", "wait"]),
        ({"wait": "5"}, {"If-None-Match": "*"}, ["header", "if-none-match"]),
        ({"wait": "5"}, {"If-Match": '"1"'}, ["header", "if-match"]),
        ({}, {**SSE, "Last-Event-ID": "x"}, ["header", "last-event-id"]),
    ]
    for params, headers, loc in cases:
        got = await client.get(url, params=params, headers={**auth, **headers})
        assert [item["loc"] for item in validation_errors(got)] == [loc], (params, headers, got.text)
    paged = await client.get(admin_scope(world), params={"offset": "1"}, headers={**auth, **SSE})
    assert [item["loc"] for item in validation_errors(paged)] == [["query", "offset"]]


async def test_an_operator_key_stream_resumes_from_last_event_id(
    live: httpx.AsyncClient, world: World
) -> None:
    auth = world.api("state:admin")
    url = f"{admin_task_scope(world)}/files%2Fa"
    await admin_put(live, url, auth, 1)
    async with live.stream("GET", url, headers={**auth, **SSE, "Last-Event-ID": "1"}) as response:
        assert response.status_code == 200
        events = Events(response)
        assert await events.comment() == "watching"
        await admin_put(live, url, auth, 2)
        event = await events.next()
        assert (event["event"], event["id"], event["data"]["key"], event["data"]["value"]) == (
            "put",
            "2",
            "files/a",
            2,
        )
        assert (await live.delete(url, headers=auth)).status_code == 200
        assert (await events.next())["data"] == {"key": "files/a", "version": 0, "reason": "deleted"}
    async with live.stream("GET", url, headers={**auth, **SSE, "Last-Event-ID": "2"}) as response:
        event = await Events(response).next()  # behind: the current state at once
        assert (event["event"], event["id"]) == ("delete", "0")


async def test_an_operator_prefix_stream(live: httpx.AsyncClient, world: World) -> None:
    auth, scope = world.api("state:admin"), admin_scope(world)
    async with live.stream("GET", scope, params={"prefix": "p/"}, headers={**auth, **SSE}) as response:
        assert response.status_code == 200
        events = Events(response)
        assert await events.comment() == "watching"
        await admin_put(live, f"{scope}/q", auth, 0)
        await admin_put(live, f"{scope}/p%2F1", auth, 1)
        event = await events.next()
        assert (event["event"], event["data"]["key"], event["data"]["value"]) == ("put", "p/1", 1)


def _watchers(text: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith('stateport_connected{kind="watcher"}'))
    return float(line.split()[-1])


async def test_an_open_stream_counts_as_a_connected_watcher_and_is_not_timed(
    live: httpx.AsyncClient, world: World
) -> None:
    auth, url = world.auth("extract"), key_url(world, unique("counted"))
    before = _watchers((await live.get("/metrics")).text)
    async with live.stream("GET", url, headers={**auth, **SSE}) as response:
        # Held in a name: a reader dropped at once would close the response when it is collected.
        events = Events(response)
        assert await events.comment() == "watching"
        assert (await events.next())["event"] == "delete"  # the key is absent
        assert _watchers((await live.get("/metrics")).text) == before + 1
    deadline = time.monotonic() + 10
    while _watchers(text := (await live.get("/metrics")).text) != before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    route = 'route="/execution/state/ti/{task_instance_id}/{key}",status="200"'
    assert f'stateport_http_requests_total{{method="GET",{route}}}' in text
    assert f'stateport_http_request_duration_seconds_count{{method="GET",{route}}}' not in text


@pytest.mark.parametrize("accept", ["TEXT/EVENT-STREAM", "text/Event-Stream"])
async def test_an_accept_in_any_case_gets_a_stream(
    live: httpx.AsyncClient, world: World, accept: str
) -> None:
    # Media types are case-insensitive (RFC 9110 8.3.1): these got a plain JSON answer (an outsider's find).
    url = key_url(world, "cased")
    async with live.stream("GET", url, headers={**world.auth("extract"), "Accept": accept}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert await Events(response).comment() == "watching"


async def test_a_tasks_stream_ends_when_its_run_is_deleted(live: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: a stream opened before its run was deleted went on, and showed the old token the
    # state of a run made again under the same id. It ends, as every call of that token is then a 404.
    auth, url = world.auth("extract"), key_url(world, "k")
    run_url = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}"
    async with live.stream("GET", url, headers={**auth, **SSE}) as response:
        assert response.status_code == 200
        events = Events(response)
        assert await events.comment() == "watching"
        assert (await events.next())["event"] == "delete"  # absent
        cancel = await live.post(f"{run_url}/cancel", headers=world.api("runs:write"))
        assert cancel.status_code == 200, cancel.text
        deleted = await live.delete(run_url, headers=world.api("runs:write"))
        assert deleted.status_code == 204, deleted.text
        admin = f"/api/v2/state-store/task/{world.dag_id}/{quote(world.run_id, safe='')}/extract/-1/k"
        written = await live.put(admin, json={"value": "after"}, headers=world.api("state:admin"))
        assert written.status_code in (200, 204), written.text
        gone = await events.next(10.0)
        assert gone["event"] == "error" and "is gone" in gone["data"]["message"], gone
