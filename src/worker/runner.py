"""The worker: claims task instances of its DAGs, runs them with bounded concurrency, heartbeats, reports.

One ``Worker`` is one asyncio loop. It long-polls for work only while it has a free slot, asking for as
many task instances as it has free slots. ``async def`` tasks run on the loop; plain functions run on a
thread pool the worker owns, sized to ``concurrency`` (this is a worker process, not the server: its
threads run user code that may block, which is what they are for). Each running task instance is
heartbeated at about a third of its lease; when the server says the lease is lost (404/409/410), the task
is stopped and nothing is reported. On ``stop()`` the worker stops claiming, gives running tasks up to
``grace_s`` to finish, then releases the rest, which the server queues again without using a retry.

This module holds the worker's lifecycle (claiming, keeping its token alive, stopping);
``stateport.worker.execution`` runs each task instance it claims.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from stateport.adapters.rest.transport import make_client
from stateport.domain.errors import Refused, StateportError, Unavailable
from stateport.domain.quiet import Repeated
from stateport.telemetry import logs
from stateport.worker.client import ClaimedTask, WorkerClient, renewal_due_in, still_due
from stateport.worker.dag import Dag, Task
from stateport.worker.execution import MIN_HEARTBEAT_S, BusyThreads, Running, TaskRunner, exits_contained
from stateport.worker.futures import first, retrieve
from stateport.worker.stops import StopSignals
from stateport.worker.watchdog import LoopWatchdog

log = logging.getLogger("stateport.worker")

# After a renewal the server declined, the next attempt (while the token is still valid).
RENEWAL_RETRY_S = 5.0
# The most task instances one claim may ask for (the server's bound on ``max_tasks``).
MAX_CLAIM = 100
# The least time between two claims that found nothing (a claim that waits less is followed by a pause).
EMPTY_CLAIM_PAUSE_S = 1.0
# The most DAGs one claim may name (the server's bound on ``dag_ids``).
MAX_DAGS = 1000
# The most tasks one claim may skip (the server's bound on ``skip_tasks``).
MAX_SKIP_TASKS = 1000
# The most tasks one worker runs at once (the server's bound on what a stop poll or a claim names).
MAX_CONCURRENCY = 1000
# How many of the tries it started a worker remembers, so that a try handed out to it again (after it
# may have missed an answer) is not started twice: far more than can be in flight between two claims.
STARTED_KEPT = 10_000


def retry_pause(failures: int) -> float:
    """Seconds before the next try after ``failures`` failures in a row (0: the first failed): 0.5 s
    doubling to 10 s, the pace of a worker waiting for its server to come (back)."""
    return min(0.5 * 2.0 ** min(failures, 8), 10.0)


class Worker:
    """Runs the tasks of ``dags`` for a Stateport server at ``base_url``.

    ``token`` is an API token with scope ``worker`` (and ``dags:write`` to ``push`` DAGs). ``heartbeat_s``
    fixes the heartbeat period (default: a third of each lease; at least ``MIN_HEARTBEAT_S``, 0.2 s, else
    ValueError). ``state_options`` are passed to the state accessors (``backend="redis"`` and its options,
    for worker-direct state).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        dags: Iterable[Dag],
        queues: Iterable[str] = ("default",),
        concurrency: int = 4,
        worker_id: str | None = None,
        heartbeat_s: float | None = None,
        *,
        grace_s: float = 30.0,
        wait_s: float = 10.0,
        timeout_s: float = 10.0,
        state_options: Mapping[str, Any] | None = None,
        stall_exit_s: float | None = None,
    ) -> None:
        if stall_exit_s is not None and not (math.isfinite(stall_exit_s) and stall_exit_s >= 1):
            raise ValueError(f"stall_exit_s must be at least 1 second, not {stall_exit_s}")
        # Set: the process ends once its event loop has not turned for that long (stateport.worker.watchdog).
        self.stall_exit_s = stall_exit_s
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be from 1 to {MAX_CONCURRENCY}, not {concurrency}")
        # A period of 0 or less (or a tiny one) had every running task heartbeat in a loop: about 300
        # requests a second to the server, for nothing a lease needs.
        if heartbeat_s is not None and not (math.isfinite(heartbeat_s) and heartbeat_s >= MIN_HEARTBEAT_S):
            raise ValueError(f"heartbeat_s must be at least {MIN_HEARTBEAT_S:g} seconds, not {heartbeat_s}")
        self.base_url = base_url.rstrip("/")
        self.dags = list(dags)
        # Every claim names them: the server hands this worker only task instances it has code for, and
        # leaves the other DAGs' queued for workers that serve them.
        self.dag_ids = list(dict.fromkeys(dag.dag_id for dag in self.dags))
        if len(self.dag_ids) > MAX_DAGS:
            raise ValueError(f"a worker serves at most {MAX_DAGS} DAGs (it names them in every claim)")
        self.queues = list(queues)
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        self.concurrency = concurrency
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.worker_id = worker_id or f"{self.hostname}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.wait_s = wait_s
        self._token = token
        self._timeout_s = timeout_s
        self._state_options = dict(state_options or {})
        self._tasks: dict[tuple[str, str], Task[Any, Any]] = {
            (dag.dag_id, task_id): task for dag in self.dags for task_id, task in dag.tasks.items()
        }
        self._running: dict[uuid.UUID, Running] = {}
        # The tries started here, oldest first (the last STARTED_KEPT): one is never started twice.
        self._started: dict[uuid.UUID, None] = {}
        # (dag_id, task_id) of the tasks of this worker's DAGs that its code lacks (a newer version of the
        # DAG, registered while it runs, added them), learned from what claims brought: its claims skip
        # them, so that a worker with the newer code takes them, while this one goes on with the rest.
        self._lacking: set[tuple[str, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._open_claim: asyncio.Future[list[ClaimedTask]] | None = None
        # The claim the claim loop is waiting on, and the tasks it skips.
        self._waiting: tuple[asyncio.Future[list[ClaimedTask]], frozenset[tuple[str, str]]] | None = None
        self._busy = BusyThreads()
        self._signals: StopSignals | None = None  # while run() runs

    @property
    def running(self) -> int:
        """How many task instances this worker holds now."""
        return len(self._running)

    @property
    def busy_threads(self) -> int:
        """Threads still running a sync task function (one that was released or timed out included)."""
        return self._busy.count

    def stop(self, *, grace_s: float | None = None, force: bool = False) -> None:
        """Stop claiming and shut down; safe from any thread or signal handler.

        Running tasks get ``grace_s`` (default: the worker's) to finish, then are released; a claim still
        open is then waited for (at most ``wait_s``) and what it brings is released too. ``force=True``
        skips both waits: running tasks are released at once and an open claim is
        dropped (whatever the server hands it waits for its lease to expire).
        """
        if grace_s is not None:
            self.grace_s = grace_s
        loop = self._loop
        if loop is None:
            self._stop_requested = True
            return
        loop.call_soon_threadsafe(self._begin_stop, force)

    def _begin_stop(self, force: bool) -> None:
        if force:
            self._hurry.set()
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run task instances until ``stop()``; returns once every claimed one is settled.

        An API token the server refuses, or a server without the claim route, ends ``run`` with that error
        (after the running tasks are shut down); an unreachable server is retried with backoff.
        """
        # A task's sys.exit or KeyboardInterrupt, in its body or any asyncio task it makes, is its failure.
        with logs.bound(worker_id=self.worker_id), exits_contained(asyncio.get_running_loop()):
            await self._run()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping, self._hurry, self._slot_freed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"stateport-task-{self.worker_id}"
        )
        client = WorkerClient.create(self.base_url, self._token, timeout_s=self._timeout_s)
        # One HTTP client for every async task's state accessor (each request carries its TI's token).
        state_http = make_client(self.base_url, timeout_s=self._timeout_s)
        runner = TaskRunner(
            client=client,
            threads=threads,
            busy=self._busy,
            state_http=state_http,
            stopping=self._stopping,
            base_url=self.base_url,
            worker_id=self.worker_id,
            hostname=self.hostname,
            pid=self.pid,
            heartbeat_s=self.heartbeat_s,
            state_options=self._state_options,
            queues=self.queues,
            skipped=self._skipped,
        )
        # What a report's answer hands this worker (the next tasks of the run) runs in the reported slot.
        runner.on_claimed = lambda claimed: self._start_all(claimed, runner)
        log.info("worker %s claiming from %s on %s", self.worker_id, self.queues, self.base_url)
        # One stop-signal poll for every task this process runs (stateport.worker.stops).
        self._signals = StopSignals(client, self._running, self._stopping)
        signals = asyncio.create_task(self._signals.run(), name=f"stop signals {self.worker_id}")
        signals.add_done_callback(retrieve)
        watchdog = None
        if self.stall_exit_s is not None:
            watchdog = LoopWatchdog(self._loop, self.stall_exit_s, self._describe_running)
            watchdog.start()
        try:
            await self._claim_loop(client, runner)
        except asyncio.CancelledError:
            self._hurry.set()
            raise
        finally:
            try:
                await self._shutdown(runner)
            finally:
                if watchdog is not None:
                    watchdog.stop()
                signals.cancel()
                self._signals = None
                # Threads still running user code that ignores ctx.stopping are left behind, not joined.
                threads.shutdown(wait=False, cancel_futures=True)
                self._token = client.token  # a later run() starts from the renewed token
                await client.close()
                await state_http.aclose()
                self._loop = None
                self._stop_requested = False

    # --- claiming -------------------------------------------------------------------------------------

    async def _claim_loop(self, client: WorkerClient, runner: TaskRunner) -> None:
        failures = 0  # claims failed in a row
        claims = Repeated(log, "claim")
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await first(self._slot_freed.wait(), self._stopping.wait(), self._keep_token_alive(client))
                continue
            skipped = self._skipped()
            known = None
            if runner.answer_missed:
                # A worker frozen past its claim's read timeout (or whose connection broke) never read the
                # answer that handed it a try, which then waited for its lease to expire and failed.
                runner.answer_missed = False
                known = list(self._running)
            asked_at = asyncio.get_running_loop().time()
            claim = asyncio.ensure_future(
                client.claim(
                    self.worker_id,
                    self.queues,
                    max_tasks=min(free, MAX_CLAIM),
                    wait_s=self.wait_s,
                    dag_ids=self.dag_ids,
                    skip_tasks=skipped,
                    hostname=self.hostname,
                    pid=self.pid,
                    running=known,
                )
            )
            self._waiting = (claim, skipped)
            try:
                await first(claim, self._stopping.wait())
            finally:
                self._waiting = None
            if claim.cancelled():
                continue  # dropped because it would take a task found lacking meanwhile (see _start)
            if not claim.done():
                # Stopping with a long poll open: never just drop it. The server may go on waiting after we
                # hang up and hand the next ready task instance to this worker, which would then sit
                # running until its lease expires (and the expiry uses one of its retries). Shutdown waits
                # for the answer, within the grace period, and gives back what it brings.
                self._open_claim = claim
                return
            try:
                claimed = claim.result()
            except (Unavailable, Refused) as exc:
                # Its answer may have been lost (it failed after it was sent), or it named what runs here.
                if isinstance(exc, Unavailable) or known is not None:
                    runner.answer_missed = True
                # Refused: the worker token holds its share of the server's long waits
                # (STATEPORT_MAX_WAITERS_PER_CALLER), as when many workers share one token: retried.
                # The first failure says what to check: most often, no server was started at that URL.
                hint = (
                    f" (is the server running at {self.base_url}? start it with `stateport serve`, or "
                    "`python3 dev.py serve` in a checkout)"
                    if failures == 0 and "unreachable" in exc.detail
                    else ""
                )
                pause = retry_pause(failures)
                claims.failed(f"{exc.detail}; retrying in {pause:.1f} s", hint)
                runner.server_answered.clear()  # a heartbeat answered from now on ends the pause
                await first(asyncio.sleep(pause), self._stopping.wait(), runner.server_answered.wait())
                failures += 1
                continue
            failures = 0
            claims.worked()
            if known is not None and sum(task.again for task in claimed) >= min(free, MAX_CLAIM):
                # A claim hands out again at most what it asks for: with more answers missed than that (two
                # reports' answers cut at once, an outsider's find), the next claim names what runs here.
                runner.answer_missed = True
            for task in claimed:
                self._start(task, runner)
            taken = asyncio.get_running_loop().time() - asked_at
            if not claimed and taken < EMPTY_CLAIM_PAUSE_S:
                # A claim that did not wait answers an empty queue at once: one that asks for no wait
                # (``--wait 0``), or one the server found no seat for among its long waits (it answers such a
                # claim at once rather than refuse it). Without a pause the worker claimed in a loop (about
                # 1,450 claims a second, an outsider counted).
                await first(asyncio.sleep(EMPTY_CLAIM_PAUSE_S - taken), self._stopping.wait())

    async def _keep_token_alive(self, client: WorkerClient) -> None:
        """Renew the API token before it expires while every slot is busy (no claim renews it then).

        Returns after one attempt (a few seconds after one the server declined: a clock skew may have sent
        it early); waits until cancelled once the token is refused (then the next claim says why, and ends
        ``run`` as any refused token does).
        """
        due = renewal_due_in(client.token, time.time())
        if due is None:
            await asyncio.Event().wait()
            return
        await asyncio.sleep(max(due, 0.0))
        try:
            renewed = await client.keep_alive(self.worker_id, self.queues)
        except Unavailable as exc:
            log.warning("token renewal failed, retrying in 1 s: %s", exc.detail)
            await asyncio.sleep(1.0)
            return
        except StateportError as exc:
            log.error("token renewal refused: %s", exc.detail)
            await asyncio.Event().wait()
            return
        if not renewed:
            if not still_due(client.token, time.time()):
                return  # another request's answer renewed it meanwhile: nothing to tell
            log.warning("the server did not renew the API token (past its maximum lifetime?)")
            await asyncio.sleep(RENEWAL_RETRY_S)

    def _skipped(self) -> frozenset[tuple[str, str]]:
        """The tasks a claim skips: those this worker lacks (the first MAX_SKIP_TASKS of them)."""
        return frozenset(sorted(self._lacking)[:MAX_SKIP_TASKS])

    def _start_all(self, claimed: list[ClaimedTask], runner: TaskRunner) -> None:
        for task in claimed:
            self._start(task, runner)

    def _start(self, claimed: ClaimedTask, runner: TaskRunner) -> None:
        if claimed.id in self._running or claimed.id in self._started:
            # Handed out again after this worker may have missed an answer, but the answer came after all
            # (a report's, while the claim was open): it runs, or ran, here once.
            log.info("%s.%s was handed out again; it runs here already", claimed.dag_id, claimed.task_id)
            return
        if claimed.again:
            log.info(
                "%s.%s (%s) handed out again: this worker missed the answer that first handed it out",
                claimed.dag_id,
                claimed.task_id,
                claimed.id,
            )
        self._started[claimed.id] = None
        if len(self._started) > STARTED_KEPT:
            del self._started[next(iter(self._started))]
        running = Running(claimed)
        self._running[claimed.id] = running
        task = self._tasks.get((claimed.dag_id, claimed.task_id))
        if task is None:
            # The runner gives it back; claimed again, it would most likely come back here.
            key = (claimed.dag_id, claimed.task_id)
            self._lacking.add(key)
            waiting = self._waiting
            if waiting is not None and key not in waiting[1] and not self._stopping.is_set():
                # A claim still open that does not skip it (the task came in a report's answer) would take
                # the try given back next: drop it (the server gives back, unused, what it held for it)
                # and claim again, skipping it.
                waiting[0].cancel()
        running.execution = asyncio.create_task(
            runner.execute(running, task), name=f"stateport {claimed.dag_id}.{claimed.task_id}"
        )
        running.execution.add_done_callback(lambda _: self._finished(claimed.id))
        if self._signals is not None:
            self._signals.started()

    def _describe_running(self) -> str:
        """The tasks this worker runs, for the watchdog's line (read from its thread: a copy first)."""
        running = [r.claimed for r in list(self._running.values())]
        return ", ".join(f"{c.dag_id}.{c.task_id} ({c.id})" for c in running) or "none"

    def _finished(self, ti_id: uuid.UUID) -> None:
        self._running.pop(ti_id, None)
        self._slot_freed.set()

    # --- shutting down --------------------------------------------------------------------------------

    async def _shutdown(self, runner: TaskRunner) -> None:
        """Wait up to the grace period, release what still runs, then settle the claim left open."""
        self._stopping.set()
        claim, self._open_claim = self._open_claim, None
        give_back = None if claim is None else asyncio.ensure_future(self._give_back(claim, runner))
        pending: set[asyncio.Future[Any]] = {r.execution for r in self._running.values() if r.execution}
        if pending and not self._hurry.is_set():
            log.info("waiting up to %g s for %d running task(s)", self.grace_s, len(pending))
            await self._until_done_or_hurry(pending, self.grace_s)
        left = list(self._running.values())
        if claim is not None and self._hurry.is_set() and not claim.done():
            # A forced stop drops its open claim before the releases: a try they queue again could
            # otherwise be handed to it, and wait out its lease (an outsider's find).
            log.warning("dropping an open claim: what it brings waits for its lease to expire")
            claim.cancel()
        if left:
            log.info("releasing %d task(s) still running", len(left))
        for running in left:
            running.persist_reports = False  # a report the server cannot take now is not waited for
            running.interrupt("released")
        await asyncio.gather(*(r.execution for r in left if r.execution is not None), return_exceptions=True)
        if claim is not None and give_back is not None:
            # Only now: a task released above may come back through this very claim, and is given back again.
            if not self._hurry.is_set():
                await self._until_done_or_hurry({give_back}, None)
            if not claim.done():
                log.warning("dropping an open claim: what it brings waits for its lease to expire")
                claim.cancel()
            await give_back

    async def _until_done_or_hurry(self, pending: set[asyncio.Future[Any]], timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while pending and not self._hurry.is_set():
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                _, still = await asyncio.wait(
                    {*pending, hurry}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending = {t for t in still if t is not hurry}
        finally:
            hurry.cancel()

    async def _give_back(self, claim: asyncio.Future[list[ClaimedTask]], runner: TaskRunner) -> None:
        """Release, unstarted, whatever the claim open at shutdown brings."""
        try:
            claimed = await claim
        except (asyncio.CancelledError, StateportError):
            return
        for task in claimed:
            log.info("releasing %s.%s, claimed while stopping", task.dag_id, task.task_id)
            await runner.report(Running(task), lambda c, lease: c.release(lease))


__all__ = ["Worker"]
