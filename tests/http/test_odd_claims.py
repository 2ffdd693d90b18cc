"""Validly signed tokens with odd claims are refused with 403 in Airflow's shape, never 500 (issue #12
item 4). Each token is signed with the server's real secret, by hand where pyjwt would refuse to encode it.

One exception, Airflow's: an ``exp`` that pyjwt reads as a time in the past (``-1``; ``true``, which it reads
as 1) is an expired token, which Airflow's public API answers with 401 (its Execution API with 403).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest

from tests.http.conftest import SECRET, World

TASK_AUD = "urn:airflow.apache.org:task"
API_AUD = "urn:stateport:api"
# A JSON value the standard library cannot write (it reads it as infinity).
HUGE = "__1e400__"
# NaN, which Python's JSON reader accepts as a number; it compares false with everything.
NAN = "__NaN__"

ODD: list[tuple[str, Any]] = [
    ("scope", ["execution"]),
    ("scope", {"execution": True}),
    ("scope", 1),
    ("scope", True),
    ("scope", None),
    ("exp", 1e20),
    ("exp", 2**70),
    ("exp", 10**400),  # an integer no float can hold: checked without turning it into one
    ("exp", HUGE),
    ("exp", NAN),
    ("exp", -1),
    ("exp", "soon"),
    ("exp", [1]),
    ("exp", {"at": 1}),
    ("exp", True),
    ("exp", None),
    ("iat", 1e20),
    ("iat", -1e20),
    ("iat", 10**400),
    ("iat", HUGE),
    ("iat", NAN),
    ("iat", "now"),
    ("iat", [1]),
    ("iat", True),
    ("iat", None),
    ("nbf", 1e20),
    ("nbf", -1e20),
    ("nbf", -(10**400)),
    ("nbf", "now"),
    ("nbf", [1]),
    ("nbf", False),
    ("sub", 1),
    ("sub", ["x"]),
    ("sub", {"id": "x"}),
    ("sub", ""),
    ("sub", None),
    ("aud", [1]),
    ("aud", {"aud": "x"}),
    ("aud", 1),
    # Both audiences in one token (an outsider's find: it passed on both APIs).
    ("aud", [TASK_AUD, API_AUD]),
    ("aud", [API_AUD, TASK_AUD]),
    ("iss", ["x"]),
    ("iss", {"x": 1}),
    ("iss", 1),
    ("iss", "someone-else"),
    ("orig_iat", "then"),
    ("orig_iat", [1]),
    ("orig_iat", True),
    ("orig_iat", -5),
    ("orig_iat", 1e20),
    ("orig_iat", 10**400),
]


def _shown(value: Any) -> str:
    """A test id's value: a 400-digit integer as its length."""
    text = repr(value)
    return text if len(text) <= 30 else f"{text[:4]}...({len(text)} chars)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: Any, header: dict[str, Any] | None = None) -> str:
    """An HS512 JWT over exactly this payload, signed with the server's secret."""
    text = json.dumps(payload).replace(json.dumps(HUGE), "1e400").replace(json.dumps(NAN), "NaN")
    head = _b64(json.dumps(header or {"alg": "HS512", "typ": "JWT"}).encode())
    body = _b64(text.encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha512).digest()
    return f"{head}.{body}.{_b64(signature)}"


def claims(world: World, api: bool, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "tester" if api else str(world.tis["extract"].id),
        "aud": API_AUD if api else TASK_AUD,
        "scope": "runs:read" if api else "execution",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)  # a None is sent as JSON null
    return base


async def ask(client: httpx.AsyncClient, world: World, api: bool, token: str) -> httpx.Response:
    url = f"/api/v2/dags/{world.dag_id}" if api else f"/execution/store/ti/{world.tis['extract'].id}/k"
    return await client.get(url, headers={"Authorization": f"Bearer {token}"})


def refused(got: httpx.Response, status: int = 403) -> None:
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == "application/json"
    body = got.json()
    assert list(body) == ["detail"]
    assert body["detail"].startswith("Invalid auth token")


@pytest.mark.parametrize("api", [False, True], ids=["task", "api"])
async def test_well_formed_tokens_are_accepted(client: httpx.AsyncClient, world: World, api: bool) -> None:
    # The control: the hand-signed token with ordinary claims passes (404: the task's key is missing).
    got = await ask(client, world, api, signed(claims(world, api)))
    assert got.status_code == (200 if api else 404), got.text


# orig_iat is read from API tokens only, so a task token carrying an odd one is not refused for it.
ODD_CASES = [(api, c, v) for api in (False, True) for c, v in ODD if api or c != "orig_iat"]


@pytest.mark.parametrize(
    ("api", "claim", "value"),
    ODD_CASES,
    ids=[f"{'api' if api else 'task'}-{c}={_shown(v)}" for api, c, v in ODD_CASES],
)
async def test_odd_claims_are_403(
    client: httpx.AsyncClient, world: World, api: bool, claim: str, value: Any
) -> None:
    expired = api and claim == "exp" and value in (-1, True)
    refused(
        await ask(client, world, api, signed(claims(world, api, **{claim: value}))), 401 if expired else 403
    )


@pytest.mark.parametrize("api", [False, True], ids=["task", "api"])
@pytest.mark.parametrize("payload", [[1], "x", 1, None], ids=["list", "string", "number", "null"])
async def test_a_payload_that_is_not_an_object_is_403(
    client: httpx.AsyncClient, world: World, api: bool, payload: Any
) -> None:
    refused(await ask(client, world, api, signed(payload)))


@pytest.mark.parametrize("api", [False, True], ids=["task", "api"])
@pytest.mark.parametrize(
    "header",
    [{"alg": ["HS512"]}, {"alg": "HS512", "crit": ["exp"]}, {"alg": "HS512", "kid": ["a"]}, {"alg": None}],
    ids=["alg-list", "crit", "kid-list", "alg-null"],
)
async def test_odd_headers_are_403(
    client: httpx.AsyncClient, world: World, api: bool, header: dict[str, Any]
) -> None:
    refused(await ask(client, world, api, signed(claims(world, api), header)))
