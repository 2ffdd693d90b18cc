"""A queued try may wait before it is handed out: a try the server gave back (a store was unavailable)
is queued again with a delay that doubles with each give-back.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

Without it, a worker claiming again at once spent the task's free give-backs in a few seconds of a blob
store's blip, then its retries (an outsider's find). NULL: handed out at once, as every try before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task_instances", sa.Column("not_before_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_instances") as batch:
        batch.drop_column("not_before_us")
