"""Coalesced re-checks of the claims parked in this process: one store query per group per interval.

A parked claim hears of work on its queues by their events, and looks at the store every
``claim_recheck_s`` anyway, since an event may be lost (a publish that failed in another process). Done
by each claim on its own timer, 2,000 claims parked on empty queues by one worker token took PostgreSQL
from 12 to 1,213 transactions a second: one claim statement per claim (and per queue) per interval, for
nothing. Claims parked on the same queues with the same filters (DAGs, skipped tasks) would all find the
same rows, so they form a *group*, and the group looks at the store for them: on each of its queues'
events, and when ``claim_recheck_s`` passes without one, it gives the *turn* to its oldest parked claim,
which runs its claim statement (for its own worker id and room, as any claim does). Only when that claim
found as many task instances as it had room for (more may be queued) does the turn pass on to the next
oldest, at once. So an idle group costs one statement per interval whatever the number of its claims, and
a busy one a statement per claim it serves (and one that finds the rest gone). A task queued by another
process still reaches a claim parked here within ``claim_recheck_s``, as before.

Events are heard by the group, not by each claim: one receiver per queue per group (``EventBus.listen``)
rather than a subscription per claim. A claim notes how many events its group had heard before it looked
at the store; if one arrived while it looked (and so before it parked), it looks again at once, as a
subscription buffered for it used to make it do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from stateport.domain.engine.events import RunEvents

# What a group is for: the queues in the claim's order (it claims from the first first), the DAGs it names
# (None: every DAG's) and the (dag_id, task_id) it skips. Claims that agree on these find the same rows.
GroupKey = tuple[tuple[str, ...], frozenset[str] | None, frozenset[tuple[str, str]]]


def group_key(
    queues: Sequence[str], dag_ids: Sequence[str] | None, skip_tasks: frozenset[tuple[str, str]]
) -> GroupKey:
    return tuple(dict.fromkeys(queues)), None if dag_ids is None else frozenset(dag_ids), skip_tasks


class Parked:
    """One claim in a group: told when it is its turn to look at the store, and tells how it went."""

    __slots__ = ("_answer", "gone", "group", "parked", "seen", "turn")

    def __init__(self, group: RecheckGroup) -> None:
        self.group = group
        # Set when it is this claim's turn (or the claim should look because of an event it missed).
        self.turn = asyncio.Event()
        # Waiting for its turn: only a parked claim is given one (another is looking at the store already).
        self.parked = False
        self.gone = False
        # The group's count of events heard when this claim last began to look at the store.
        self.seen = group.heard
        self._answer: asyncio.Future[bool] | None = None

    def looking(self) -> None:
        """The claim is about to look at the store: events heard from now on may be for rows it misses."""
        self.seen = self.group.heard
        self.turn.clear()

    def park(self) -> None:
        """The claim waits: if an event arrived since it began to look, it looks again at once."""
        self.parked = True
        if self.group.heard != self.seen:
            self.turn.set()

    def looked(self, *, more: bool) -> None:
        """The claim looked at the store (``more``: it filled its room, so more may be queued), or left
        without looking (``more`` True: the next one must look instead); the group's round goes on."""
        self.parked = False
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result(more)

    def give_turn(self) -> asyncio.Future[bool]:
        self._answer = asyncio.get_running_loop().create_future()
        self.turn.set()
        return self._answer


class RecheckGroup:
    """The claims parked on one ``GroupKey``, and the task that gives them turns. Its receiver of the
    queues' events (``deliver``) only counts the event and wakes that task: it never looks itself."""

    def __init__(self, key: GroupKey, events: RunEvents, period: Callable[[RecheckGroup], float]) -> None:
        """``period``: how long the group waits for an event before it looks anyway (asked each time)."""
        self.key = key
        self.events = events
        self.period = period
        # Oldest first; a dict, so that any of thousands leaves at no cost.
        self.members: dict[Parked, None] = {}
        # The callers whose claims wait here (how many each: ``ClaimRechecks``), and how many claims of no
        # caller wait here.
        self.callers: set[str] = set()
        self.anonymous = 0
        self.heard = 0
        self._wake = asyncio.Event()
        self._retime = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def deliver(self, message: bytes) -> None:
        self.heard += 1
        self._wake.set()

    def start(self) -> None:
        for queue in self.key[0]:
            self.events.listen_queue(queue, self)
        self._task = asyncio.create_task(self._run(), name=f"claim re-checks {self.key[0]!r}")

    def stop(self) -> None:
        for queue in self.key[0]:
            self.events.unlisten_queue(queue, self)
        if self._task is not None:
            self._task.cancel()

    def retime(self) -> None:
        """Its period may be shorter now (a less loaded caller waits here too): measure it again."""
        self._retime.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # No event for a whole interval: look anyway, one may have been lost.
            began = loop.time()
            while not self._wake.is_set() and (left := began + self.period(self) - loop.time()) > 0:
                self._retime.clear()
                await first_set(left, self._wake, self._retime)
            self._wake.clear()
            await self._round()

    async def _round(self) -> None:
        """Turns, oldest parked claim first, until one finds less than its room (the rest is gone)."""
        for member in list(self.members):
            if member.gone or not member.parked:
                continue  # gone, or looking at the store on its own right now
            if not await member.give_turn():
                return


async def first_set(timeout: float, *events: asyncio.Event | None) -> None:  # noqa: ASYNC109  # a wait's length
    """Return when one of ``events`` (None: none) is set, or after ``timeout`` seconds."""
    waits = [asyncio.ensure_future(e.wait()) for e in events if e is not None]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


class CallerGroups:
    """The groups one caller's parked claims wait in, and the queue scans they cost per interval."""

    __slots__ = ("claims", "scans")

    def __init__(self) -> None:
        self.claims: dict[GroupKey, int] = {}
        self.scans = 0


def scans(key: GroupKey) -> int:
    """The claim statements one look of a group runs: one per queue (none for a claim naming no DAG)."""
    return 0 if key[1] is not None and not key[1] else len(key[0])


class ClaimRechecks:
    """The groups of the claims parked in this process (``rechecks.py``), and what each caller's cost.

    Claims that agree cost one look per interval however many they are, but each group of its own costs
    one: a caller varying its queues or filters (a queue name per claim) would bring back a statement
    per claim. So a caller's parked claims cost at most ``max_per_caller`` queue scans per interval here:
    past that, the groups only it waits in look that much less often (``period``; events still wake them
    at once). Its claims are never refused for it: a fleet sharing one token whose workers skip different
    tasks (a rolling deploy) forms a group a worker, and a refusal would leave them without work."""

    def __init__(self, events: RunEvents, period_s: float, max_per_caller: int) -> None:
        self.events = events
        self.period_s = period_s
        self.max_per_caller = max_per_caller
        self._groups: dict[GroupKey, RecheckGroup] = {}
        self._callers: dict[str, CallerGroups] = {}

    @contextmanager
    def joined(self, key: GroupKey, caller: str | None = None) -> Iterator[Parked]:
        """A claim's place in its group while the context is open (the group starts with its first claim
        and ends with its last), counted as ``caller``'s (None: no one's)."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = RecheckGroup(key, self.events, self.period)
            group.start()
        member = Parked(group)
        group.members[member] = None
        self._count(key, caller, group)
        try:
            yield member
        finally:
            member.gone = True
            member.looked(more=True)  # a turn it held passes on
            del group.members[member]
            self._uncount(key, caller, group)
            if not group.members:
                del self._groups[key]
                group.stop()

    def period(self, group: RecheckGroup) -> float:
        """How long ``group`` waits for an event before it looks anyway: ``period_s``, stretched by the
        load of the least loaded caller waiting in it (claims of no caller count as none), so that a
        caller's groups of its own cost it ``max_per_caller`` queue scans per interval at most, and a
        group others wait in too is looked at for them as often as ever."""
        if group.anonymous or not group.callers:
            return self.period_s
        load = min(self._callers[caller].scans for caller in group.callers)
        return self.period_s * max(1.0, load / self.max_per_caller)

    def _count(self, key: GroupKey, caller: str | None, group: RecheckGroup) -> None:
        if caller is None:
            group.anonymous += 1
            group.retime()
            return
        if caller not in group.callers:
            group.callers.add(caller)
            group.retime()
        mine = self._callers.get(caller) or CallerGroups()
        if key not in mine.claims:
            mine.scans += scans(key)
        mine.claims[key] = mine.claims.get(key, 0) + 1
        self._callers[caller] = mine

    def _uncount(self, key: GroupKey, caller: str | None, group: RecheckGroup) -> None:
        if caller is None:
            group.anonymous -= 1
            return
        mine = self._callers[caller]
        left = mine.claims[key] - 1
        if left:
            mine.claims[key] = left
            return
        del mine.claims[key]
        group.callers.discard(caller)
        mine.scans -= scans(key)
        if not mine.claims:
            del self._callers[caller]
