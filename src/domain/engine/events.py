"""The run core's EventBus topics, named in one place, and what a committed change announces on them.

``run:<dag_id>:<run_id>`` carries the run's state after a change, with ``;open`` after it when the change
leaves the run without an outcome (``run_message``: waiters re-read the run, except those waiting only for
its outcome, which need not read a run the message says has none; in the process
that made the change, a run whose outcome it committed is also handed to ``tell_outcomes``'s receivers,
which answer their waiters with it at once instead of waiting for the bus and a re-read);
``queue:<queue>`` carries how many task instances were queued (waiting claims look at the store). Both are
hints (see ``EventBus``): a lost one delays a waiter, never strands it.

A committed change's announcements are sent by a background task, not by the request that made the
change: on a cross-process bus a publish is a round trip (``pg_notify``, a Redis ``PUBLISH``), and the
answer to a report or a trigger waited for it although the change was already durable. The sender sends
everything announced meanwhile in one ``publish_many`` (one round trip for several changes), in the order
announced.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import msgspec

from stateport.domain.errors import Invalid
from stateport.domain.models import Run, RunState, TaskInstance, TIState
from stateport.domain.ports import Clock, EventBus, Receiver, Subscription

log = logging.getLogger("stateport.engine")


def run_topic(dag_id: str, run_id: str) -> str:
    """The topic a run's changes are announced on."""
    return f"run:{dag_id}:{run_id}"


# Appended to a run's message by a change that leaves the run without an outcome, known under its lock. A
# message without it (a claim's, which does not lock the run; a deleted run's; a RECHECK) says nothing of
# the outcome, and every waiter re-reads the run on it.
OPEN = ";open"
_OPEN = OPEN.encode()


def run_message(run: Run) -> str:
    """The message announcing ``run`` as a change under its lock leaves it."""
    return run.state.value if run.outcome is not None else run.state.value + OPEN


def message_state(message: bytes) -> str:
    """The run state a run's message names (as the run event feed shows it)."""
    return message.decode(errors="replace").removesuffix(OPEN)


def leaves_open(message: bytes) -> bool:
    """Whether a run's message says the change left the run without an outcome."""
    return message.endswith(_OPEN)


def queue_topic(queue: str) -> str:
    """The topic a queue's newly queued task instances are announced on."""
    return f"queue:{queue}"


# The topic of workers whose lease expired: every process ends their claims begun before they went quiet
# (``stateport.domain.engine.handoff.LostWorkers``).
LOST_TOPIC = "workers:lost"


def lost_message(worker_id: str, before: datetime) -> bytes:
    """A lost worker's message: when it went quiet (microseconds since the epoch), then its id."""
    return f"{round(before.timestamp() * 1_000_000)}:{worker_id}".encode()


def read_lost(message: bytes) -> tuple[str, datetime] | None:
    """A lost worker's id and when it went quiet, or None for a message that is not one."""
    micros, colon, worker_id = message.decode("utf-8", "replace").partition(":")
    if not colon or not worker_id or not micros.isascii() or not micros.isdigit():
        return None
    try:
        return worker_id, datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# The topic of deleted runs: every process forgets what it trusted of their task instances (the bindings of
# their tokens to state: ``StateService.forget_run``). Without it another process let a deleted run's token
# write its state for up to ``BINDING_TRUST_S``, and a run made again under the id inherited it (an
# outsider's find).
DELETED_TOPIC = "runs:deleted"


def deleted_message(dag_id: str, run_id: str) -> bytes:
    """A deleted run's message: its DAG and run ids, as a JSON pair (either may hold any character)."""
    return msgspec.json.encode([dag_id, run_id])


def read_deleted(message: bytes) -> tuple[str, str] | None:
    """A deleted run's DAG and run ids, or None for a message that is not one (a RECHECK)."""
    try:
        dag_id, run_id = msgspec.json.decode(message, type=tuple[str, str])
    except msgspec.DecodeError:  # a ValidationError too
        return None
    return dag_id, run_id


# The longest a try queued for later is held for its announcement (a longer delay: the re-checks find it).
MAX_DUE_DELAY_S = 3600.0


class Announcements:
    """What one change will announce once it commits: runs whose state moved, task instances queued."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], str] = {}  # the message of each (``run_message``)
        self.queues: dict[str, int] = defaultdict(int)
        # Runs this change leaves with their outcome, as the change wrote them (their rows locked).
        self.outcomes: dict[tuple[str, str], Run] = {}
        # Workers whose lease the change found expired, and when each went quiet.
        self.lost: dict[str, datetime] = {}
        # Queues with tries queued to be handed out later (a retry's delay), and the soonest of them.
        self.due: dict[str, datetime] = {}
        # Runs the change deleted (``DELETED_TOPIC``).
        self.deleted: list[tuple[str, str]] = []

    def worker_lost(self, worker_id: str, before: datetime) -> None:
        """``worker_id``'s lease expired: it went quiet before ``before`` (``WaitingClaims.lost``)."""
        self.lost[worker_id] = max(before, self.lost.get(worker_id, before))

    def run(self, run: Run) -> None:
        """``run`` as the change leaves it: the whole row, read under the change's lock and kept up to date
        by its writes (``RunUnit.run``), or just created."""
        self.runs[(run.dag_id, run.run_id)] = run_message(run)
        if run.outcome is not None:
            self.outcomes[(run.dag_id, run.run_id)] = run

    def gone(self, run: Run) -> None:
        """``run`` was deleted: its waiters re-read it and learn so, and every process forgets its task
        instances' bindings."""
        self.runs[(run.dag_id, run.run_id)] = run.state.value
        self.deleted.append((run.dag_id, run.run_id))

    def running(self, tis: Iterable[TaskInstance]) -> None:
        """The runs of claimed task instances are running now. A claim does not lock the run: whether the
        run has an outcome (a teardown is claimed after it) is not known, so the message does not say."""
        for ti in tis:
            self.runs[(ti.dag_id, ti.run_id)] = RunState.RUNNING.value

    def queued(self, tis: Iterable[TaskInstance]) -> None:
        for ti in tis:
            if ti.state is not TIState.QUEUED:
                continue
            if ti.not_before is None:
                self.queues[ti.queue] += 1
            else:  # announced when it is due: a claim woken now would find nothing to take
                due = self.due.get(ti.queue)
                self.due[ti.queue] = ti.not_before if due is None else min(due, ti.not_before)


class RunEvents:
    """Publishes committed changes and subscribes to queues, over the EventBus."""

    def __init__(self, bus: EventBus, clock: Clock | None = None) -> None:
        """``clock``: when a try queued for later is due (None: such tries are not announced, and claims
        find them at their next re-check)."""
        self.bus = bus
        self.clock = clock
        # Announced and not yet handed to the bus, in order; the task sending them while there are some.
        self._pending: list[tuple[str, bytes]] = []
        self._sender: asyncio.Task[None] | None = None
        self._outcome_receivers: list[Callable[[Run], None]] = []

    def tell_outcomes(self, receiver: Callable[[Run], None]) -> None:
        """Call ``receiver`` with each run whose outcome a change published here committed, as committed,
        before the bus carries the news: the waiters of this process need neither the bus's round trip nor
        a re-read of the run (the last hop of a trigger-and-wait). Only outcomes: a run's outcome is set
        once and ends its watch, so a read started before the commit is simply ignored; an intermediate
        state handed over could be overwritten by such a read's older snapshot (the run row has no
        version to order them by), so those keep going through the bus."""
        self._outcome_receivers.append(receiver)

    def stop_telling(self, receiver: Callable[[Run], None]) -> None:
        """``receiver`` hears no more outcomes (its waiters closed)."""
        if receiver in self._outcome_receivers:
            self._outcome_receivers.remove(receiver)

    async def publish(self, announced: Announcements) -> None:
        """Announce a committed change, without waiting for the bus: the messages are queued and a
        background task publishes them, in order. Never raises: the change is committed, and events are
        hints (a message the bus could not take is logged and lost; waiters re-check on their timer)."""
        # Lost workers first: a process hears that a worker is lost before it hears of the retry queued
        # for it, so that the lost worker's claims are ended before one of them could take that retry.
        for worker_id, before in announced.lost.items():
            self._pending.append((LOST_TOPIC, lost_message(worker_id, before)))
        # Deleted runs before their waiters hear: a waiter re-reading a deleted run is answered 404, and its
        # task instances' tokens must be refused by then too.
        for dag_id, run_id in announced.deleted:
            self._pending.append((DELETED_TOPIC, deleted_message(dag_id, run_id)))
        for (dag_id, run_id), message in announced.runs.items():
            self._pending.append((run_topic(dag_id, run_id), message.encode()))
        for queue, count in announced.queues.items():
            if count:
                self._pending.append((queue_topic(queue), str(count).encode()))
        self._send_pending()
        if announced.due and self.clock is not None:
            # A retry's delay: its queue is announced when the try is due, so that a claim waiting on it
            # takes it then, not at its next re-check (STATEPORT_CLAIM_RECHECK_S later: an outsider timed
            # retries 1.5 s late). Held by this process only: should it stop first, the re-check finds it.
            loop, now = asyncio.get_running_loop(), self.clock.now()
            for queue, due in announced.due.items():
                delay = min(max((due - now).total_seconds(), 0.0), MAX_DUE_DELAY_S)
                loop.call_later(delay, self._announce_due, queue)
        for run in announced.outcomes.values():
            for receiver in self._outcome_receivers:
                try:
                    receiver(run)
                except Exception:  # the change is committed: its other receivers and the bus still hear
                    log.exception("handing run %s of %s over failed", run.run_id, run.dag_id)

    def _announce_due(self, queue: str) -> None:
        self._pending.append((queue_topic(queue), b"1"))
        self._send_pending()

    def _send_pending(self) -> None:
        if self._pending and (self._sender is None or self._sender.done()):
            # A sender that is done (its callback not yet run) or was cancelled before its first step (the
            # loop closing: its body never ran) sends nothing more: a new one takes what is pending.
            sender = asyncio.get_running_loop().create_task(self._send(), name="stateport-run-events")
            sender.add_done_callback(self._sent)
            self._sender = sender

    def _sent(self, sender: asyncio.Task[None]) -> None:
        if self._sender is sender:
            self._sender = None

    async def flush(self) -> None:
        """Wait until everything announced so far has been handed to the bus (or failed to be)."""
        while (sender := self._sender) is not None and not sender.done():
            # asyncio.wait: neither the sender's cancellation nor its error is raised here.
            await asyncio.wait({sender})

    async def _send(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.bus.publish_many(batch)
            except Invalid:
                # Refused before anything was delivered: one at a time, so that the one message the bus
                # refuses does not take the others with it.
                for topic, message in batch:
                    await self._hint(topic, message)
            except Exception as exc:  # noqa: BLE001  # the bus is down: these hints are lost
                log.warning("could not publish %d event(s): %s", len(batch), exc)

    def queue(self, queue: str) -> AbstractAsyncContextManager[Subscription]:
        """Hear of task instances queued on ``queue`` while the context is open."""
        return self.bus.subscribe(queue_topic(queue))

    def listen_queue(self, queue: str, receiver: Receiver) -> None:
        """Call ``receiver`` with the announcements of ``queue`` (and every RECHECK) until
        ``unlisten_queue``: a receiver costs no task while idle (the claims parked in a process, see
        ``rechecks.py``)."""
        self.bus.listen(queue_topic(queue), receiver)

    def unlisten_queue(self, queue: str, receiver: Receiver) -> None:
        self.bus.unlisten(queue_topic(queue), receiver)

    def listen_run(self, dag_id: str, run_id: str, receiver: Receiver) -> str:
        """Call ``receiver`` with the run's changes until ``unlisten``; the topic, to unlisten with."""
        topic = run_topic(dag_id, run_id)
        self.bus.listen(topic, receiver)
        return topic

    def unlisten(self, topic: str, receiver: Receiver) -> None:
        self.bus.unlisten(topic, receiver)

    async def _hint(self, topic: str, message: bytes) -> None:
        try:
            await self.bus.publish(topic, message)
        except Exception as exc:  # noqa: BLE001  # events are hints: the change is committed already
            log.warning("could not publish %s: %s", topic, exc)
