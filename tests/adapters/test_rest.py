"""The REST adapter and the raw state admin routes it speaks to, against a real server process.

The shared StateStore contract runs in tests/contract (``-k rest``); these tests cover what is particular
to HTTP: the routes' shapes, percent-encoded segments, authorization, and how failures become domain errors.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from stateport.adapters.rest.state import RestStateStore
from stateport.adapters.rest.transport import FifoTransport
from stateport.domain.errors import Forbidden, Invalid, TooLarge, Unavailable, VersionMismatch
from stateport.domain.models import AssetScope, TaskScope
from stateport.domain.ports import StoreCapabilities
from stateport.domain.values import DOT_SEGMENTS
from tests.fixtures.rest import SECRET, Server
from tests.services import free_port, unique

ROOT = "/api/v2/state-store"


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def admin(stateport_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client with a state:admin token, for looking at the routes themselves."""
    headers = {"authorization": f"Bearer {stateport_server.api_token('state:admin')}"}
    async with httpx.AsyncClient(base_url=stateport_server.base_url, headers=headers, timeout=5) as client:
        yield client


# --- capabilities ---------------------------------------------------------------------------------------


async def test_capabilities_are_the_servers_but_never_its_clock(rest_state_store: RestStateStore) -> None:
    # The default server keeps state in SQLite: compare-and-set and clear are single statements.
    assert rest_state_store.capabilities == StoreCapabilities(
        atomic_versions=True, atomic_clear=True, native_expiry=False, caller_clock=False
    )


async def test_create_claims_nothing_before_asking(stateport_server: Server) -> None:
    store = RestStateStore.create(stateport_server.base_url, stateport_server.api_token("state:admin"))
    try:
        assert not store.capabilities.atomic_versions and not store.capabilities.atomic_clear
        assert not store.capabilities.caller_clock
        assert not store.capabilities.conditional_delete
        assert not store.capabilities.atomic_batch
    finally:
        await store.close()


async def test_a_conditional_delete_is_refused_until_the_server_declares_it(
    stateport_server: Server, rest_state_store: RestStateStore
) -> None:
    # A server that ignored If-Match on DELETE would delete blind: without its word, refuse and keep the key.
    scope = AssetScope(name=unique("asset"))
    await rest_state_store.put(scope, "k", b"1", expires_at=None, now=datetime.now(UTC))
    store = RestStateStore.create(stateport_server.base_url, stateport_server.api_token("state:admin"))
    try:
        with pytest.raises(Invalid):
            await store.delete(scope, "k", now=datetime.now(UTC), if_version=2)
        assert await store.get(scope, "k", now=datetime.now(UTC)) is not None
        await store.load_capabilities()
        assert store.capabilities.conditional_delete
        with pytest.raises(VersionMismatch):
            await store.delete(scope, "k", now=datetime.now(UTC), if_version=2)
        assert await store.delete(scope, "k", now=datetime.now(UTC), if_version=1) is True
    finally:
        await store.close()


# --- the routes -----------------------------------------------------------------------------------------


async def test_put_answers_the_entry_with_the_value_embedded_verbatim(admin: httpx.AsyncClient) -> None:
    url = f"{ROOT}/task/{unique('dag')}/run/t/-1/k"
    body = b'{"value": {"b": 1,  "a": "\\u00e9"}, "expires_at": "2999-01-01T00:00:00Z", "if_version": 0}'
    put = await admin.put(url, content=body, headers={"content-type": "application/json"})
    assert put.status_code == 200
    assert b'"value":{"b": 1,  "a": "\\u00e9"}' in put.content
    entry = put.json()
    assert set(entry) == {"key", "value", "version", "updated_at", "expires_at"}
    assert entry["key"] == "k" and entry["version"] == 1
    assert datetime.fromisoformat(entry["expires_at"]) == datetime(2999, 1, 1, tzinfo=UTC)
    got = await admin.get(url)
    assert got.status_code == 200 and got.json() == entry
    again = await admin.put(url, json={"value": 2, "if_version": 0})
    assert again.status_code == 412


async def test_delete_list_clear_and_purge_shapes(admin: httpx.AsyncClient) -> None:
    scope = f"{ROOT}/task/{unique('dag')}/run/t/3"
    for key in ("a", "b", "c"):
        assert (await admin.put(f"{scope}/{key}", json={"value": key})).status_code == 200
    assert (await admin.delete(f"{scope}/a")).json() == {"deleted": True}
    assert (await admin.delete(f"{scope}/a")).json() == {"deleted": False}
    page = (await admin.get(scope, params={"limit": 1, "offset": 1})).json()
    assert page["total_entries"] == 2 and [e["key"] for e in page["entries"]] == ["c"]
    assert (await admin.delete(scope)).json() == {"cleared": 2}
    purged = await admin.post(f"{ROOT}/purge", params={"batch_size": 10})
    assert purged.status_code == 200 and isinstance(purged.json()["purged"], int)


@pytest.mark.parametrize(
    "body",
    [
        b'{"value": 1, "retention": 5}',
        b'{"expires_at": null}',
        b'{"value": null}',
        b'{"value": 1, "expires_at": "2999-01-01T00:00:00"}',
        b'{"value": 1, "if_version": -1}',
        b'{"value": 1',
    ],
)
async def test_bad_put_bodies_are_422(admin: httpx.AsyncClient, body: bytes) -> None:
    put = await admin.put(
        f"{ROOT}/asset/{unique('a')}/k", content=body, headers={"content-type": "application/json"}
    )
    assert put.status_code == 422, put.text


@pytest.mark.parametrize("path", ["/task/d/r/t/x/k", "/task/d/r/t/-2/k", "/task/d/r/t", "/task/d//t/-1/k"])
async def test_malformed_task_addresses_are_422(admin: httpx.AsyncClient, path: str) -> None:
    assert (await admin.get(ROOT + path)).status_code == 422


async def test_a_percent_encoded_slash_stays_inside_its_segment(admin: httpx.AsyncClient) -> None:
    dag = f"team/{unique('dag')}"
    enc = {"dag": dag.replace("/", "%2F"), "run": "manual__2024-01-01T00%3A00%3A00%2B00%3A00"}
    assert (
        await admin.put(f"{ROOT}/task/{enc['dag']}/{enc['run']}/t/-1/k", json={"value": 1})
    ).status_code == 200
    # Decoded before routing, the slash would make "team" the dag and shift every segment along.
    shifted = await admin.get(f"{ROOT}/task/{dag}/{enc['run']}/t/-1/k")
    assert shifted.status_code in {404, 422}
    store_view = (await admin.get(f"{ROOT}/task/{enc['dag']}/{enc['run']}/t/-1")).json()
    assert [e["key"] for e in store_view["entries"]] == ["k"]
    name = unique("a")
    assert (await admin.put(f"{ROOT}/asset/{name}%2Fb/c", json={"value": 1})).status_code == 200
    assert (await admin.get(f"{ROOT}/asset/{name}/b%2Fc")).status_code == 404
    assert (await admin.get(f"{ROOT}/asset/{name}%2Fb/c")).json()["value"] == 1


async def test_the_adapter_addresses_such_segments(rest_state_store: RestStateStore) -> None:
    scope = TaskScope(
        dag_id=f"a/{unique('dag')}", run_id="scheduled__2024-01-01T00:00:00+00:00", task_id="t.x", map_index=0
    )
    await rest_state_store.put(scope, "%2F", b"1", expires_at=None, now=now())
    # Dot segments reach the server as they are (encoded): it refuses to store them, as no client could
    # read them back, and a read of one is of that key, not of the scope a resolved path would name.
    for key in (".", "..", "a/../b"):
        with pytest.raises(Invalid, match=re.escape(DOT_SEGMENTS)):
            await rest_state_store.put(scope, key, b"1", expires_at=None, now=now())
        assert await rest_state_store.get(scope, key, now=now()) is None
    page = await rest_state_store.list(scope, now=now())
    assert [e.key for e in page.entries] == ["%2F"]


# --- authorization --------------------------------------------------------------------------------------


async def test_routes_need_a_state_admin_api_token(stateport_server: Server) -> None:
    url = f"{ROOT}/asset/{unique('a')}/k"
    async with httpx.AsyncClient(base_url=stateport_server.base_url) as client:
        assert (await client.get(url)).status_code == 401
        reader = {"authorization": f"Bearer {stateport_server.api_token('runs:read')}"}
        assert (await client.get(url, headers=reader)).status_code == 403
        task = {
            "authorization": f"Bearer {stateport_server.ti_token('0190a4a1-0000-7000-8000-000000000000')}"
        }
        assert (await client.get(url, headers=task)).status_code == 403


async def test_connect_with_the_wrong_scope_is_forbidden(stateport_server: Server) -> None:
    with pytest.raises(Forbidden):
        await RestStateStore.connect(stateport_server.base_url, stateport_server.api_token("runs:read"))


# --- errors ---------------------------------------------------------------------------------------------


async def test_value_errors_come_back_as_domain_errors(rest_state_store: RestStateStore) -> None:
    scope = AssetScope(name=unique("a"))
    with pytest.raises(TooLarge):
        await rest_state_store.put(scope, "k", b'"' + b"x" * (64 * 1024) + b'"', expires_at=None, now=now())
    for bad in (b"null", b"{bad", b"1e999"):
        with pytest.raises(Invalid):
            await rest_state_store.put(scope, "k", bad, expires_at=None, now=now())
    with pytest.raises(Invalid):
        await rest_state_store.put(scope, "x" * 513, b"1", expires_at=None, now=now())
    with pytest.raises(VersionMismatch):
        await rest_state_store.put(scope, "k", b"1", expires_at=None, now=now(), if_version=3)
    assert (await rest_state_store.list(scope, now=now())).total == 0


async def test_expiry_is_the_servers(rest_state_store: RestStateStore) -> None:
    scope = AssetScope(name=unique("a"))
    # The caller's now is ignored: an entry already expired by it is still live on the server.
    await rest_state_store.put(scope, "k", b"1", expires_at=now() + timedelta(hours=1), now=now())
    assert await rest_state_store.get(scope, "k", now=now() + timedelta(days=1)) is not None


async def test_a_closed_port_is_unavailable_at_once() -> None:
    store = RestStateStore.create(f"http://127.0.0.1:{free_port()}", "token", timeout_s=30.0)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable):
            await store.get(AssetScope(name="a"), "k", now=now())
    finally:
        await store.close()
    assert time.monotonic() - started < 5.0  # refused at once, not after the 30 s timeout


@asynccontextmanager
async def serving(reply: bytes | None) -> AsyncIterator[str]:
    """A TCP server answering every request with ``reply``, or never answering (None); yields its URL."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        if reply is not None:
            writer.write(reply)
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def _reply(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


@pytest.mark.parametrize(
    "reply",
    [
        None,
        _reply("503 Service Unavailable", b'{"detail": "Redis is unreachable"}'),
        _reply("500 Internal Server Error", b'{"message": "Internal server error"}'),
        _reply("502 Bad Gateway", b"<html>proxy</html>"),
    ],
    ids=["silent", "503", "500", "502-html"],
)
async def test_a_failing_server_is_unavailable_within_the_timeout(reply: bytes | None) -> None:
    async with serving(reply) as url:
        store = RestStateStore.create(url, "token", timeout_s=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(Unavailable):
                await store.put(AssetScope(name="a"), "k", b"1", expires_at=None, now=now())
        finally:
            await store.close()
    assert time.monotonic() - started < 0.3 * 3 + 2  # a hang guard, generous for a busy machine


async def test_a_server_without_the_admin_routes_is_refused_at_connect() -> None:
    async with serving(_reply("404 Not Found", b'{"detail": "Not Found"}')) as url:
        with pytest.raises(Unavailable, match="no state admin routes"):
            await RestStateStore.connect(url, "token", timeout_s=1.0)


async def test_more_callers_than_turns_are_all_served_in_turn(rest_state_store: RestStateStore) -> None:
    """200 concurrent calls on a client of MAX_CONNECTIONS turns: each is answered; no turn is lost."""
    scope = TaskScope(dag_id=unique("d"), run_id="r", task_id="t")
    await rest_state_store.put(scope, "k", b'"v"', expires_at=None, now=now())

    async def get_twice() -> bool:
        first = await rest_state_store.get(scope, "k", now=now())
        missing = await rest_state_store.get(scope, "absent", now=now())  # a 404 gives its turn back too
        return first is not None and first.value == b'"v"' and missing is None

    # A turn that was never given back would leave later calls waiting: the guard makes that a failure.
    results = await asyncio.wait_for(asyncio.gather(*(get_twice() for _ in range(200))), 120)
    assert all(results)
    assert await asyncio.wait_for(rest_state_store.get(scope, "k", now=now()), 30) is not None


async def test_a_call_that_gets_no_turn_in_time_times_out() -> None:
    """A call queued behind turns held too long fails with the pool timeout (as one waiting at the pool)."""
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={"ok": True})

    transport = FifoTransport(httpx.MockTransport(slow), 1)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
        held = asyncio.create_task(client.get("http://upstream/held"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await client.get("http://upstream/queued")
        release.set()
        assert (await held).status_code == 200
        assert (await asyncio.wait_for(client.get("http://upstream/after"), 10)).status_code == 200


# --- token renewal (issue #12 item 1) -------------------------------------------------------------------


async def test_the_store_sends_the_renewed_token_from_then_on(stateport_server: Server) -> None:
    issued = int(time.time()) - 500
    claims = {
        "sub": "ops",
        "aud": "urn:stateport:api",
        "scope": "state:admin",
        "iat": issued,
        "exp": issued + 600,
    }
    token = jwt.encode(claims, SECRET, "HS512")  # 100 s left of 600: due for renewal
    sent: list[str] = []
    refreshed: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        sent.append(request.headers["authorization"])

    async def on_response(response: httpx.Response) -> None:
        refreshed.append(response.headers.get("refreshed-api-token", ""))

    hooks: dict[str, list[Callable[..., Any]]] = {"request": [on_request], "response": [on_response]}
    async with httpx.AsyncClient(base_url=stateport_server.base_url, event_hooks=hooks) as http:
        store = await RestStateStore.connect(stateport_server.base_url, token, client=http)
        await store.put(AssetScope(name=unique("a")), "k", b"1", expires_at=None, now=now())
    assert sent[0] == f"Bearer {token}"
    assert refreshed[0]  # the server renewed it on the first answer
    assert sent[1] == f"Bearer {refreshed[0]}"
