"""Run engine: task-instance lifecycle columns (result reference, timeout, retries used, start and end).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Migrations are frozen history: columns are spelled out here, never imported from tables.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite adds nullable (or defaulted) columns in place, without copying the table.
    op.add_column("task_instances", sa.Column("result_ref", sa.Text, nullable=True))
    op.add_column("task_instances", sa.Column("timeout_us", sa.BigInteger, nullable=True))
    op.add_column("task_instances", sa.Column("retries_used", sa.Integer, nullable=False, server_default="0"))
    op.add_column("task_instances", sa.Column("started_at_us", sa.BigInteger, nullable=True))
    op.add_column("task_instances", sa.Column("ended_at_us", sa.BigInteger, nullable=True))
    op.create_index("ix_task_instances_state_lease", "task_instances", ["state", "lease_expires_at_us"])


def downgrade() -> None:
    op.drop_index("ix_task_instances_state_lease", table_name="task_instances")
    with op.batch_alter_table("task_instances") as batch:
        for column in ("ended_at_us", "started_at_us", "retries_used", "timeout_us", "result_ref"):
            batch.drop_column(column)
