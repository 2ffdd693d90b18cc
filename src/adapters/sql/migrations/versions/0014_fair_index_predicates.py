"""The fair-tag indexes only for the statements that read fair tags.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

A claim's conditions (queued, its queue) implied the predicate of ix_task_instances_fair_queue, and on a
table never analysed PostgreSQL picked that index for claims: it read and sorted a 7,100-try backlog for a
claim of one (65 claims a second against 141 before 0012, an outsider measured). Each fair-tag index's
predicate gains "fair_tag >= 0", true of every row and written by no other statement than the fair tag's
own reads (``runs.fair_tag``), so claims use ix_task_instances_claim whatever the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_task_instances_fair_queue": (["queue", "priority_rank", "fair_tag"], "queued"),
    "ix_task_instances_fair_caller": (["queue", "priority_rank", "caller", "fair_tag"], "queued"),
    "ix_task_instances_fair_running": (["queue", "priority_rank", "fair_tag"], "running"),
}


def _recreate(*, fenced: bool) -> None:
    for name, (columns, state) in _INDEXES.items():
        where = sa.text(f"state = '{state}' AND fair_tag >= 0" if fenced else f"state = '{state}'")
        op.drop_index(name, table_name="task_instances")
        op.create_index(name, "task_instances", columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    _recreate(fenced=True)


def downgrade() -> None:
    _recreate(fenced=False)
