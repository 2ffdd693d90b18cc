"""Run metadata: DAG versions and assets, runs and task instances, claims and leases, retention.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from stateport.domain.models import (
    Asset,
    AssetRef,
    AssetReference,
    DagVersion,
    DagVersionInfo,
    JsonText,
    Outcome,
    QueueBacklog,
    Run,
    RunState,
    TaskBinding,
    TaskInstance,
    TaskScope,
    TIState,
)
from stateport.domain.queries import AssetQuery, DagKey, DagQuery, Page, RunKey, RunQuery


class DagStore(Protocol):
    """DAG versions, the assets they declare, and which tasks of each DAG's current version declare
    which asset."""

    async def put_dag(self, dag: DagVersion, assets: Sequence[AssetRef]) -> DagVersion:
        """Store ``dag`` as the DAG's current version and register its assets; return the stored DAG.

        Putting a spec whose version (content hash) is already current changes nothing and returns it.
        A version stays readable as long as a run refers to it. A version stored for the first time gets
        the DAG's next ``version_number`` (1 for its first version; concurrent puts of one DAG get distinct
        numbers); a version stored before keeps its number and ``created_at``. An asset whose name exists
        keeps its name and id and takes the given uri (a reference by name alone keeps its uri); a new
        name gets a new id, never one used before; a uri already used by another asset raises Conflict and
        stores nothing. The asset references become the tasks of ``dag.spec`` that declare each asset
        (inlet or outlet): one that was already there keeps its ``created_at``. The times written are
        ``dag.created_at``.
        """
        ...

    async def get_dag(self, dag_id: str, version: str | None = None) -> DagVersion | None:
        """Return the current version of the DAG (or the given version), or None; UnreadableDag if its
        stored spec cannot be read."""
        ...

    async def list_dag_keys(self, query: DagQuery) -> Page[DagKey]:
        """A page of DAGs, each at its current version by its key and the size of its spec, filtered by the
        query's patterns on the dag_id, in its order, ``limit`` from ``offset``; and how many DAGs match."""
        ...

    async def get_dag_versions(self, keys: Sequence[tuple[str, str]]) -> list[DagVersionInfo]:
        """The DAG versions of these ``(dag_id, version)`` that exist, in the order of ``keys``: each a
        DagVersion, but one whose stored spec cannot be read as its DagVersionInfo alone (one such version
        must not hide the others)."""
        ...

    async def get_dag_infos(self, keys: Sequence[tuple[str, str]]) -> list[DagVersionInfo]:
        """What is stored about these versions but their specs (which are not read), those that exist, in
        the order of ``keys``."""
        ...

    async def get_asset(self, *, name: str | None = None, uri: str | None = None) -> Asset | None:
        """Return the asset with that name (or, if no name is given, that uri), or None."""
        ...

    async def get_asset_by_id(self, asset_id: int) -> Asset | None:
        """Return the asset with that id, or None."""
        ...

    async def list_assets(self, query: AssetQuery) -> Page[Asset]:
        """A page of assets filtered by the query (patterns on the name and on the uri as Airflow shows it,
        the DAGs declaring them, only those some current version declares), in its order, ``limit`` from
        ``offset``; and how many assets match."""
        ...

    async def asset_references(self, asset_ids: Sequence[int]) -> list[AssetReference]:
        """The references of those assets (unknown ids have none), ordered by asset id, dag_id, task_id,
        kind."""
        ...


class RunStore(Protocol):
    """Runs and their task instances: creating and reading them, and the run lock the engine changes
    them under."""

    async def create_run(
        self, run: Run, task_instances: Sequence[TaskInstance], *, max_queued: int | None = None
    ) -> Run:
        """Atomically create the run and its initial task instances and return the run.

        ``max_queued``: if the DAG already has that many runs in state ``queued``, raise Refused and create
        nothing; concurrent creations of one DAG's runs (in any process) count one after the other. A run
        holding ``run.idempotency_key`` is returned before counting.

        If a run with the same ``run_id`` exists for the DAG, raise Conflict. If ``run.idempotency_key``
        is set and a run of the DAG already has that key, create nothing and return that run (with the
        ``request_hash`` it was created with, so the caller can tell a retry from a different request).
        The run and its task instances are created, and last changed, at ``run.created_at``; the run's
        ``started_at`` and ``ended_at`` are stored as given.
        """
        ...

    async def get_run(self, dag_id: str, run_id: str) -> Run | None:
        """Return the run, or None."""
        ...

    async def list_runs(
        self, dag_id: str, *, states: frozenset[RunState], newest_first: bool, limit: int, offset: int
    ) -> tuple[list[Run], int]:
        """A page of the DAG's runs in ``states`` (every state if empty), ordered by creation (run_id breaks
        ties), skipping ``offset`` and at most ``limit``; and how many runs there are in those states."""
        ...

    async def query_run_keys(self, query: RunQuery) -> Page[RunKey]:
        """A page of runs as the query filters them (its DAG, or every DAG's when ``dag_id`` is None; its
        states, time ranges and run_id patterns), in its order, ``limit`` from ``offset``, each by its key
        and size; and how many runs match. Order keys: ``id`` is the order runs were created in (dag_id,
        then run_id, break ties), ``duration`` is ``ended_at - started_at``, ``logical_date`` and
        ``partition_date`` order nothing; a missing value sorts after every value ascending, before every
        value descending."""
        ...

    async def get_runs(self, keys: Sequence[tuple[str, str]]) -> list[Run]:
        """The runs of these ``(dag_id, run_id)`` that exist, in the order of ``keys``."""
        ...

    async def push_result(self, ti_id: uuid.UUID, result: JsonText) -> bool:
        """Keep ``result`` (checked JSON) as what the running try ``ti_id`` returned, replacing what was kept
        before; False (nothing kept) if the try is not running. Any end of the try clears it."""
        ...

    async def pushed_result(self, ti_id: uuid.UUID) -> JsonText | None:
        """What ``push_result`` kept for the try and no end of it cleared; None if nothing."""
        ...

    async def push_xcom(self, ti_id: uuid.UUID, key: str, value: JsonText, *, max_keys: int) -> bool:
        """Keep ``value`` (checked JSON) as the running try ``ti_id``'s XCom ``key`` (not ``return_value``:
        ``push_result``), replacing what was kept under it; False (nothing kept) if the try is not running,
        or if it would hold more than ``max_keys`` keys. Kept until the try's row goes (with its run)."""
        ...

    async def xcom(self, ti_id: uuid.UUID, key: str) -> JsonText | None:
        """What ``push_xcom`` kept for the try under ``key``; None if nothing."""
        ...

    async def task_xcoms(self, dag_id: str, run_id: str, task_id: str, key: str) -> dict[uuid.UUID, JsonText]:
        """What each try of the task's instances in the run kept under ``key``, by the try's id."""
        ...

    async def delete_xcom(self, ti_id: uuid.UUID, key: str) -> bool:
        """Forget the try's XCom ``key``; False if it had none."""
        ...

    async def set_note(self, dag_id: str, run_id: str, note: str | None) -> Run | None:
        """Set the run's note (None: none) and return the run as it is now; None if it does not exist.
        The note changes nothing the run does: it is not a change of the run (no lock, no event)."""
        ...

    async def delete_run(self, dag_id: str, run_id: str, *, states: frozenset[RunState]) -> bool:
        """Delete the run and every try of its task instances if the run is in one of ``states`` (in any
        state when empty), in one step; return whether it was deleted. Its task state is another store's
        (``RunService.delete_run`` has it cleared after)."""
        ...

    async def list_task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        """Return every try of every task instance of the run, ordered by task_id, map_index, try_number."""
        ...

    async def list_task_tries(self, dag_id: str, run_id: str, task_id: str) -> list[TaskInstance]:
        """Return every try of the task's instances in the run (every map index), ordered by map_index,
        try_number."""
        ...

    async def get_task_instance(self, ti_id: uuid.UUID) -> TaskInstance | None:
        """Return the task instance, or None."""
        ...

    async def task_instance_states(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, TIState]:
        """The state of each of ``ids`` that exists (missing ones are left out)."""
        ...

    async def held_runs(self, dag_id: str, *, limit: int) -> list[str]:
        """The run ids of the DAG's unfinished runs that are held back (``held_by`` set), in the order they
        are to be admitted, at most ``limit``: callers in turn (each held run is placed right after its
        caller's last one held, or, when its caller holds none, level with the next to be admitted), then
        the oldest (by creation, run_id breaking ties)."""
        ...

    async def dags_with_held_runs(self) -> list[str]:
        """The DAGs that have unfinished held runs."""
        ...

    async def oldest_queued(self, dag_id: str, run_id: str) -> tuple[TaskInstance, datetime] | None:
        """The run's task instance that has been ``queued`` longest, and when it became so (its last
        change); None when none is queued."""
        ...

    async def past_deadline(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        """``(dag_id, run_id)`` of unfinished runs whose ``deadline_at`` is ``now`` or earlier, earliest
        deadline first, at most ``limit``."""
        ...

    def lock_run(self, dag_id: str, run_id: str) -> AbstractAsyncContextManager[RunUnit]:
        """A write transaction holding the run exclusively; NotFound if the run does not exist.

        Opening it waits while another ``lock_run`` of the same run is open (in any process), so changes
        made through the unit are decided on what it reads. Everything done through the unit commits
        together when the block ends, and nothing of it if the block raises.
        """
        ...


class RunUnit(Protocol):
    """One run, held exclusively inside ``RunStore.lock_run``; every change commits with the block.

    Every change is recorded as made at the ``now`` it is given; ``settle`` sets the run's "last changed"
    time, which retention compares. ``run`` is kept as the store now has it."""

    run: Run

    async def task_instances(self) -> list[TaskInstance]:
        """Every try of every task instance of the run, as ``list_task_instances`` orders them."""
        ...

    async def held_task_instances(self) -> list[TaskInstance]:
        """``task_instances``, each try's row held until the unit ends, as they are once held. Claims take
        queued tries without the run's lock (and put back the ones their answer has no room for): they pass
        over held rows, and a claim under way is waited for. So a change that must reach every unfinished
        try (a stop) sees each as it is and none moves under it."""
        ...

    async def transition(
        self,
        ti_id: uuid.UUID,
        from_state: TIState,
        to_state: TIState,
        *,
        now: datetime,
        result: JsonText | None = None,
        result_ref: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Compare-and-set: move the task instance to ``to_state`` only if it is in ``from_state``.

        Sets ``result``, ``result_ref`` and ``error`` as given and, for a state in ``TRY_ENDED_STATES``,
        ``ended_at`` = now. Returns whether it changed; a task instance in another state (or missing) is
        left as it is.
        """
        ...

    async def assign(
        self,
        ti_id: uuid.UUID,
        from_state: TIState,
        worker_id: str,
        *,
        now: datetime,
        lease_until: datetime,
        claimant: str | None = None,
    ) -> TaskInstance | None:
        """Compare-and-set, as a claim does: ``from_state`` -> running, leased to ``worker_id`` until
        ``lease_until`` and started now, handed out to a claim of ``claimant`` (as ``LeaseStore.claim``
        records it). Returns the task instance as it now is, None if it was not in
        ``from_state``."""
        ...

    async def add_task_instances(self, task_instances: Sequence[TaskInstance], *, now: datetime) -> None:
        """Add task instances to this run (expansions, next tries), created at ``now``; Conflict if one
        exists already."""
        ...

    async def settle(
        self, outcome: Outcome | None, state: RunState | None, *, now: datetime
    ) -> tuple[bool, bool]:
        """Set the run's outcome, if one is given and the run has none (an outcome once set never changes),
        and its state, if one is given, in one write (the run last changed at ``now``); whether the outcome
        and whether the state changed.

        Becoming running sets ``started_at`` to ``now`` unless it is set; becoming success or failed sets
        ``ended_at`` to ``now``, and any other state clears it.
        """
        ...

    async def waited(self, *, now: datetime) -> bool:
        """Whether a server process holds waiters of the run that named a disconnect policy (a
        ``WaiterStore`` row with a lease after ``now``), as of this lock: a cancel that checks this in the
        same unit cannot miss a waiter that registered before it."""
        ...

    async def admit(self, max_active: int, *, now: datetime) -> bool:
        """Clear the held run's ``held_by`` if fewer than ``max_active`` unfinished runs of its DAG are
        admitted (held_by not set); return whether it was admitted. Admissions of one DAG's runs (in any
        process) count one after the other. A run that is not held is left as it is (False)."""
        ...


class TaskBindings(Protocol):
    """What state access is checked against: the scope and assets of a task instance, and which tasks
    exist."""

    async def get_binding(self, ti_id: uuid.UUID) -> TaskBinding | None:
        """Return the task instance's state scope and the asset names its task declares, or None."""
        ...

    async def task_exists(self, scope: TaskScope, *, any_map_index: bool = False) -> bool:
        """Whether any try of a task instance exists at the scope (at any map index when asked)."""
        ...


class LeaseStore(Protocol):
    """Claims of queued task instances, and the leases of the running ones."""

    async def claim(
        self,
        queue: str,
        worker_id: str,
        *,
        limit: int,
        now: datetime,
        lease_until: datetime,
        dag_ids: Sequence[str] | None = None,
        skip_tasks: Collection[tuple[str, str]] = (),
        claimant: str | None = None,
    ) -> list[TaskInstance]:
        """Atomically move up to ``limit`` queued task instances of ``queue`` to running and return them.

        Highest ``priority`` first, then callers in turn (``stateport.domain.fairness``: each caller's
        queued tries one after another, a caller with none queued level with the next to be handed out),
        then oldest, and returned in that order. Each becomes ``running`` with ``lease_owner`` =
        worker_id, ``lease_expires_at`` = lease_until and ``started_at`` = now; the runs they belong to
        become running (last changed at ``now``, and started then unless started before) if they were
        queued. A queued task instance is handed to exactly one caller, however many claim at once (in
        any process).

        ``dag_ids``: only task instances of these DAGs (none when it is empty); None: of every DAG.
        ``skip_tasks``: none of these tasks' (dag_id, task_id), which the worker has no code for. The
        others are left as they are.

        ``claimant``: the caller key (``fairness.caller_key``) of the token that claims, recorded with each
        lease for ``reclaim``; None records none (such a try is never handed out again).
        """
        ...

    async def unclaim(self, tis: Sequence[TaskInstance], *, now: datetime) -> list[uuid.UUID]:
        """Put claimed task instances that no worker was told of back in their queues, as they were before
        the claim: ``queued``, with no lease and no ``started_at`` (last changed at ``now``); the same try,
        so no try number is spent. Only those still ``running`` and leased to the ``lease_owner`` they were
        claimed by are put back (a try cancelled meanwhile stays as it is), and none that another change
        holds now (``RunUnit.held_task_instances``: it is passed over, never waited for); their ids are
        returned. Their runs stay as the claim left them.
        """
        ...

    async def reclaim(
        self,
        worker_id: str,
        known: Collection[uuid.UUID],
        *,
        limit: int,
        now: datetime,
        lease_until: datetime,
        claimant: str,
    ) -> list[TaskInstance]:
        """The running task instances leased to ``worker_id`` and handed out to a claim of ``claimant``
        (``claim``), whose ids ``known`` lacks and that have not changed since they were handed out (no
        heartbeat extended their lease), oldest first, at most ``limit``, handed out again as a claim hands
        out: leased to ``worker_id`` until ``lease_until``, started and last changed at ``now``; the same
        try.

        For a worker that may have missed the answer that handed them out (``known``: what it runs). A try
        whose lease a heartbeat extended is run by someone (another process that was given the same
        worker id, by mistake) and is left alone. A worker id is the claim's own word: a try handed out to
        another token's claim is never handed to this one, whatever worker id it names. Those that another
        change holds now (``RunUnit.held_task_instances``) are passed over, never waited for.
        """
        ...

    async def extend_lease(self, ti_id: uuid.UUID, until: datetime, *, now: datetime) -> TIState | None:
        """Set a running task instance's lease expiry to ``until`` (a change made at ``now``) and return
        ``running``.

        A task instance that is not running is left unchanged and its state returned; None if it does
        not exist.
        """
        ...

    async def overdue(self, now: datetime, *, limit: int = 100, leases: bool = True) -> list[TaskInstance]:
        """Running task instances whose lease expired before ``now`` (not with ``leases`` False) or whose
        ``started_at + timeout_s`` is before ``now``, oldest first, at most ``limit``."""
        ...

    async def ready_queues(self, queues: Sequence[str], now: datetime) -> set[str]:
        """Those of ``queues`` that hold a queued task instance a claim may take at ``now`` (its
        ``not_before`` passed): a claim of many queues asks first, and claims from those alone."""
        ...

    async def queue_backlogs(self, now: datetime) -> dict[str, QueueBacklog]:
        """The task instances queued at ``now``, by queue (queues with none are left out): how many, and
        since when the longest-waiting one a claim may take has been ready (its last change, queued, or
        its ``not_before`` when later). Read at each metrics scrape: a DAG whose workers are gone shows its
        age, though other DAGs' workers claim from the same queue all the time."""
        ...


class RetentionStore(Protocol):
    """Finding and deleting finished runs (retention)."""

    async def finished_runs(self, *, ended_before: datetime, limit: int) -> list[tuple[str, str]]:
        """``(dag_id, run_id)`` of finished runs (success or failed) last changed before ``ended_before``,
        oldest (by creation) first, at most ``limit``."""
        ...

    async def delete_run(self, dag_id: str, run_id: str, *, ended_before: datetime) -> bool:
        """Delete the run and its task instances if it is finished and last changed before ``ended_before``;
        return whether it was deleted. Its task state is not touched: state outlives run metadata."""
        ...


class WaiterStore(Protocol):
    """Which server processes (``holder``: an id each process draws at start) hold waiters of a run that
    named a disconnect policy, and whether one of them asked to cancel. Each row has a lease: a process
    renews its rows while it lives, so the rows of a process that died run out."""

    async def hold(self, holder: str, dag_id: str, run_id: str, *, cancels: bool, until: datetime) -> None:
        """Record (or update) that ``holder`` holds waiters of the run, ``cancels`` if one of them asked to
        cancel on disconnect, until ``until``. Serialised with ``RunUnit.waited`` on the same run: the
        write is seen by a lock of the run taken after it, and waits for one taken before it."""
        ...

    async def drop(self, holder: str, dag_id: str, run_id: str) -> None:
        """``holder`` holds no waiter of the run any more."""
        ...

    async def renew(self, holder: str, until: datetime) -> None:
        """Extend every row of ``holder`` until ``until``."""
        ...

    async def orphans(self, now: datetime, *, limit: int) -> list[tuple[str, str]]:
        """Delete the rows whose lease ran out before ``now`` (at most ``limit``) and return the runs
        (``(dag_id, run_id)``, each once) of those that asked to cancel."""
        ...


@dataclass(frozen=True, slots=True)
class RunStores:
    """The run-metadata ports, implemented together by one backend (run metadata always lives in the SQL
    store). The composition root builds the set and hands each use case the ports it needs."""

    dags: DagStore
    runs: RunStore
    bindings: TaskBindings
    leases: LeaseStore
    retention: RetentionStore
    waiters: WaiterStore
