"""The SQL schema, written once with SQLAlchemy Core for both SQLite and PostgreSQL.

Only types that asyncpg and sqlite3 return identically are used, because statements run on the drivers
directly (no SQLAlchemy type processing): times are BIGINT microseconds since the epoch (UTC, NULL =
never), UUIDs are 36-character strings, and JSON is TEXT holding the JSON text verbatim.

The migrations in ``migrations/versions`` are the history that builds this schema; a test checks that the
migrated database and this metadata agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.types import TypeEngine

from stateport.domain.fairness import CALLER_KEY_LENGTH


def name(length: int) -> TypeEngine[str]:
    """A string compared byte for byte: PostgreSQL's "C" collation, SQLite's default BINARY.

    Orderings (state keys, task ids) then agree on both dialects and with the Redis and S3 stores, and
    PostgreSQL's B-tree comparisons skip the locale.
    """
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


IDENT = 250  # dag_id, run_id, task_id, queue: the Identifier bound of the domain
ASSET_NAME = 1500
STATE_KEY = 512
VERSION = 64
STATUS = 32
HOSTNAME = 1000  # as the heartbeat body bounds it

metadata = sa.MetaData()

dags = sa.Table(
    "dags",
    metadata,
    sa.Column("dag_id", name(IDENT), primary_key=True),
    sa.Column("current_version", name(VERSION), nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
)

# Versions are content-addressed and immutable, so a decoded spec may be cached for the process's life.
dag_versions = sa.Table(
    "dag_versions",
    metadata,
    sa.Column("dag_id", name(IDENT), sa.ForeignKey("dags.dag_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", name(VERSION), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    # 0006: 1, 2, 3 ... per DAG in the order versions were first registered (Airflow's version_number).
    sa.Column("version_number", sa.Integer, nullable=False, server_default="0"),
    sa.Index("uq_dag_versions_number", "dag_id", "version_number", unique=True),
)

# 0006: an integer id (Airflow's asset_id), given once and never reused (AUTOINCREMENT on SQLite, a sequence
# on PostgreSQL); the name stays unique, and asset state is stored by name.
assets = sa.Table(
    "assets",
    metadata,
    sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
    sa.Column("name", name(ASSET_NAME), nullable=False),
    sa.Column("uri", name(ASSET_NAME), nullable=True),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_assets"),
    sa.UniqueConstraint("name", name="uq_assets_name"),
    sa.UniqueConstraint("uri", name="uq_assets_uri"),
    sqlite_autoincrement=True,
)

# 0006: which task of each DAG's current version reads (inlet) or writes (outlet) which asset; replaced
# whenever a DAG's current version changes.
asset_references = sa.Table(
    "asset_references",
    metadata,
    sa.Column("dag_id", name(IDENT), sa.ForeignKey("dags.dag_id", ondelete="CASCADE"), nullable=False),
    sa.Column("task_id", name(IDENT), nullable=False),
    sa.Column("kind", name(16), nullable=False),
    sa.Column("asset_id", sa.Integer, sa.ForeignKey("assets.id"), nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("dag_id", "task_id", "kind", "asset_id", name="pk_asset_references"),
    sa.Index("ix_asset_references_asset_id", "asset_id"),
)

UNFINISHED = sa.text("state IN ('queued', 'running')")
# The fair-tag indexes' predicates (0014): "fair_tag >= 0" holds for every row (tags start at 0) and is
# there so that only statements that say so use these indexes. A claim (which does not) used to pick
# ix_task_instances_fair_queue on a table never analysed, reading and sorting the whole backlog of its
# queue for a claim of one (8.1 ms against 1.3 ms through ix_task_instances_claim, an outsider measured).
FAIR_QUEUED = sa.text("state = 'queued' AND fair_tag >= 0")
FAIR_RUNNING = sa.text("state = 'running' AND fair_tag >= 0")
UNFINISHED_WITH_DEADLINE = sa.text("state IN ('queued', 'running') AND deadline_at_us IS NOT NULL")
# 0015: the unfinished runs held back by max_active_runs, and those admitted (the hold-tag indexes).
HELD = sa.text("state IN ('queued', 'running') AND held_by IS NOT NULL")
ADMITTED = sa.text("state IN ('queued', 'running') AND held_by IS NULL")

dag_runs = sa.Table(
    "dag_runs",
    metadata,
    sa.Column("dag_id", name(IDENT), primary_key=True),
    sa.Column("run_id", name(IDENT), primary_key=True),
    sa.Column("dag_version", name(VERSION), nullable=False),
    sa.Column("conf", sa.Text, nullable=False),
    sa.Column("state", name(STATUS), nullable=False),
    sa.Column("run_after_us", sa.BigInteger, nullable=False),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    sa.Column("outcome", sa.Text, nullable=True),
    sa.Column("idempotency_key", name(IDENT), nullable=True),
    # 0005: the hash of the trigger request that used the idempotency key (sha256 hex).
    sa.Column("request_hash", sa.String(64), nullable=True),
    # 0006: when the run first became running, and last became success or failed (NULL: not so far).
    sa.Column("started_at_us", sa.BigInteger, nullable=True),
    sa.Column("ended_at_us", sa.BigInteger, nullable=True),
    # 0009: the W3C traceparent of the trigger's span (NULL: not traced).
    sa.Column("traceparent", sa.String(55), nullable=True),
    # 0008: when the run fails with reason deadline_exceeded unless finished; why it is held back (not
    # started: "max_active_runs"), NULL once admitted.
    sa.Column("deadline_at_us", sa.BigInteger, nullable=True),
    sa.Column("held_by", name(STATUS), nullable=True),
    # 0008: Airflow's priority_weight of the run's task instances.
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    # 0012: who triggered the run, as a digest of its token's kind and subject (``Run.caller``; NULL: not
    # known, as a run the CLI made).
    sa.Column("caller", sa.String(CALLER_KEY_LENGTH), nullable=True),
    # 0015: a held run's place among its DAG's held runs (``runs.hold_tag``): admissions take the lowest
    # first, so callers take turns; 0 for a run never held.
    sa.Column("hold_tag", sa.BigInteger, nullable=False, server_default="0"),
    # 0016: Airflow's note on the run (NULL: none).
    sa.Column("note", sa.Text, nullable=True),
    # "A version stays readable as long as a run refers to it": the database keeps that promise.
    sa.ForeignKeyConstraint(
        ["dag_id", "dag_version"],
        ["dag_versions.dag_id", "dag_versions.version"],
        name="fk_dag_runs_dag_versions",
    ),
    sa.UniqueConstraint("dag_id", "idempotency_key", name="uq_dag_runs_idempotency_key"),
    # 0003: retention looks for old runs by creation time, which never changes: an index on a column that
    # every run update changes (updated_at_us) would cost each update its heap-only (HOT) path.
    sa.Index("ix_dag_runs_created_at_us", "created_at_us"),
    # 0004: a DAG's runs are listed in the order they were created.
    sa.Index("ix_dag_runs_dag_id_created_at_us", "dag_id", "created_at_us"),
    # 0008: admission counts a DAG's unfinished runs, and the sweeper looks for runs past their deadline:
    # partial indexes, holding only unfinished runs (a few, however many finished ones are kept).
    sa.Index(
        "ix_dag_runs_unfinished",
        "dag_id",
        "state",
        "held_by",
        postgresql_where=UNFINISHED,
        sqlite_where=UNFINISHED,
    ),
    sa.Index(
        "ix_dag_runs_deadline",
        "deadline_at_us",
        postgresql_where=UNFINISHED_WITH_DEADLINE,
        sqlite_where=UNFINISHED_WITH_DEADLINE,
    ),
    # 0015: a held run's place reads its caller's last place, the lowest place held, and the highest place
    # admitted, each from a few rows of one of these; admissions take the held runs in place order.
    sa.Index(
        "ix_dag_runs_held",
        "dag_id",
        "hold_tag",
        "created_at_us",
        "run_id",
        postgresql_where=HELD,
        sqlite_where=HELD,
    ),
    sa.Index(
        "ix_dag_runs_held_caller", "dag_id", "caller", "hold_tag", postgresql_where=HELD, sqlite_where=HELD
    ),
    sa.Index("ix_dag_runs_admitted", "dag_id", "hold_tag", postgresql_where=ADMITTED, sqlite_where=ADMITTED),
)

# 0008: which server processes hold waiters of a run that named a disconnect policy (``on-disconnect``),
# and whether one of those asked to cancel; each process renews its rows' lease while it holds them. A row
# whose lease ran out belongs to a process that died (with its callers' connections).
run_waiters = sa.Table(
    "run_waiters",
    metadata,
    sa.Column("dag_id", name(IDENT), primary_key=True),
    sa.Column("run_id", name(IDENT), primary_key=True),
    sa.Column("holder", sa.String(36), primary_key=True),
    sa.Column("cancels", sa.Integer, nullable=False),
    sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    sa.Index("ix_run_waiters_holder", "holder"),
    sa.Index("ix_run_waiters_expires_at_us", "expires_at_us"),
)

task_instances = sa.Table(
    "task_instances",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("dag_id", name(IDENT), nullable=False),
    sa.Column("run_id", name(IDENT), nullable=False),
    sa.Column("task_id", name(IDENT), nullable=False),
    sa.Column("map_index", sa.Integer, nullable=False),
    sa.Column("try_number", sa.Integer, nullable=False),
    sa.Column("state", name(STATUS), nullable=False),
    sa.Column("queue", name(IDENT), nullable=False),
    sa.Column("lease_owner", name(IDENT), nullable=True),
    sa.Column("lease_expires_at_us", sa.BigInteger, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at_us", sa.BigInteger, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    # 0002: the run engine's lifecycle columns.
    sa.Column("result_ref", sa.Text, nullable=True),
    sa.Column("timeout_us", sa.BigInteger, nullable=True),
    sa.Column("retries_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at_us", sa.BigInteger, nullable=True),
    sa.Column("ended_at_us", sa.BigInteger, nullable=True),
    # 0008: minus the run's priority, so that a claim's ascending order (rank, then id) hands out the
    # highest priority first, then the oldest, from one ascending index.
    sa.Column("priority_rank", sa.Integer, nullable=False, server_default="0"),
    # 0011: a queued try is not claimed before then (a try the server gave back waits; NULL: at once).
    sa.Column("not_before_us", sa.BigInteger, nullable=True),
    # 0012: a queue's fair share between callers. ``caller`` is the run's ('' when not known), kept here so
    # that an index finds a caller's queued tries; ``fair_tag`` is a queued try's place in its queue and
    # priority (see ``fair_tag`` in runs.py): claims hand out the lowest tag first within a priority.
    sa.Column("caller", sa.String(CALLER_KEY_LENGTH), nullable=False, server_default=""),
    sa.Column("fair_tag", sa.BigInteger, nullable=False, server_default="0"),
    # 0017: the return value the Airflow Task SDK pushed for this running try (its XCom ``return_value``),
    # its result when the SDK reports success; cleared when the try ends (NULL: none). Never read with the
    # rest of the row (``rows.TI_COLUMNS``): it may be as large as a result.
    sa.Column("pushed_result", sa.Text, nullable=True),
    # 0020: the caller key (``fairness.caller_key``) of the token whose claim a running try was handed out
    # to; a claim that names what its worker runs is handed back only its own token's (NULL: none's).
    sa.Column("lease_claimant", sa.String(CALLER_KEY_LENGTH), nullable=True),
    sa.ForeignKeyConstraint(
        ["dag_id", "run_id"],
        ["dag_runs.dag_id", "dag_runs.run_id"],
        ondelete="CASCADE",
        name="fk_task_instances_dag_runs",
    ),
    sa.UniqueConstraint(
        "dag_id", "run_id", "task_id", "map_index", "try_number", name="uq_task_instances_try"
    ),
    # 0007: a claim looks for the oldest queued task instances of a queue, of the DAGs it names if it does
    # (replaces ix_task_instances_state_queue, its prefix); 0008: highest priority first, then oldest;
    # 0012: then the lowest fair tag (callers take turns), then oldest.
    sa.Index("ix_task_instances_claim", "state", "queue", "dag_id", "priority_rank", "fair_tag", "id"),
    # 0012: a new queued try's fair tag reads the lowest tag queued in its queue and priority, and the
    # highest of its caller's there: partial indexes, holding queued tries only (what is waiting, not
    # every try ever run). The predicate is written as the statements write it (SQLite needs it verbatim);
    # 0014: fenced (FAIR_QUEUED).
    sa.Index(
        "ix_task_instances_fair_queue",
        "queue",
        "priority_rank",
        "fair_tag",
        postgresql_where=FAIR_QUEUED,
        sqlite_where=FAIR_QUEUED,
    ),
    sa.Index(
        "ix_task_instances_fair_caller",
        "queue",
        "priority_rank",
        "caller",
        "fair_tag",
        postgresql_where=FAIR_QUEUED,
        sqlite_where=FAIR_QUEUED,
    ),
    # 0013: and the highest tag running there (where the queue is: the lowest queued was held back by a
    # try no claim takes).
    sa.Index(
        "ix_task_instances_fair_running",
        "queue",
        "priority_rank",
        "fair_tag",
        postgresql_where=FAIR_RUNNING,
        sqlite_where=FAIR_RUNNING,
    ),
    # The sweeper looks for running task instances whose lease has expired.
    sa.Index("ix_task_instances_state_lease", "state", "lease_expires_at_us"),
)

# 0018: the XComs a running try pushed under keys other than ``return_value`` (which is ``pushed_result``),
# one row per key; a try's going takes them with it.
task_xcoms = sa.Table(
    "task_xcoms",
    metadata,
    sa.Column("ti_id", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.ForeignKeyConstraint(
        ["ti_id"], ["task_instances.id"], ondelete="CASCADE", name="fk_task_xcoms_task_instances"
    ),
)

# 0010: the worker registry (docs/console.md, Workers): one row per worker id seen by a claim or a
# heartbeat, upserted by each server process at most once per flush interval per worker (not per claim:
# the claim path is hot), and pruned once unseen for a day. No foreign key: a worker is not a run's.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", name(IDENT), primary_key=True),
    sa.Column("hostname", sa.String(HOSTNAME), nullable=True),
    sa.Column("pid", sa.BigInteger, nullable=True),
    # The queues of its last claim, a JSON list.
    sa.Column("queues", sa.Text, nullable=False, server_default="[]"),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    sa.Column("last_seen_us", sa.BigInteger, nullable=False),
    sa.Column("last_claim_us", sa.BigInteger, nullable=True),
    sa.Column("last_heartbeat_us", sa.BigInteger, nullable=True),
    # The console lists the recently seen; the cleanup deletes the long unseen.
    sa.Index("ix_workers_last_seen_us", "last_seen_us"),
)

# 0019: what the servers of one database must share, as the last to start found it (a fingerprint of its
# token key, its blob store's mark): a server whose differ says so at start (stateport.domain.deployment).
deployment_marks = sa.Table(
    "deployment_marks",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

# The state tables have no foreign key to runs or assets on purpose: the state store is swappable (Redis,
# S3) and task state must outlive, and be clearable independently of, the run metadata it belongs to.
task_state = sa.Table(
    "task_state",
    metadata,
    sa.Column("dag_id", name(IDENT), primary_key=True),
    sa.Column("run_id", name(IDENT), primary_key=True),
    sa.Column("task_id", name(IDENT), primary_key=True),
    sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", name(STATE_KEY), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    sa.Column("expires_at_us", sa.BigInteger, nullable=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Index("ix_task_state_expires_at_us", "expires_at_us"),
)

asset_state = sa.Table(
    "asset_state",
    metadata,
    sa.Column("asset_name", name(ASSET_NAME), primary_key=True),
    sa.Column("key", name(STATE_KEY), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    sa.Column("expires_at_us", sa.BigInteger, nullable=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Index("ix_asset_state_expires_at_us", "expires_at_us"),
)
