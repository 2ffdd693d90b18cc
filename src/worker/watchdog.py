"""The worker's watchdog: a worker process whose event loop stops turning ends itself, so that its
supervisor starts a new one.

An async task that never awaits (a CPU loop, a blocking call in a coroutine) holds the worker's event loop:
its timeout cannot cancel it (a cancellation is delivered at an ``await``), the heartbeats of every task the
worker runs stop (so their leases expire), no claim is sent, and SIGTERM is never handled (the loop runs its
handlers). The process stays alive, so no supervisor restarts it: one such task took out, for good, every
worker its retries reached (an outsider's find). A thread outside the loop asks the loop to answer once a
second; once it has not answered for ``stall_s``, the thread logs which tasks were running and ends the
process with ``EXIT_STALLED``. What the worker held is lost either way (its leases expire and the server
retries the tries); ending it gives the slot back to the supervisor's new process.

The ``stateport worker`` command turns it on (``--stall-exit``, 60 s by default); a ``Worker`` embedded in
another program has none unless given ``stall_exit_s``, since ending the process would end that program.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("stateport.worker")

# BSD's EX_SOFTWARE: an internal error, for supervisors that tell a crash from a clean stop.
EXIT_STALLED = 70
# How often the watchdog asks the loop to answer.
CHECK_S = 1.0
# A stall said in the log before the process ends for it (at most; half of ``stall_s`` if that is less).
WARN_S = 10.0


class LoopWatchdog:
    """Ends the process once ``loop`` has not run a callback for ``stall_s`` seconds (``describe`` says
    what was running, for the log line)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stall_s: float, describe: Callable[[], str]) -> None:
        self._loop = loop
        self._stall_s = stall_s
        self._describe = describe
        self._answered = time.monotonic()
        # A stall is said once it passes WARN_S (or half of ``stall_s``), and its end once the loop turns:
        # a stall short of ``stall_s`` had cost every running task its heartbeats, and said nothing (an
        # outsider's find: four leases expired, "the worker stopped heartbeating", and no line here).
        self._warn_s = min(WARN_S, stall_s / 2)
        self._warned = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stateport-worker-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _answer(self) -> None:
        self._answered = time.monotonic()  # a float's assignment: atomic under the GIL

    def _watch(self) -> None:
        checked, cpu = time.monotonic(), time.process_time()
        while not self._stopped.wait(CHECK_S):
            now, used = time.monotonic(), time.process_time()
            late = now - checked - CHECK_S
            if late > CHECK_S and used - cpu < late / 4:
                # This thread woke late and the process spent almost no CPU meanwhile: it was stopped as a
                # whole (SIGSTOP, a paused VM, a laptop asleep), not its loop held. That time is no task's
                # doing; the loop gets a new chance (an outsider's find: a worker resumed after 16 s exited
                # at once, with nothing running). A blocking call that holds the GIL also wakes this thread
                # late, but burns CPU all along: that is a stall (an outsider's re-check).
                self._answered = now
            checked, cpu = now, used
            try:
                self._loop.call_soon_threadsafe(self._answer)
            except RuntimeError:  # the loop is closed: the worker has stopped
                return
            # Past ``stall_s`` and the ping's own period: the loop may have turned until just before it.
            stalled = now - self._answered
            if stalled > self._stall_s + CHECK_S and not self._stopped.is_set():
                self._end(stalled)
            elif stalled > self._warn_s + CHECK_S and not self._warned:
                self._warned = True
                log.warning(
                    "the worker's event loop has not turned for %.0f s: %s holds it (an async task that "
                    "does not await); the heartbeats of every task here wait meanwhile",
                    stalled,
                    self._holder(),
                )
            elif self._warned and stalled <= 2 * CHECK_S:
                self._warned = False
                log.info("the worker's event loop turns again")

    def _holder(self) -> str:
        """The asyncio task running on the loop now (read from this thread: a name, or what is known)."""
        try:
            task = asyncio.current_task(self._loop)
        except Exception:  # noqa: BLE001  # the line matters more than what it names
            task = None
        return f"task {task.get_name()!r}" if task is not None else "a callback of the loop"

    def _end(self, stalled: float) -> None:
        try:
            running = self._describe()
        except Exception:  # noqa: BLE001  # the line matters more than what it names
            running = "(unknown)"
        log.critical(
            "the worker's event loop has not turned for %.0f s (%s holds it: an async task that never "
            "awaits; running: %s): exiting with status %d so that a supervisor starts a new worker",
            stalled,
            self._holder(),
            running,
            EXIT_STALLED,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)
