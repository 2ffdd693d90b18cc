"""Who claimed a running try: the key of the token whose claim it was handed out to.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

A claim that lists what its worker runs (``running``) is handed back the tries leased to its worker id that
the list lacks (answers it missed). A worker id is the claim's own word, and the worker registry lists them:
any worker token naming another fleet's worker id was handed that fleet's tries, with new tokens for their
state and results (an outsider's find). A try now keeps the caller key (``fairness.caller_key``) of the
token that claimed it, and is handed back only to a claim of that token's subject. Tries leased before this
revision have none, and are never handed back: their leases run out as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task_instances", sa.Column("lease_claimant", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_instances") as batch:
        batch.drop_column("lease_claimant")
