"""One validation in the core: the raw admin state routes give the same answer on every backend (item 14).

The same invalid addresses go to the app over SQLite, PostgreSQL and Redis state stores; each must be
refused with the same 422 and the same body, before any store sees it. SQLite's answers are the reference:
a test on another backend sends its requests to an app over SQLite too (``reference``), and compares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from stateport.bootstrap import open_services
from tests.apps import app_for
from tests.fixtures.redis import drop_prefix, redis_available
from tests.http.conftest import make_settings, validation_errors
from tests.services import REDIS_URL, redis_key_prefix, require, unique

ROOT = "/api/v2/state-store"
JSON = {"content-type": "application/json"}
BACKENDS = ["sqlite", "postgres", "redis"]

# (name, address under ROOT); every one is invalid whatever stores it.
INVALID = [
    ("dag_id of 10,000 characters", f"task/{'d' * 10_000}/r/t/-1/k"),
    ("run_id of 251 characters", f"task/d/{'r' * 251}/t/-1/k"),
    ("map_index 2^70", f"task/d/r/t/{2**70}/k"),
    ("map_index 2^31", f"task/d/r/t/{2**31}/k"),
    ("map_index -2", "task/d/r/t/-2/k"),
    ("map_index +1 (another spelling of 1)", "task/d/r/t/+1/k"),
    ("map_index 01 (another spelling of 1)", "task/d/r/t/01/k"),
    ("dag_id with NUL", "task/d%00x/r/t/-1/k"),
    ("run_id with a newline", "task/d/r%0Ax/t/-1/k"),
    ("task_id with DEL", "task/d/r/t%7F/-1/k"),
    ("task_id with a C1 control (NEL)", "task/d/r/t%C2%85/-1/k"),
    ("asset name with NUL", "asset/a%00b/k"),
    ("asset name of 1501 characters", f"asset/{'a' * 1501}/k"),
    ("asset name with a tab", "asset/a%09b/k"),
    ("key with NUL", "asset/a/k%00x"),
    ("key of 513 characters", f"asset/a/{'k' * 513}"),
    ("key that is not UTF-8", "asset/a/c%FFx"),
    ("name that is not UTF-8", "asset/a%FE/k"),
]

# Names and keys a write may not make (blank, whitespace at an end), which earlier versions accepted: what
# was stored under them stays readable and deletable.
UNTRIMMED = [
    ("blank dag_id", "task/%20/r/t/-1/k"),
    ("run_id ending in a space", "task/d/r%20/t/-1/k"),
    ("task_id starting with NBSP", "task/d/r/%C2%A0t/-1/k"),
    ("blank asset name", "asset/%20%20/k"),
    ("blank key", "asset/a/%20"),
    ("key ending in a space", "asset/a/k%20"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(state backend, database url): Redis keeps state beside a SQLite run store."""
    name: str = request.param
    if name == "redis":
        require(redis_available(), f"Redis at {REDIS_URL}")
    url: str = request.getfixturevalue("postgres_url" if name == "postgres" else "sqlite_http_url")
    return name, url


@pytest.fixture
async def admin(backend: tuple[str, str], tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _admin_client(backend, tmp_path / "admin") as client:
        yield client


@pytest.fixture
async def reference(
    backend: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient | None]:
    """An admin client over SQLite, whose answers another backend must repeat; None when testing SQLite."""
    if backend[0] == "sqlite":
        yield None
        return
    url: str = request.getfixturevalue("sqlite_http_url")
    async with _admin_client(("sqlite", url), tmp_path / "reference") as client:
        yield client


async def same_on_sqlite(reference: httpx.AsyncClient | None, got: httpx.Response) -> None:
    """Send ``got``'s request to the app over SQLite too: the answer must be the same, status and body."""
    if reference is None:
        return
    answer = await reference.send(got.request)
    assert (got.status_code, got.content) == (answer.status_code, answer.content), str(got.request.url)[:200]


@asynccontextmanager
async def _admin_client(backend: tuple[str, str], data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    name, url = backend
    prefix = redis_key_prefix()
    overrides = (
        {"state_backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix} if name == "redis" else {}
    )
    services = await open_services(make_settings(url, data_dir, **overrides), migrate=False)
    try:
        token = services.tokens.mint_api_token("tester", frozenset({"state:admin"}))
        app = app_for(services)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://stateport", headers=headers
        ) as client:
            yield client
    finally:
        await services.close()
        if name == "redis":
            await drop_prefix(prefix)


@pytest.mark.parametrize(("name", "address"), INVALID, ids=[name for name, _ in INVALID])
async def test_invalid_addresses_are_the_same_422_on_every_backend(
    admin: httpx.AsyncClient, reference: httpx.AsyncClient | None, name: str, address: str
) -> None:
    for method in ("PUT", "GET", "DELETE"):
        body = b'{"value": 1}' if method == "PUT" else None
        got = await admin.request(method, f"{ROOT}/{address}", content=body, headers=JSON if body else None)
        assert got.status_code == 422, (name, method, got.status_code, got.text[:300])
        assert validation_errors(got)
        await same_on_sqlite(reference, got)


@pytest.mark.parametrize(("name", "address"), UNTRIMMED, ids=[name for name, _ in UNTRIMMED])
async def test_untrimmed_names_are_refused_on_write_and_answered_on_read_alike(
    admin: httpx.AsyncClient, reference: httpx.AsyncClient | None, name: str, address: str
) -> None:
    put = await admin.put(f"{ROOT}/{address}", content=b'{"value": 1}', headers=JSON)
    assert put.status_code == 422, (name, put.text[:300])
    assert "whitespace" in validation_errors(put)[0]["msg"]
    # What an earlier version stored there (the shared PostgreSQL test database may hold some) can go...
    deleted = await admin.delete(f"{ROOT}/{address}")
    assert deleted.status_code in (200, 204), (name, deleted.status_code, deleted.text[:300])
    # ... and a read is an ordinary read of a missing key.
    got = await admin.get(f"{ROOT}/{address}")
    assert got.status_code == 404, (name, got.text[:300])
    await same_on_sqlite(reference, got)
    await same_on_sqlite(reference, put)


async def test_valid_addresses_at_the_limits_are_stored_on_every_backend(admin: httpx.AsyncClient) -> None:
    dag_id = unique("d") + "x" * 200
    limits = [
        f"task/{dag_id}/{'r' * 250}/t/{2**31 - 1}/{'k' * 512}",
        f"task/{dag_id}/r%2Fslash/t/-1/caf%C3%A9",
        f"asset/{unique('a')}{'a' * 1400}/k",
    ]
    for address in limits:
        put = await admin.put(f"{ROOT}/{address}", content=b'{"value": [1]}', headers=JSON)
        assert put.status_code == 200, (address[:80], put.text[:300])
        got = await admin.get(f"{ROOT}/{address}")
        assert got.json()["value"] == [1]


# Values no store may accept (item 3: they answered 500 on SQL and Redis alike).
BAD_VALUES = [
    ("nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000),
    ("nested 979 deep", b"[" * 979 + b"]" * 979),
    ("nested 65 deep", b"[" * 65 + b"]" * 65),
    ("1e999", b"1e999"),
    ("-1e999", b"[-1e999]"),
    ("NaN", b"NaN"),
    ("a 400-digit integer", b"1" + b"0" * 400),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[name for name, _ in BAD_VALUES])
async def test_bad_values_are_the_same_422_on_every_backend(
    admin: httpx.AsyncClient, reference: httpx.AsyncClient | None, name: str, value: bytes
) -> None:
    for address in (f"task/{unique('d')}/r/t/-1/k", f"asset/{unique('a')}/k"):
        got = await admin.put(f"{ROOT}/{address}", content=b'{"value": ' + value + b"}", headers=JSON)
        assert got.status_code == 422, (name, got.status_code, got.text[:300])
        await same_on_sqlite(reference, got)
        assert (await admin.get(f"{ROOT}/{address}")).status_code == 404


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
async def test_expiry_times_past_the_years_1_to_9999_in_utc_are_the_same_422(
    admin: httpx.AsyncClient, reference: httpx.AsyncClient | None, moment: str
) -> None:
    # They answered 500 on SQL (after storing a row no read could decode) and 204 on Redis.
    address = f"asset/{unique('a')}/k"
    body = b'{"value": 1, "expires_at": "' + moment.encode() + b'"}'
    got = await admin.put(f"{ROOT}/{address}", content=body, headers=JSON)
    assert got.status_code == 422, got.text[:300]
    await same_on_sqlite(reference, got)
    assert (await admin.get(f"{ROOT}/{address}")).status_code == 404


async def test_huge_offsets_and_versions_get_the_same_answer_on_every_backend(
    admin: httpx.AsyncClient, reference: httpx.AsyncClient | None
) -> None:
    # Redis answered 503 (a client retries forever) and SQL 200 or 422 with a driver's words.
    address = f"asset/{unique('a')}"
    stored = await admin.put(f"{ROOT}/{address}/k", content=b'{"value": 1}', headers=JSON)
    assert stored.status_code == 200
    if reference is not None:  # the same key on SQLite, for the same answers (not compared: it has times)
        assert (await reference.send(stored.request)).status_code == 200
    for offset in (2**31, 2**63 - 1, 2**63):
        got = await admin.get(f"{ROOT}/{address}", params={"offset": offset})
        assert got.status_code == 422, (offset, got.status_code, got.text[:300])
        await same_on_sqlite(reference, got)
    for version in (2**63, 2**64):
        body = b'{"value": 2, "if_version": %d}' % version
        got = await admin.put(f"{ROOT}/{address}/k", content=body, headers=JSON)
        assert got.status_code in (412, 422), (version, got.status_code, got.text[:300])
        await same_on_sqlite(reference, got)
    assert (await admin.get(f"{ROOT}/{address}/k")).json()["value"] == 1


async def test_a_failed_precondition_is_the_same_412_on_every_backend(admin: httpx.AsyncClient) -> None:
    url = f"{ROOT}/asset/{unique('a')}/counter"
    assert (await admin.put(url, content=b'{"value": 1}', headers=JSON)).status_code == 200
    refusals = [
        (
            await admin.put(url, content=b'{"value": 2}', headers={**JSON, "If-None-Match": "*"}),
            "already exists",
        ),
        (
            await admin.put(url, content=b'{"value": 2}', headers={**JSON, "If-Match": '"7"'}),
            "is not at version 7",
        ),
        (await admin.delete(url, headers={"If-None-Match": "*"}), "already exists"),
        (await admin.delete(url, headers={"If-Match": '"7"'}), "is not at version 7"),
    ]
    for got, says in refusals:
        assert (got.status_code, got.json()) == (412, {"detail": f"State key 'counter' {says}"})


async def test_an_expiry_sent_with_an_offset_is_answered_in_utc_on_every_backend(
    admin: httpx.AsyncClient,
) -> None:
    # An outsider's find: a write's answer kept the caller's offset on Redis and S3 and said Z on SQL, and
    # a batch's answers mixed both; every later read said Z.
    url = f"{ROOT}/asset/{unique('a')}"
    sent = b'{"value": 1, "expires_at": "2099-01-01T05:00:00.123456+05:00"}'
    put = await admin.put(f"{url}/k", content=sent, headers=JSON)
    assert put.json()["expires_at"] == "2099-01-01T00:00:00.123456Z", put.text
    got = await admin.get(f"{url}/k")
    assert got.json()["expires_at"] == "2099-01-01T00:00:00.123456Z", got.text
    ops = [
        {"op": "put", "key": "b", "value": 2, "expires_at": "2099-01-01T05:00:00+05:00"},
        {"op": "get", "key": "b"},
    ]
    batch = await admin.post(url, json={"operations": ops})
    if batch.status_code != 501:  # a backend without atomic batches
        put_result, get_result = batch.json()["results"]
        answered = [put_result["expires_at"], get_result["entry"]["expires_at"]]
        assert answered == ["2099-01-01T00:00:00Z"] * 2, batch.text
