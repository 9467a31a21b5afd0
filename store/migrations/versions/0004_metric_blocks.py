"""Metric blocks: a rollup of every BLOCK_STEPS steps of each series (min, max, last), filled from the points.

Revision ID: 0004 (0003 was a covering index that was reverted; the number is not reused so that a database stamped
with it fails loudly instead of skipping this table)
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copy of store.metric_blocks' rule (a migration must not change when the code does): steps 10j+1 .. 10j+10
# form block j; x - ((x % 10) + 10) % 10 is a floor to a multiple of 10 in both databases, negative x included.
_BLOCK = "((step - 1) - (((step - 1) % 10) + 10) % 10) / 10"


def upgrade() -> None:
    op.create_table(
        "metric_blocks",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("block", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_wall", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vmin", sa.Float(), nullable=True),
        sa.Column("vmax", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metric_blocks_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", "block", name=op.f("pk_metric_blocks")),
    )
    op.execute(
        f"""
        INSERT INTO metric_blocks (run_id, key, block, last_step, last_value, last_wall, vmin, vmax)
        SELECT b.run_id, b.key, b.block, b.last_step, m.value, m.wall_time, b.vmin, b.vmax
        FROM (
            SELECT run_id, key, {_BLOCK} AS block, max(step) AS last_step, min(value) AS vmin, max(value) AS vmax
            FROM metrics GROUP BY run_id, key, {_BLOCK}
        ) AS b JOIN metrics AS m ON m.run_id = b.run_id AND m.key = b.key AND m.step = b.last_step
        """
    )


def downgrade() -> None:
    op.drop_table("metric_blocks")
