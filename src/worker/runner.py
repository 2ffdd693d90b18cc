"""The worker: claims task instances of its DAGs, runs them with bounded concurrency, heartbeats, reports.

One ``Worker`` is one asyncio loop. It long-polls for work only while it has a free slot, asking for as
many task instances as it has free slots. ``async def`` tasks run on the loop; plain functions run on a
thread pool the worker owns, sized to ``concurrency`` (this is a worker process, not the server: its
threads run user code that may block, which is what they are for). Each running task instance is
heartbeated at about a third of its lease; when the server says the lease is lost (404/409/410), the task
is stopped and nothing is reported. On ``stop()`` the worker stops claiming, gives running tasks up to
``grace_s`` to finish, then releases the rest, which the server queues again without using a retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import msgspec

from stateport.adapters.rest.transport import make_client
from stateport.domain.errors import Conflict, NotFound, StateportError, Unavailable
from stateport.worker.client import ClaimedTask, TaskLease, WorkerClient, renewal_due_in
from stateport.worker.context import AsyncTaskContext, NonRetryableError, SyncTaskContext
from stateport.worker.dag import Dag, Task

log = logging.getLogger("stateport.worker")

Interrupt = Literal["lost", "released", "timeout"]
DEFAULT_HEARTBEAT_S = 10.0
MIN_HEARTBEAT_S = 0.2
# A report that cannot reach the server is sent again (repeating a report is not an error), this often.
REPORT_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)
# How long an interrupted async task may take to unwind its ``finally`` blocks before it is reported.
CANCEL_WAIT_S = 5.0
MAX_ERROR_CHARS = 4000
# After a renewal the server declined, the next attempt (while the token is still valid).
RENEWAL_RETRY_S = 5.0
# The most task instances one claim may ask for (the server's bound on ``max_tasks``).
MAX_CLAIM = 100


class _Running:
    """One claimed task instance on this worker, and why it was interrupted (if it was)."""

    def __init__(self, claimed: ClaimedTask) -> None:
        self.claimed = claimed
        self.lease = TaskLease(claimed)
        self.stop = threading.Event()
        self.reason: Interrupt | None = None
        self.body: asyncio.Future[Any] | None = None
        self.execution: asyncio.Task[None] | None = None

    def interrupt(self, reason: Interrupt) -> None:
        """Stop the function (an async one at its next await; a sync one is told via ``ctx.stopping``)."""
        if self.body is not None and self.body.done():
            return  # it finished first: its own result is what gets reported
        if self.reason is None:
            self.reason = reason
        self.stop.set()
        if self.body is not None:
            self.body.cancel()


class Worker:
    """Runs the tasks of ``dags`` for a Stateport server at ``base_url``.

    ``token`` is an API token with scope ``worker`` (and ``dags:write`` to ``push`` DAGs). ``heartbeat_s``
    fixes the heartbeat period (default: a third of each lease). ``state_options`` are passed to the
    state accessors (``backend="redis"`` and its options, for worker-direct state).
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
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.dags = list(dags)
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
        self._running: dict[uuid.UUID, _Running] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._client: WorkerClient | None = None
        self._state_http: httpx.AsyncClient | None = None
        self._open_claim: asyncio.Future[list[ClaimedTask]] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads_lock = threading.Lock()
        self._busy_threads = 0

    @property
    def running(self) -> int:
        """How many task instances this worker holds now."""
        return len(self._running)

    @property
    def busy_threads(self) -> int:
        """Threads still running a sync task function (one that was released or timed out included)."""
        with self._threads_lock:
            return self._busy_threads

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
        self._loop = asyncio.get_running_loop()
        self._stopping, self._hurry, self._slot_freed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=f"stateport-task-{self.worker_id}"
        )
        self._client = WorkerClient.create(self.base_url, self._token, timeout_s=self._timeout_s)
        # One HTTP client for every async task's state accessor (each request carries its TI's token).
        self._state_http = make_client(self.base_url, timeout_s=self._timeout_s)
        log.info("worker %s claiming from %s on %s", self.worker_id, self.queues, self.base_url)
        try:
            await self._claim_loop(self._client)
        except asyncio.CancelledError:
            self._hurry.set()
            raise
        finally:
            try:
                await self._shutdown()
            finally:
                # Threads still running user code that ignores ctx.stopping are left behind, not joined.
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._token = self._client.token  # a later run() starts from the renewed token
                await self._client.close()
                await self._state_http.aclose()
                self._loop = None
                self._stop_requested = False

    # --- claiming -------------------------------------------------------------------------------------

    async def _claim_loop(self, client: WorkerClient) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), self._stopping.wait(), self._keep_token_alive(client))
                continue
            claim = asyncio.ensure_future(
                client.claim(self.worker_id, self.queues, max_tasks=min(free, MAX_CLAIM), wait_s=self.wait_s)
            )
            await _first(claim, self._stopping.wait())
            if not claim.done():
                # Stopping with a long poll open: never just drop it. The server may go on waiting after we
                # hang up and hand the next ready task instance to this worker, which would then sit
                # running until its lease expires (and the expiry uses one of its retries). Shutdown waits
                # for the answer, within the grace period, and gives back what it brings.
                self._open_claim = claim
                return
            try:
                claimed = claim.result()
            except Unavailable as exc:
                log.warning("claim failed, retrying in %.1f s: %s", backoff, exc.detail)
                await _first(asyncio.sleep(backoff), self._stopping.wait())
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            for task in claimed:
                self._start(task)

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
            log.warning("the server did not renew the API token (past its maximum lifetime?)")
            await asyncio.sleep(RENEWAL_RETRY_S)

    def _start(self, claimed: ClaimedTask) -> None:
        running = _Running(claimed)
        self._running[claimed.id] = running
        task = self._tasks.get((claimed.dag_id, claimed.task_id))
        running.execution = asyncio.create_task(
            self._execute(running, task), name=f"stateport {claimed.dag_id}.{claimed.task_id}"
        )
        running.execution.add_done_callback(lambda _: self._finished(claimed.id))

    def _finished(self, ti_id: uuid.UUID) -> None:
        self._running.pop(ti_id, None)
        self._slot_freed.set()

    # --- running one task instance --------------------------------------------------------------------

    async def _execute(self, running: _Running, task: Task[Any, Any] | None) -> None:
        claimed = running.claimed
        name = f"{claimed.dag_id}.{claimed.task_id}[{claimed.map_index}] try {claimed.try_number}"
        if task is None:
            await self._fail(
                running, f"worker {self.worker_id} has no task {claimed.dag_id}.{claimed.task_id}"
            )
            return
        heartbeat = asyncio.create_task(self._heartbeat(running), name=f"heartbeat {name}")
        thread: concurrent.futures.Future[Any] | None = None
        context: AsyncTaskContext | None = None
        try:
            try:
                if task.is_async:
                    context = await AsyncTaskContext.open(
                        claimed,
                        task.spec,
                        base_url=self.base_url,
                        worker_id=self.worker_id,
                        stop=running.stop,
                        state_options=self._state_options,
                        http_client=self._state_http,
                        token=running.lease.bearer,
                    )
                    function: Callable[..., Awaitable[Any]] = task.fn
                    running.body = asyncio.ensure_future(
                        function(context) if task.takes_context else function()
                    )
                else:
                    thread = self._submit(task, self._sync_context(running, task))
                    running.body = asyncio.wrap_future(thread)
                # Whatever happens to it, its outcome is read here or deliberately dropped (lost lease).
                running.body.add_done_callback(_retrieve)
            except Exception as exc:
                log.warning("%s could not start", name, exc_info=exc)
                await self._fail(running, f"could not start: {_describe(exc)}")
                return
            if running.reason is not None:
                running.body.cancel()  # interrupted while it was starting
            log.debug("%s started", name)
            await asyncio.wait({running.body}, timeout=task.spec.timeout)
            if not running.body.done():
                running.interrupt("timeout")
            if not running.body.done():
                await asyncio.wait({running.body}, timeout=CANCEL_WAIT_S)
            await self._settle(running, task, name)
        finally:
            heartbeat.cancel()
            if context is not None:
                with suppress(Exception):
                    await context.close()
        if thread is not None and not thread.done() and not self._stopping.is_set():
            # The slot stays taken while its thread is still busy, so the pool never runs over concurrency.
            done = asyncio.wrap_future(thread)
            done.add_done_callback(_retrieve)
            await _first(done, self._stopping.wait())

    def _sync_context(self, running: _Running, task: Task[Any, Any]) -> SyncTaskContext:
        return SyncTaskContext(
            running.claimed,
            task.spec,
            base_url=self.base_url,
            worker_id=self.worker_id,
            stop=running.stop,
            state_options=self._state_options,
            token=running.lease.bearer,
        )

    def _submit(self, task: Task[Any, Any], context: SyncTaskContext) -> concurrent.futures.Future[Any]:
        assert self._executor is not None

        def call() -> Any:
            with self._threads_lock:
                self._busy_threads += 1
            try:
                return task.fn(context) if task.takes_context else task.fn()
            finally:
                try:
                    context.close()
                except Exception as exc:  # noqa: BLE001  # the result stands even if closing the accessor failed
                    log.warning("closing the state accessor of %s failed: %s", context, exc)
                with self._threads_lock:
                    self._busy_threads -= 1

        return self._executor.submit(call)

    async def _settle(self, running: _Running, task: Task[Any, Any], name: str) -> None:
        body = running.body
        assert body is not None and body.done()
        if running.reason == "lost":
            log.warning("%s: the server took the task instance back; not reporting", name)
            return
        if running.reason == "released":
            log.info("%s: released", name)
            await self._report(running, lambda c, lease: c.release(lease))
            return
        if running.reason == "timeout":
            await self._fail(running, f"timed out after {task.spec.timeout:g} s")
            return
        if body.cancelled():
            await self._fail(running, "the task was cancelled")
            return
        exc = body.exception()
        if exc is not None:
            retryable = not isinstance(exc, NonRetryableError)
            log.warning("%s failed (%s)", name, "retryable" if retryable else "not retryable", exc_info=exc)
            await self._fail(running, _describe(exc), retryable=retryable)
            return
        try:
            value = body.result()
            result = msgspec.json.encode(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as error:
            await self._fail(running, f"the result is not JSON: {error}", retryable=False)
            return
        if b"null" in result and _has_non_finite(value):
            # msgspec writes NaN and the infinities as null: the run would report another value, silently.
            await self._fail(
                running, "the result holds NaN or an infinity, which JSON cannot carry", retryable=False
            )
            return
        try:
            await self._report(running, lambda c, lease: c.succeed(lease, result), refusals=False)
        except StateportError as refused:
            # The server refused the result itself (too large, not acceptable): that is the task's failure.
            await self._fail(running, f"the server refused the result: {refused.detail}", retryable=False)
            return
        log.debug("%s succeeded", name)

    async def _fail(self, running: _Running, error: str, *, retryable: bool = True) -> None:
        text = error[:MAX_ERROR_CHARS]
        await self._report(running, lambda c, lease: c.fail(lease, text, retryable=retryable))

    async def _report(
        self,
        running: _Running,
        send: Callable[[WorkerClient, TaskLease], Awaitable[None]],
        *,
        refusals: bool = True,
    ) -> None:
        """Send a report, again while the server is unreachable; ``refusals=False`` raises what it refuses."""
        assert self._client is not None
        for delay in (*REPORT_RETRY_DELAYS_S, None):
            try:
                await send(self._client, running.lease)
                return
            except Unavailable as exc:
                if delay is None:
                    log.error(
                        "giving up reporting %s: %s (its lease will expire)", running.claimed.id, exc.detail
                    )
                    return
                await asyncio.sleep(delay)
            except (Conflict, NotFound) as exc:
                # Someone else settled it (lease expired and re-queued, or an operator): not ours to report.
                log.warning("report for %s refused: %s", running.claimed.id, exc.detail)
                return
            except StateportError as exc:
                if not refusals:
                    raise
                log.error("report for %s refused: %s", running.claimed.id, exc.detail)
                return

    async def _heartbeat(self, running: _Running) -> None:
        assert self._client is not None
        interval = self._heartbeat_interval(running.claimed)
        while True:
            await asyncio.sleep(interval)
            try:
                alive = await self._client.heartbeat(running.lease, hostname=self.hostname, pid=self.pid)
            except StateportError as exc:
                log.warning("heartbeat for %s failed: %s", running.claimed.id, exc.detail)
                continue
            if not alive:
                log.warning("lost the lease of %s: stopping it", running.claimed.id)
                running.interrupt("lost")
                return

    def _heartbeat_interval(self, claimed: ClaimedTask) -> float:
        if self.heartbeat_s is not None:
            return self.heartbeat_s
        if claimed.lease_expires_at is None:
            return DEFAULT_HEARTBEAT_S
        remaining = (claimed.lease_expires_at - datetime.now(UTC)).total_seconds()
        return max(MIN_HEARTBEAT_S, remaining / 3)

    # --- shutting down --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Wait up to the grace period, release what still runs, then settle the claim left open."""
        self._stopping.set()
        claim, self._open_claim = self._open_claim, None
        give_back = None if claim is None else asyncio.ensure_future(self._give_back(claim))
        pending: set[asyncio.Future[Any]] = {r.execution for r in self._running.values() if r.execution}
        if pending and not self._hurry.is_set():
            log.info("waiting up to %g s for %d running task(s)", self.grace_s, len(pending))
            await self._until_done_or_hurry(pending, self.grace_s)
        left = list(self._running.values())
        if left:
            log.info("releasing %d task(s) still running", len(left))
        for running in left:
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

    async def _give_back(self, claim: asyncio.Future[list[ClaimedTask]]) -> None:
        """Release, unstarted, whatever the claim open at shutdown brings."""
        try:
            claimed = await claim
        except (asyncio.CancelledError, StateportError):
            return
        for task in claimed:
            log.info("releasing %s.%s, claimed while stopping", task.dag_id, task.task_id)
            await self._report(_Running(task), lambda c, lease: c.release(lease))


async def _first(*waitables: Awaitable[Any]) -> None:
    """Wait until one of ``waitables`` is done; cancel the others (a future passed in is left running)."""
    futures = [asyncio.ensure_future(w) for w in waitables]
    owned = [f for f, w in zip(futures, waitables, strict=True) if f is not w]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in owned:
            f.cancel()
            f.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["Worker"]


def _has_non_finite(value: object) -> bool:
    """Whether a task's return value holds a float NaN or infinity (walked without recursion: a result may
    nest deeply). Only lists, tuples, sets and dicts are entered; other objects encode as they encode."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
    return False
