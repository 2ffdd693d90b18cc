"""Bearer tokens on requests: read the header, verify through the TokenService, check API scopes.

Plain functions called by handlers rather than Litestar guards or dependencies: a state GET is the hot
path, and a call here costs a header lookup and (with the verified-token cache) a dict hit.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from stateport.domain.errors import Forbidden, Unauthenticated
from stateport.domain.ports import TokenClaims, TokenService
from stateport.http.paths import header_value

MISSING = "Missing auth token"
# Where the verified claims of a request are kept, for the token-refresh hook (stateport.http.headers).
CLAIMS_KEY = "stateport.task_claims"
API_CLAIMS_KEY = "stateport.api_claims"
# Set by a route that learnt whether the token's task instance is running (heartbeat, report), so the
# refresh hook need not look it up.
TI_RUNNING_KEY = "stateport.ti_running"


def bearer(request: Request[Any, Any, Any]) -> str:
    """The bearer token of the request; Unauthenticated if there is none."""
    header = header_value(request.scope, b"authorization")
    if not header:
        raise Unauthenticated(MISSING)
    scheme, _, token = header.partition(" ")
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
    claims = tokens.verify_api_token(bearer(request))
    if scope not in claims.scopes:
        raise Forbidden(f"This token lacks the '{scope}' scope required for this endpoint")
    request.scope["state"][API_CLAIMS_KEY] = claims
    return claims


def note_ti_running(request: Request[Any, Any, Any], running: bool) -> None:
    """Record what the route learnt about its task instance's state, for the token-refresh hook."""
    request.scope["state"][TI_RUNNING_KEY] = running
