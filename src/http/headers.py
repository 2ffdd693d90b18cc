"""Response headers the Airflow Task SDK relies on, and its API-version negotiation.

- ``correlation-id``: echoed from the request on every response.
- ``Refreshed-API-Token``: a fresh task token when the presented one is near expiry; the SDK swaps to it.
- ``Airflow-API-Version``: on the Airflow compatibility routes, a date before the one that introduced
  them answers 404 and a malformed value 422, as Airflow's Cadwyn versioning does.
"""

from __future__ import annotations

import re
import time
from datetime import date

import msgspec
from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from stateport.adapters.jwt import JwtTokenService
from stateport.domain.ports import TokenClaims
from stateport.http.auth import CLAIMS_KEY
from stateport.http.paths import header_value

# The Execution API version that added the task and asset state-store routes (Airflow 3.3).
STATE_STORE_SINCE = date(2026, 6, 30)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
REFRESH_FLOOR_S = 30.0
REFRESH_FRACTION = 0.2


def needs_refresh(claims: TokenClaims, now: float) -> bool:
    """Airflow's rule: refresh when at most max(20% of the lifetime, 30 s) remains."""
    expires = claims.expires_at.timestamp()
    lifetime = expires - claims.issued_at.timestamp()
    return expires - now <= max(REFRESH_FRACTION * lifetime, REFRESH_FLOOR_S)


def make_before_send(tokens: JwtTokenService) -> object:
    """A ``before_send`` hook adding ``correlation-id`` and ``Refreshed-API-Token`` to responses."""

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        correlation = header_value(scope, b"correlation-id")
        claims: TokenClaims | None = scope.get("state", {}).get(CLAIMS_KEY)
        # Workload tokens are exchanged on /run, never refreshed in place (as in Airflow).
        refresh = claims is not None and "execution" in claims.scopes and needs_refresh(claims, time.time())
        if correlation is None and not refresh:
            return  # the common case: no header object built
        headers = MutableScopeHeaders.from_message(message)
        if correlation is not None:
            headers["correlation-id"] = correlation
        if refresh and claims is not None:
            headers["Refreshed-API-Token"] = tokens.refresh_task_token(claims)

    return before_send


def _invalid_version(value: str) -> bytes:
    return msgspec.json.encode(
        {
            "detail": [
                {
                    "type": "date_from_datetime_parsing",
                    "loc": ["header", "airflow-api-version"],
                    "msg": "Input should be a valid date in the format YYYY-MM-DD",
                    "input": value,
                }
            ]
        }
    )


class ApiVersionMiddleware:
    """Serves the routes it wraps only to clients asking for ``STATE_STORE_SINCE`` or later, or no version."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = header_value(scope, b"airflow-api-version")
        if value is not None:
            try:
                # Only YYYY-MM-DD: fromisoformat would also take the basic form 20260630.
                requested = date.fromisoformat(value) if _DATE.fullmatch(value) else None
            except ValueError:
                requested = None
            if requested is None:
                await _send_json(send, 422, _invalid_version(value))
                return
            if requested < STATE_STORE_SINCE:
                await _send_json(send, 404, b'{"detail":"Not Found"}')
                return
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
