"""Domain data: state scopes and entries, DAG specs, runs and task instances (msgspec Structs)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

# A stored value is JSON text (UTF-8 bytes), kept verbatim as the writer sent it. Keeping the text rather
# than a decoded object means a GET answers without decoding and re-encoding the value, and values written
# by Airflow's worker-side offload (``{"__airflow_state_ref__": ...}``) pass through byte for byte.
JsonText = bytes

MAX_IDENTIFIER = 250  # dag_id, run_id, task_id, queue: the columns of every store hold this many
MAX_ASSET_NAME = 1500  # an asset's name or uri, as in Airflow
MAP_INDEX_MAX = 2**31 - 1  # a 32-bit column
MAX_ASSET_ID = 2**31 - 1  # asset ids are positive 32-bit integers, as in Airflow: any other id names no asset
# The longest task timeout: a deadline this far ahead is still a time every store and datetime can hold.
MAX_NOTE_CHARS = 1000  # a run's note, as Airflow's (its DAGRunPatchBody and its note column)
MAX_TIMEOUT_S = 1e9  # about 31 years

# The decoder's bounds, as they were when stored specs were written: a spec read back must always decode.
# What a new spec must also satisfy (no control characters, timeouts a deadline can hold, asset names of
# bounded length) is checked by ``dags.validate_spec`` when it is registered.
Identifier = Annotated[str, Meta(min_length=1, max_length=MAX_IDENTIFIER, pattern=r"^[^/\x00]+$")]
AssetName = Annotated[str, Meta(min_length=1, max_length=MAX_ASSET_NAME)]


class TaskScope(Struct, frozen=True, kw_only=True):
    """The state of one task instance; every try of it shares this scope, so state survives retries."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1


class AssetScope(Struct, frozen=True, kw_only=True):
    """The state of one asset, addressed by its unique name."""

    name: str


Scope = TaskScope | AssetScope


class StateEntry(Struct, frozen=True, kw_only=True):
    """One stored key. ``version`` counts the puts since the key was (re)created and starts at 1."""

    key: str
    value: JsonText
    updated_at: datetime
    expires_at: datetime | None
    version: int


class Expiry(enum.Enum):
    """An expiry a writer leaves to the service. ``DEFAULT``: the configured default retention of task
    state (Airflow's ``expires_at: "default"`` and ``[state_store] default_retention_days``)."""

    DEFAULT = "default"


# What a state write may ask for: a time, never (None), or the default retention.
ExpiresAt = datetime | None | Literal[Expiry.DEFAULT]


class StatePage(Struct, frozen=True, kw_only=True):
    """A page of a scope's entries, ordered by key, and how many live entries the scope holds."""

    entries: list[StateEntry]
    total: int


class ListedEntry(Struct, frozen=True, kw_only=True):
    """An entry as a key listing (``StateStore.scan``) returns it: ``value`` is None when only keys were
    asked for, so a store need not read the values at all."""

    key: str
    value: JsonText | None
    updated_at: datetime
    expires_at: datetime | None
    version: int

    def entry(self) -> StateEntry:
        """The entry, of a listing that read values; ValueError for one listed without its value."""
        if self.value is None:
            raise ValueError(f"{self.key!r} was listed without its value")
        return StateEntry(
            key=self.key,
            value=self.value,
            updated_at=self.updated_at,
            expires_at=self.expires_at,
            version=self.version,
        )


class StateScan(Struct, frozen=True, kw_only=True):
    """A page of a key listing, in byte order of the keys, and whether live keys follow its last one."""

    entries: list[ListedEntry]
    more: bool


class KeyPage(Struct, frozen=True, kw_only=True):
    """What a caller of a key listing gets: a page and the cursor of the next (None: it was the last)."""

    entries: list[ListedEntry]
    next_cursor: str | None


# The most operations one state batch may hold.
MAX_BATCH_OPERATIONS = 100


class BatchGet(Struct, frozen=True, kw_only=True, tag="get"):
    """Read ``key`` as the batch has it so far; with ``if_version``, the batch goes on only if the live
    entry is at that version (0: only if the key is absent)."""

    key: str
    if_version: int | None = None


class BatchPut(Struct, frozen=True, kw_only=True, tag="put"):
    """Write ``key`` as ``StateStore.put`` does (``if_version`` likewise, 0: must be absent)."""

    key: str
    value: JsonText
    expires_at: datetime | None = None
    if_version: int | None = None


class BatchDelete(Struct, frozen=True, kw_only=True, tag="delete"):
    """Remove ``key`` as ``StateStore.delete`` does (``if_version`` likewise)."""

    key: str
    if_version: int | None = None


# One operation of a state batch: a closed set, dispatched with ``match``.
BatchOp = BatchGet | BatchPut | BatchDelete


class BatchResult(Struct, frozen=True, kw_only=True):
    """What one operation of a batch found or did: a get's live entry (None: absent), a put's new entry,
    or whether a delete removed a live entry (``deleted``; always False for a get or put)."""

    entry: StateEntry | None = None
    deleted: bool = False


# --- DAG specs -------------------------------------------------------------------------------------------


class TriggerRule(enum.StrEnum):
    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    ALL_FAILED = "all_failed"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    ALWAYS = "always"


class AssetRef(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An asset a task reads or writes; ``uri`` is a second, optional address for it."""

    name: AssetName
    uri: AssetName | None = None


# A DAG's tasks, a task's upstream, and a task's inlets or outlets, at most. The assets a DAG declares are
# rows its registration writes, one by one, holding the database's writer (SQLite has one): 100,000 of them
# held it for 20 s. Bounded where the body is decoded, before anything walks the lists.
MAX_TASKS = 10_000
MAX_TASK_ASSETS = 1_000


class TaskSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task of a DAG spec, with the defaults the wire contract fixes."""

    task_id: Identifier
    upstream: Annotated[list[Identifier], Meta(max_length=MAX_TASKS)] = msgspec.field(default_factory=list)
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    # Airflow's setup task: a teardown downstream of setups runs only if one of them succeeded (rules.py).
    setup: bool = False
    teardown: bool = False
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    # Seconds a failed try's retry waits before it is handed out (Airflow's retry_delay); None: at once.
    retry_delay_s: Annotated[float, Meta(ge=0, le=MAX_TIMEOUT_S)] | None = None
    timeout: Annotated[float, Meta(gt=0)] | None = None
    queue: Annotated[str, Meta(min_length=1, max_length=MAX_IDENTIFIER)] = "default"
    inlets: Annotated[list[str | AssetRef], Meta(max_length=MAX_TASK_ASSETS)] = msgspec.field(
        default_factory=list
    )
    outlets: Annotated[list[str | AssetRef], Meta(max_length=MAX_TASK_ASSETS)] = msgspec.field(
        default_factory=list
    )
    expand: Identifier | None = None
    # None means the default: every non-teardown task is a key task (its failure decides the outcome).
    key: bool | None = None

    @property
    def is_key(self) -> bool:
        return (not self.teardown) if self.key is None else self.key

    def asset_refs(self) -> list[AssetRef]:
        """Inlets then outlets, each as an AssetRef."""
        return [a if isinstance(a, AssetRef) else AssetRef(name=a) for a in (*self.inlets, *self.outlets)]

    def asset_names(self) -> frozenset[str]:
        return frozenset(ref.name for ref in self.asset_refs())


# The largest run limit a DAG may set (max_active_runs, max_queued_runs): far beyond any real deployment,
# and within a 32-bit count.
MAX_RUN_LIMIT = 1_000_000

# A DAG's params at most: each is checked at every trigger.
MAX_PARAMS = 1_000
ParamName = Annotated[str, Meta(min_length=1, max_length=MAX_IDENTIFIER)]


class ParamSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A DAG param, Airflow's ``Param``: a trigger's ``conf`` gives its value under its name, else it takes
    ``default``; the value must satisfy ``schema`` (JSON Schema, draft 2020-12: ``{"type": "integer",
    "minimum": 1}``), or the trigger is refused and no run made (``stateport.domain.params``). A param with
    no ``default`` must be given. ``description`` is for people."""

    default: Any | msgspec.UnsetType = msgspec.UNSET
    schema: dict[str, Any] = msgspec.field(default_factory=dict)
    description: Annotated[str, Meta(max_length=10_000)] | None = None


class DagSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a client registers with ``PUT /api/v2/dags/{dag_id}``.

    ``max_active_runs``: runs of the DAG started at once (Airflow's); later ones wait, queued, first in first
    out. ``max_queued_runs``: runs of the DAG that may be queued (not started yet) at once; a trigger past it
    is refused (429) before anything is written. ``deadline_s``: a run not finished this many seconds after
    its trigger fails with reason ``deadline_exceeded`` (a trigger's own ``deadline_s`` wins). None: no
    limit. Left out of the version hash when None, so specs registered before they existed keep theirs.
    """

    tasks: Annotated[list[TaskSpec], Meta(min_length=1, max_length=MAX_TASKS)]
    result_task: Identifier | None = None
    max_active_runs: Annotated[int, Meta(ge=1, le=MAX_RUN_LIMIT)] | None = None
    max_queued_runs: Annotated[int, Meta(ge=0, le=MAX_RUN_LIMIT)] | None = None
    deadline_s: Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    params: Annotated[dict[ParamName, ParamSpec], Meta(max_length=MAX_PARAMS)] | None = None

    def task(self, task_id: str) -> TaskSpec | None:
        for t in self.tasks:
            if t.task_id == task_id:
                return t
        return None


# The namespace of DAG version ids (uuid5): a fixed, random UUID, never to change.
DAG_VERSION_NAMESPACE = uuid.UUID("5f0c3b8e-2d71-4a8f-9b1e-7c4d2a6e9f13")


class DagVersionInfo(Struct, frozen=True, kw_only=True):
    """What is stored about one version of a DAG besides its spec: enough to show the runs that use it.

    ``created_at``: when this version was first registered. ``version_number``: its place among the DAG's
    versions in the order they were first registered (1, 2, 3 ...; Airflow's ``version_number``), given by
    the store and never changed; 0 on a DAG not stored yet.
    """

    dag_id: str
    version: str
    created_at: datetime
    version_number: int = 0

    @property
    def version_id(self) -> uuid.UUID:
        """Airflow's DAG version ``id``: a uuid5 of the dag_id and the content hash. A version is named by
        those two for ever (in every process, database and restore), so its id is computed from them: no
        column to keep, and no id can ever name another spec."""
        return dag_version_id(self.dag_id, self.version)


class DagVersion(DagVersionInfo, frozen=True, kw_only=True):
    """A registered DAG: one version of its spec, named by the content hash that versions it."""

    spec: DagSpec


def spec_of(dag: DagVersionInfo) -> DagSpec | None:
    """The version's spec; None when it was read without one (its stored spec cannot be read)."""
    return dag.spec if isinstance(dag, DagVersion) else None


def dag_version_id(dag_id: str, version: str) -> uuid.UUID:
    """The id of a DAG's version (see ``DagVersion.version_id``)."""
    return uuid.uuid5(DAG_VERSION_NAMESPACE, f"{dag_id}\x00{version}")


class Asset(Struct, frozen=True, kw_only=True):
    """A registered asset: declared by a DAG's inlets or outlets, addressed by its unique name (its state
    lives under the name) or, where Airflow does, by ``id``: a stable integer given by the store when the
    asset was first registered, never reused or changed.

    ``uri`` is None when no DAG declared one; Airflow shows the name there (``airflow_uri``).
    ``updated_at``: the last time a DAG version declaring it was registered.
    """

    id: int
    name: str
    uri: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def airflow_uri(self) -> str:
        """The uri as Airflow shows it: every Airflow asset has one, its name when none is given."""
        return self.name if self.uri is None else self.uri


class AssetUse(enum.StrEnum):
    INLET = "inlet"  # the task reads it: Airflow's consuming task
    OUTLET = "outlet"  # the task writes it: Airflow's producing task


class AssetReference(Struct, frozen=True, kw_only=True):
    """A task of a DAG's current version that declares the asset (Airflow's ``TaskInletAssetReference``
    or ``TaskOutletAssetReference``). ``created_at``: when a current version of the DAG first declared it
    so (continuously); ``updated_at``: the last registration that did."""

    asset_id: int
    dag_id: str
    task_id: str
    kind: AssetUse
    created_at: datetime
    updated_at: datetime


# --- runs and task instances ----------------------------------------------------------------------------


class RunState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class TIState(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"
    UP_FOR_RETRY = "up_for_retry"


# A task instance in one of these is done for good: no try of it follows, and the rules treat it as settled.
FINAL_STATES = frozenset({TIState.SUCCESS, TIState.FAILED, TIState.UPSTREAM_FAILED, TIState.SKIPPED})
# A try in one of these has ended, so its ``ended_at`` is set: the final states, and up_for_retry (the try
# ended, and a next try of its task instance follows).
TRY_ENDED_STATES = FINAL_STATES | {TIState.UP_FOR_RETRY}


class Outcome(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A run's answer, set once and never changed."""

    state: RunState
    results: dict[str, Any] = msgspec.field(default_factory=dict)
    failed_task: str | None = None
    reason: str | None = None
    # The failed task instance's error as its try reported it (``outcome.OUTCOME_ERROR_CHARS`` at most):
    # set when ``failed_task`` failed, not when it is upstream_failed or the run was stopped.
    error: str | None = None


class Run(Struct, frozen=True, kw_only=True):
    dag_id: str
    run_id: str
    dag_version: str
    conf: dict[str, Any]
    state: RunState
    run_after: datetime
    created_at: datetime
    outcome: Outcome | None = None
    idempotency_key: str | None = None
    # With an idempotency key: a hash of what the trigger asked for (dag_id, conf, run_id, run_after), so
    # that the key reused for a different request is told apart from a retry of the same one.
    request_hash: str | None = None
    # Set by the store: when the run first became running (Airflow's start_date), and when it last became
    # success or failed (Airflow's end_date; None again if it ever left those states).
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # The W3C traceparent of the trigger's span, handed to workers with each task instance (None: not
    # traced; docs/observability.md, traces).
    traceparent: str | None = None
    # When the run fails with reason ``deadline_exceeded`` unless it finished (None: never).
    deadline_at: datetime | None = None
    # Why a run that is not started yet waits, when it is held back on purpose (``HELD_MAX_ACTIVE``); None
    # once it was admitted.
    held_by: str | None = None
    # Airflow's priority_weight, given to every task instance of the run: claims hand out higher first.
    priority: int = 0
    # Who triggered the run (``fairness.caller_key`` of its token), so that callers take turns in a queue;
    # None when not known (a run the CLI made): such runs share one turn.
    caller: str | None = None
    # Airflow's note: free text a caller annotates the run with (``MAX_NOTE_CHARS``); None: no note.
    note: str | None = None


# Airflow's priority_weight is a 32-bit integer; the lowest one is left out so that its negation (the
# stores' claim rank) is one too.
PRIORITY_MIN, PRIORITY_MAX = -(2**31) + 1, 2**31 - 1

# A run held back because its DAG has ``max_active_runs`` runs going.
HELD_MAX_ACTIVE = "max_active_runs"


# gc=False: every report reads all of its run's task instances again (10,000 in a large run); untracked,
# they cost the garbage collector nothing (measured on such a run: 30 % fewer collections, 2.5 s less CPU
# over 100 reports). Sound because a task instance holds only scalars, so it can be in no reference cycle.
class TaskInstance(Struct, frozen=True, kw_only=True, gc=False):
    """One try of one task at one map index; a retry is a new TaskInstance with a new id."""

    id: uuid.UUID
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    state: TIState
    queue: str = "default"
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    # A running try's: the caller key (``fairness.caller_key``) of the token whose claim it was handed out
    # to (None: none known). A claim naming a worker id is handed back only its own token's tries.
    lease_claimant: str | None = None
    # The success result as JSON text. When ``result_ref`` is set the value itself lives in the BlobStore
    # and ``result`` holds its reference object (``{"__stateport_blob__": {...}}``, see results.py).
    result: JsonText | None = None
    result_ref: str | None = None
    error: str | None = None
    # Copied from the task's spec when the instance is created, so the sweeper can find overdue tries in
    # the store without reading specs.
    timeout_s: float | None = None
    # Failed tries before this one (a released try does not count): retries are allowed while below the
    # task's ``retries``.
    retries_used: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # The run's priority (Airflow's priority_weight): among queued task instances, claims take the highest
    # first, then callers in turn (``fairness``), then the oldest.
    priority: int = 0
    # A queued try is not handed out before then (None: at once): a try the server gave back waits.
    not_before: datetime | None = None

    @property
    def scope(self) -> TaskScope:
        return TaskScope(
            dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id, map_index=self.map_index
        )


class QueueBacklog(Struct, frozen=True, kw_only=True):
    """A queue's queued task instances now: how many, and since when the one that has waited longest of
    those a claim may take now (``TaskInstance.not_before`` passed) has been ready to be claimed; None when
    each of them waits to be handed out again later."""

    queued: int
    ready_since: datetime | None


class TaskBinding(Struct, frozen=True, kw_only=True):
    """What a task-instance token may touch: its own scope and the assets its task declares.

    A task instance id never changes its scope or its DAG version. ``superseded``: its task instance has a
    newer try (a retry, a give-back), which owns the state from then on; once true it stays true.
    """

    ti_id: uuid.UUID
    scope: TaskScope
    assets: frozenset[str]
    superseded: bool = False
