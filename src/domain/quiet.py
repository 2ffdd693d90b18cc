"""Warnings of a call that keeps failing while a store or the server is away, said once a minute rather than
each time.

A worker retries its claim, its stop-signal poll and each task's heartbeat for as long as the server cannot
answer; a line per failure wrote about 600 stop-poll lines, and one per task per heartbeat, in a 10-minute
outage (an outsider's find). So did the server's waits, a line per waited-on run per re-read: 600 lines in
a 20-second database cut with 300 callers waiting (another outsider's find). The first failure is said at
once (an operator sees the outage start), then at most one line per ``every_s`` with how many failures it
stands for, and an info line once it works again.
"""

from __future__ import annotations

import logging
import time

EVERY_S = 60.0


class Repeated:
    """The log lines of one repeated call's failures (one instance per call: the claim loop, a task's
    heartbeat, the stop-signal poll)."""

    def __init__(self, log: logging.Logger, what: str, every_s: float = EVERY_S) -> None:
        self._log = log
        self._what = what
        self._every_s = every_s
        self._failures = 0  # since the last success
        self._unsaid = 0  # failures since the last line
        self._said_at: float | None = None

    def failed(self, detail: str, hint: str = "") -> None:
        """A failure: said if it is the first, or ``every_s`` has passed since the last line."""
        self._failures += 1
        now = time.monotonic()
        if self._said_at is not None and now - self._said_at < self._every_s:
            self._unsaid += 1
            return
        more = f" ({self._unsaid} more failures since the last line)" if self._unsaid else ""
        self._log.warning("%s failed: %s%s%s", self._what, detail, hint, more)
        self._said_at, self._unsaid = now, 0

    def worked(self) -> None:
        """A success: after failures, one line saying so."""
        if self._failures:
            self._log.info("%s works again, after %d failures", self._what, self._failures)
        self._failures = self._unsaid = 0
        self._said_at = None


class Budget:
    """At most ``lines`` log lines per ``every_s`` for one kind of event that anyone can cause at will (a
    malformed request): each line says something a client may quote (its request id), so the first ones of
    a window are all said, but a flood of them wrote a line each, without bound (an outsider's find). By
    hand: the standard library's logging has no rate limit. What is not said is counted, and the next line
    said tells how many."""

    def __init__(self, lines: int, every_s: float) -> None:
        self._lines = lines
        self._every_s = every_s
        self._window_at = -every_s
        self._said = 0  # lines said in the current window
        self._unsaid = 0  # events since the last line said

    def take(self) -> int | None:
        """None if this event's line is not to be said; else how many events went unsaid before it."""
        now = time.monotonic()
        if now - self._window_at >= self._every_s:
            self._window_at, self._said = now, 0
        if self._said >= self._lines:
            self._unsaid += 1
            return None
        self._said += 1
        unsaid, self._unsaid = self._unsaid, 0
        return unsaid
