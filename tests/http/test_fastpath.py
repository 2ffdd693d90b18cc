"""The fast path of a plain state GET (``stateport.http.fastpath``): which requests it serves, and that each
answer is the route's, header for header.

Every request is sent twice: as it is, and with one header more that the fast path does not take
(``X-Routed``), so the route serves the second. The two answers must agree but for the request id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stateport.domain.ids import uuid7
from stateport.http.fastpath import ROUTES, StateportApp, plain_get
from tests.http.conftest import World

AREAS = ["state", "store"]
ROUTED = {"X-Routed": "1"}


def url(area: str, ti: object, key: str) -> str:
    return f"/execution/{area}/ti/{ti}/{key}"


async def both(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], *, fast_path: bool = True
) -> httpx.Response:
    """The answer to ``path``, asserted equal to the route's own; ``fast_path``: served by the fast path."""
    app = client._transport.app  # type: ignore[attr-defined]
    assert isinstance(app, StateportApp)
    served = app.served_fast
    fast = await client.get(path, headers=headers)
    assert app.served_fast == served + fast_path
    routed = await client.get(path, headers={**headers, **ROUTED})
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert fast.content == routed.content
    assert _headers(fast) == _headers(routed)
    given = headers.get("X-Request-ID")
    assert fast.headers["x-request-id"] == (given or fast.headers["x-request-id"]) != ""
    return fast


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k != "x-request-id"]


@pytest.mark.parametrize("area", AREAS)
async def test_each_answer_is_the_routes(client: httpx.AsyncClient, world: World, area: str) -> None:
    ti = world.tis["extract"].id
    auth = world.auth("extract")
    put = {"value": {"n": 1, "s": "é"}, "expires_at": None}
    assert (await client.put(url(area, ti, "k"), json=put, headers=auth)).status_code == 204
    got = await both(client, url(area, ti, "k"), auth)
    assert (got.status_code, got.json(), got.headers["etag"]) == (200, {"value": {"n": 1, "s": "é"}}, '"1"')
    assert (await both(client, url(area, ti, "missing"), auth)).status_code == 404
    # What the request carries besides: echoed, taken, or sent to the route.
    sdk = {
        **auth,
        "correlation-id": "0193-abc",
        "X-Request-ID": "mine-1",
        "Airflow-API-Version": "2026-06-30",
        "User-Agent": "apache-airflow-task-sdk/1.3.2 (Python/3.11.7)",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    echoed = await both(client, url(area, ti, "k"), sdk)
    assert echoed.headers["correlation-id"] == "0193-abc"
    old_version = {**auth, "Airflow-API-Version": "2025-01-01"}
    old = await both(client, url(area, ti, "k"), old_version, fast_path=area == "state")
    assert old.status_code == (404 if area == "store" else 200)
    bad_version = {**auth, "Airflow-API-Version": "2026-13-45"}
    bad = await both(client, url(area, ti, "k"), bad_version, fast_path=area == "state")
    assert bad.status_code == (422 if area == "store" else 200)
    assert (await both(client, url(area, ti, "k" * 2000), auth, fast_path=False)).status_code == 422
    assert (
        await both(client, url(area, ti, "k"), {"Authorization": "Bearer x.y.z"}, fast_path=False)
    ).status_code == 403
    assert (await both(client, url(area, ti, "k"), {}, fast_path=False)).status_code == 401
    other = world.auth("load")
    assert (await both(client, url(area, ti, "k"), other, fast_path=False)).status_code == 403
    assert (await both(client, url(area, str(ti).upper(), "k"), auth, fast_path=False)).status_code == 200
    stranger = uuid7()
    token = {"Authorization": f"Bearer {world.services.tokens.mint_task_token(stranger)}"}
    assert (await both(client, url(area, stranger, "k"), token)).status_code == 404
    for dots in ("...", "~.-_"):
        # Keys of the fast path's characters only, written through the route: read back alike both ways.
        assert (await client.put(url(area, ti, dots), json=put, headers=auth)).status_code == 204
        assert (await both(client, url(area, ti, dots), auth)).status_code == 200
    past = {"value": 1, "expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    await client.put(url("store", ti, "gone"), json=past, headers=auth)
    assert (await both(client, url(area, ti, "gone"), auth)).status_code == 404


def _scope(path: bytes, headers: list[tuple[bytes, bytes]], **over: Any) -> dict[str, Any]:
    scope = {
        "type": "http",
        "method": "GET",
        "http_version": "1.1",
        "raw_path": path,
        "path": path.decode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
    }
    return {**scope, **over}


TI = "0193b1a2-7c4d-7e5f-8a9b-0c1d2e3f4a5b"
PLAIN = [(b"host", b"s"), (b"authorization", b"Bearer t"), (b"accept", b"*/*"), (b"user-agent", b"x")]


@pytest.mark.parametrize("area", [b"state", b"store"])
def test_a_plain_read_is_served_here(area: bytes) -> None:
    plain = plain_get(_scope(b"/execution/" + area + b"/ti/" + TI.encode() + b"/my_key.v-1~", PLAIN))
    assert plain is not None
    assert (plain.area, plain.ti_id, plain.key, plain.authorization) == (area, TI, "my_key.v-1~", b"Bearer t")


@pytest.mark.parametrize(
    ("path", "headers", "over"),
    [
        pytest.param(f"/execution/state/ti/{TI}/a%2Fb", PLAIN, {}, id="escaped-key"),
        pytest.param(f"/execution/state/ti/{TI}/a/b", PLAIN, {}, id="key-with-slash"),
        pytest.param(f"/execution/state/ti/{TI}/", PLAIN, {}, id="no-key"),
        pytest.param(f"/execution/state/ti/{TI.upper()}/k", PLAIN, {}, id="id-not-canonical"),
        pytest.param(f"/execution/state/asset/{TI}/k", PLAIN, {}, id="asset"),
        pytest.param(f"/execution/state/ti/{TI}/k", PLAIN, {"method": "HEAD"}, id="head"),
        pytest.param(f"/execution/state/ti/{TI}/k", PLAIN, {"query_string": b"wait=5"}, id="query"),
        pytest.param(f"/execution/state/ti/{TI}/k", PLAIN, {"http_version": "1.0"}, id="http-1.0"),
        pytest.param(f"/execution/state/ti/{TI}/k", PLAIN, {"root_path": "/sp"}, id="root-path"),
        pytest.param(f"/execution/state/ti/{TI}/k", PLAIN, {"raw_path": None}, id="no-raw-path"),
        pytest.param(f"/execution/state/ti/{TI}/k", [*PLAIN, (b"if-none-match", b'"1"')], {}, id="condition"),
        pytest.param(f"/execution/state/ti/{TI}/k", [*PLAIN, (b"accept", b"x")], {}, id="two-accepts"),
        pytest.param(f"/execution/state/ti/{TI}/k", [*PLAIN, (b"host", b"t")], {}, id="two-hosts"),
        pytest.param(f"/execution/state/ti/{TI}/k", PLAIN[1:], {}, id="no-host"),
        pytest.param(f"/execution/state/ti/{TI}/k", [PLAIN[0]], {}, id="no-authorization"),
        pytest.param(f"/execution/state/ti/{TI}/k", [*PLAIN, (b"content-length", b"0")], {}, id="a-body"),
        pytest.param(f"/execution/state/ti/{TI}/k", [*PLAIN, (b"last-event-id", b"3")], {}, id="resume"),
        pytest.param(
            f"/execution/state/ti/{TI}/k",
            [(b"host", b"s"), (b"authorization", b"Bearer t"), (b"accept", b"text/event-stream")],
            {},
            id="stream",
        ),
        pytest.param(
            f"/execution/store/ti/{TI}/k",
            [*PLAIN, (b"airflow-api-version", b"2026-02-30")],
            {},
            id="bad-date",
        ),
    ],
)
def test_what_the_route_serves(path: str, headers: list[tuple[bytes, bytes]], over: dict[str, Any]) -> None:
    assert plain_get(_scope(path.encode(), headers, **over)) is None


async def test_the_fast_path_counts_under_the_routes_label(client: httpx.AsyncClient, world: World) -> None:
    ti = world.tis["extract"].id
    auth = world.auth("extract")
    await client.put(url("state", ti, "k"), json={"value": 1, "expires_at": None}, headers=auth)
    before = _count((await client.get("/metrics")).text, ROUTES[b"state"])
    await both(client, url("state", ti, "k"), auth)
    assert _count((await client.get("/metrics")).text, ROUTES[b"state"]) == before + 2


def _count(scraped: str, route: str) -> float:
    prefix = f'stateport_http_request_duration_seconds_count{{method="GET",route="{route}",status="200"}} '
    lines = [line for line in scraped.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def _raw_get(app: Any, path: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, list[Any]]:
    """One GET of ``path`` exactly as written (an HTTP client would resolve dot segments first)."""
    scope = {
        **_scope(path, headers),
        "asgi": {"version": "3.0"},
        "scheme": "http",
        "server": ("stateport", 80),
        "client": ("127.0.0.1", 5000),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], body, [h for h in start["headers"] if h[0] != b"x-request-id"]


@pytest.mark.parametrize("key", [".", ".."])
async def test_a_dot_segment_key_is_answered_as_the_route_answers_it(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    ti = world.tis["extract"].id
    auth = (b"authorization", f"Bearer {world.token('extract')}".encode())
    path = f"/execution/state/ti/{ti}/{key}".encode()
    fast = await _raw_get(app, path, [(b"host", b"s"), auth])
    routed = await _raw_get(app, path, [(b"host", b"s"), auth, (b"x-routed", b"1")])
    assert fast == routed, (fast, routed)
    assert fast[0] in (200, 404, 422), fast  # an answer of the route, not a 500
