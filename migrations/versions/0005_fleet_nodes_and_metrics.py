"""fleet nodes and metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 10:04:38.661302
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nebula.kernel.db

# BIGSERIAL on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("environment", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_changed_at", nebula.kernel.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("os", sa.String(length=255), nullable=False),
        sa.Column("agent_version", sa.String(length=32), nullable=False),
        sa.Column("agent_url", sa.String(length=255), nullable=True),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("heartbeat_s", sa.Integer(), nullable=False),
        sa.Column("last_seen", nebula.kernel.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("stale_after", nebula.kernel.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("offline_after", nebula.kernel.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("containers", sa.JSON(), nullable=True),
        sa.Column("declared", sa.JSON(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("broadcast", sa.String(length=15), nullable=True),
        sa.Column("wol_port", sa.Integer(), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("ssh_user", sa.String(length=64), nullable=True),
        sa.Column("ssh_host_key", sa.Text(), nullable=True),
        sa.Column("enroll_token_hash", sa.String(length=64), nullable=True),
        sa.Column("enroll_expires_at", nebula.kernel.db.UtcDateTime(timezone=True), nullable=True),
        sa.Column("agent_token_hash", sa.String(length=64), nullable=True),
        sa.Column("agent_token_prev_hash", sa.String(length=64), nullable=True),
        sa.Column(
            "agent_token_prev_until", nebula.kernel.db.UtcDateTime(timezone=True), nullable=True
        ),
        sa.Column("rotate_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", nebula.kernel.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("agent_token_hash", name=op.f("uq_nodes_agent_token_hash")),
        sa.UniqueConstraint("agent_token_prev_hash", name=op.f("uq_nodes_agent_token_prev_hash")),
        sa.UniqueConstraint("enroll_token_hash", name=op.f("uq_nodes_enroll_token_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nodes_stale_after"), ["stale_after"], unique=False)
        batch_op.create_index(batch_op.f("ix_nodes_offline_after"), ["offline_after"], unique=False)

    op.create_table(
        "node_rollups",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("minute", nebula.kernel.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("cpu_min", sa.Double(), nullable=False),
        sa.Column("cpu_avg", sa.Double(), nullable=False),
        sa.Column("cpu_max", sa.Double(), nullable=False),
        sa.Column("memory_min", sa.Double(), nullable=False),
        sa.Column("memory_avg", sa.Double(), nullable=False),
        sa.Column("memory_max", sa.Double(), nullable=False),
        sa.Column("disk_avg", sa.Double(), nullable=False),
        sa.Column("gpu_util_avg", sa.Double(), nullable=True),
        sa.Column("gpu_util_max", sa.Double(), nullable=True),
        sa.Column("gpu_temp_max", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_node_rollups_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_id", "minute", name=op.f("pk_node_rollups")),
    )
    with op.batch_alter_table("node_rollups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_rollups_minute"), ["minute"], unique=False)

    op.create_table(
        "node_samples",
        sa.Column("id", Seq, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("at", nebula.kernel.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column("cpu", sa.Double(), nullable=False),
        sa.Column("memory", sa.Double(), nullable=False),
        sa.Column("disk", sa.Double(), nullable=False),
        sa.Column("gpu_util", sa.Double(), nullable=True),
        sa.Column("gpu_temp", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_node_samples_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_samples")),
    )
    with op.batch_alter_table("node_samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_samples_at"), ["at"], unique=False)
        batch_op.create_index("ix_node_samples_node_at", ["node_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_node_samples_node_at")
        batch_op.drop_index(batch_op.f("ix_node_samples_at"))

    op.drop_table("node_samples")
    with op.batch_alter_table("node_rollups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_rollups_minute"))

    op.drop_table("node_rollups")
    op.drop_table("nodes")
