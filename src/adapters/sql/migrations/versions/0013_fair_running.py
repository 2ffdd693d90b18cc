"""Where a queue is, for a new queued try's place: the highest fair tag running in it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

0012 placed a caller with nothing queued level with the lowest tag queued; a try no claim takes (of a DAG
no worker serves, a retry waiting out its delay) held that lowest tag back, and a caller coming later then
went ahead of every other caller's backlog (an outsider's find). The place now starts one past the highest
tag running (``runs.fair_tag``): a partial index of the running tries finds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = sa.text("state = 'running'")


def upgrade() -> None:
    op.create_index(
        "ix_task_instances_fair_running",
        "task_instances",
        ["queue", "priority_rank", "fair_tag"],
        postgresql_where=RUNNING,
        sqlite_where=RUNNING,
    )


def downgrade() -> None:
    op.drop_index("ix_task_instances_fair_running", table_name="task_instances")
