"""Airflow's facts: assets get stable integer ids and record which tasks declare them, DAG versions get
their number, runs when they started and ended.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

- ``assets`` is rebuilt with an integer primary key ``id`` (Airflow's ``asset_id``); the name stays unique,
  and asset state keeps being stored by name. Existing assets are numbered 1, 2, 3 ... in the order they
  were created (then by name), and new ones continue after the largest id: an id is never reused
  (AUTOINCREMENT on SQLite, a sequence on PostgreSQL). ``updated_at_us`` starts as ``created_at_us``.
- ``asset_references``: which task of each DAG's current version reads (inlet) or writes (outlet) which
  asset, filled here from the current specs.
- ``dag_versions.version_number``: 1, 2, 3 ... per DAG in the order versions were first registered.
- ``dag_runs.started_at_us`` and ``ended_at_us``: for existing runs, the first start of one of their task
  instances (runs no longer queued), and their last change (finished runs), the nearest facts kept.

Migrations are frozen history: tables are spelled out here, never imported from tables.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.types import TypeEngine

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _name(length: int) -> TypeEngine[str]:
    # Byte-wise comparison on PostgreSQL ("C" collation), as SQLite's default BINARY does.
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    _number_assets()
    _reference_assets()
    _number_versions()
    _time_runs()


def _number_assets() -> None:
    # A new primary key cannot be added in place on SQLite: the table is copied. The old one is renamed
    # first, and the new one's constraints are named, so that no name of the old one's (PostgreSQL's
    # assets_pkey, assets_uri_key) is taken while both exist.
    op.rename_table("assets", "assets_0005")
    op.create_table(
        "assets",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("name", _name(1500), nullable=False),
        sa.Column("uri", _name(1500), nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_assets"),
        sa.UniqueConstraint("name", name="uq_assets_name"),
        sa.UniqueConstraint("uri", name="uq_assets_uri"),
        sqlite_autoincrement=True,
    )
    op.execute(
        "INSERT INTO assets (id, name, uri, created_at_us, updated_at_us) "
        "SELECT row_number() OVER (ORDER BY created_at_us, name), name, uri, created_at_us, created_at_us "
        "FROM assets_0005"
    )
    op.drop_table("assets_0005")
    if op.get_bind().dialect.name == "postgresql":
        # The ids were given explicitly: the sequence continues after the largest (SQLite's AUTOINCREMENT
        # counter follows explicit ids by itself).
        op.execute(
            "SELECT setval(pg_get_serial_sequence('assets', 'id'), "
            "(SELECT coalesce(max(id), 0) + 1 FROM assets), false)"
        )


def _reference_assets() -> None:
    op.create_table(
        "asset_references",
        sa.Column("dag_id", _name(250), sa.ForeignKey("dags.dag_id", ondelete="CASCADE"), nullable=False),
        sa.Column("task_id", _name(250), nullable=False),
        sa.Column("kind", _name(16), nullable=False),
        sa.Column("asset_id", sa.Integer, sa.ForeignKey("assets.id"), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("dag_id", "task_id", "kind", "asset_id", name="pk_asset_references"),
    )
    op.create_index("ix_asset_references_asset_id", "asset_references", ["asset_id"])
    bind = op.get_bind()
    ids = {name: asset_id for asset_id, name in bind.execute(sa.text("SELECT id, name FROM assets"))}
    current = bind.execute(
        sa.text(
            "SELECT dags.dag_id, dag_versions.spec, dags.updated_at_us FROM dags JOIN dag_versions "
            "ON dag_versions.dag_id = dags.dag_id AND dag_versions.version = dags.current_version"
        )
    )
    rows: list[dict[str, Any]] = []
    for dag_id, spec, at_us in current:
        for task_id, kind, name in _declared(_decoded(spec)):
            if name in ids:  # every declared asset was registered with its DAG
                rows.append(
                    {
                        "dag_id": dag_id,
                        "task_id": task_id,
                        "kind": kind,
                        "asset_id": ids[name],
                        "created_at_us": at_us,
                        "updated_at_us": at_us,
                    }
                )
    if rows:
        columns = ("dag_id", "task_id", "kind", "asset_id", "created_at_us", "updated_at_us")
        insert = (
            f"INSERT INTO asset_references ({', '.join(columns)}) "  # noqa: S608  # our own column names
            f"VALUES ({', '.join(':' + c for c in columns)})"
        )
        bind.execute(sa.text(insert), rows)


def _decoded(spec: str) -> Any:
    try:
        return json.loads(spec)
    except ValueError:
        return None


def _declared(spec: Any) -> set[tuple[str, str, str]]:
    """(task_id, inlet|outlet, asset name) of a stored spec: inlets and outlets are names or
    ``{"name": ..., "uri": ...}``. A stored spec of another shape (one a later release could not decode
    either) declares nothing here: the upgrade must not stop at one unreadable row."""
    found: set[tuple[str, str, str]] = set()
    tasks = spec.get("tasks") if isinstance(spec, dict) else None
    for task in tasks if isinstance(tasks, list) else []:
        task_id = task.get("task_id") if isinstance(task, dict) else None
        if not isinstance(task_id, str):
            continue
        for kind, key in (("inlet", "inlets"), ("outlet", "outlets")):
            items = task.get(key)
            for item in items if isinstance(items, list) else []:
                name = item.get("name") if isinstance(item, dict) else item
                if isinstance(name, str):
                    found.add((task_id, kind, name))
    return found


def _number_versions() -> None:
    # NOT NULL with a default: SQLite adds it in place. Every row then gets its number.
    op.add_column("dag_versions", sa.Column("version_number", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "UPDATE dag_versions SET version_number = (SELECT count(*) FROM dag_versions AS earlier "
        "WHERE earlier.dag_id = dag_versions.dag_id "
        "AND (earlier.created_at_us < dag_versions.created_at_us OR "
        "(earlier.created_at_us = dag_versions.created_at_us AND earlier.version <= dag_versions.version)))"
    )
    op.create_index("uq_dag_versions_number", "dag_versions", ["dag_id", "version_number"], unique=True)


def _time_runs() -> None:
    # Nullable, no default: adding them rewrites no row; the updates below fill what is known.
    op.add_column("dag_runs", sa.Column("started_at_us", sa.BigInteger, nullable=True))
    op.add_column("dag_runs", sa.Column("ended_at_us", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE dag_runs SET started_at_us = (SELECT min(task_instances.started_at_us) FROM task_instances "
        "WHERE task_instances.dag_id = dag_runs.dag_id AND task_instances.run_id = dag_runs.run_id) "
        "WHERE state <> 'queued'"
    )
    op.execute("UPDATE dag_runs SET ended_at_us = updated_at_us WHERE state IN ('success', 'failed')")


def downgrade() -> None:
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("ended_at_us")
        batch.drop_column("started_at_us")
    op.drop_index("uq_dag_versions_number", table_name="dag_versions")
    with op.batch_alter_table("dag_versions") as batch:
        batch.drop_column("version_number")
    op.drop_index("ix_asset_references_asset_id", table_name="asset_references")
    op.drop_table("asset_references")
    op.rename_table("assets", "assets_0006")
    op.create_table(
        "assets",
        sa.Column("name", _name(1500), primary_key=True),
        sa.Column("uri", _name(1500), nullable=True, unique=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO assets (name, uri, created_at_us) SELECT name, uri, created_at_us FROM assets_0006"
    )
    op.drop_table("assets_0006")
