"""The checks of a large JSON body, run in a process of their own so that the event loop keeps serving.

Why: msgspec decodes and checks JSON at C speed but holds the GIL while it does, and so do the depth and
number scans of ``stateport.domain.jsontext``. A worker's report of a 56 MiB result of small objects held
the event loop (every other request of the process) for about 4.7 s: the body's depth check, the result's
depth check, its decode and its number scan (docs/benchmarks.md, session 19). A thread would hold the same
GIL. A process of its own runs them on another core; the event loop only hands the body over (a pickle
through a pipe: about 45 ms of the loop for 56 MiB) and, once it passed, decodes it once more without the
checks (the result skipped as ``Raw``: about 0.1 s for 56 MiB). ``concurrent.futures``' process pool does
the hand-over; what is ours is when to use it and what an answer from it means.

A body of ``MIN_BYTES`` or more is checked there; a smaller one costs the loop less than the hand-over's
latency (at most ~20 ms for 256 KiB of small objects). With ``STATEPORT_CHECK_PROCESSES=0`` every body is
checked in the event loop, as before.

A check returns the error the route would have raised, or None: the caller raises it, so an answer is the
same wherever its body was checked. The processes are started with ``spawn`` (a fork of a process with an
event loop, threads and open connections would inherit them) when the first large body comes.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor

from stateport.domain.checking import MIN_BYTES, START_S, WAIT_S, check_timeout_s
from stateport.domain.errors import Unavailable
from stateport.domain.turns import FairTurns

# prometheus_client's multiprocess directory variable (stateport.telemetry.metrics.MULTIPROC_DIR, not
# imported: this module is the first a checking process imports, and should import little).
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)

# A check: the error a body earns (raised by the caller), or None. A module-level function: the process
# imports it by name.
Check = Callable[[bytes], BaseException | None]


def _prepare(modules: tuple[str, ...], server_pid: int) -> None:
    """A checking process's start: a terminal's Ctrl-C reaches the whole process group, and the server
    stops its checks itself; the process counts no metrics of its own (prometheus' multiprocess files are
    the server processes'); the modules its checks are in are imported before the first is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(server_pid)
    os.environ.pop(MULTIPROC_DIR, None)
    for module in modules:
        importlib.import_module(module)


# Linux's prctl option: the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _end_with_parent(server_pid: int) -> None:
    """Have the kernel end this process when its server process ends, however it ends: one stopped by
    force (a second Ctrl-C, SIGKILL) left its checking processes running, re-parented to init (an
    outsider's find). By hand through libc's ``prctl``: the standard library has no call for it. Linux
    only; elsewhere a server stopped by force may leave them. The kernel acts when the *thread* that started
    the process ends: the pool starts its processes from the thread that submits, the event loop's."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The server ended before the call took effect. Compared with the server's own pid, not with init's:
    # in a container the server may be pid 1 itself.
    if os.getppid() != server_pid:
        os._exit(0)


class CheckProcesses:
    """``processes`` worker processes for the checks of large bodies (none: every check in the loop),
    which import ``modules`` (those of the checks) when they start."""

    def __init__(self, processes: int, modules: tuple[str, ...] = ()) -> None:
        self.processes = processes
        self._modules = modules
        self._pool: ProcessPoolExecutor | None = None
        self._started_pool: ProcessPoolExecutor | None = None  # the pool whose process has answered once
        # A check is handed over only when a process is free, so that its time limit counts its own work:
        # counted from a hand-over into the pool's queue, a check queued behind a long one was taken for
        # hung, and the healthy long one ended with it (an outsider's find). Callers take turns at the
        # processes (``FairTurns``): in arrival order, one token's many large reports held the process while
        # another caller's waited behind all of them (another outsider's find).
        self._free = FairTurns(processes)
        self._closed = False
        self.offloaded = 0  # checks run in a process since the app started (tests read it)

    def _started(self) -> ProcessPoolExecutor:
        """The pool, started at the first large body: a server that is never sent one keeps no process
        (each imports the app's modules, tens of MB), and the first waits about a second for its start."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_prepare,
                initargs=(self._modules, os.getpid()),
            )
        return self._pool

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called: every check is then made in the loop."""
        return self._closed

    async def close(self) -> None:
        self._closed = True  # a request still being served checks its body in the loop
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # In a thread: shutting down joins the processes; one that does not end within a check's time is
        # hung, and ended (it held the server's exit for ever: an outsider's find).
        joined = asyncio.ensure_future(asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True))
        try:
            await asyncio.wait_for(asyncio.shield(joined), check_timeout_s(0))
        except TimeoutError:
            log.warning("A body check's process did not end within %g s; ended.", check_timeout_s(0))
            _kill(pool)
            await joined
        except asyncio.CancelledError:
            # A forced stop (a second Ctrl-C) cancels this: the checks still running are cut short, or the
            # process would wait for them as it exits (an outsider's find: it never exited).
            _kill(pool)
            raise

    async def check(self, check: Check, body: bytes, *, any_size: bool = False) -> bool:
        """Run ``check`` on ``body`` and raise the error it returns. False if it was not run (the body is
        small, unless ``any_size``: a check whose cost is not its body's size; or there are no processes):
        then the caller checks it in the loop."""
        if not self.processes or self._closed or (len(body) < MIN_BYTES and not any_size):
            return False
        try:
            async with asyncio.timeout(WAIT_S):
                await self._free.acquire()
        except TimeoutError as exc:
            raise Unavailable(
                "the request body could not be checked now (the checks are busy); retry"
            ) from exc
        try:
            if self.closed:
                return False  # closed while it waited: checked in the loop, no new pool started
            return await self._checked(check, body)
        finally:
            self._free.release()

    async def _checked(self, check: Check, body: bytes) -> bool:
        pool = self._started()
        if pool is not self._started_pool:
            await self._warm(pool)
        timeout_s = check_timeout_s(len(body))
        try:
            async with asyncio.timeout(timeout_s):
                error = await asyncio.wrap_future(pool.submit(check, body))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request was cancelled (its caller left)
            # The check itself was cancelled: the pool was shut down under it (a hung check's processes
            # ended). It came out of the route as a 500 (an outsider's find).
            raise Unavailable(
                "the request body could not be checked (its checking process ended); retry"
            ) from exc
        except BrokenExecutor as exc:
            # A process died under it (killed, out of memory): the next check gets new processes; this
            # one is not retried, since its body may be what killed it.
            log.warning("A body check's process ended abruptly (%s); starting new ones.", exc)
            self._replace(pool)
            raise Unavailable(
                "the request body could not be checked (its checking process ended); retry"
            ) from exc
        except TimeoutError as exc:
            # Hung (or queued behind one that is): its processes are ended, the next check gets new ones,
            # and the checks queued behind it fail as those of a process that died do.
            log.warning("A body check took over %g s: its process is taken for hung, and ended.", timeout_s)
            if self._pool is pool:
                _kill(pool)
            self._replace(pool)
            raise Unavailable(
                f"the request body could not be checked (its check took over {timeout_s:g} s); retry"
            ) from exc
        self.offloaded += 1
        if error is not None:
            raise error
        return True

    async def _warm(self, pool: ProcessPoolExecutor) -> None:
        """Wait for a new pool's process to start (``START_S`` at most), before a check's own time limit
        starts: counted into the first check's limit, the start gave a check that had just ended its pool
        by overrunning 70 s on the next pool, and another caller's check, waiting its turn for 60 s
        (``WAIT_S``), a 503 every time (an outsider's find)."""
        try:
            async with asyncio.timeout(START_S):
                await asyncio.wrap_future(pool.submit(_started_here))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise Unavailable(
                "the request body could not be checked (its checking process ended); retry"
            ) from exc
        except (TimeoutError, BrokenExecutor) as exc:
            log.warning(
                "A body check's process did not start within %g s (%s); ended.", START_S, type(exc).__name__
            )
            if self._pool is pool:
                _kill(pool)
            self._replace(pool)
            raise Unavailable(
                "the request body could not be checked (its checking process did not start); retry"
            ) from exc
        self._started_pool = pool

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        """Drop ``pool`` (its processes died or were ended): the next check starts new ones."""
        if self._pool is pool:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)


def _started_here() -> None:
    """Nothing: run in a new pool's process, it answers once the process has started (``_warm``)."""


def _kill(pool: ProcessPoolExecutor) -> None:
    """End the pool's processes now. ``_processes`` is the pool's own table of them: Python 3.11's pool
    has no public call for this (3.14 adds ``kill_workers``)."""
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.kill()
