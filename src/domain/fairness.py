"""Callers take turns in a queue: who triggered a run, as the stores keep it.

Claims hand out the highest priority first; within a priority, each caller's queued tries one after
another, and a caller with nothing queued next in line (the stores' ``fair_tag``, see
``stateport.adapters.sql.runs``). A caller is the token a run was triggered with, by its kind and subject:
an application's flood of runs then delays another application's run by a turn, not by the whole flood.
"""

from __future__ import annotations

import hashlib

# The length of a caller key: 32 hex digits (128 bits; a key tells callers apart, it protects nothing).
CALLER_KEY_LENGTH = 32


def caller_key(caller: str) -> str:
    """The key the stores keep for ``caller`` (a token's ``kind:subject``): a digest, so that a subject of
    any length or character (a token's claim is any JSON string) fits a fixed column and is never shown."""
    digest = hashlib.blake2b(caller.encode("utf-8", "surrogatepass"), digest_size=CALLER_KEY_LENGTH // 2)
    return digest.hexdigest()
