"""Run listing: an index to page through a DAG's runs in the order they were created.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_dag_runs_dag_id_created_at_us", "dag_runs", ["dag_id", "created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_dag_runs_dag_id_created_at_us", table_name="dag_runs")
