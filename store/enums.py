"""A run's kinds and states (spec/platform.md "Data model"): the one definition that the store, the services, the
REST schemas, the CLI and the dashboard share. No SQLAlchemy here, so light processes (the CLI) import it freely."""

from __future__ import annotations

from enum import StrEnum


class RunKind(StrEnum):
    """runs.kind: a training run, or an evaluation of a checkpoint (also the job's queue, store/broker.py)."""

    TRAIN = "train"
    EVAL = "eval"


class RunStatus(StrEnum):
    """runs.status, the one list of a run's states (store, services, REST schemas, CLI and dashboard)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
FINISHED_STATUSES: frozenset[RunStatus] = frozenset(set(RunStatus) - ACTIVE_STATUSES)
# Plain strings, for the CHECK constraints' SQL text (the migrations hold the same).
RUN_KINDS: tuple[str, ...] = tuple(kind.value for kind in RunKind)
RUN_STATUSES: tuple[str, ...] = tuple(status.value for status in RunStatus)
