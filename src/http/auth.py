"""Bearer tokens on requests: read the header, verify through the TokenService port, check API scopes.

The dependency providers (``stateport.http.providers``) call these to hand each handler its ``caller``.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request
from msgspec import Struct

from stateport.domain.errors import Forbidden, Unauthenticated
from stateport.domain.fairness import caller_key
from stateport.domain.ports import TokenClaims, TokenService
from stateport.domain.seats import POLLS, seat_key
from stateport.domain.state import SUBJECT_MISMATCH
from stateport.http.errors import RequestInvalid
from stateport.http.paths import header_value, raw_address

MISSING = "Missing auth token"
# Where the verified claims of a request are kept, for the token-refresh hook (stateport.http.headers).
CLAIMS_KEY = "stateport.task_claims"
API_CLAIMS_KEY = "stateport.api_claims"
# The claims of a request's API token, verified when the request arrived, by a part of the server that made
# it wait before its route (stateport.http.parking): a wait answered after the token's expiry is still
# answered, as it is when the route itself waits. Only the server writes a scope's state.
VERIFIED_API_CLAIMS_KEY = "stateport.verified_api_claims"
# Set by a route that learnt whether the token's task instance is running (heartbeat, report), so the
# refresh hook need not look it up.
TI_RUNNING_KEY = "stateport.ti_running"


def bearer(request: Request[Any, Any, Any]) -> str:
    """The bearer token of the request; Unauthenticated if there is none."""
    return bearer_of(request.scope)


def bearer_of(scope: Any) -> str:  # an HTTP scope
    """The bearer token of a request's scope; Unauthenticated if there is none, or more than one
    ``Authorization`` header: a proxy that checks another of them than the first would authorize
    something else than what is served."""
    headers: list[bytes] = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(headers) > 1:
        raise Unauthenticated("Send one Authorization header, not several")
    return bearer_in(headers[0] if headers else b"")


def bearer_in(header: bytes) -> str:
    """The bearer token of one ``Authorization`` header's value; Unauthenticated if it holds none."""
    scheme, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(MISSING)
    return token


def task_claims(request: Request[Any, Any, Any], tokens: TokenService) -> TokenClaims:
    """The verified claims of an execution (task-instance) token."""
    claims = tokens.verify_task_token(bearer(request))
    request.scope["state"][CLAIMS_KEY] = claims
    return claims


def api_claims(request: Request[Any, Any, Any], tokens: TokenService, scope: str) -> TokenClaims:
    """The verified claims of a public API token that carries ``scope``."""
    claims: TokenClaims | None = request.scope["state"].get(VERIFIED_API_CLAIMS_KEY)
    if claims is None:
        claims = tokens.verify_api_token(bearer(request))
    if scope not in claims.scopes:
        raise Forbidden(f"This token lacks the '{scope}' scope required for this endpoint")
    request.scope["state"][API_CLAIMS_KEY] = claims
    return claims


def require_scope(request: Request[Any, Any, Any], scope: str, what: str) -> None:
    """Forbidden unless the request's verified API token also carries ``scope``, which ``what`` (a part of
    the request that its route's own scope does not cover) needs."""
    claims: TokenClaims | None = request.scope["state"].get(API_CLAIMS_KEY)
    if claims is None or scope not in claims.scopes:
        raise Forbidden(f"This token lacks the '{scope}' scope required for {what}")


def worker_claims(request: Request[Any, Any, Any], tokens: TokenService, header: bytes) -> TokenClaims:
    """The verified claims of the public API token in ``header`` (a bare token, or ``Bearer <token>``),
    which must carry the ``worker`` scope: the claim a worker's report may carry (routes/workers.py)."""
    value = header_value(request.scope, header)
    if not value:
        raise Unauthenticated(MISSING)
    scheme, _, token = value.strip().partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else value.strip()
    if not token:
        raise Unauthenticated(MISSING)
    claims = tokens.verify_api_token(token)
    if "worker" not in claims.scopes:
        raise Forbidden("This token lacks the 'worker' scope required to claim task instances")
    return claims


def holder(claims: TokenClaims) -> str:
    """Who a request is: its token's subject, by the token's kind (an application or worker fleet for an
    API token, a task instance for a task token). A claim's caller, whose key its task tokens carry as their
    claimant (``share_of``)."""
    return f"{claims.kind}:{claims.subject}"


def share_of(scope: Any) -> str:  # an HTTP scope
    """Who the request counts as where callers get shares of a process's large bodies (``BodyBudget``): a
    task token as the token that claimed its task instance (its ``claimant``), so that a worker's many task
    tokens are one caller (an outsider's find: two task tokens of one claim held a process's whole body
    budget); any other as its holder, whatever renewal of its token it sends. Waits: ``waiter``."""
    return share(claims_of(scope))


def share(claims: TokenClaims) -> str:
    """``share_of`` for a request's verified token."""
    return claims.claimant or caller_key(holder(claims))


def waiter_of(scope: Any) -> str:  # an HTTP scope
    """``waiter`` of the request's verified token."""
    return waiter(claims_of(scope))


def waiter(claims: TokenClaims) -> str:
    """The key a request's long waits (and streamed pages) count against (``stateport.domain.seats``): its
    caller (``share``: every task token of one claimant with the claiming token itself), and for a claimed
    task's token, its task instance inside it."""
    principal = share(claims)
    return seat_key(principal, f"ti:{claims.subject}") if claims.claimant else principal


def poller_of(scope: Any) -> str:  # an HTTP scope
    """The key a worker's claim and stop long-polls count against: its caller's polls, apart from its other
    waits (``stateport.domain.seats``)."""
    return seat_key(share(claims_of(scope)), POLLS)


def holder_of(scope: Any) -> str:  # an HTTP scope
    """``holder`` of the request's verified token. A route that uses it checks its token first; one that
    did not fails here (closed) rather than counting against nobody."""
    return holder(claims_of(scope))


def claims_of(scope: Any) -> TokenClaims:  # an HTTP scope
    """The request's verified token (API or task), for a route that checked it."""
    state = scope["state"]
    claims: TokenClaims | None = state.get(API_CLAIMS_KEY) or state.get(CLAIMS_KEY)
    if claims is None:
        raise RuntimeError(f"{scope.get('path_template')}: a wait with no verified token")
    return claims


def note_ti_running(request: Request[Any, Any, Any], running: bool) -> None:
    """Record what the route learnt about its task instance's state, for the token-refresh hook."""
    request.scope["state"][TI_RUNNING_KEY] = running


class TaskCaller(Struct, frozen=True, kw_only=True):
    """A verified task-instance token whose subject is the task instance the path names."""

    claims: TokenClaims
    ti_id: uuid.UUID

    @property
    def subject(self) -> str:
        """The token's subject in the canonical form of the id it was found equal to (lowercase, hyphens),
        so that a use case comparing it with ``str(ti_id)`` agrees with the check made here."""
        return str(self.ti_id)


def task_instance_caller(request: Request[Any, Any, Any], tokens: TokenService) -> TaskCaller:
    """The token, then Airflow's ``ti:self`` check of the path's id against the token's subject, then the
    id's syntax (422). The ids are compared as UUIDs, so the same id in upper case (or any spelling
    ``uuid.UUID`` reads) is the same task instance; text that is no UUID is compared as sent."""
    claims = task_claims(request, tokens)
    (raw,), _ = raw_address(request.scope, 1, key=False)
    ti_id = _uuid(raw)
    if raw != claims.subject and (ti_id is None or ti_id != _uuid(claims.subject)):
        raise Forbidden(SUBJECT_MISMATCH)
    if ti_id is None:
        raise RequestInvalid.one(
            "uuid_parsing", ["path", "task_instance_id"], "Input should be a valid UUID", raw
        )
    return TaskCaller(claims=claims, ti_id=ti_id)


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
