"""job claim indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 10:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED_FREE = "status = 'queued' AND concurrency_key IS NULL"
QUEUED_KEYED = "status = 'queued' AND concurrency_key IS NOT NULL"


def upgrade() -> None:
    # Claims read queued jobs in claim order (priority, then age) and stop after a few.
    # The old (status, priority, run_at) index made every claim sort all queued jobs.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim")
        batch_op.create_index(
            "ix_jobs_queued_free",
            [sa.text("priority DESC"), "id"],
            unique=False,
            sqlite_where=sa.text(QUEUED_FREE),
            postgresql_where=sa.text(QUEUED_FREE),
        )
        batch_op.create_index(
            "ix_jobs_queued_keyed",
            [sa.text("priority DESC"), "id"],
            unique=False,
            sqlite_where=sa.text(QUEUED_KEYED),
            postgresql_where=sa.text(QUEUED_KEYED),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queued_keyed")
        batch_op.drop_index("ix_jobs_queued_free")
        batch_op.create_index("ix_jobs_claim", ["status", "priority", "run_at"], unique=False)
