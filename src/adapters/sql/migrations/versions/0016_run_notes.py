"""A run keeps its note: Airflow's ``note``, sent with a trigger or set by ``PATCH .../dagRuns/{id}``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

Before, a trigger's note was accepted and dropped, and a ``PATCH`` setting one was refused: an Airflow
client that annotates runs lost what it sent. NULL: no note (every run before this revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dag_runs", sa.Column("note", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("note")
