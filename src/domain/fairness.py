"""Callers take turns: in a queue of task instances, and at the stores' connections.

Claims hand out the highest priority first; within a priority, each caller's queued tries one after
another, and a caller with nothing queued next in line (the stores' ``fair_tag``, see
``stateport.adapters.sql.runs``). A caller is the token a run was triggered with, by its kind and subject:
an application's flood of runs then delays another application's run by a turn, not by the whole flood.

Requests take turns at the stores' connections the same way, by the token they send (``current_caller``,
``stateport.adapters.shared.turns.FairTurns``): one token's burst of requests does not queue every other
token's behind it.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar

# The length of a caller key: 32 hex digits (128 bits; a key tells callers apart, it protects nothing).
CALLER_KEY_LENGTH = 32


def caller_key(caller: str) -> str:
    """The key the stores keep for ``caller`` (a token's ``kind:subject``): a digest, so that a subject of
    any length or character (a token's claim is any JSON string) fits a fixed column and is never shown."""
    digest = hashlib.blake2b(caller.encode("utf-8", "surrogatepass"), digest_size=CALLER_KEY_LENGTH // 2)
    return digest.hexdigest()


# Who the request being served is, for the stores' turns at their connections (adapters/shared/turns.py):
# the bearer token it sent, as the HTTP layer found it (None: no token, or the server's own work). Set per
# request before the token is verified, since only turns depend on it: a request whose token does not
# verify is refused before it takes any.
current_caller: ContextVar[str | None] = ContextVar("stateport_caller", default=None)
