"""The worker registry: the workers seen by their claims and heartbeats (the console's Workers page).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

One row per worker id, upserted by each server process at most once per flush interval per worker (the
claim path is hot, so a claim only notes the worker in memory), and deleted by the cleanup once the worker
has not been seen for a day (docs/console.md, Workers).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column(
            "worker_id",
            sa.String(250).with_variant(sa.String(250, collation="C"), "postgresql"),
            primary_key=True,
        ),
        sa.Column("hostname", sa.String(1000), nullable=True),
        sa.Column("pid", sa.BigInteger, nullable=True),
        sa.Column("queues", sa.Text, nullable=False, server_default="[]"),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
        sa.Column("last_seen_us", sa.BigInteger, nullable=False),
        sa.Column("last_claim_us", sa.BigInteger, nullable=True),
        sa.Column("last_heartbeat_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_workers_last_seen_us", "workers", ["last_seen_us"])


def downgrade() -> None:
    op.drop_index("ix_workers_last_seen_us", table_name="workers")
    op.drop_table("workers")
