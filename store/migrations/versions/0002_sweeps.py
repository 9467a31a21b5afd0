"""Sweeps: a comparison's seeds and grid (comparisons.seeds, comparisons.grid) and each run's seed (runs.seed).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Frozen copy of store.models' portable JSON type (a migration must not change when the models do).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table (env.py sets render_as_batch), PostgreSQL runs plain ALTERs
    with op.batch_alter_table("comparisons") as batch:
        batch.add_column(sa.Column("seeds", JSON, nullable=True))
        batch.add_column(sa.Column("grid", JSON, nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("seed", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("seed")
    with op.batch_alter_table("comparisons") as batch:
        batch.drop_column("grid")
        batch.drop_column("seeds")
