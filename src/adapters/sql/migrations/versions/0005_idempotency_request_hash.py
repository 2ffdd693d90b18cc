"""Idempotency keys: the hash of the trigger request that used the key, so that the same key sent with a
different request is refused instead of answered with the first run.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row on either database. Runs created before it have no
    # hash, and a key of theirs is honoured as before, whatever the request.
    op.add_column("dag_runs", sa.Column("request_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dag_runs") as batch:
        batch.drop_column("request_hash")
