"""The database schema (spec platform.md "Data model"): typed SQLAlchemy 2 tables for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from store.enums import RUN_KINDS, RUN_STATUSES, RunKind, RunStatus

VoteChoice = Literal["left", "right", "tie"]
VOTE_CHOICES: tuple[str, ...] = get_args(VoteChoice)

# Constraint names are data too: Alembic batch mode on SQLite needs them to alter tables later.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects (SQLite stores naive text, so we re-attach UTC on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store.models expects timezone-aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (containment queries for tags), JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# BIGINT ids on PostgreSQL; SQLite only auto-increments a plain INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token: `fdp_<prefix>_<secret>`; only the public prefix and the sha256 of the whole token are kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    team: Mapped[Team] = relationship(lazy="joined")


class Comparison(Base):
    """The same base config submitted as a set of named variants (e.g. clip vs dppo with the same seeds)."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    base_config: Mapped[dict[str, Any]] = mapped_column()
    variants: Mapped[list[Any]] = mapped_column()  # [{"name": "dppo", "overrides": {...}}, ...]
    # A sweep's seeds (every variant runs each) and grid ({"delta": [1e-5, 1e-6]}); None for a plain comparison.
    seeds: Mapped[list[Any] | None] = mapped_column(JSONType, default=None)
    grid: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    """A training or evaluation job. The database, not the broker, is the truth about its state."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"kind IN {RUN_KINDS}", name="kind"),
        CheckConstraint(f"status IN {RUN_STATUSES}", name="status"),
        Index("ix_runs_team_id_id", "team_id", "id"),
        Index("ix_runs_status_heartbeat_at", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.TRAIN.value)  # RunKind
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)  # RunStatus
    name: Mapped[str] = mapped_column(String(200), default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    config: Mapped[dict[str, Any]] = mapped_column()  # TrainConfig (train) or EvalConfig (eval) as JSON
    preset: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int] = mapped_column(default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(default=1)
    max_attempts: Mapped[int] = mapped_column(default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    parent_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), index=True, default=None
    )
    checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True), default=None
    )
    comparison_id: Mapped[int | None] = mapped_column(
        ForeignKey("comparisons.id", ondelete="SET NULL"), index=True, default=None
    )
    variant: Mapped[str | None] = mapped_column(String(100), default=None)
    seed: Mapped[int | None] = mapped_column(BigInteger, default=None)  # a sweep run's seed (config["seed"])


class RunEvent(Base):
    """A line of the run's history: queued, started, lost, requeued, errors (the run detail page)."""

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)


class Metric(Base):
    """One scalar point. Unique on (run, key, step): a redelivered job overwrites, never doubles, a point."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column()
    value: Mapped[float | None] = mapped_column(Float)  # NULL = NaN (SQLite cannot store NaN)
    wall_time: Mapped[datetime] = mapped_column(default=utcnow)


class MetricBlock(Base):
    """The rollup of one key over BLOCK_STEPS consecutive steps (store.metric_blocks): long-range plots read these
    instead of every point. append_metrics keeps them in the same transaction as the points."""

    __tablename__ = "metric_blocks"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    block: Mapped[int] = mapped_column(primary_key=True)
    last_step: Mapped[int] = mapped_column()
    last_value: Mapped[float | None] = mapped_column(Float)  # NULL = NaN, as in metrics
    last_wall: Mapped[datetime] = mapped_column()
    vmin: Mapped[float | None] = mapped_column(Float)  # NULL when every point of the block is NaN
    vmax: Mapped[float | None] = mapped_column(Float)


class Sample(Base):
    """A logged image: same (prompt, seed, index) across runs so they can be compared side by side."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "index"),
        Index("ix_samples_run_id_prompt_seed", "run_id", "prompt", "seed"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column()
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    index: Mapped[int] = mapped_column()
    rewards: Mapped[dict[str, Any]] = mapped_column(default=dict)
    image_path: Mapped[str] = mapped_column(String(500))  # relative to the data folder
    thumb_path: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column()
    path: Mapped[str] = mapped_column(String(500))  # relative to the data folder
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewVote(Base):
    """A blind pairwise judgement between two samples (same prompt and seed, sides randomised by the UI)."""

    __tablename__ = "review_votes"
    __table_args__ = (CheckConstraint(f"choice IN {VOTE_CHOICES}", name="choice"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    left_sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    right_sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    choice: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
