"""What the servers of one database must share, as each server that starts last found it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

Servers of one database must sign tokens with one key and keep results in one blob store: nothing said so
when they did not (a token of one server was 403 on another, a blob written through one 404 on another:
an outsider's find). Each server at its start writes here a fingerprint of its token key and the mark of
its blob store, and says so when the ones it replaces differ (``stateport.domain.deployment``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_marks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployment_marks")
