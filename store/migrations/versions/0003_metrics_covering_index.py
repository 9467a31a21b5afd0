"""Metrics: the (run_id, key, step) uniqueness becomes a unique index that also carries `value` on PostgreSQL
(INCLUDE), so reading a series (store.metrics.read_series, the comparison query) is an index-only scan instead of
one heap page per point. Same uniqueness, same ON CONFLICT target; SQLite gets the plain unique index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ["run_id", "key", "step"]


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table (env.py sets render_as_batch), PostgreSQL runs plain statements
    with op.batch_alter_table("metrics") as batch:
        batch.drop_constraint("uq_metrics_run_id_key_step", type_="unique")
    op.create_index("ix_metrics_series", "metrics", COLUMNS, unique=True, postgresql_include=["value"])


def downgrade() -> None:
    op.drop_index("ix_metrics_series", table_name="metrics")
    with op.batch_alter_table("metrics") as batch:
        batch.create_unique_constraint("uq_metrics_run_id_key_step", COLUMNS)
