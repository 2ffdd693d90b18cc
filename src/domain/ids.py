"""Identifiers."""

from __future__ import annotations

import os
import threading
import time
import uuid

_RAND_A = 12
_RAND_B = 62
_lock = threading.Lock()
_last = 0


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), strictly increasing within the process.

    Written here because the standard library gains ``uuid.uuid7`` only in Python 3.14; time-ordered ids
    keep B-tree inserts of task instances local, and the stores hand out queued task instances oldest
    first by id. Two ids made in the same millisecond (or after the clock stepped back) would be ordered
    by their random bits alone, so the 122 bits of time and randomness are treated as one number that only
    grows: RFC 9562 section 6.2, method 2 (monotonic random).
    """
    global _last
    ms = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    fresh = ms << (_RAND_A + _RAND_B) | int.from_bytes(os.urandom(10), "big") >> 6
    with _lock:
        number = fresh if fresh > _last else _last + 1
        _last = number
    rand_b = number & ((1 << _RAND_B) - 1)
    rand_a = (number >> _RAND_B) & ((1 << _RAND_A) - 1)
    unix_ts_ms = number >> (_RAND_A + _RAND_B)
    value = unix_ts_ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
