"""The XComs a running try pushes under keys other than its return value, kept with the try.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06

A DAG file written for Airflow pushes XComs under keys of its own: ``ti.xcom_push(key=...)``, a TaskFlow
task with ``multiple_outputs`` (or one annotated ``-> dict``: each key of what it returns), and the
``TriggerDagRunOperator`` (``trigger_run_id``). Stateport answered every such push 422, so the task
failed. Each value is kept with the try that pushed it (a row per key; the try's row going takes them
with it, as the run's going takes its tries), and a pull reads the latest try's, as Airflow clears a task
instance's XComs when a new try starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_xcoms",
        sa.Column("ti_id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["ti_id"], ["task_instances.id"], ondelete="CASCADE", name="fk_task_xcoms_task_instances"
        ),
    )


def downgrade() -> None:
    op.drop_table("task_xcoms")
