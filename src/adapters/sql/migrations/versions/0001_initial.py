"""Initial schema: DAG versions, assets, runs, task instances, task and asset state.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Migrations are frozen history: tables are spelled out here, never imported from tables.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.types import TypeEngine

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _name(length: int) -> TypeEngine[str]:
    # Byte-wise comparison on PostgreSQL ("C" collation), as SQLite's default BINARY does.
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "dags",
        sa.Column("dag_id", _name(250), primary_key=True),
        sa.Column("current_version", _name(64), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dag_versions",
        sa.Column("dag_id", _name(250), sa.ForeignKey("dags.dag_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", _name(64), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "assets",
        sa.Column("name", _name(1500), primary_key=True),
        sa.Column("uri", _name(1500), nullable=True, unique=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dag_runs",
        sa.Column("dag_id", _name(250), primary_key=True),
        sa.Column("run_id", _name(250), primary_key=True),
        sa.Column("dag_version", _name(64), nullable=False),
        sa.Column("conf", sa.Text, nullable=False),
        sa.Column("state", _name(32), nullable=False),
        sa.Column("run_after_us", sa.BigInteger, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("idempotency_key", _name(250), nullable=True),
        sa.ForeignKeyConstraint(
            ["dag_id", "dag_version"],
            ["dag_versions.dag_id", "dag_versions.version"],
            name="fk_dag_runs_dag_versions",
        ),
        sa.UniqueConstraint("dag_id", "idempotency_key", name="uq_dag_runs_idempotency_key"),
    )
    op.create_table(
        "task_instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("dag_id", _name(250), nullable=False),
        sa.Column("run_id", _name(250), nullable=False),
        sa.Column("task_id", _name(250), nullable=False),
        sa.Column("map_index", sa.Integer, nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("state", _name(32), nullable=False),
        sa.Column("queue", _name(250), nullable=False),
        sa.Column("lease_owner", _name(250), nullable=True),
        sa.Column("lease_expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["dag_id", "run_id"],
            ["dag_runs.dag_id", "dag_runs.run_id"],
            ondelete="CASCADE",
            name="fk_task_instances_dag_runs",
        ),
        sa.UniqueConstraint(
            "dag_id", "run_id", "task_id", "map_index", "try_number", name="uq_task_instances_try"
        ),
    )
    op.create_index("ix_task_instances_state_queue", "task_instances", ["state", "queue"])
    op.create_table(
        "task_state",
        sa.Column("dag_id", _name(250), primary_key=True),
        sa.Column("run_id", _name(250), primary_key=True),
        sa.Column("task_id", _name(250), primary_key=True),
        sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("key", _name(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_task_state_expires_at_us", "task_state", ["expires_at_us"])
    op.create_table(
        "asset_state",
        sa.Column("asset_name", _name(1500), primary_key=True),
        sa.Column("key", _name(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_asset_state_expires_at_us", "asset_state", ["expires_at_us"])


def downgrade() -> None:
    for index, table in (
        ("ix_asset_state_expires_at_us", "asset_state"),
        ("ix_task_state_expires_at_us", "task_state"),
        ("ix_task_instances_state_queue", "task_instances"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "asset_state",
        "task_state",
        "task_instances",
        "dag_runs",
        "assets",
        "dag_versions",
        "dags",
    ):
        op.drop_table(table)
