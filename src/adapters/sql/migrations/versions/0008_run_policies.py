"""Runs under pressure (issue 17): deadlines, runs held back by max_active_runs, and the registry of
waiters with a disconnect policy.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Both new run columns are nullable without a default: adding them rewrites no row. The two indexes are
partial, over unfinished runs only, so they stay small however many finished runs are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFINISHED = sa.text("state IN ('queued', 'running')")
UNFINISHED_WITH_DEADLINE = sa.text("state IN ('queued', 'running') AND deadline_at_us IS NOT NULL")


def _name(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.add_column("dag_runs", sa.Column("deadline_at_us", sa.BigInteger, nullable=True))
    op.add_column("dag_runs", sa.Column("held_by", _name(32), nullable=True))
    # NOT NULL with a constant default: a catalog change on PostgreSQL (11+), no table rewrite.
    op.add_column("dag_runs", sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
    op.add_column(
        "task_instances", sa.Column("priority_rank", sa.Integer, nullable=False, server_default="0")
    )
    # Claims order by priority, then age: the claim index gains the rank before the id.
    op.drop_index("ix_task_instances_claim", table_name="task_instances")
    op.create_index(
        "ix_task_instances_claim", "task_instances", ["state", "queue", "dag_id", "priority_rank", "id"]
    )
    op.create_index(
        "ix_dag_runs_unfinished",
        "dag_runs",
        ["dag_id", "state", "held_by"],
        postgresql_where=UNFINISHED,
        sqlite_where=UNFINISHED,
    )
    op.create_index(
        "ix_dag_runs_deadline",
        "dag_runs",
        ["deadline_at_us"],
        postgresql_where=UNFINISHED_WITH_DEADLINE,
        sqlite_where=UNFINISHED_WITH_DEADLINE,
    )
    op.create_table(
        "run_waiters",
        sa.Column("dag_id", _name(250), primary_key=True),
        sa.Column("run_id", _name(250), primary_key=True),
        sa.Column("holder", sa.String(36), primary_key=True),
        sa.Column("cancels", sa.Integer, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_run_waiters_holder", "run_waiters", ["holder"])
    op.create_index("ix_run_waiters_expires_at_us", "run_waiters", ["expires_at_us"])


def downgrade() -> None:
    op.drop_index("ix_task_instances_claim", table_name="task_instances")
    op.create_index("ix_task_instances_claim", "task_instances", ["state", "queue", "dag_id", "id"])
    with op.batch_alter_table("task_instances") as batch:
        batch.drop_column("priority_rank")
    op.drop_table("run_waiters")
    op.drop_index("ix_dag_runs_deadline", table_name="dag_runs")
    op.drop_index("ix_dag_runs_unfinished", table_name="dag_runs")
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("priority")
        batch.drop_column("held_by")
        batch.drop_column("deadline_at_us")
