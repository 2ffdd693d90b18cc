"""Ports: what the core needs from the outside world. Docstrings are the contract every adapter meets.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from msgspec import Struct

from stateport.domain.models import (
    Asset,
    AssetRef,
    AssetReference,
    Dag,
    JsonText,
    Outcome,
    Run,
    RunState,
    Scope,
    StateEntry,
    StatePage,
    TaskBinding,
    TaskInstance,
    TaskScope,
    TIState,
)
from stateport.domain.queries import AssetQuery, DagQuery, Page, RunQuery


class StoreCapabilities(Struct, frozen=True, kw_only=True):
    """What an adapter guarantees beyond the base contract; the contract suite skips on these, never on type.

    ``atomic_versions``: a put with ``if_version`` is an atomic compare-and-set.
    ``atomic_clear``: a clear removes every key of the scope in one step (no half-cleared state visible).
    ``native_expiry``: the store drops expired entries by itself, so ``purge_expired`` may find none.
    ``caller_clock``: expiry is judged at the ``now`` the caller passes. A remote adapter (the REST client)
    cannot do that: its server judges expiry by the server's clock, and ``now`` is ignored.
    ``conditional_delete``: ``delete`` honours ``if_version``. Without it a delete with ``if_version``
    raises Invalid and removes nothing (never an unconditional delete); only a REST client facing a server
    that does not declare it lacks it.
    """

    atomic_versions: bool = True
    atomic_clear: bool = True
    native_expiry: bool = False
    caller_clock: bool = True
    conditional_delete: bool = True


class StateStore(Protocol):
    """Durable key/value state per task scope and per asset scope.

    An entry whose ``expires_at`` is at or before ``now`` is absent for every operation: never returned,
    never counted, replaced by a put as if it did not exist. Keys are opaque strings of 1..512 characters and
    may contain ``/``; a value is JSON text (without surrounding whitespace) stored and returned byte for
    byte. Scopes never see each other's keys: two TaskScopes that differ only in ``map_index`` are two
    scopes.
    """

    capabilities: StoreCapabilities

    async def get(self, scope: Scope, key: str, *, now: datetime) -> StateEntry | None:
        """Return the live entry, or None if the key is missing or expired."""
        ...

    async def put(
        self,
        scope: Scope,
        key: str,
        value: JsonText,
        *,
        expires_at: datetime | None,
        now: datetime,
        if_version: int | None = None,
    ) -> StateEntry:
        """Create or replace the entry and return it; ``updated_at`` is ``now``.

        The version is 1 for a new (or expired) key and the previous version plus one otherwise.
        With ``if_version`` the put succeeds only if the live entry has that version, where 0 means
        "the key must be absent"; otherwise it raises VersionMismatch and changes nothing. Once this
        returns, the write is durable.
        """
        ...

    async def delete(self, scope: Scope, key: str, *, now: datetime, if_version: int | None = None) -> bool:
        """Remove the key; return whether a live entry was removed. A missing key is not an error.

        With ``if_version`` the delete happens only if the live entry has that version (0: "the key must
        be absent", so nothing is removed and False is returned); otherwise it raises VersionMismatch and
        changes nothing. The check and the delete are one step where ``atomic_versions`` is declared. A
        store without ``conditional_delete`` raises Invalid for any ``if_version`` and changes nothing.
        """
        ...

    async def clear(self, scope: Scope, *, all_map_indices: bool = False) -> int:
        """Remove every key of the scope and return how many were removed (expired ones may be counted).

        With ``all_map_indices`` a TaskScope's ``map_index`` is ignored, clearing every map index of the
        task in that run. The flag has no effect on an AssetScope.
        """
        ...

    async def list(self, scope: Scope, *, now: datetime, limit: int = 100, offset: int = 0) -> StatePage:
        """Return the scope's live entries ordered by key, ``limit`` from ``offset``, and their total."""
        ...

    async def purge_expired(self, *, now: datetime, batch_size: int = 1000) -> int:
        """Delete expired entries of every scope and return how many were deleted."""
        ...


class DagStore(Protocol):
    """DAG versions, the assets they declare, and which tasks of each DAG's current version declare
    which asset."""

    async def put_dag(self, dag: Dag, assets: Sequence[AssetRef]) -> Dag:
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

    async def get_dag(self, dag_id: str, version: str | None = None) -> Dag | None:
        """Return the current version of the DAG (or the given version), or None."""
        ...

    async def list_dags(self, query: DagQuery) -> Page[Dag]:
        """A page of DAGs, each at its current version, filtered by the query's patterns on the dag_id,
        in its order, ``limit`` from ``offset``; and how many DAGs match."""
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

    async def create_run(self, run: Run, task_instances: Sequence[TaskInstance]) -> Run:
        """Atomically create the run and its initial task instances and return the run.

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

    async def query_runs(self, query: RunQuery) -> Page[Run]:
        """A page of runs as the query filters them (its DAG, or every DAG's when ``dag_id`` is None; its
        states, time ranges and run_id patterns), in its order, ``limit`` from ``offset``; and how many
        runs match. Order keys: ``id`` is the order runs were created in (dag_id, then run_id, break
        ties), ``duration`` is ``ended_at - started_at``, ``logical_date`` and ``partition_date`` order
        nothing; a missing value sorts after every value ascending, before every value descending."""
        ...

    async def delete_run(self, dag_id: str, run_id: str, *, states: frozenset[RunState]) -> bool:
        """Delete the run and every try of its task instances if the run is in one of ``states`` (in any
        state when empty), in one step; return whether it was deleted. Its task state is not touched:
        state outlives run metadata."""
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

    def lock_run(self, dag_id: str, run_id: str) -> AbstractAsyncContextManager[RunUnit]:
        """A write transaction holding the run exclusively; NotFound if the run does not exist.

        Opening it waits while another ``lock_run`` of the same run is open (in any process), so changes
        made through the unit are decided on what it reads. Everything done through the unit commits
        together when the block ends, and nothing of it if the block raises.
        """
        ...


class RunUnit(Protocol):
    """One run, held exclusively inside ``RunStore.lock_run``; every change commits with the block.

    Every change is recorded as made at the ``now`` it is given; ``set_outcome`` and ``set_state`` set
    the run's "last changed" time, which retention compares. ``run`` is kept as the store now has it."""

    run: Run

    async def task_instances(self) -> list[TaskInstance]:
        """Every try of every task instance of the run, as ``list_task_instances`` orders them."""
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
        self, ti_id: uuid.UUID, from_state: TIState, worker_id: str, *, now: datetime, lease_until: datetime
    ) -> TaskInstance | None:
        """Compare-and-set, as a claim does: ``from_state`` -> running, leased to ``worker_id`` until
        ``lease_until`` and started now. Returns the task instance as it now is, None if it was not in
        ``from_state``."""
        ...

    async def add_task_instances(self, task_instances: Sequence[TaskInstance], *, now: datetime) -> None:
        """Add task instances to this run (expansions, next tries), created at ``now``; Conflict if one
        exists already."""
        ...

    async def set_outcome(self, outcome: Outcome, *, now: datetime) -> bool:
        """Set the run's outcome (the run last changed at ``now``) if it has none and return True; an
        outcome once set never changes."""
        ...

    async def set_state(self, state: RunState, *, now: datetime) -> bool:
        """Set the run's state (the run last changed at ``now``); return whether it changed.

        Becoming running sets ``started_at`` to ``now`` unless it is set; becoming success or failed sets
        ``ended_at`` to ``now``, and any other state clears it.
        """
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
        self, queue: str, worker_id: str, *, limit: int, now: datetime, lease_until: datetime
    ) -> list[TaskInstance]:
        """Atomically move up to ``limit`` queued task instances of ``queue`` to running and return them.

        Oldest first. Each becomes ``running`` with ``lease_owner`` = worker_id, ``lease_expires_at`` =
        lease_until and ``started_at`` = now; the runs they belong to become running (last changed at
        ``now``, and started then unless started before) if they were queued. A queued task instance is
        handed to exactly one caller, however many claim at once (in any process).
        """
        ...

    async def extend_lease(self, ti_id: uuid.UUID, until: datetime, *, now: datetime) -> TIState | None:
        """Set a running task instance's lease expiry to ``until`` (a change made at ``now``) and return
        ``running``.

        A task instance that is not running is left unchanged and its state returned; None if it does
        not exist.
        """
        ...

    async def overdue(self, now: datetime, *, limit: int = 100) -> list[TaskInstance]:
        """Running task instances whose lease expired before ``now`` or whose ``started_at + timeout_s``
        is before ``now``, oldest first, at most ``limit``."""
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


@dataclass(frozen=True, slots=True)
class RunStores:
    """The run-metadata ports, implemented together by one backend (run metadata always lives in the SQL
    store). The composition root builds the set and hands each use case the ports it needs."""

    dags: DagStore
    runs: RunStore
    bindings: TaskBindings
    leases: LeaseStore
    retention: RetentionStore


class TokenClaims(Struct, frozen=True, kw_only=True):
    """A verified token. ``kind`` is ``task`` (Execution API) or ``api`` (public API).

    ``original_issued_at`` is when the first token of a chain of renewals was minted (API tokens carry it
    through renewals, so their total lifetime can be bounded); None for a token that was never renewed.
    """

    kind: str
    subject: str
    scopes: frozenset[str]
    expires_at: datetime
    issued_at: datetime
    original_issued_at: datetime | None = None


class TokenService(Protocol):
    """Mints and verifies signed tokens.

    ``verify_*`` raises Unauthenticated when no token was given and Forbidden for any token that is not
    valid for the audience (bad signature, wrong algorithm, expired, missing claims, wrong scope).
    """

    def mint_task_token(self, ti_id: uuid.UUID, *, ttl_s: float | None = None) -> str:
        """A task-instance token as Airflow issues it: ``sub`` = the TI id, ``scope`` = execution."""
        ...

    def mint_api_token(self, subject: str, scopes: frozenset[str], *, ttl_s: float | None = None) -> str:
        """A public API token carrying the given scopes."""
        ...

    def verify_task_token(self, token: str) -> TokenClaims:
        """Verify an Execution API token and return its claims."""
        ...

    def verify_api_token(self, token: str) -> TokenClaims:
        """Verify a public API token and return its claims."""
        ...

    def refresh_task_token(self, claims: TokenClaims) -> str:
        """A fresh task-instance token for verified ``claims``: same subject and scope, the configured
        lifetime from now. The caller decides whether the task instance may still have one."""
        ...

    def refresh_api_token(self, claims: TokenClaims, now: float) -> str | None:
        """A renewed API token for verified ``claims`` (same subject and scopes, its lifetime from ``now``),
        or None when it may not be renewed: never past the maximum lifetime counted from the first token of
        its chain (``original_issued_at``), nor when renewing would not extend it."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class Subscription(Protocol):
    """Messages published to one topic after the subscription began, in order, for one subscriber."""

    async def next(self, wait_s: float) -> bytes | None:
        """The next message, or None if none arrived within ``wait_s`` seconds."""
        ...


# The message a bus delivers to every subscriber after it reconnects (what was published meanwhile is lost).
RECHECK = b""


class EventBus(Protocol):
    """Publish/subscribe of small notifications (run changed, tasks ready) within and across processes.

    Delivery is at most once and may be lost (a dropped connection, a full buffer): subscribers treat a
    message as a hint to re-read the stores and re-check on a slow timer too, so a lost notification
    delays a wake-up but never loses it. ``publish`` never raises for want of subscribers. An empty message
    (``RECHECK``) means: re-check the stores.
    """

    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``topic``, in this and other processes."""
        ...

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[Subscription]:
        """Receive the topic's messages while the context is open."""
        ...


class BlobStream(Struct, frozen=True, kw_only=True):
    """A blob being read: its size in bytes, and its bytes in chunks as they are consumed."""

    size: int
    chunks: AsyncIterator[bytes]


class BlobStore(Protocol):
    """Large task results, stored whole by reference (never truncated)."""

    async def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (a relative path without ``..``) and return its reference."""
        ...

    async def get(self, ref: str) -> bytes:
        """The data of a reference returned by ``put``; NotFound if it is gone."""
        ...

    async def stream(self, ref: str, *, chunk_bytes: int = 1024 * 1024) -> BlobStream:
        """The blob's size and its bytes in chunks of at most ``chunk_bytes``, read as they are consumed
        (never the whole blob in memory); NotFound, raised here before any chunk, if it is gone."""
        ...

    async def url(self, ref: str, *, expires_s: int = 3600) -> str | None:
        """A URL a client can fetch the data from directly (presigned on S3), or None if there is none."""
        ...

    async def delete_tree(self, prefix: str) -> int:
        """Delete every blob whose name starts with ``prefix`` + ``/``; return how many were deleted."""
        ...
