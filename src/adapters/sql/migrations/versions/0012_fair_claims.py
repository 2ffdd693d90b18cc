"""Callers take turns in a queue: a run records who triggered it, and a queued try its place among the
tries of its queue and priority.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

Claims handed out the highest priority first, then the oldest: 300 runs triggered by one caller held
another caller's run back until every one of them had been claimed (37 s, an outsider's find). A queued
try's ``fair_tag`` puts each caller's tries one after another and a newcomer's next in line; claims hand out
the lowest tag first within a priority. Tries queued before this revision have tag 0 and caller '': they go
first, in their old order.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("state = 'queued'")


def upgrade() -> None:
    op.add_column("dag_runs", sa.Column("caller", sa.String(32), nullable=True))
    # NOT NULL with a constant default: a catalog change on PostgreSQL (11+), no table rewrite.
    op.add_column("task_instances", sa.Column("caller", sa.String(32), nullable=False, server_default=""))
    op.add_column("task_instances", sa.Column("fair_tag", sa.BigInteger, nullable=False, server_default="0"))
    op.drop_index("ix_task_instances_claim", table_name="task_instances")
    op.create_index(
        "ix_task_instances_claim",
        "task_instances",
        ["state", "queue", "dag_id", "priority_rank", "fair_tag", "id"],
    )
    op.create_index(
        "ix_task_instances_fair_queue",
        "task_instances",
        ["queue", "priority_rank", "fair_tag"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index(
        "ix_task_instances_fair_caller",
        "task_instances",
        ["queue", "priority_rank", "caller", "fair_tag"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_task_instances_fair_caller", table_name="task_instances")
    op.drop_index("ix_task_instances_fair_queue", table_name="task_instances")
    op.drop_index("ix_task_instances_claim", table_name="task_instances")
    op.create_index(
        "ix_task_instances_claim", "task_instances", ["state", "queue", "dag_id", "priority_rank", "id"]
    )
    with op.batch_alter_table("task_instances") as batch:
        batch.drop_column("fair_tag")
        batch.drop_column("caller")
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("caller")
