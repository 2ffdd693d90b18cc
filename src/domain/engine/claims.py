"""Claims: workers long-poll for queued task instances and get each with its token, conf and inputs.

A claim looks at the store, then waits on its queues' events (and, open to hand-off, for an assignment by a
change in this process, see handoff.py), looking at the store again every ``claim_recheck_s`` anyway, so a
lost event delays a claim but never strands it. The claims parked on the same queues and filters look by
turns, one for them all while nothing is queued (rechecks.py), so that their number does not load the
store. One task instance that cannot be handed out never fails a claim: it is refused (failed with the
reason, or given back when the cause may pass) and the others go out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec
from msgspec import Raw, Struct
from msgspec.structs import replace

from stateport.domain.engine import progress
from stateport.domain.engine.advancing import RunAdvancer
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.events import Announcements, RunEvents
from stateport.domain.engine.handoff import Assignment, WaitingClaim, WaitingClaims
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.progress import NOT_HANDED_OUT, Latest
from stateport.domain.engine.rechecks import ClaimRechecks, Parked, first_set, group_key
from stateport.domain.engine.reporting import TaskReports
from stateport.domain.engine.reports import Failure, GivenBack, Report
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.errors import Invalid, StateportError, Unavailable, run_not_found
from stateport.domain.fairness import caller_key
from stateport.domain.inputs import task_inputs
from stateport.domain.models import Run, TaskInstance, TIState
from stateport.domain.ports import Clock, LeaseStore, RunStore, TokenClaims, TokenService
from stateport.domain.ports.observer import observer
from stateport.domain.results import stored_size
from stateport.domain.rules import DagPlan

log = logging.getLogger("stateport.engine")


class Claimed(Struct, frozen=True, kw_only=True):
    """A task instance handed to a worker: already running and leased to it."""

    ti: TaskInstance
    token: str
    conf: dict[str, Any]
    inputs: dict[str, Any]
    # The run's trace (``Run.traceparent``), for the worker's span of the task.
    traceparent: str | None = None
    # Handed out again: the worker missed the answer that handed it out (``ClaimBroker.claim``'s ``known``).
    again: bool = False


class Refusal(Struct, frozen=True, kw_only=True):
    """A claimed task instance the server could not hand out, and why."""

    ti: TaskInstance
    reason: str
    # True when the cause may pass (a store unavailable): the try is given back rather than failed.
    transient: bool


class _Room:
    """What a claim's answer may still carry (``EngineConfig.max_claim_bytes``): task instances in the
    order given (highest priority first) while their confs and inputs fit, and always the first, whatever
    its size. Once one does not fit, none after it goes either: a smaller one of a lower priority does not
    pass it."""

    def __init__(self, max_bytes: int) -> None:
        self.left = max_bytes
        self.taken = 0
        self.full = False

    def has(self, size: int) -> bool:
        """Whether ``size`` more bytes would fit (the first always does); once not, nothing does."""
        self.full = self.full or (self.taken > 0 and size > self.left)
        return not self.full

    def takes(self, size: int) -> bool:
        if not self.has(size):
            return False
        self.left -= size
        self.taken += 1
        return True


def _size(value: Any) -> int:
    """About the bytes ``value`` takes in a claim's answer, without encoding a stored text again: a text
    as stored (``msgspec.Raw``: a blob-backed result, or the items of one) by its length, a list by its
    items, anything else (a conf, an inline result: small) encoded."""
    if isinstance(value, Raw):
        return len(value)
    if isinstance(value, list):
        return 2 + sum(_size(item) + 1 for item in value)
    try:
        return len(msgspec.json.encode(value))
    except (RecursionError, msgspec.EncodeError, TypeError, ValueError):
        return 0  # it cannot be sent at all: the HTTP layer refuses its task instance


class _Upstream:
    """The results of a run's tasks that its claimed task instances take as inputs: each task's read once,
    when a task instance that takes it is about to go out, never for one put back before."""

    def __init__(
        self, results: ResultStore, plan: DagPlan, latest: Latest, claimed: Sequence[TaskInstance]
    ) -> None:
        self.results = results
        self.plan = plan
        self.succeeded: dict[str, list[TaskInstance]] = defaultdict(list)
        for ti in latest.values():
            if ti.state is TIState.SUCCESS:
                self.succeeded[ti.task_id].append(ti)
        # An expanded instance takes one element of its source's list: that value is decoded. The others
        # go out as the text they were stored as (``ResultStore.input_value``).
        self.elements = {plan.tasks[ti.task_id].expand for ti in claimed if ti.map_index >= 0}
        self.values: dict[str, dict[int, Any]] = {}
        self.unreadable: dict[str, Exception] = {}
        self._weights: dict[str, int] = {}

    def stored_size(self, ti: TaskInstance) -> int:
        """What the results ``ti`` takes weigh as stored: not counting the list it takes one element of."""
        expand = self.plan.tasks[ti.task_id].expand if ti.map_index >= 0 else None
        return sum(self._weight(up) for up in self.plan.upstream.get(ti.task_id, ()) if up != expand)

    def _weight(self, task_id: str) -> int:
        """The stored bytes of ``task_id``'s successful results (each task's counted once a claim)."""
        if task_id not in self._weights:
            self._weights[task_id] = sum(stored_size(t) for t in self.succeeded.get(task_id, ()))
        return self._weights[task_id]

    async def read(self, ti: TaskInstance) -> str | None:
        """Read the results ``ti`` takes (those not read yet); the first upstream task whose result cannot
        be read back (its error in ``unreadable``), or None."""
        for up in self.plan.upstream.get(ti.task_id, ()):
            if up in self.values or up in self.unreadable:
                continue
            got: dict[int, Any] = {}
            try:
                for t in self.succeeded.get(up, ()):
                    if up in self.elements:
                        got[t.map_index] = await self.results.value(t)
                    else:
                        got[t.map_index] = await self.results.input_value(t)
            except Exception as exc:  # noqa: BLE001  # refused, for the task instances that take it
                self.unreadable[up] = exc
                continue
            self.values[up] = got
        return next((up for up in self.plan.upstream.get(ti.task_id, ()) if up in self.unreadable), None)


def _refusal(ti: TaskInstance, what: str, exc: Exception) -> Refusal:
    detail = exc.detail if isinstance(exc, StateportError) else f"{type(exc).__name__}: {exc}"
    return Refusal(ti=ti, reason=f"{what}: {detail}", transient=isinstance(exc, Unavailable))


class ClaimBroker:
    """Serves claims over the LeaseStore, the EventBus and the claims waiting in this process."""

    def __init__(
        self,
        runs: RunStore,
        leases: LeaseStore,
        plans: Plans,
        results: ResultStore,
        events: RunEvents,
        waiting: WaitingClaims,
        advancer: RunAdvancer,
        reports: TaskReports,
        tokens: TokenService,
        clock: Clock,
        config: EngineConfig,
    ) -> None:
        self.runs = runs
        self.leases = leases
        self.plans = plans
        self.results = results
        self.events = events
        self.waiting = waiting
        self.advancer = advancer
        self.reports = reports
        self.tokens = tokens
        self.clock = clock
        self.config = config
        # The claims parked here look at the store by turns, a group at a time (rechecks.py).
        self.rechecks = ClaimRechecks(events, config.claim_recheck_s, config.max_claim_rechecks_per_caller)

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        max_tasks: int,
        wait_s: float,
        *,
        dag_ids: Sequence[str] | None = None,
        skip_tasks: Collection[tuple[str, str]] = (),
        abandoned: asyncio.Event | None = None,
        caller: str | None = None,
        known: Collection[uuid.UUID] | None = None,
    ) -> list[Claimed]:
        """Up to ``max_tasks`` queued task instances, waiting up to ``wait_s`` for one to be queued.

        ``dag_ids``: only task instances of these DAGs (those the worker has code for); None: of every
        DAG. The others stay queued for a claim that names their DAG (or none). ``skip_tasks``: none of
        these (dag_id, task_id), tasks the worker's copy of their DAG lacks (a newer version added them):
        they stay queued for a worker that has them.

        ``abandoned`` is set when the caller has gone (a worker that stopped while its long-poll was
        open): the wait ends, and anything claimed meanwhile is given back without using a retry, since
        no one would run it.

        ``caller``: who the claim's token names, for the re-checks its parked claims cost
        (``ClaimRechecks``: past its share, its groups look less often); None counts none. The task
        tokens handed out name it as their claimant (``TokenClaims.claimant``).

        ``known``: sent by a worker that may have missed an answer (a claim or a report whose answer did
        not reach it: it was frozen past its read timeout, or the connection broke), listing the tries it
        runs. The running tries leased to that worker which ``known`` lacks were handed to it in an answer
        it never read: those handed out to a claim of ``caller`` (the worker id is the claim's own word,
        which any worker token may name) are handed out again first (the same try, a new token), where
        they would have waited for their lease to expire and spent a retry (or failed their run).
        """
        started = asyncio.get_running_loop().time()
        if known is not None and max_tasks > 0 and caller is not None:
            again = await self._hand_out_again(worker_id, known, max_tasks, caller)
            if again:
                return again
        skipped = frozenset(skip_tasks)
        out = await self._claim(worker_id, queues, max_tasks, wait_s, dag_ids, skipped, abandoned, caller)
        observer().claim_polled(tuple(queues), asyncio.get_running_loop().time() - started, len(out))
        return out

    async def _claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        max_tasks: int,
        wait_s: float,
        dag_ids: Sequence[str] | None,
        skip_tasks: frozenset[tuple[str, str]],
        abandoned: asyncio.Event | None,
        caller: str | None,
    ) -> list[Claimed]:
        deadline = asyncio.get_running_loop().time() + wait_s
        since = self.clock.now()  # for ``WaitingClaims.cut``: the sweeper's times are the clock's
        with ExitStack() as stack:
            # A claim that waits joins its group before it first looks, so that no event falls between.
            parked = None
            if wait_s > 0:
                key = group_key(queues, dag_ids, skip_tasks)
                parked = stack.enter_context(self.rechecks.joined(key, caller))
            # Each wait is open to hand-offs afresh.
            waiting = partial(
                WaitingClaim,
                worker_id,
                queues,
                max_tasks,
                dag_ids,
                since=since,
                skip_tasks=skip_tasks,
                claimant=_key(caller),
            )
            look = True
            while True:
                if self._ended(worker_id, since, abandoned):
                    return []
                if look:
                    if parked is not None:
                        parked.looking()
                    tis = await self._claim_now(worker_id, queues, max_tasks, dag_ids, skip_tasks, caller)
                    if parked is not None:
                        parked.looked(more=len(tis) >= max_tasks)
                    if tis and self._ended(worker_id, since, abandoned):
                        await self.advancer.release(tis)
                        return []
                    if tis:
                        out = await self._hand_out(tis, caller)
                        if out:
                            return out
                        continue  # every one was refused (failed or given back): look for more at once
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or parked is None:
                    return []
                assigned = await self._park(parked, waiting(), remaining, abandoned)
                # It looks again only when its group gives it the turn (or it missed an event): not when
                # its wait ran out, nor when a hand-off to it was rolled back.
                look = parked.turn.is_set()
                if assigned and self._ended(worker_id, since, abandoned):
                    await self.advancer.release([a.ti for a in assigned])
                    return []
                if assigned:
                    out = await self._hand_out_assigned(assigned, caller)
                    if out:
                        return out
                    look = True  # every one was refused: look for more at once, as above

    async def _hand_out_again(
        self, worker_id: str, known: Collection[uuid.UUID], max_tasks: int, caller: str
    ) -> list[Claimed]:
        now = self.clock.now()
        until = now + timedelta(seconds=self.config.lease_s)
        # Only the tries handed out to this token's claims: the worker id is the claim's own word.
        tis = await self.leases.reclaim(
            worker_id, known, limit=max_tasks, now=now, lease_until=until, claimant=caller_key(caller)
        )
        for ti in tis:
            log.info(
                "task instance %s handed out again: worker %s missed the answer that handed it out",
                ti.id,
                worker_id,
            )
        return [replace(c, again=True) for c in await self._hand_out(tis, caller)] if tis else []

    def _ended(self, worker_id: str, since: datetime, abandoned: asyncio.Event | None) -> bool:
        """Whether the claim answers nothing more: its worker went away, or was found lost meanwhile."""
        return (abandoned is not None and abandoned.is_set()) or self.waiting.cut(worker_id, since)

    async def _park(
        self, parked: Parked, claim: WaitingClaim, wait_s: float, abandoned: asyncio.Event | None
    ) -> list[Assignment]:
        """Wait, open to hand-offs, up to ``wait_s`` or until the group gives the claim its turn to look
        at the store (``rechecks.py``); what was handed to it meanwhile."""

        async def until(assigned: asyncio.Event) -> None:
            parked.park()
            try:
                await first_set(wait_s, abandoned, assigned, parked.turn)
            finally:
                parked.parked = False

        return await self.waiting.wait(claim, until, self.advancer.release)

    async def report(
        self,
        ti_id: uuid.UUID,
        report: Report,
        *,
        worker_id: str,
        queues: Sequence[str],
        room: int,
        skip_tasks: Collection[tuple[str, str]] = (),
        caller: str | None = None,
    ) -> list[Claimed]:
        """Apply a worker's report and hand that worker, in the same change, up to ``room`` task instances
        of the run (of ``queues``) that the report makes ready; the answer to the report carries them
        (their tokens name ``caller``, the worker's token, as a claim's do).

        Otherwise each would be assigned to a claim waiting here, answered on the claim's own connection
        after the commit, and the worker would send a new claim (a statement of its own) before reporting
        the next task: on a chain, that is most of the time between two tasks. Everything else is as for
        a plain report: the report commits whether or not anything is handed out, and a task instance
        that cannot be handed out is refused as a claim refuses it.
        """
        ti = await self.reports.task_instance(ti_id)
        if ti is None or room <= 0:
            await self.reports.report_of_worker(ti_id, report)
            return []
        claim = WaitingClaim(
            worker_id,
            queues,
            room,
            run=(ti.dag_id, ti.run_id),
            skip_tasks=skip_tasks,
            claimant=_key(caller),
        )

        async def until(changed: asyncio.Event) -> None:
            await self.reports.report_of_worker(ti_id, report)

        assigned = await self.waiting.wait(claim, until, self.advancer.release, first=True)
        if not assigned:
            return []
        try:
            return await self._hand_out_assigned(assigned, caller)
        except Unavailable:
            # None could be handed out for now (each was given back): the report itself has committed.
            return []

    async def refuse(self, ti_id: uuid.UUID, reason: str) -> None:
        """Fail a claimed task instance whose answer to the worker could not be made (``reason``)."""
        ti = await self.reports.task_instance(ti_id)
        if ti is not None:
            await self._refuse([Refusal(ti=ti, reason=reason, transient=False)])

    async def _claim_now(
        self,
        worker_id: str,
        queues: Sequence[str],
        max_tasks: int,
        dag_ids: Sequence[str] | None,
        skip_tasks: frozenset[tuple[str, str]],
        caller: str | None,
    ) -> list[TaskInstance]:
        if dag_ids is not None and not dag_ids:
            return []
        now = self.clock.now()
        until = now + timedelta(seconds=self.config.lease_s)
        claimed: list[TaskInstance] = []
        listed = list(dict.fromkeys(queues))
        if len(listed) > 1:
            # Each queue's claim is a write statement carrying the claim's DAG ids and skipped tasks:
            # 100 queues of a claim with 2,000 of them cost seconds of the database's time, whoever else
            # waited (an outsider's find). One read tells which queues have work; the others cost nothing.
            ready = await self.leases.ready_queues(listed, now)
            listed = [queue for queue in listed if queue in ready]
        for queue in listed:
            left = max_tasks - len(claimed)
            if left <= 0:
                break
            claimed += await self.leases.claim(
                queue,
                worker_id,
                limit=left,
                now=now,
                lease_until=until,
                dag_ids=dag_ids,
                skip_tasks=skip_tasks,
                claimant=_key(caller),
            )
        for ti in claimed:
            observer().task_claimed(ti, worker_id, handed_off=False)
        if claimed:
            announced = Announcements()
            announced.running(claimed)
            await self.events.publish(announced)
        return claimed

    async def _hand_out(self, tis: list[TaskInstance], caller: str | None) -> list[Claimed]:
        """What the worker gets for the task instances it claimed (refusing those that cannot go out, and
        putting back those its answer has no room for), in the order the store handed them out (highest
        priority first, then callers in turn: ``LeaseStore.claim``)."""
        out: list[Claimed] = []
        refused: list[Refusal] = []
        over: list[TaskInstance] = []
        room = _Room(self.config.max_claim_bytes)
        try:
            by_run: dict[tuple[str, str], list[TaskInstance]] = defaultdict(list)
            for ti in tis:
                by_run[(ti.dag_id, ti.run_id)].append(ti)
            for (dag_id, run_id), claimed in by_run.items():
                if room.full:  # nothing more goes: its run is not even read
                    over += claimed
                    continue
                got, bad, left = await self._hand_out_run(dag_id, run_id, claimed, room, caller)
                out += got
                refused += bad
                over += left
        except BaseException:
            # Cancelled (the server stopping, the worker gone): no one will answer with these.
            await self.advancer.release(tis)
            raise
        await self._put_back(over)
        await self._refuse(refused)
        return _or_unavailable(out, refused)

    async def _hand_out_assigned(self, assigned: list[Assignment], caller: str | None) -> list[Claimed]:
        out: list[Claimed] = []
        refused: list[Refusal] = []
        over: list[TaskInstance] = []
        room = _Room(self.config.max_claim_bytes)
        try:
            for a in assigned:
                got, bad, left = await self._claimed(a.run, a.plan, a.latest, [a.ti], room, caller)
                out += got
                refused += bad
                over += left
        except BaseException:
            await self.advancer.release([a.ti for a in assigned])
            raise
        await self._put_back(over)
        await self._refuse(refused)
        return _or_unavailable(out, refused)

    async def _hand_out_run(
        self, dag_id: str, run_id: str, claimed: list[TaskInstance], room: _Room, caller: str | None
    ) -> tuple[list[Claimed], list[Refusal], list[TaskInstance]]:
        try:
            run = await self.runs.get_run(dag_id, run_id)
            if run is None:
                raise run_not_found(dag_id, run_id)
            plan = await self.plans.of_version(dag_id, run.dag_version)
            wanted = {up for ti in claimed for up in plan.upstream.get(ti.task_id, ())}
            latest = progress.latest(await self.runs.list_task_instances(dag_id, run_id)) if wanted else {}
        except Exception as exc:  # noqa: BLE001  # this run's task instances only: the others go out
            return [], [_refusal(ti, "its run or DAG version cannot be read", exc) for ti in claimed], []
        return await self._claimed(run, plan, latest, claimed, room, caller)

    async def _put_back(self, tis: Sequence[TaskInstance]) -> None:
        """Put claimed task instances no worker was told of back in their queues as they were (the answer
        had no room for them), and say so to the claims waiting on those queues. One that changed
        meanwhile (its run cancelled) stays as it is; one the store passed over, held by a change of its
        run, is given back once that change is done (a new try, no retry used), as all are if the store
        fails (else their leases expire)."""
        if not tis:
            return
        try:
            put_back = set(await self.leases.unclaim(tis, now=self.clock.now()))
        except Exception as exc:  # noqa: BLE001  # given back instead, best effort
            log.warning("could not put back %d claimed task instances: %s", len(tis), exc)
            await self.advancer.release(tis)
            return
        passed_over = [ti for ti in tis if ti.id not in put_back]
        if passed_over:
            await self.advancer.release([ti for ti in passed_over if await self._still_claimed(ti)])
        for ti in tis:
            if ti.id in put_back:
                observer().task_put_back(ti)
        announced = Announcements()
        announced.queued(replace(ti, state=TIState.QUEUED) for ti in tis if ti.id in put_back)
        await self.events.publish(announced)

    async def _still_claimed(self, ti: TaskInstance) -> bool:
        """Whether ``ti`` is still the running try its claim made (not ended by a change meanwhile)."""
        try:
            now = await self.runs.get_task_instance(ti.id)
        except Exception:  # noqa: BLE001  # its lease expires otherwise
            return False
        return now is not None and now.state is TIState.RUNNING and now.lease_owner == ti.lease_owner

    async def _claimed(
        self,
        run: Run,
        plan: DagPlan,
        latest: Latest,
        claimed: list[TaskInstance],
        room: _Room,
        caller: str | None,
    ) -> tuple[list[Claimed], list[Refusal], list[TaskInstance]]:
        """What a worker gets for claimed task instances of one run: tokens, the run's conf, inputs; the
        ones that cannot be handed out (an upstream result that cannot be read back), with why; and those
        the answer has no ``room`` for."""
        upstream = _Upstream(self.results, plan, latest, claimed)
        out: list[Claimed] = []
        refused: list[Refusal] = []
        over: list[TaskInstance] = []
        conf_size = _size(run.conf)
        for ti in claimed:
            # Its inputs are read only if what they weigh as stored would fit: a claim put back the tries
            # over a 20 MiB blob each after reading every one (an outsider's find).
            if not room.has(conf_size + upstream.stored_size(ti)):
                over.append(ti)
                continue
            bad = await upstream.read(ti)
            if bad is not None:
                what = f"the result of upstream task '{bad}' cannot be read"
                refused.append(_refusal(ti, what, upstream.unreadable[bad]))
                continue
            try:
                inputs = task_inputs(plan, ti.task_id, ti.map_index, upstream.values)
            except Exception as exc:  # noqa: BLE001  # this task instance only
                refused.append(_refusal(ti, "its inputs cannot be built", exc))
                continue
            if not room.takes(conf_size + sum(_size(value) for value in inputs.values())):
                over.append(ti)
                continue
            self.reports.remember(ti)
            token = self._task_token(ti, caller)
            out.append(Claimed(ti=ti, token=token, conf=run.conf, inputs=inputs, traceparent=run.traceparent))
        return out, refused, over

    async def renew_tokens(
        self, worker_id: str, ti_ids: Sequence[uuid.UUID], held: Sequence[TokenClaims], caller: str
    ) -> dict[uuid.UUID, str]:
        """Fresh tokens for those of ``ti_ids`` running on ``worker_id``'s lease whose own token the caller
        holds (``held``, verified whatever their expiry) and was claimed by it (its ``claimant``); the
        others are left out.

        A task-instance token is renewed by the answers to its own calls; one that expired while its worker
        could not reach the server (an outage longer than the token's life) would lose a try its worker
        still runs and heartbeats. Naming the worker was not enough: any worker token could name another
        fleet's worker (its id is listed by the worker registry) and take over the tries it ran, their
        state and their results (an outsider's find). The try's own token, and the claim that made it, are
        proof only its worker holds."""
        key = caller_key(caller)
        proven = {claims.subject for claims in held if claims.claimant == key}
        out: dict[uuid.UUID, str] = {}
        for ti_id in dict.fromkeys(ti_ids):
            if str(ti_id) not in proven:
                continue
            ti = await self.runs.get_task_instance(ti_id)
            if ti is None or ti.state is not TIState.RUNNING or ti.lease_owner != worker_id:
                continue
            out[ti_id] = self._task_token(ti, caller)
        return out

    def _task_token(self, ti: TaskInstance, caller: str | None) -> str:
        """A token for ``ti``'s try that outlives its lease and its timeout (a heartbeat renews it), naming
        the key of ``caller``, the token that claimed it, as its claimant."""
        ttl = max(self.config.token_ttl_s, self.config.lease_s, ti.timeout_s or 0.0)
        return self.tokens.mint_task_token(ti.id, ttl_s=ttl, claimant=_key(caller))

    async def _refuse(self, refused: Sequence[Refusal]) -> None:
        """End the tries the server could not hand out: given back when the cause may pass, else failed."""
        for r in refused:
            log.warning("task instance %s %s: %s", r.ti.id, NOT_HANDED_OUT, r.reason)
            report: Report = (
                GivenBack(reason=r.reason)
                if r.transient
                else Failure(error=f"{NOT_HANDED_OUT}: {r.reason}", retryable=False)
            )
            try:
                await self.reports.report(r.ti.id, report)
            except Invalid as exc:
                # No rules can be applied to its run (its DAG version cannot be read): end the run.
                await self.advancer.end_broken_run(r.ti, f"{NOT_HANDED_OUT}: {exc.detail}")
            except Exception as exc:  # noqa: BLE001  # best effort; the lease expires otherwise
                log.warning("could not end task instance %s: %s", r.ti.id, exc)


def _key(caller: str | None) -> str | None:
    """The key of the token that claims (``fairness.caller_key``), which its tries record and their task
    tokens carry; None for a claim of no token (the server's own)."""
    return None if caller is None else caller_key(caller)


def _or_unavailable(out: list[Claimed], refused: Sequence[Refusal]) -> list[Claimed]:
    """What a claim answers: the task instances handed out; or, when none was and some could not be for
    a cause that may pass, Unavailable (503), so that the worker backs off before it claims them again
    rather than spend their free give-backs in a burst."""
    transient = next((r for r in refused if r.transient), None)
    if out or transient is None:
        return out
    raise Unavailable(f"task instance {transient.ti.id} {NOT_HANDED_OUT} for now: {transient.reason}")
