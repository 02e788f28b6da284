"""event outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 08:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nebula.kernel.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGSERIAL on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("seq", Seq, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=26), nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", nebula.kernel.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("relay", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_event_outbox_event_id")),
        # Never reuse a sequence number after pruning (consumer positions point at them).
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("event_outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_event_outbox_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index("ix_event_outbox_relay_seq", ["relay", "seq"], unique=False)
        batch_op.create_index("ix_event_outbox_topic_seq", ["topic", "seq"], unique=False)

    op.create_table(
        "event_offsets",
        sa.Column("group_name", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=128), nullable=False),
        sa.Column("last_seq", Seq, nullable=False),
        sa.Column("updated_at", nebula.kernel.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "topic", name=op.f("pk_event_offsets")),
    )


def downgrade() -> None:
    op.drop_table("event_offsets")
    with op.batch_alter_table("event_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_event_outbox_topic_seq")
        batch_op.drop_index("ix_event_outbox_relay_seq")
        batch_op.drop_index(batch_op.f("ix_event_outbox_created_at"))

    op.drop_table("event_outbox")
