"""Runs and their events: create, list, claim, heartbeat, cancel, finish, requeue (platform.md "Job semantics").

State changes that race (a worker claiming while the API cancels, two reapers, a stale worker finishing a run
that was requeued) are single conditional UPDATEs, so exactly one side wins on SQLite and PostgreSQL alike.
Every write function commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, case, delete, func, or_, select, text, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from store import artifacts
from store.models import FINISHED_STATUSES, RUN_KINDS, RUN_STATUSES, Run, RunEvent, utcnow
from store.session import begin_write

MAX_PAGE_SIZE = 500


class RunActiveError(RuntimeError):
    """The run is running; cancel it (and let the worker stop) before deleting it."""


@dataclass(frozen=True)
class Beat:
    """Answer to a heartbeat: whether the calling worker still owns the run, and whether a cancel was asked."""

    owned: bool
    cancel_requested: bool

    @property
    def should_stop(self) -> bool:
        return not self.owned or self.cancel_requested


# --- create and read ---


def create_run(
    session: Session,
    *,
    team_id: int,
    config: dict[str, Any],
    kind: str = "train",
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
        total_steps = int(config.get("steps", 0)) if kind == "train" else 0
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


def _run_filters(
    session: Session,
    *,
    team_id: int | None,
    status: str | Iterable[str] | None,
    kind: str | None,
    tag: str | None,
    comparison_id: int | None,
    parent_run_id: int | None,
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if team_id is not None:
        where.append(Run.team_id == team_id)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = set(statuses) - set(RUN_STATUSES)
        if unknown:
            raise ValueError(f"status must be among {RUN_STATUSES}, got {sorted(unknown)}")
        where.append(Run.status.in_(statuses))
    if kind is not None:
        where.append(Run.kind == kind)
    if comparison_id is not None:
        where.append(Run.comparison_id == comparison_id)
    if parent_run_id is not None:
        where.append(Run.parent_run_id == parent_run_id)
    if tag is not None:
        if session.get_bind().dialect.name == "postgresql":
            where.append(type_coerce(Run.tags, JSONB).contains([tag]))
        else:
            where.append(
                text("EXISTS (SELECT 1 FROM json_each(runs.tags) AS t WHERE t.value = :tag)").bindparams(tag=tag)
            )
    return where


def list_runs(
    session: Session,
    *,
    team_id: int | None,
    status: str | Iterable[str] | None = None,
    kind: str | None = None,
    tag: str | None = None,
    comparison_id: int | None = None,
    parent_run_id: int | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Run], str | None]:
    """Newest first. Returns (runs, next_cursor); pass next_cursor back for the next page (None = last page)."""
    query, limit = _page_query(
        session,
        select(Run),
        team_id=team_id,
        status=status,
        kind=kind,
        tag=tag,
        comparison_id=comparison_id,
        parent_run_id=parent_run_id,
        cursor=cursor,
        limit=limit,
    )
    return _page(list(session.scalars(query)), limit)


# Every column of runs but the config: a list page reads these (the config is ~1 KB of JSON per run to fetch,
# decode and re-encode; GET /runs/{id} has it).
LISTED_COLUMNS = tuple(c for c in Run.__table__.columns if c.key != "config")


def list_run_rows(
    session: Session,
    *,
    team_id: int | None,
    status: str | Iterable[str] | None = None,
    kind: str | None = None,
    tag: str | None = None,
    comparison_id: int | None = None,
    parent_run_id: int | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Row[Any]], str | None]:
    """list_runs without the config: read-only rows with the other Run attributes (`row.id`, `row.status`, ...),
    one index range scan on (team_id, id) and no ORM objects. Same filters, order and cursor as list_runs."""
    query, limit = _page_query(
        session,
        select(*LISTED_COLUMNS),
        team_id=team_id,
        status=status,
        kind=kind,
        tag=tag,
        comparison_id=comparison_id,
        parent_run_id=parent_run_id,
        cursor=cursor,
        limit=limit,
    )
    return _page(list(session.execute(query)), limit)


def _page_query(
    session: Session, query: Select[Any], *, cursor: str | None, limit: int, **filters: Any
) -> tuple[Select[Any], int]:
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    where = _run_filters(session, **filters)
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


def count_runs(
    session: Session,
    *,
    team_id: int | None,
    status: str | Iterable[str] | None = None,
    kind: str | None = None,
    tag: str | None = None,
    comparison_id: int | None = None,
    parent_run_id: int | None = None,
) -> int:
    where = _run_filters(
        session,
        team_id=team_id,
        status=status,
        kind=kind,
        tag=tag,
        comparison_id=comparison_id,
        parent_run_id=parent_run_id,
    )
    return int(session.scalar(select(func.count()).select_from(Run).where(*where)) or 0)


def active_runs(session: Session) -> list[Run]:
    """Every running run, for the workers view (run.worker names the Celery worker)."""
    return list(session.scalars(select(Run).where(Run.status == "running").order_by(Run.id)))


# --- the worker's side ---


def claim_run(session: Session, *, run_id: int, worker: str, stale_after: timedelta) -> Run | None:
    """Mark the run running on `worker` if it may start; None means skip the job (already done or taken).

    A run may start when it is queued, or when it is 'running' but its previous execution is dead: its heartbeat
    is older than `stale_after`, or it was running on this same worker (a redelivery after the child was killed;
    workers run one job at a time). A cancelled queued run is never claimed.
    """
    begin_write(session)
    now = utcnow()
    reclaimable = and_(Run.status == "running", or_(Run.heartbeat_at < now - stale_after, Run.worker == worker))
    # Taking over a running run is a new attempt (the previous execution is fenced off) and uses up one retry.
    result = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            or_(Run.status == "queued", and_(reclaimable, Run.attempt < Run.max_attempts)),
            Run.cancel_requested.is_(False),
        )
        .values(
            status="running",
            worker=worker,
            heartbeat_at=now,
            started_at=func.coalesce(Run.started_at, now),
            attempt=case((Run.status == "running", Run.attempt + 1), else_=Run.attempt),
        )
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount != 1:
        session.rollback()
        _fail_exhausted(session, run_id=run_id, worker=worker, reclaimable=reclaimable, now=now)
        return None
    session.commit()
    run = get_run(session, run_id=run_id)
    add_event(session, run_id=run_id, message=f"started on {worker} (attempt {run.attempt}/{run.max_attempts})")
    return run


def _fail_exhausted(session: Session, *, run_id: int, worker: str, reclaimable: ColumnElement[bool], now: Any) -> None:
    """A running run delivered again with no attempt left (a job that keeps killing its worker) fails."""
    run = get_run(session, run_id=run_id)
    if run is None or run.status != "running" or run.attempt < run.max_attempts:
        session.rollback()
        return
    error = (
        f"delivered again to {worker} after attempt {run.attempt} was lost (its worker process died?); "
        f"gave up after {run.attempt}/{run.max_attempts} attempts"
    )
    begin_write(session)
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, reclaimable, Run.attempt == run.attempt, Run.cancel_requested.is_(False))
        .values(status="failed", finished_at=now, error=error)
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount != 1:
        session.rollback()
        return
    add_event(session, run_id=run_id, message=f"failed: {error}", level="error", commit=False)
    session.commit()


def heartbeat(
    session: Session, *, run_id: int, attempt: int, step: int | None = None, progress: float | None = None
) -> Beat:
    """Record liveness (and step/progress). owned=False means the run was requeued or finished elsewhere."""
    row = _touch(session, run_id=run_id, attempt=attempt, step=step, progress=progress)
    session.commit()
    if row is None:
        return Beat(owned=False, cancel_requested=is_cancel_requested(session, run_id=run_id))
    return Beat(owned=True, cancel_requested=bool(row[0]))


def _touch(
    session: Session, *, run_id: int, attempt: int, step: int | None = None, progress: float | None = None
) -> Row[Any] | None:
    """The owning attempt's update of its run row (liveness, step/progress), in an open write transaction.

    Returns (cancel_requested,), or None when `attempt` no longer runs the run.
    """
    begin_write(session)
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if step is not None:
        values["step"] = step
    if progress is not None:
        values["progress"] = min(max(float(progress), 0.0), 1.0)
    return session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == "running", Run.attempt == attempt)
        .values(**values)
        .returning(Run.cancel_requested)
        .execution_options(synchronize_session="fetch")
    ).first()


@contextmanager
def fenced_write(
    session: Session, *, run_id: int, attempt: int, step: int | None = None, progress: float | None = None
) -> Iterator[Session | None]:
    """A session for a worker's writes (metrics, samples, checkpoints, events) that land only while `attempt` still
    runs the run; None when it does not (the run was requeued, taken over, finished or deleted).

    One transaction: it starts with the heartbeat's update of the run row (step/progress included when given), which
    locks the row (PostgreSQL) or the database (SQLite) until the writes commit, so a takeover (claim_run,
    requeue_run) lands either before the check, and nothing is written, or after the writes. Store write functions
    commit as usual on the yielded session; their commits only release savepoints of this transaction.
    """
    if _touch(session, run_id=run_id, attempt=attempt, step=step, progress=progress) is None:
        session.rollback()
        yield None
        return
    try:
        with Session(bind=session.connection(), join_transaction_mode="create_savepoint") as writes:
            yield writes
    except BaseException:
        session.rollback()
        raise
    session.commit()


def is_cancel_requested(session: Session, *, run_id: int) -> bool:
    """True if a cancel was asked or the run is gone (a deleted run must stop too)."""
    flag = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
    return True if flag is None else bool(flag)


def finish_run(
    session: Session, *, run_id: int, status: str, error: str | None = None, attempt: int | None = None
) -> bool:
    """Set a final status. Only a queued/running run changes (and, with `attempt`, only that execution's).

    Returns False when the run was already finished or has moved on to another attempt.
    """
    begin_write(session)
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)}, got {status!r}")
    where = [Run.id == run_id, Run.status.in_(("queued", "running"))]
    if attempt is not None:
        where.append(Run.attempt == attempt)
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if status == "succeeded":
        values["progress"] = 1.0
    result = session.execute(update(Run).where(*where).values(**values).execution_options(synchronize_session="fetch"))
    if result.rowcount != 1:
        session.rollback()
        return False
    message = status if error is None else f"{status}: {error}"
    add_event(session, run_id=run_id, message=message, level="error" if status == "failed" else "info")
    return True


# --- cancel, delete, requeue ---


def request_cancel(session: Session, *, run_id: int, team_id: int | None = None) -> Run | None:
    """Cancel: a queued run becomes 'cancelled' at once (it never starts); a running one gets the flag and the
    worker stops after its current step. Finished runs are left as they are. None if the run is not found."""
    run = get_run(session, run_id=run_id, team_id=team_id)
    if run is None:
        return None
    begin_write(session)
    now = utcnow()
    queued = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session="fetch")
    )
    if queued.rowcount == 1:
        add_event(session, run_id=run_id, message="cancelled before start", commit=False)
    else:
        running = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running", Run.cancel_requested.is_(False))
            .values(cancel_requested=True)
            .execution_options(synchronize_session="fetch")
        )
        if running.rowcount == 1:
            add_event(session, run_id=run_id, message="cancel requested", commit=False)
    session.commit()
    return get_run(session, run_id=run_id)


def delete_run(session: Session, *, run_id: int, data_dir: Path | str, team_id: int | None = None) -> bool:
    """Delete a run, its evaluations, their rows and their files. Raises RunActiveError while it is running."""
    run = get_run(session, run_id=run_id, team_id=team_id)
    if run is None:
        return False
    children = list(session.scalars(select(Run).where(Run.parent_run_id == run_id)))
    if any(r.status == "running" for r in [run, *children]):
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


def find_stale_runs(session: Session, *, older_than: timedelta) -> list[Run]:
    """Runs 'running' whose heartbeat stopped more than `older_than` ago (their worker died)."""
    cutoff = utcnow() - older_than
    stale = or_(Run.heartbeat_at < cutoff, and_(Run.heartbeat_at.is_(None), Run.started_at < cutoff))
    return list(session.scalars(select(Run).where(Run.status == "running", stale).order_by(Run.id)))


def requeue_run(session: Session, *, run_id: int, attempt: int, reason: str) -> Run | None:
    """Bookkeeping for a lost run (from the reaper): back to 'queued' with attempt + 1 while attempts remain,
    else 'failed' with `reason` as the error; 'cancelled' if a cancel was pending.

    Only acts on that attempt of a still-running run, so two reapers never both requeue. Returns the updated
    run (check .status == 'queued' to enqueue a job for it), or None if someone else handled it.
    """
    run = get_run(session, run_id=run_id)
    if run is None or run.status != "running" or run.attempt != attempt:
        return None
    begin_write(session)
    base = update(Run).where(Run.id == run_id, Run.status == "running", Run.attempt == attempt)
    if run.cancel_requested:
        values: dict[str, Any] = {"status": "cancelled", "finished_at": utcnow()}
        message = f"lost ({reason}) while cancelling: cancelled"
    elif attempt < run.max_attempts:
        values = {"status": "queued", "attempt": attempt + 1, "worker": None, "heartbeat_at": None}
        message = f"lost ({reason}); requeued, attempt {attempt + 1}/{run.max_attempts} resumes from its checkpoint"
    else:
        values = {"status": "failed", "finished_at": utcnow(), "error": f"{reason}; gave up after {attempt} attempts"}
        message = f"lost ({reason}); failed after {attempt}/{run.max_attempts} attempts"
    result = session.execute(base.values(**values).execution_options(synchronize_session="fetch"))
    if result.rowcount != 1:
        session.rollback()
        return None
    add_event(session, run_id=run_id, message=message, level="warning" if values["status"] == "queued" else "error")
    return get_run(session, run_id=run_id)


def preempt_run(session: Session, *, run_id: int, attempt: int, reason: str) -> Run | None:
    """A worker that is stopping gives its run back after checkpointing: 'queued' again, for the caller to enqueue.

    Like requeue_run, the next execution is a new attempt (attempt + 1), so any late write of this one is fenced
    off; unlike it, max_attempts grows by one as well: a preemption is not a failure and uses up none of the run's
    retries. Only that attempt of a running run with no cancel pending changes; returns None otherwise (the run
    moved on, or a cancel arrived: the caller finishes it as cancelled).
    """
    begin_write(session)
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == "running", Run.attempt == attempt, Run.cancel_requested.is_(False))
        .values(
            status="queued", attempt=attempt + 1, max_attempts=Run.max_attempts + 1, worker=None, heartbeat_at=None
        )
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount != 1:
        session.rollback()
        return None
    run = get_run(session, run_id=run_id)
    assert run is not None
    message = f"preempted: {reason}; requeued, attempt {run.attempt}/{run.max_attempts} resumes from its checkpoint"
    add_event(session, run_id=run_id, message=message, level="warning", commit=False)
    session.commit()  # the state change and its event together
    return run


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
