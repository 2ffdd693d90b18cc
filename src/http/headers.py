"""Response headers the Airflow Task SDK relies on, and its API-version negotiation.

- ``correlation-id``: echoed from the request on every response.
- ``Refreshed-API-Token``: a fresh token when the presented one is near expiry; the SDK and Stateport's
  clients swap to it. A task token is renewed only while its task instance is running; an API token only
  up to its maximum lifetime (``TokenService.refresh_api_token``).
- ``Airflow-API-Version``: on the Airflow compatibility routes, a date before the one that introduced
  them answers 404 and a malformed value 422, as Airflow's Cadwyn versioning does.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from stateport.domain.errors import Unavailable
from stateport.domain.ports import TokenClaims, TokenService
from stateport.domain.quiet import Repeated
from stateport.domain.renewal import API_REFRESH_FRACTION, REFRESH_FLOOR_S, REFRESH_FRACTION
from stateport.http.auth import API_CLAIMS_KEY, CLAIMS_KEY, TI_RUNNING_KEY
from stateport.http.errors import STORE_FAILED_KEY, header_text
from stateport.http.options import sort_allow
from stateport.http.paths import header_value
from stateport.http.providers import SERVICES

if TYPE_CHECKING:
    from stateport.bootstrap import Services

log = logging.getLogger("stateport.http")
# Renewals' reads that failed (a store outage), said once a minute: one line per heartbeat before.
# What fails is the read of the try behind a renewal, not the renewal (an outsider's find: "token renewal
# failed" of a token that was renewed).
_RENEWAL_READS = Repeated(log, "the task instance read of a token renewal")

# The Execution API version that added the task and asset state-store routes (Airflow 3.3).
STATE_STORE_SINCE = date(2026, 6, 30)
VERSION_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_DATE = re.compile(VERSION_PATTERN)
# How the OpenAPI document describes the header on the routes ``ApiVersionMiddleware`` wraps.
VERSION_HEADER_DOC = (
    f"The Execution API version the client speaks (YYYY-MM-DD). Optional; one older than "
    f"{STATE_STORE_SINCE.isoformat()} (which added these routes) is 404, a malformed one 422."
)
# The scope-state key of the token an answer renewed (``Refreshed-API-Token``).
RENEWED_TOKEN_KEY = "stateport.renewed_token"  # noqa: S105  # a key, not a secret


def needs_refresh(claims: TokenClaims, now: float, fraction: float = REFRESH_FRACTION) -> bool:
    """Airflow's rule: refresh when at most max(20% of the lifetime, 30 s) remains (``fraction``: another
    share of the lifetime)."""
    expires = claims.expires_at.timestamp()
    lifetime = expires - claims.issued_at.timestamp()
    return expires - now <= max(fraction * lifetime, REFRESH_FLOOR_S)


def renewal_point(claims: TokenClaims) -> float | None:
    """When (epoch seconds) a token is halfway into the window in which a response renews it
    (``renewed_token``), or None for one never renewed in place (a workload token). A stream renews its
    token there (``state_watch.until_expiry``)."""
    if claims.kind == "task":
        if "execution" not in claims.scopes:
            return None
        fraction = REFRESH_FRACTION
    else:
        fraction = API_REFRESH_FRACTION
    expires = claims.expires_at.timestamp()
    lifetime = expires - claims.issued_at.timestamp()
    # A token living less than the window's floor is in its window from the start: halfway into its life,
    # not into a window that began before it was minted (an outsider's find: streams opened with tokens of
    # 16 s or less never renewed them, and ended "expired").
    window = min(max(fraction * lifetime, REFRESH_FLOOR_S), lifetime)
    return expires - window / 2


def make_before_send(tokens: TokenService, *, starting: Callable[[Message, Scope], None]) -> object:
    """A ``before_send`` hook adding ``correlation-id`` and ``Refreshed-API-Token`` to responses; it
    calls ``starting`` first as each answer starts (``metrics.unrouted_recorder``)."""

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        starting(message, scope)
        if message["status"] == 405:
            sort_allow(message, scope["path"])
        correlation = header_value(scope, b"correlation-id")
        refreshed = await _refreshed_token(tokens, scope, time.time())
        if correlation is None and refreshed is None:
            return  # the common case: no header object built
        headers = MutableScopeHeaders.from_message(message)
        if correlation is not None:
            headers["correlation-id"] = correlation
        if refreshed is not None:
            headers["Refreshed-API-Token"] = refreshed

    return before_send


async def _refreshed_token(tokens: TokenService, scope: Scope, now: float) -> str | None:
    """A renewed token for the request's verified token when it is near expiry and may be renewed.

    Best effort: the answer is under way when this runs, and an error here (the read of a task instance
    while the database is down, a key that cannot sign) would replace it by the ASGI server's plain-text
    500. The answer goes without the header instead, and the next one renews.
    """
    state: dict[str, Any] = scope.get("state", {})
    claims: TokenClaims | None = state.get(CLAIMS_KEY) or state.get(API_CLAIMS_KEY)
    if claims is None:
        return None
    try:
        renewed = await renewed_token(tokens, scope, claims, now)
    except Exception as exc:  # noqa: BLE001  # any failure: the answer matters more than its renewal
        log.warning("the request's token was not renewed: %s: %s", type(exc).__name__, exc)
        return None
    if renewed is not None:
        state[RENEWED_TOKEN_KEY] = renewed  # a stream lives by it (``state_watch.until_expiry``)
    return renewed


async def renewed_token(
    tokens: TokenService, scope: Scope, claims: TokenClaims, now: float, *, learnt: bool = True
) -> str | None:
    """A renewed token for verified ``claims`` when it is near expiry and may be renewed, else None.
    ``learnt``: a task token's task instance may be taken as running if the route learnt so (a stream
    renewing its token long after its route ran reads it again)."""
    if claims.kind == "task":
        # Workload tokens are exchanged on /run, never refreshed in place (as in Airflow).
        if "execution" not in claims.scopes or not needs_refresh(claims, now):
            return None
        if not await _ti_running(scope, claims.subject, learnt=learnt):
            return None  # a finished task needs no token: renewing it would let it live forever
        return tokens.refresh_task_token(claims)
    if needs_refresh(claims, now, API_REFRESH_FRACTION):
        return tokens.refresh_api_token(claims, now)
    return None


async def _ti_running(scope: Scope, subject: str, *, learnt: bool) -> bool:
    """What the route learnt (heartbeat, report), else one read of the task instance.

    The read happens only when a renewal is due, about once per token lifetime per client.
    """
    state: dict[str, Any] = scope.get("state", {})
    known: bool | None = state.get(TI_RUNNING_KEY) if learnt else None
    if known is not None:
        return known
    if state.get(STORE_FAILED_KEY):
        # The request's own store call failed: reading the task instance would wait out the store's
        # timeout a second time before the 503 goes (an outsider timed 4 s against 2), and fail the same.
        _RENEWAL_READS.failed(f"the store failed; task instance {subject}'s token renewed from itself")
        return True
    try:
        ti_id = uuid.UUID(subject)
    except ValueError:
        return False
    svc: Services | None = scope["app"].state.get(SERVICES)
    if svc is None:
        return False
    try:
        running = await svc.runs.task_running(ti_id)
    except Unavailable as exc:
        # Renewed from the verified token alone, as Airflow's JWTReissueMiddleware renews every one: held
        # back, an Airflow Task SDK task outlived its token through a database outage that Stateport's own
        # worker rode out, and its report after it was 403 (an outsider's find). A try that ended meanwhile
        # keeps its token for one lifetime more, no longer: it is renewed only while the store is down.
        _RENEWAL_READS.failed(f"{exc}; task instance {ti_id}'s token renewed from itself")
        return True
    except Exception as exc:  # noqa: BLE001  # anything else must not fail the answer: renew next time
        log.warning("token renewal skipped: task instance %s not read: %s", ti_id, exc)
        return False
    _RENEWAL_READS.worked()
    return running


def _invalid_version(
    value: str,
    message: str = "Input should be a valid date in the format YYYY-MM-DD",
    kind: str = "date_from_datetime_parsing",  # Airflow's (pydantic's) for a malformed date
) -> bytes:
    item = {
        "type": kind,
        "loc": ["header", "airflow-api-version"],
        "msg": message,
        "input": header_text(value),
    }
    return msgspec.json.encode({"detail": [item]})


class ApiVersionMiddleware:
    """Serves the routes it wraps only to clients asking for ``STATE_STORE_SINCE`` or later, or no version."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        values = [v for k, v in scope["headers"] if k == b"airflow-api-version"]
        if len(values) > 1:
            # Two versions asked for: serving either would answer another request than one of them (an
            # outsider's find: one served and one refused date together were served).
            shown = b", ".join(values).decode("latin-1")
            await _send_json(
                send, 422, _invalid_version(shown, "send one Airflow-API-Version header", "value_error")
            )
            return
        value = values[0].decode("latin-1") if values else None
        refusal = None if value is None else version_refusal(value)
        if refusal is not None:
            await _send_json(send, *refusal)
            return
        await self.app(scope, receive, send)


def version_refusal(value: str) -> tuple[int, bytes] | None:
    """The answer to an ``Airflow-API-Version`` these routes do not serve (422 malformed, 404 older than
    ``STATE_STORE_SINCE``), or None."""
    try:
        # Only YYYY-MM-DD: fromisoformat would also take the basic form 20260630.
        requested = date.fromisoformat(value) if _DATE.fullmatch(value) else None
    except ValueError:
        requested = None
    if requested is None:
        return 422, _invalid_version(value)
    if requested < STATE_STORE_SINCE:
        return 404, b'{"detail":"Not Found"}'
    return None


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
