"""Callers take turns among a DAG's held runs: a run held back by max_active_runs records its place.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

Held runs were admitted oldest first, whoever triggered them: 100 runs one caller triggered of a DAG with
max_active_runs 2 held another caller's run back for 5.3 s, behind every one of them. A held run's
``hold_tag`` puts each caller's held runs one after another and a newcomer's next in line
(``runs.hold_tag``); admissions take the lowest first. Runs held before this revision have place 0: they
are admitted first, in their old order.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = sa.text("state IN ('queued', 'running') AND held_by IS NOT NULL")
ADMITTED = sa.text("state IN ('queued', 'running') AND held_by IS NULL")


def upgrade() -> None:
    # NOT NULL with a constant default: a catalog change on PostgreSQL (11+), no table rewrite.
    op.add_column("dag_runs", sa.Column("hold_tag", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index(
        "ix_dag_runs_held",
        "dag_runs",
        ["dag_id", "hold_tag", "created_at_us", "run_id"],
        postgresql_where=HELD,
        sqlite_where=HELD,
    )
    op.create_index(
        "ix_dag_runs_held_caller",
        "dag_runs",
        ["dag_id", "caller", "hold_tag"],
        postgresql_where=HELD,
        sqlite_where=HELD,
    )
    op.create_index(
        "ix_dag_runs_admitted",
        "dag_runs",
        ["dag_id", "hold_tag"],
        postgresql_where=ADMITTED,
        sqlite_where=ADMITTED,
    )


def downgrade() -> None:
    op.drop_index("ix_dag_runs_admitted", table_name="dag_runs")
    op.drop_index("ix_dag_runs_held_caller", table_name="dag_runs")
    op.drop_index("ix_dag_runs_held", table_name="dag_runs")
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("hold_tag")
