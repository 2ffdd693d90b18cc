"""Claims by DAG: the index a claim's pick uses also holds dag_id and id.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

A claim may name the DAGs its worker serves. ``(state, queue, dag_id, id)`` lets it read only the queued
task instances of those DAGs (rather than every queued one of the queue: another team's backlog on a
shared queue); the old ``(state, queue)`` index is its prefix, so it goes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_task_instances_claim", "task_instances", ["state", "queue", "dag_id", "id"])
    op.drop_index("ix_task_instances_state_queue", table_name="task_instances")


def downgrade() -> None:
    op.create_index("ix_task_instances_state_queue", "task_instances", ["state", "queue"])
    op.drop_index("ix_task_instances_claim", table_name="task_instances")
