"""A running try keeps the return value the Airflow Task SDK pushes to XCom until it reports.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

The SDK's supervisor pushes a task's return value (``POST /execution/xcoms/.../return_value``) and then
reports success without it. Stateport answered the push 404, so every task that returns a value failed
there (an outsider's find). The value is kept with the try (NULL: none pushed) and becomes its result
when the SDK's success comes; any end of the try clears it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("task_instances", sa.Column("pushed_result", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_instances") as batch:
        batch.drop_column("pushed_result")
