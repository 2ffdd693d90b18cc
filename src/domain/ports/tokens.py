"""Tokens: minted and verified for task instances and API callers.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Protocol

from msgspec import Struct


class TokenClaims(Struct, frozen=True, kw_only=True):
    """A verified token. ``kind`` is ``task`` (Execution API) or ``api`` (public API).

    ``original_issued_at`` is when the first token of a chain of renewals was minted (API tokens carry it
    through renewals, so their total lifetime can be bounded); None for a token that was never renewed.
    """

    kind: str
    subject: str
    scopes: frozenset[str]
    expires_at: datetime
    issued_at: datetime
    original_issued_at: datetime | None = None
    # A task token minted for a claim: the key (``fairness.caller_key``) of the token that claimed it, so
    # that a worker's task tokens count as that worker wherever callers get shares (a process's large
    # bodies). None for one minted otherwise (``stateport token ti``) and for API tokens.
    claimant: str | None = None


class TokenService(Protocol):
    """Mints and verifies signed tokens.

    ``verify_*`` raises Unauthenticated when no token was given and Forbidden for any token that is not
    valid for the audience (bad signature, wrong algorithm, expired, missing claims, wrong scope).
    """

    def mint_task_token(
        self, ti_id: uuid.UUID, *, ttl_s: float | None = None, claimant: str | None = None
    ) -> str:
        """A task-instance token as Airflow issues it: ``sub`` = the TI id, ``scope`` = execution;
        ``claimant`` (``TokenClaims.claimant``) carried in it and in its renewals."""
        ...

    def mint_api_token(self, subject: str, scopes: frozenset[str], *, ttl_s: float | None = None) -> str:
        """A public API token carrying the given scopes."""
        ...

    def verify_task_token(self, token: str) -> TokenClaims:
        """Verify an Execution API token and return its claims."""
        ...

    def verify_held_task_token(self, token: str) -> TokenClaims:
        """Verify an Execution API token as ``verify_task_token`` does, whatever its expiry: proof that its
        bearer was handed it (a worker asking to renew a token that expired in an outage)."""
        ...

    def verify_api_token(self, token: str) -> TokenClaims:
        """Verify a public API token and return its claims."""
        ...

    def refresh_task_token(self, claims: TokenClaims) -> str:
        """A fresh task-instance token for verified ``claims``: same subject and scope, from now for the
        renewal lifetime the service was given (a server's: its JWT lifetime or its lease, whichever is
        longer; a claim's token lives at least as long as the lease, and so must its renewals, or a token
        would expire between two heartbeats). Never the presented token's own lifetime: a long-lived token
        minted by hand does not beget others. The caller decides whether the task instance may still have
        one."""
        ...

    def refresh_api_token(self, claims: TokenClaims, now: float) -> str | None:
        """A renewed API token for verified ``claims`` (same subject and scopes, its lifetime from ``now``),
        or None when it may not be renewed: never past the maximum lifetime counted from the first token of
        its chain (``original_issued_at``), nor when renewing would not extend it."""
        ...
