"""Runs and their events as rows: create, read, list with a `RunFilter`, delete (platform.md "Data model").

The run's state changes (claim, heartbeat, fence, finish, cancel, requeue, preempt) are store/lifecycle.py's.
Every write function commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, delete, func, select, text, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from store import artifacts
from store.enums import RUN_KINDS, RunKind, RunStatus
from store.models import Run, RunEvent
from store.session import begin_write

MAX_PAGE_SIZE = 500


class RunActiveError(RuntimeError):
    """The run is running; cancel it (and let the worker stop) before deleting it."""


@dataclass(frozen=True)
class RunFilter:
    """Which runs a list shows; a field left None matches every run. The one filter of the store query, the service,
    the REST query parameters (GET /runs), the typed client, `flowdppo runs` and the dashboard's Runs tab.

    Strings are accepted for the enums (a CLI argument, a dropdown's value) and checked: an unknown status or kind
    is a ValueError naming the allowed values.
    """

    status: RunStatus | None = None
    kind: RunKind | None = None
    tag: str | None = None
    comparison_id: int | None = None
    parent_run_id: int | None = None

    def __post_init__(self) -> None:
        for name, enum in (("status", RunStatus), ("kind", RunKind)):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                raise ValueError(f"{name} must be one of {[e.value for e in enum]}, got {value!r}") from None

    def params(self) -> dict[str, Any]:
        """The filters that are set, by name (query parameters)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def where(self, session: Session) -> list[ColumnElement[bool]]:
        """The filter as SQL conditions on `runs` (the tag test is dialect-specific: JSONB or json_each)."""
        where: list[ColumnElement[bool]] = []
        if self.status is not None:
            where.append(Run.status == self.status)
        if self.kind is not None:
            where.append(Run.kind == self.kind)
        if self.comparison_id is not None:
            where.append(Run.comparison_id == self.comparison_id)
        if self.parent_run_id is not None:
            where.append(Run.parent_run_id == self.parent_run_id)
        if self.tag is not None:
            if session.get_bind().dialect.name == "postgresql":
                where.append(type_coerce(Run.tags, JSONB).contains([self.tag]))
            else:
                where.append(
                    text("EXISTS (SELECT 1 FROM json_each(runs.tags) AS t WHERE t.value = :tag)").bindparams(
                        tag=self.tag
                    )
                )
        return where


ANY_RUN = RunFilter()


# --- create and read ---


def create_run(
    session: Session,
    *,
    team_id: int,
    config: dict[str, Any],
    kind: RunKind = RunKind.TRAIN,
    name: str = "",
    tags: Sequence[str] = (),
    preset: str | None = None,
    total_steps: int | None = None,
    max_attempts: int = 3,
    parent_run_id: int | None = None,
    checkpoint_id: int | None = None,
    comparison_id: int | None = None,
    variant: str | None = None,
    commit: bool = True,
) -> Run:
    """A queued run. `config` is the validated TrainConfig (train) or EvalConfig (eval) dumped as JSON.

    total_steps defaults to config["steps"] for training runs. commit=False lets a caller create several runs
    (a comparison) in one transaction.
    """
    if commit:
        begin_write(session)
    if kind not in RUN_KINDS:
        raise ValueError(f"kind must be one of {RUN_KINDS}, got {kind!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if total_steps is None:
        total_steps = int(config.get("steps", 0)) if kind == RunKind.TRAIN else 0
    run = Run(
        team_id=team_id,
        kind=kind,
        name=name,
        tags=list(tags),
        config=config,
        preset=preset,
        total_steps=total_steps,
        max_attempts=max_attempts,
        parent_run_id=parent_run_id,
        checkpoint_id=checkpoint_id,
        comparison_id=comparison_id,
        variant=variant,
    )
    session.add(run)
    session.flush()
    add_event(session, run_id=run.id, message=f"queued ({kind})", commit=False)
    if commit:
        session.commit()
    return run


def get_run(session: Session, *, run_id: int, team_id: int | None = None) -> Run | None:
    """The run, or None if missing or owned by another team. team_id=None is for internal callers (workers)."""
    run = session.get(Run, run_id, populate_existing=True)
    if run is None or (team_id is not None and run.team_id != team_id):
        return None
    return run


def list_runs(
    session: Session,
    *,
    team_id: int | None,
    filters: RunFilter = ANY_RUN,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Run], str | None]:
    """Newest first. Returns (runs, next_cursor); pass next_cursor back for the next page (None = last page)."""
    query, limit = _page_query(session, select(Run), team_id=team_id, filters=filters, cursor=cursor, limit=limit)
    return _page(list(session.scalars(query)), limit)


# Every column of runs but the config: a list page reads these (the config is ~1 KB of JSON per run to fetch,
# decode and re-encode; GET /runs/{id} has it).
LISTED_COLUMNS = tuple(c for c in Run.__table__.columns if c.key != "config")
# ...but its rank count (spec §12), read inside the database: 1 when absent (evaluations, runs from before it).
LISTED_RANKS = func.coalesce(Run.config["num_processes"].as_integer(), 1).label("num_processes")


def list_run_rows(
    session: Session,
    *,
    team_id: int | None,
    filters: RunFilter = ANY_RUN,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Row[Any]], str | None]:
    """list_runs without the config: read-only rows with the other Run attributes (`row.id`, `row.status`, ...),
    one index range scan on (team_id, id) and no ORM objects. Same filters, order and cursor as list_runs."""
    columns = (*LISTED_COLUMNS, LISTED_RANKS)
    query, limit = _page_query(session, select(*columns), team_id=team_id, filters=filters, cursor=cursor, limit=limit)
    return _page(list(session.execute(query)), limit)


def active_runs(session: Session) -> list[Run]:
    """Every running run, for the workers view (run.worker names the Celery worker)."""
    return list(session.scalars(select(Run).where(Run.status == RunStatus.RUNNING).order_by(Run.id)))


def count_queued(session: Session, *, team_id: int) -> int:
    """The team's queued runs that are not being cancelled (the API's per-team cap, docs/limits.md)."""
    query = select(func.count()).where(
        Run.team_id == team_id, Run.status == RunStatus.QUEUED, Run.cancel_requested.is_(False)
    )
    return int(session.scalar(query) or 0)


def _where(session: Session, *, team_id: int | None, filters: RunFilter) -> list[ColumnElement[bool]]:
    where = filters.where(session)
    if team_id is not None:
        where.append(Run.team_id == team_id)
    return where


def _page_query(
    session: Session, query: Select[Any], *, team_id: int | None, filters: RunFilter, cursor: str | None, limit: int
) -> tuple[Select[Any], int]:
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    where = _where(session, team_id=team_id, filters=filters)
    if cursor is not None:
        try:
            where.append(Run.id < int(cursor))
        except ValueError as err:
            raise ValueError(f"cursor must be a value returned by list_runs, got {cursor!r}") from err
    return query.where(*where).order_by(Run.id.desc()).limit(limit + 1), limit


def _page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    if len(rows) > limit:
        return rows[:limit], str(rows[limit - 1].id)
    return rows, None


# --- delete ---


def delete_run(session: Session, *, run_id: int, data_dir: Path | str, team_id: int | None = None) -> bool:
    """Delete a run, its evaluations, their rows and their files. Raises RunActiveError while it is running."""
    run = get_run(session, run_id=run_id, team_id=team_id)
    if run is None:
        return False
    children = list(session.scalars(select(Run).where(Run.parent_run_id == run_id)))
    if any(r.status == RunStatus.RUNNING for r in [run, *children]):
        raise RunActiveError(f"run {run_id} (or one of its evaluations) is running; cancel it first")
    doomed = [run.id, *(c.id for c in children)]
    begin_write(session)
    # One DELETE; the database cascades to events, metrics, samples, checkpoints and votes (ON DELETE CASCADE).
    session.execute(delete(Run).where(Run.id.in_(doomed)).execution_options(synchronize_session=False))
    for r in [run, *children]:
        session.expunge(r)
    session.commit()  # rows go first: a failure deleting files must not leave rows pointing at nothing
    for doomed_id in doomed:
        artifacts.delete_run_artifacts(data_dir, doomed_id)
    return True


# --- events ---


def add_event(session: Session, *, run_id: int, message: str, level: str = "info", commit: bool = True) -> RunEvent:
    if commit:
        begin_write(session)
    event = RunEvent(run_id=run_id, message=message, level=level)
    session.add(event)
    if commit:
        session.commit()
    return event


def list_events(session: Session, *, run_id: int, after_id: int | None = None, limit: int = 1000) -> list[RunEvent]:
    """Oldest first; after_id for incremental refresh."""
    query = select(RunEvent).where(RunEvent.run_id == run_id)
    if after_id is not None:
        query = query.where(RunEvent.id > after_id)
    return list(session.scalars(query.order_by(RunEvent.id).limit(limit)))
