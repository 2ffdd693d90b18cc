"""Run retention: an index to find the oldest runs (by creation, a column no update changes).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_dag_runs_created_at_us", "dag_runs", ["created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_dag_runs_created_at_us", table_name="dag_runs")
