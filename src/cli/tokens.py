"""``stateport token ti`` and ``stateport token api``: mint a token signed with the configured key."""

from __future__ import annotations

import argparse
import math
import secrets
import sys
from pathlib import Path

from stateport.cli.parser import API_SCOPES
from stateport.config import Settings, ensure_secret
from stateport.domain.renewal import API_REFRESH_FRACTION, REFRESH_FLOOR_S


def token_ti(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.jwt import JwtTokenService

    tokens = JwtTokenService.from_settings(ensure_secret(settings, on_generated=_warn_new_secret))
    print(tokens.mint_task_token(args.ti_id, ttl_s=args.ttl))
    return 0


def token_api(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.jwt import JwtTokenService

    scopes = frozenset(args.scope.split())
    unknown = scopes - set(API_SCOPES.split())
    if unknown:
        print(f"stateport: unknown scopes {sorted(unknown)}; known: {API_SCOPES}", file=sys.stderr)
        return 2
    if not scopes:
        # A token without a scope is refused by every route: minting one is a slip (an empty variable).
        print(f"stateport: --scope names no scope; give one or more of: {API_SCOPES}", file=sys.stderr)
        return 2
    tokens = JwtTokenService.from_settings(ensure_secret(settings, on_generated=_warn_new_secret))
    ttl = settings.jwt_expiration_s if args.ttl is None else args.ttl
    # Without --subject, a subject of its own: every token the CLI mints would otherwise be one caller,
    # which the server counts as one for its per-caller limits (one application starving the others).
    subject = f"cli-{secrets.token_hex(4)}" if args.subject is None else args.subject
    try:
        token = tokens.mint_api_token(subject, scopes, ttl_s=ttl)
    except ValueError as exc:  # a subject the server would refuse (subject_problem)
        print(f"stateport: --subject: {exc}", file=sys.stderr)
        return 2
    print(token)
    # On stderr, so that $(stateport token api) still captures the token alone. JWT times are whole
    # seconds: the token lives the TTL rounded up (``--ttl 1.5`` mints one of 2 s).
    print(
        # The TTL as given, not rounded to 6 digits ("2.592e+06" was shown of 2591999 and of 2592000).
        f"stateport: API token valid for {_duration(math.ceil(ttl))} (--ttl {ttl:.15g}), "
        f"subject {subject!r}, {_renewal(settings, math.ceil(ttl))}",
        file=sys.stderr,
    )
    return 0


def _renewal(settings: Settings, lifetime_s: int) -> str:
    """How a token of ``lifetime_s`` is renewed, as the server does it (``http.headers``): in use, up to the
    maximum lifetime, by any request in its last half (at least its last 30 s). Said of a token never
    renewed, the rule misled (an outsider's find)."""
    if settings.api_token_max_lifetime_days <= 0:
        return "never renewed (STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS=0): get a new one before it expires"
    max_lifetime_s = settings.api_token_max_lifetime_days * 86400
    # In whole seconds, as the server counts it (``JwtTokenService.refresh_api_token``): 8.64 s is 8.
    if lifetime_s >= int(max_lifetime_s):
        # A renewal may not reach past the maximum lifetime, so it could never extend this token (an
        # outsider's find: the rule was said of it all the same).
        return (
            f"never renewed: its lifetime is not shorter than STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS "
            f"({_duration(max_lifetime_s)}): get a new one before it expires"
        )
    window = min(float(lifetime_s), max(API_REFRESH_FRACTION * lifetime_s, REFRESH_FLOOR_S))
    renewed = (
        f"renewed while in use for up to {_duration(max_lifetime_s)} (STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS)"
    )
    if window >= lifetime_s:
        # JWT times are whole seconds: a renewal in the second it was minted would not extend it (an
        # outsider's find: "any request" was not true of the first one).
        return f"{renewed}: any request renews it, from its second second on"
    return (
        f"{renewed}: any request in the last {_duration(window)} of its life renews it; a holder idle for "
        f"longer than {_duration(lifetime_s - window)} must get a new one"
    )


def _warn_new_secret(path: Path) -> None:
    """A token minted with a secret made just now verifies only on a server sharing that secret."""
    print(
        f"stateport: warning: generated a new JWT secret in {path}; a server accepts this token only if it "
        "uses the same secret (the same STATEPORT_DATA_DIR, or STATEPORT_JWT_SECRET set to this file's "
        "content)",
        file=sys.stderr,
    )


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds / size
            return f"{count:g} {unit}" + ("" if count == 1 else "s")
    return f"{seconds:g} s"


# API_SCOPES is defined by the parser (which must not import this module) and re-exported here, where
# callers found it first.
__all__ = ["API_SCOPES", "token_api", "token_ti"]
