"""Authentication on both APIs: Airflow's messages and status codes, and API scopes."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from tests.http.conftest import SECRET, World


def task_url(world: World, task: str = "extract", area: str = "store") -> str:
    return f"/execution/{area}/ti/{world.tis[task].id}/k"


def forged(world: World, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(world.tis["extract"].id),
        "aud": "urn:airflow.apache.org:task",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("area", ["state", "store"])
@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer   "])
async def test_missing_token_is_401(
    client: httpx.AsyncClient, world: World, area: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    got = await client.get(task_url(world, area=area), headers=headers)
    assert got.status_code == 401
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {"detail": "Missing auth token"}


@pytest.mark.parametrize("area", ["state", "store"])
async def test_two_authorization_headers_are_401_even_with_a_good_one(
    client: httpx.AsyncClient, world: World, area: str
) -> None:
    # A proxy that checks the last header would authorize another caller than the one served (the first).
    good = f"Bearer {world.token('extract')}"
    for pair in (["Bearer wrong", good], [good, "Bearer wrong"], [good, good]):
        headers = httpx.Headers([("Authorization", value) for value in pair])
        got = await client.get(task_url(world, area=area), headers=headers)
        assert got.status_code == 401, pair
        assert got.json() == {"detail": "Send one Authorization header, not several"}


async def test_a_minimal_hs512_token_is_accepted(client: httpx.AsyncClient, world: World) -> None:
    token = jwt.encode(forged(world), SECRET, algorithm="HS512")
    assert (
        await client.get(task_url(world), headers=bearer(token))
    ).status_code == 404  # key missing, token fine


@pytest.mark.parametrize(
    "token_kind",
    [
        "garbage",
        "bad_signature",
        "expired",
        "wrong_aud",
        "alg_none",
        "hs256",
        "no_exp",
        "no_iat",
        "no_aud",
        "api_token",
    ],
)
@pytest.mark.parametrize("area", ["state", "store"])
async def test_invalid_tokens_are_403(
    client: httpx.AsyncClient, world: World, token_kind: str, area: str
) -> None:
    tokens: dict[str, Callable[[], str]] = {
        "garbage": lambda: "not.a.jwt",
        "bad_signature": lambda: jwt.encode(forged(world), "another-secret-" + "y" * 80, algorithm="HS512"),
        "expired": lambda: jwt.encode(forged(world, exp=int(time.time()) - 60), SECRET, algorithm="HS512"),
        "wrong_aud": lambda: jwt.encode(forged(world, aud="urn:other"), SECRET, algorithm="HS512"),
        "alg_none": lambda: jwt.encode(forged(world), "", algorithm="none"),
        "hs256": lambda: jwt.encode(forged(world), SECRET, algorithm="HS256"),
        "no_exp": lambda: jwt.encode(forged(world, exp=None), SECRET, algorithm="HS512"),
        "no_iat": lambda: jwt.encode(forged(world, iat=None), SECRET, algorithm="HS512"),
        "no_aud": lambda: jwt.encode(forged(world, aud=None), SECRET, algorithm="HS512"),
        "api_token": lambda: world.services.tokens.mint_api_token("me", frozenset({"state:admin"})),
    }
    got = await client.get(task_url(world, area=area), headers=bearer(tokens[token_kind]()))
    assert got.status_code == 403
    assert got.headers["content-type"] == "application/json"
    # Airflow's detail, followed by the reason where pyjwt gives one (issue #12 item 21).
    reasons = {
        "bad_signature": ": the signature did not verify (was it minted with this server's key?)",
        "expired": ": expired",
        "wrong_aud": ": wrong audience",
        "api_token": ": wrong audience",
        "hs256": ": algorithm not allowed",
        "alg_none": ": algorithm not allowed",
        "no_exp": ": a required claim is missing",
        "no_iat": ": a required claim is missing",
        "no_aud": ": a required claim is missing",
    }
    assert got.json() == {"detail": "Invalid auth token" + reasons.get(token_kind, "")}


async def test_another_task_instances_token_is_403(client: httpx.AsyncClient, world: World) -> None:
    got = await client.get(task_url(world, "extract"), headers=world.auth("load"))
    assert got.status_code == 403
    assert got.json() == {"detail": "Token subject does not match task instance ID"}


Request = tuple[str, str, dict[str, object] | None]


def same_id_requests(ti: str) -> list[Request]:
    """Every route that compares the task instance its path names with the token's subject."""
    requests: list[Request] = []
    for area in ("state", "store"):
        requests += [
            ("PUT", f"/execution/{area}/ti/{ti}/k", {"value": 1}),
            ("GET", f"/execution/{area}/ti/{ti}/k", None),
            ("DELETE", f"/execution/{area}/ti/{ti}/k", None),
            ("DELETE", f"/execution/{area}/ti/{ti}", None),
        ]
    return [
        *requests,
        ("PUT", f"/execution/task-instances/{ti}/heartbeat", {"hostname": "h", "pid": 1}),
        ("PATCH", f"/execution/task-instances/{ti}/state", {"state": "bogus"}),  # 422 once let in: no change
    ]


@pytest.mark.parametrize("spelling", ["path", "subject"])
async def test_the_task_instance_id_is_compared_as_a_uuid_not_as_text(
    client: httpx.AsyncClient, world: World, spelling: str
) -> None:
    """The same id in upper case, in the path or in the token's subject, is the same task instance: every
    route answers as it does to the id as minted, never 403."""
    ti = str(world.tis["extract"].id)
    minted = world.auth("extract")
    upper_sub = bearer(jwt.encode(forged(world, sub=ti.upper()), SECRET, algorithm="HS512"))
    path_ti, headers = (ti.upper(), minted) if spelling == "path" else (ti, upper_sub)
    for (method, url, body), (_, odd_url, _) in zip(
        same_id_requests(ti), same_id_requests(path_ti), strict=True
    ):
        expected = await client.request(method, url, json=body, headers=minted)
        got = await client.request(method, odd_url, json=body, headers=headers)
        assert (got.status_code, got.content) == (expected.status_code, expected.content), (method, odd_url)
        assert got.status_code != 403, (method, odd_url, got.text)


async def test_an_id_that_is_no_uuid_is_403_unless_it_is_the_subject(
    client: httpx.AsyncClient, world: World
) -> None:
    other = await client.get("/execution/state/ti/not-a-uuid/k", headers=world.auth("extract"))
    assert (other.status_code, other.json()) == (
        403,
        {"detail": "Token subject does not match task instance ID"},
    )
    own = bearer(jwt.encode(forged(world, sub="not-a-uuid"), SECRET, algorithm="HS512"))
    same = await client.get("/execution/state/ti/not-a-uuid/k", headers=own)
    assert same.status_code == 422 and same.json()["detail"][0]["loc"] == ["path", "task_instance_id"]


async def test_workload_token_is_refused_on_state_routes(client: httpx.AsyncClient, world: World) -> None:
    token = world.jwt.mint_task_token(world.tis["extract"].id, scope="workload")
    got = await client.get(task_url(world), headers=bearer(token))
    assert got.status_code == 403
    assert got.json() == {
        "detail": "Token type 'workload' not allowed for this endpoint. Allowed types: execution"
    }


async def test_unknown_scope_value_is_invalid(client: httpx.AsyncClient, world: World) -> None:
    token = jwt.encode(forged(world, scope="admin"), SECRET, algorithm="HS512")
    got = await client.get(task_url(world), headers=bearer(token))
    assert got.status_code == 403
    assert got.json()["detail"].startswith("Invalid auth token: ")


async def test_missing_scope_means_execution(client: httpx.AsyncClient, world: World) -> None:
    token = jwt.encode(forged(world), SECRET, algorithm="HS512")
    assert (await client.put(task_url(world), json={"value": 1}, headers=bearer(token))).status_code == 204


async def test_task_token_on_the_public_api_is_403(client: httpx.AsyncClient, world: World) -> None:
    got = await client.get(f"/api/v2/dags/{world.dag_id}", headers=world.auth("extract"))
    assert got.status_code == 403
    assert got.json() == {"detail": "Invalid auth token: wrong audience"}


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer   "])
async def test_public_api_without_token_is_401(
    client: httpx.AsyncClient, world: World, header: str | None
) -> None:
    # Airflow 3.3.2's public API: no bearer credentials is 401 (security.resolve_user_from_token).
    headers = {"Authorization": header} if header is not None else {}
    got = await client.get(f"/api/v2/dags/{world.dag_id}", headers=headers)
    assert got.status_code == 401
    assert got.json() == {"detail": "Missing auth token"}


@pytest.mark.parametrize("token", ["garbage", "not.a.jwt", "a.b.c"])
async def test_public_api_with_an_unreadable_token_is_403(
    client: httpx.AsyncClient, world: World, token: str
) -> None:
    # Airflow's public API answers an InvalidTokenError with 403, as its Execution API does.
    got = await client.get(f"/api/v2/dags/{world.dag_id}", headers=bearer(token))
    assert got.status_code == 403
    assert got.json() == {"detail": "Invalid auth token"}


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/api/v2/dags/{dag}", "runs:read"),
        ("PUT", "/api/v2/dags/{dag}", "dags:write"),
        ("POST", "/api/v2/dags/{dag}/dagRuns", "runs:write"),
        ("GET", "/api/v2/dags/{dag}/dagRuns/{run}", "runs:read"),
        ("GET", "/api/v2/dags/{dag}/dagRuns/{run}/taskInstances", "runs:read"),
        ("GET", "/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/extract/state-store", "state:admin"),
        ("DELETE", "/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/extract/state-store/k", "state:admin"),
        ("GET", "/api/v2/assets/{asset}/state-store", "state:admin"),
        ("PATCH", "/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/extract/state-store/k", "state:admin"),
        ("GET", "/api/v2/assets", "runs:read"),
        ("GET", "/api/v2/assets/{asset}", "runs:read"),
    ],
)
async def test_missing_api_scope_is_403_naming_it(
    client: httpx.AsyncClient, world: World, method: str, path: str, scope: str
) -> None:
    others = {"dags:write", "runs:write", "runs:read", "state:admin", "worker"} - {scope}
    target = path.format(dag=world.dag_id, run=world.run_id, asset=world.asset_ids[world.asset_out])
    got = await client.request(method, target, headers=world.api(*others), json={})
    assert got.status_code == 403
    assert scope in got.json()["detail"]


async def test_expired_api_token_is_401_on_the_public_api(client: httpx.AsyncClient, world: World) -> None:
    # Airflow 3.3.2's public API answers an expired token 401 ("Token Expired"), so that its client raises
    # UnauthorizedException and a caller knows to get a new token; its Execution API answers 403
    # (test_invalid_tokens_are_403, "expired"), and so does Stateport's.
    token = world.services.tokens.mint_api_token("me", frozenset({"runs:read"}), ttl_s=-60)
    got = await client.get(f"/api/v2/dags/{world.dag_id}", headers=bearer(token))
    assert got.status_code == 401
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {"detail": "Invalid auth token: expired"}
    # The same token before it expired (a fresh one with the same claims) is accepted.
    fresh = world.services.tokens.mint_api_token("me", frozenset({"runs:read"}), ttl_s=60)
    assert (await client.get(f"/api/v2/dags/{world.dag_id}", headers=bearer(fresh))).status_code == 200
