"""Versions from task code: compare-and-set on one key, and waiting for a key to change.

A key's *version* is its entry's (the ETag the server sends, counting the puts since the key was created),
and 0 when the key is missing or expired: the 0 of ``if_version``, "must be absent". So one number both
guards a write (``set(key, value, if_version=3)``) and says where a watch starts (``watch(key, version=3)``
answers when the key is no longer at version 3).
"""

from __future__ import annotations

from typing import Any

import msgspec

from stateport.domain.errors import VersionMismatch

# The version of a missing or expired key.
ABSENT = 0


class Entry(msgspec.Struct, frozen=True):
    """A live key: its decoded value and its version (>= 1)."""

    key: str
    value: Any
    version: int


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What a watch saw: the key at a new ``version`` with its ``value``, or ``deleted`` (version 0, value
    None): deleted, expired or cleared (a watch cannot tell these apart over REST, where each is a 404)."""

    key: str
    value: Any = None
    version: int = ABSENT

    @property
    def deleted(self) -> bool:
        return self.version == ABSENT


class VersionConflict(VersionMismatch):
    """A compare-and-set (``set`` or ``delete`` with ``if_version``) found the key at another version:
    nothing was written. ``expected`` is the ``if_version`` given (0: the key had to be absent). A
    ``VersionMismatch``, as a batch's ``BatchMismatch`` is, so one ``except`` catches both.

    ``maybe_written``: the call was sent again after a try whose outcome is unknown (a lost answer, a 503
    from a store that may have taken the write), and that try may have made the change this one was
    refused for; read the key (``entry``) to see. ``earlier_try`` says how that try failed."""

    def __init__(self, key: str, expected: int, detail: str, *, earlier_try: str | None = None) -> None:
        super().__init__(detail, field="if_version")
        self.key = key
        self.expected = expected
        self.earlier_try = earlier_try

    @property
    def maybe_written(self) -> bool:
        return self.earlier_try is not None


def conflict(key: str, expected: int, earlier_try: str | None = None) -> VersionConflict:
    """A failed ``if_version`` on ``key`` as task code reads it (raised ``from`` the store's or server's
    VersionMismatch, which stays its cause); ``earlier_try``: how the try before it failed, when the call
    was sent again (``VersionMismatch.earlier_try``)."""
    if expected == ABSENT:
        found = f"state key {key!r} already exists (if_version=0: it had to be absent)"
    else:
        found = f"state key {key!r} is not at version {expected}"
    if earlier_try is None:
        return VersionConflict(key, expected, f"{found}; nothing was written")
    detail = (
        f"{found}: this try wrote nothing, but it was sent again after a try that failed ({earlier_try}), "
        "and that try may have written it; read the key (entry()) to see"
    )
    return VersionConflict(key, expected, detail, earlier_try=earlier_try)
