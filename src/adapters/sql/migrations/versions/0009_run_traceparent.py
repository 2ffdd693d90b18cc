"""Runs keep the W3C traceparent of the trigger that created them (OpenTelemetry tracing).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

The claim of each of the run's task instances hands it to the worker, so that one trace shows the run
from its trigger to every task's execution and report (docs/observability.md, traces). NULL when tracing
is off.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dag_runs", sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("traceparent")
