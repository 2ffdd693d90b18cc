"""Running one claimed task instance: its function, its heartbeats, and settling and reporting its outcome.

``async def`` functions run on the worker's loop; plain functions run on the worker's thread pool. Each
running task instance is heartbeated at about a third of its lease; when the server says the lease is lost
(404/409/410), the function is stopped and nothing is reported. A result goes to the server as JSON: one
that JSON cannot carry (an object msgspec cannot encode, or NaN or an infinity, which msgspec would write
as null) fails the task instead of being stored as another value.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import msgspec

from stateport.domain.errors import Conflict, Forbidden, NotFound, StateportError, Unavailable
from stateport.domain.jsontext import MAX_JSON_DEPTH, has_non_finite
from stateport.domain.quiet import EVERY_S, Repeated
from stateport.telemetry import logs, tracing
from stateport.worker.client import ClaimedTask, NextClaim, TaskLease, WorkerClient
from stateport.worker.context import AsyncTaskContext, NonRetryableError, SkipTask, SyncTaskContext
from stateport.worker.dag import Task
from stateport.worker.futures import first, retrieve

log = logging.getLogger("stateport.worker")

Interrupt = Literal["lost", "released", "timeout"]
# The longest reason a release carries (the server takes 4,000 characters).
MAX_RELEASE_REASON = 1000
DEFAULT_HEARTBEAT_S = 10.0
# Why a try's calls were refused for its expired token when the server would not renew it: a worker frozen
# past its lease (SIGSTOP, a paused VM) read "403 Invalid auth token: expired" at ERROR, as if its token were
# wrong (an outsider's find).
LEASE_LOST = (
    "the try is no longer this worker's: its lease expired (this worker did not heartbeat in time: stalled, "
    "paused or cut off), its token with it, and the server ended or handed out the try"
)

# The shortest heartbeat period, given or derived from a lease (stateport.cli.worker_args repeats it).
MIN_HEARTBEAT_S = 0.2
# A report that cannot reach the server is sent again (repeating a report is not an error), after these
# delays, then every REPORT_RETRY_MAX_S for as long as the try's lease is not known lost (its heartbeats
# go on meanwhile: the server keeps a lease through its store's outage while its worker heartbeats). A
# report with no heartbeat behind it (a give-back of a task handed out while stopping) stops after these.
REPORT_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)
REPORT_RETRY_MAX_S = 5.0
# How often a report still retrying says so in the log.
REPORT_RETRY_LOG_S = EVERY_S
# How long an interrupted async task may take to unwind its ``finally`` blocks before it is reported.
CANCEL_WAIT_S = 5.0
# A failed try's error as it is reported is at most this long: its first ERROR_HEAD_CHARS and its end. A
# traceback names the task's code first and its exception last, and a failed outcome quotes the end (the
# first 4,000 alone lost the exception: an outsider's find).
MAX_ERROR_CHARS = 4000
ERROR_HEAD_CHARS = 1000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def error_text(error: str) -> str:
    """``error`` as a report carries it: cut to ``MAX_ERROR_CHARS`` (its head and its end, the cut said),
    and each lone surrogate (an exception's text may hold one) as U+FFFD, since the report is UTF-8 JSON:
    one such character made the report unencodable, and the try was never reported (an outsider's find)."""
    text = _LONE_SURROGATE.sub("\ufffd", error)
    if len(text) <= MAX_ERROR_CHARS:
        return text
    # The marker is sized for the longest count it could say (the cut is shorter than the text), so the
    # result is at most MAX_ERROR_CHARS whatever the count's digits.
    tail = MAX_ERROR_CHARS - ERROR_HEAD_CHARS - len(_cut_marker(len(text)))
    cut = len(text) - ERROR_HEAD_CHARS - tail
    return text[:ERROR_HEAD_CHARS] + _cut_marker(cut) + text[len(text) - tail :]


def _cut_marker(count: int) -> str:
    return f"\n... ({count} characters cut) ...\n"


class Running:
    """One claimed task instance on this worker, and why it was interrupted (if it was)."""

    def __init__(self, claimed: ClaimedTask) -> None:
        self.claimed = claimed
        self.lease = TaskLease(claimed)
        self.stop = threading.Event()
        self.reason: Interrupt | None = None
        # Whether a report that cannot reach the server goes on being sent (``_report_delays``): no longer
        # once the worker's shutdown has waited out its grace period.
        self.persist_reports = True
        self.body: asyncio.Future[Any] | None = None
        self.execution: asyncio.Task[None] | None = None
        # Set when the server would not renew this try's expired token because the try is no longer on
        # this worker's lease: its calls refused for that token are a lost lease, not an auth failure.
        self.lease_lost = False

    def interrupt(self, reason: Interrupt) -> None:
        """Stop the function (an async one at its next await; a sync one is told via ``ctx.stopping``)."""
        if self.body is not None and self.body.done():
            return  # it finished first: its own result is what gets reported
        if self.reason is None:
            self.reason = reason
        self.stop.set()
        if self.body is not None:
            self.body.cancel()


class BusyThreads:
    """How many threads are running a sync task function now.

    A worker keeps one across its runs: a thread left running by a run that has ended (its function ignores
    ``ctx.stopping``) still counts until the function returns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    @contextmanager
    def one(self) -> Iterator[None]:
        """Count the calling thread as busy while the block runs."""
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1


class TaskRunner:
    """Runs the task instances one ``Worker.run`` claims, with what they share.

    ``client`` reports and heartbeats; ``threads`` runs the sync functions; ``state_http`` serves every
    async function's state accessor (each request carries its task instance's token); ``stopping`` is set
    once the worker stops, after which a task's slot no longer waits for a thread still busy.
    """

    def __init__(
        self,
        *,
        client: WorkerClient,
        threads: concurrent.futures.ThreadPoolExecutor,
        busy: BusyThreads,
        state_http: httpx.AsyncClient,
        stopping: asyncio.Event,
        base_url: str,
        worker_id: str,
        hostname: str,
        pid: int,
        heartbeat_s: float | None,
        state_options: Mapping[str, Any],
        queues: Sequence[str] = ("default",),
        on_claimed: Callable[[list[ClaimedTask]], None] | None = None,
        skipped: Callable[[], frozenset[tuple[str, str]]] = frozenset,
    ) -> None:
        # The tasks a report's claim skips: those the worker lacks (``Worker._skipped``).
        self._skipped = skipped
        self._client = client
        self._threads = threads
        self._busy = busy
        self._state_http = state_http
        self._stopping = stopping
        self._base_url = base_url
        self._worker_id = worker_id
        self._hostname = hostname
        self._pid = pid
        self._heartbeat_s = heartbeat_s
        self._warned_heartbeat = False  # a heartbeat_s not shorter than the lease is said once
        self._state_options = state_options
        self._queues = list(queues)
        self.on_claimed = on_claimed
        # Set when an answer that may have handed this worker a try may have been lost (a report's or a
        # claim's that failed after it was sent): the next claim names what runs here (``Worker``).
        self.answer_missed = False
        # Set at each heartbeat the server answered: a claim loop pausing after failures (up to 10 s)
        # claims again at once, the server being back (an outsider's find: claims resumed 9 s after the
        # heartbeats did, a run triggered in the outage waiting for them).
        self.server_answered = asyncio.Event()

    async def execute(self, running: Running, task: Task[Any, Any] | None) -> None:
        """Run ``task`` for ``running`` and report its outcome; returns once its slot is free again.

        Every line logged meanwhile (the task's own too, in its thread as well) names the task instance.
        """
        claimed = running.claimed
        with logs.bound(
            dag_id=claimed.dag_id,
            run_id=claimed.run_id,
            task_id=claimed.task_id,
            map_index=claimed.map_index,
            ti_id=str(claimed.id),
            try_number=claimed.try_number,
            worker_id=self._worker_id,
        ):
            if claimed.traceparent is None:
                log.info("task started", extra={"event": "task_started"})
                await self._execute(running, task)
                return
            attributes: dict[str, str | int] = {
                "stateport.dag_id": claimed.dag_id,
                "stateport.run_id": claimed.run_id,
                "stateport.task_id": claimed.task_id,
                "stateport.map_index": claimed.map_index,
                "stateport.try_number": claimed.try_number,
                "stateport.worker_id": self._worker_id,
            }
            name = f"stateport.task {claimed.dag_id}.{claimed.task_id}"
            with tracing.span(name, parent=claimed.traceparent, kind="consumer", attributes=attributes) as tp:
                running.lease.traceparent = tp
                # Logged inside the task's span, so the line carries the run's trace_id.
                log.info("task started", extra={"event": "task_started"})
                await self._execute(running, task)

    async def _execute(self, running: Running, task: Task[Any, Any] | None) -> None:
        claimed = running.claimed
        name = f"{claimed.dag_id}.{claimed.task_id}[{claimed.map_index}] try {claimed.try_number}"
        if task is None:
            # Claims name only this worker's DAGs, so this is a task its copy of the DAG lacks: the run uses
            # a newer version (registered while this worker runs the older code). Failing it would fail
            # the run for a missing deploy; given back, it is queued again without using a retry, for a
            # worker that has the task. With the reason, the server counts it among the task instance's
            # bounded free give-backs (later ones use a retry), so a task that no worker has cannot come
            # back to this one for ever.
            reason = f"worker {self._worker_id} has no task {claimed.dag_id}.{claimed.task_id}"
            log.warning("%s: giving it back (%s)", name, reason)
            await self.report(running, lambda c, lease: c.release(lease, reason=reason))
            return
        heartbeat = asyncio.create_task(self._heartbeat(running), name=f"heartbeat {name}")
        # A call refused for an expired token (heartbeat, report, the task's state accessor) renews it.
        running.lease.bearer.renewer = self._renewer(running)
        thread: concurrent.futures.Future[Any] | None = None
        context: AsyncTaskContext | None = None
        try:
            try:
                if task.is_async:
                    context = await AsyncTaskContext.open(
                        claimed,
                        task.spec,
                        base_url=self._base_url,
                        worker_id=self._worker_id,
                        stop=running.stop,
                        state_options=self._state_options,
                        http_client=self._state_http,
                        token=running.lease.bearer,
                    )
                    function: Callable[..., Awaitable[Any]] = task.fn
                    claimed = running.claimed
                    running.body = start_body(
                        function(context) if task.takes_context else function(),
                        name=f"{claimed.dag_id}.{claimed.task_id} ({claimed.id})",
                    )
                else:
                    thread = self._submit(task, self._sync_context(running, task))
                    running.body = asyncio.wrap_future(thread)
                # Whatever happens to it, its outcome is read here or deliberately dropped (lost lease).
                running.body.add_done_callback(retrieve)
            except Exception as exc:
                log.warning("%s could not start", name, exc_info=exc)
                await self.fail(running, f"could not start: {_describe(exc)}")
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
            done.add_done_callback(retrieve)
            await first(done, self._stopping.wait())

    async def fail(
        self, running: Running, error: str, *, retryable: bool = True, claim: NextClaim | None = None
    ) -> None:
        text = error_text(error)
        log.info("task failed: %s", text, extra={"event": "task_finished", "state": "failed"})

        async def send(client: WorkerClient, lease: TaskLease) -> None:
            await self._hand_over(await client.fail(lease, text, retryable=retryable, claim=claim))

        await self.report(running, send)

    def _next_claim(self, running: Running) -> NextClaim | None:
        """What a report of ``running``'s try may claim: one task instance of its run that the report makes
        ready, to run in the slot the try frees (none when the try was interrupted or the worker stops)."""
        if self.on_claimed is None or running.reason is not None or self._stopping.is_set():
            return None
        return NextClaim(
            worker_id=self._worker_id, queues=self._queues, max_tasks=1, skip_tasks=self._skipped()
        )

    async def _hand_over(self, claimed: list[ClaimedTask]) -> None:
        """Start what a report's answer brought; give it back, unstarted, once the worker stops (its
        shutdown waits for this report, not for tasks started after it began)."""
        if not claimed:
            return
        if self.on_claimed is not None and not self._stopping.is_set():
            self.on_claimed(claimed)
            return
        for task in claimed:
            log.info("releasing %s.%s, handed out while stopping", task.dag_id, task.task_id)
            await self.report(Running(task), lambda c, lease: c.release(lease))

    async def report(
        self,
        running: Running,
        send: Callable[[WorkerClient, TaskLease], Awaitable[object]],
        *,
        refusals: bool = True,
    ) -> bool:
        """Send a report, again while the server is unreachable (``_report_delays``); whether the server
        took it. ``refusals=False`` raises what it refuses."""
        delays = _report_delays(running)
        # The first failure is said at once, then one line every REPORT_RETRY_LOG_S (an outsider saw a
        # report fail three times in 20 s with nothing in the worker's log, even at debug).
        logged: float | None = None
        failures = 0
        while True:
            try:
                await send(self._client, running.lease)
                if failures:
                    log.info("reported %s after %d failed tries", running.claimed.id, failures)
                return True
            except Unavailable as exc:
                self.answer_missed = True
                failures += 1
                delay = next(delays, None)
                if delay is None:
                    # What it costs and what avoids it said (an outsider's find: a finished result task's
                    # report, lost to a stop during a database outage, failed its run as "the worker
                    # stopped heartbeating").
                    log.error(
                        "giving up reporting %s: %s (its lease will expire and the try end as failed, its "
                        "result lost: a --grace longer than the server's outages, or retries on the task, "
                        "avoid it)",
                        running.claimed.id,
                        exc.detail,
                    )
                    return False
                now = asyncio.get_running_loop().time()
                if logged is None or now - logged >= REPORT_RETRY_LOG_S:
                    logged = now
                    log.warning(
                        "reporting %s failed: %s; trying again (the result is kept)",
                        running.claimed.id,
                        exc.detail,
                    )
                await asyncio.sleep(delay)
            except (Conflict, NotFound) as exc:
                # Someone else settled it (lease expired and re-queued, or an operator): not ours to report.
                log.warning("report for %s refused: %s", running.claimed.id, exc.detail)
                return False
            except StateportError as exc:
                if isinstance(exc, Forbidden) and running.lease_lost:
                    log.warning("report for %s not taken: %s", running.claimed.id, LEASE_LOST)
                    return False
                if not refusals:
                    raise
                log.error("report for %s refused: %s", running.claimed.id, exc.detail)
                return False

    def _sync_context(self, running: Running, task: Task[Any, Any]) -> SyncTaskContext:
        return SyncTaskContext(
            running.claimed,
            task.spec,
            base_url=self._base_url,
            worker_id=self._worker_id,
            stop=running.stop,
            state_options=self._state_options,
            token=running.lease.bearer,
        )

    def _submit(self, task: Task[Any, Any], context: SyncTaskContext) -> concurrent.futures.Future[Any]:
        def call() -> Any:
            with self._busy.one():
                try:
                    return task.fn(context) if task.takes_context else task.fn()
                finally:
                    try:
                        context.close()
                    except Exception as exc:  # noqa: BLE001  # the result stands even if closing the accessor failed
                        log.warning("closing the state accessor of %s failed: %s", context, exc)

        # The thread runs in a copy of this task's context: the task's own log lines name its instance.
        return self._threads.submit(contextvars.copy_context().run, call)

    async def _settle(self, running: Running, task: Task[Any, Any], name: str) -> None:
        body = running.body
        assert body is not None and body.done()
        if running.reason == "lost":
            # Its end said as every task's is: a task_started with no task_finished read as still running
            # to whoever pairs them (an outsider's find).
            log.warning(
                "%s: the server took the task instance back (its run cancelled, or its lease lost); not "
                "reporting",
                name,
                extra={"event": "task_finished", "state": "lost"},
            )
            return
        if running.reason == "released":
            log.info("%s: released", name, extra={"event": "task_finished", "state": "released"})
            await self.report(running, lambda c, lease: c.release(lease))
            return
        if running.reason == "timeout":
            await self.fail(running, f"timed out after {task.spec.timeout:g} s")
            return
        if body.cancelled():
            await self.fail(running, "the task was cancelled")
            return
        exc = body.exception()
        if isinstance(exc, SkipTask):
            log.info("%s: skipped (%s)", name, exc, extra={"event": "task_finished", "state": "skipped"})
            claim = self._next_claim(running)

            async def skip(client: WorkerClient, lease: TaskLease) -> None:
                await self._hand_over(await client.skip(lease, claim=claim))

            await self.report(running, skip)
            return
        if isinstance(exc, Unavailable):
            # The server could not answer one of the task's calls (its state store down longer than a state
            # call waits, OUTAGE_WAIT_S): not the task's failure, and failing it spent a retry on each
            # outage, or failed the run (an outsider's find). Given back with the reason, it is queued again
            # without a retry, among the task instance's bounded free give-backs (later ones use a retry,
            # so an outage that never ends still ends the task instance). The reason is cut to what a
            # release carries (at most 4,000 characters): refused, the report would leave the try to its
            # lease's expiry, which spends a retry.
            reason = f"the server could not answer the task: {exc.detail}"[:MAX_RELEASE_REASON]
            log.warning("%s: giving it back (%s)", name, reason)
            await self.report(running, lambda c, lease: c.release(lease, reason=reason))
            return
        if exc is not None:
            retryable = not isinstance(exc, NonRetryableError)
            log.warning("%s failed (%s)", name, _failure_kind(retryable, task.spec.retries), exc_info=exc)
            await self.fail(running, _describe(exc), retryable=retryable, claim=self._next_claim(running))
            return
        try:
            value = body.result()
            result = msgspec.json.encode(value)
            non_finite = b"null" in result and has_non_finite(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as error:
            await self.fail(running, f"the result is not JSON: {error}", retryable=False)
            return
        except RecursionError:
            # Uncaught, it ended this callback: the try was never reported, and failed 30 s later as a lost
            # lease, retryable, with the worker healthy (an outsider's find: a list nested 3,000 deep).
            await self.fail(
                running,
                "the result is nested too deeply to encode (the server takes at most "
                f"{MAX_JSON_DEPTH} levels of arrays and objects)",
                retryable=False,
            )
            return
        if non_finite:
            # msgspec writes NaN and the infinities as null: the run would report another value, silently.
            await self.fail(
                running, "the result holds NaN or an infinity, which JSON cannot carry", retryable=False
            )
            return
        claim = self._next_claim(running)

        async def succeed(client: WorkerClient, lease: TaskLease) -> None:
            await self._hand_over(await client.succeed(lease, result, claim=claim))

        try:
            taken = await self.report(running, succeed, refusals=False)
        except StateportError as refused:
            # The server refused the result itself (too large, not acceptable): that is the task's failure.
            await self.fail(running, f"the server refused the result: {refused.detail}", retryable=False)
            return
        if taken:  # else the server settled the try otherwise (409), or the report could not be sent: logged
            log.info("task succeeded", extra={"event": "task_finished", "state": "success"})

    async def _heartbeat(self, running: Running) -> None:
        interval = self._heartbeat_interval(running.claimed)
        beats = Repeated(log, f"heartbeat for {running.claimed.id}")
        while True:
            await asyncio.sleep(interval)
            try:
                alive = await self._client.heartbeat(running.lease, hostname=self._hostname, pid=self._pid)
            except StateportError as exc:
                if not (isinstance(exc, Forbidden) and running.lease_lost):
                    beats.failed(exc.detail)
                    continue
                alive = False
            beats.worked()
            self.server_answered.set()
            if not alive:
                why = f" ({LEASE_LOST})" if running.lease_lost else ""
                log.warning("lost the lease of %s: stopping it%s", running.claimed.id, why)
                running.interrupt("lost")
                return

    async def _renew(self, running: Running) -> bool:
        """Ask for a fresh token for ``running``'s try with the worker's own token: its task-instance token
        is renewed by the answers to its calls, and one that expired in an outage longer than its life
        would otherwise lose the try. False when none is given (not running on this worker's lease, or
        refused); Unavailable while the server cannot answer (the caller tries again later)."""
        try:
            tokens = await self._client.task_tokens(self._worker_id, [running.lease])
        except Unavailable:
            raise
        except StateportError as exc:
            log.warning("could not renew the token of %s: %s", running.claimed.id, exc.detail)
            return False
        token = tokens.get(running.claimed.id)
        if token is None:
            running.lease_lost = True
            return False
        log.info("renewed the expired token of %s", running.claimed.id)
        running.lease.token = token
        return True

    def _renewer(self, running: Running) -> Callable[[], Awaitable[bool]]:
        """``_renew`` for ``running``'s token (``BearerToken.renewer``), callable from any loop: a sync
        task's state accessor runs on an event loop of its own (``stateport.worker.state``), so the renewal
        is sent on this one. Unavailable while the server cannot answer: a report goes on retrying."""
        loop = asyncio.get_running_loop()

        async def renew() -> bool:
            if asyncio.get_running_loop() is loop:
                return await self._renew(running)
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._renew(running), loop))

        return renew

    def _heartbeat_interval(self, claimed: ClaimedTask) -> float:
        """A third of the lease's time left, read on the server's clock (this machine's may be off by
        more than a lease); the period asked for (``heartbeat_s``) unless it is not shorter than that."""
        if claimed.lease_expires_at is None:
            return DEFAULT_HEARTBEAT_S if self._heartbeat_s is None else self._heartbeat_s
        server_now = datetime.now(UTC) + timedelta(seconds=self._client.server_offset_s)
        remaining = (claimed.lease_expires_at - server_now).total_seconds()
        derived = max(MIN_HEARTBEAT_S, remaining / 3)
        if self._heartbeat_s is None:
            return derived
        if self._heartbeat_s >= remaining and not self._warned_heartbeat:
            self._warned_heartbeat = True
            log.warning(
                "a heartbeat every %g s would lose leases of %.3g s: heartbeating every %.3g s instead",
                self._heartbeat_s,
                remaining,
                derived,
            )
        return derived if self._heartbeat_s >= remaining else self._heartbeat_s


def _report_delays(running: Running) -> Iterator[float]:
    """The waits between a report's attempts while the server is unreachable: ``REPORT_RETRY_DELAYS_S``,
    then, for a try whose heartbeats run, every ``REPORT_RETRY_MAX_S`` until its lease is known lost (or
    the worker's shutdown has waited out its grace period, or the try was released). A
    fixed few seconds lost every result finished in an outage longer than them (a restart, a failover):
    the lease expired later, and the run failed or the task ran again."""
    yield from REPORT_RETRY_DELAYS_S
    while running.execution is not None and running.reason in (None, "timeout") and running.persist_reports:
        yield REPORT_RETRY_MAX_S


class TaskExited(Exception):
    """An async task called ``sys.exit`` (a library's argparse, say) or raised KeyboardInterrupt: its
    failure, not the worker's."""


# Set in the context an async task's body runs in, and so in every asyncio task it creates (a task copies
# its creator's context): ``exits_contained`` guards those.
_IN_TASK: contextvars.ContextVar[bool] = contextvars.ContextVar("stateport_in_task", default=False)


async def _no_exit(body: Awaitable[Any]) -> Any:
    """Await ``body``, with SystemExit and KeyboardInterrupt as TaskExited. asyncio re-raises those two
    out of the event loop from any of its tasks, so one raised in a task's body, or in a task it made
    (``gather``, ``wait_for``, a TaskGroup), stopped the worker and every task beside it; a sync task's is
    already its own failure (its thread's future holds it)."""
    try:
        return await body
    except SystemExit as exc:
        raise TaskExited(f"the task called sys.exit({exc.code!r})") from exc
    except KeyboardInterrupt as exc:
        raise TaskExited("the task raised KeyboardInterrupt") from exc


def start_body(body: Awaitable[Any], name: str | None = None) -> asyncio.Future[Any]:
    """Run an async task's body as an asyncio task, in a context marked as a task's (``_IN_TASK``), named
    ``name`` (the watchdog names the task that holds the loop by it)."""
    context = contextvars.copy_context()
    context.run(_IN_TASK.set, True)
    return context.run(asyncio.get_running_loop().create_task, _no_exit(body), name=name)


@contextmanager
def exits_contained(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While open, every asyncio task made within a task's body (``start_body``) runs its coroutine under
    ``_no_exit``; tasks made elsewhere (the worker's own, an embedding application's) are left as they
    are, so a KeyboardInterrupt of the application still stops it."""
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        if _IN_TASK.get():
            coro = _no_exit(coro)
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        loop.set_task_factory(previous)


def _failure_kind(retryable: bool, retries: int) -> str:
    """What a failure's log line says of what comes next: the server decides, from the task's retries (a
    retryable error on a task without any is as final as a non-retryable one; an outsider read "retryable"
    on a try that failed the run)."""
    if not retryable:
        return "not retryable"
    if retries == 0:
        return "the task has no retries"
    # Not "retryable" alone: on the last try it read as if another would come (an outsider's find). The
    # worker does not know how many are used (the server counts failed tries; try_number counts pokes).
    retries_are = "1 retry is" if retries == 1 else f"{retries} retries are"
    return f"a retryable error: tried again unless the task's {retries_are} used up"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
