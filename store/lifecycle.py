"""A run's state changes, the job semantics of platform.md: a worker claims it, beats, writes fenced by its attempt
and finishes it; the API cancels it; the reaper requeues it when lost; a stopping worker preempts it.

State changes that race (a worker claiming while the API cancels, two reapers, a stale worker finishing a run
that was requeued) are single conditional UPDATEs, so exactly one side wins on SQLite and PostgreSQL alike.
Every write function commits. The rows themselves (create, read, list, delete) are store/runs.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from store.enums import ACTIVE_STATUSES, FINISHED_STATUSES, RunStatus
from store.models import Run, utcnow
from store.runs import add_event, get_run
from store.session import begin_write


@dataclass(frozen=True)
class Beat:
    """Answer to a heartbeat: whether the calling worker still owns the run, and whether a cancel was asked."""

    owned: bool
    cancel_requested: bool

    @property
    def should_stop(self) -> bool:
        return not self.owned or self.cancel_requested


# --- the worker's side ---


def claim_run(session: Session, *, run_id: int, worker: str, stale_after: timedelta) -> Run | None:
    """Mark the run running on `worker` if it may start; None means skip the job (already done or taken).

    A run may start when it is queued, or when it is 'running' but its previous execution is dead: its heartbeat
    is older than `stale_after`, or it was running on this same worker (a redelivery after the child was killed;
    workers run one job at a time). A cancelled queued run is never claimed.
    """
    begin_write(session)
    now = utcnow()
    reclaimable = and_(
        Run.status == RunStatus.RUNNING, or_(Run.heartbeat_at < now - stale_after, Run.worker == worker)
    )
    # Taking over a running run is a new attempt (the previous execution is fenced off) and uses up one retry.
    result = session.execute(
        update(Run)
        .where(
            Run.id == run_id,
            or_(Run.status == RunStatus.QUEUED, and_(reclaimable, Run.attempt < Run.max_attempts)),
            Run.cancel_requested.is_(False),
        )
        .values(
            status=RunStatus.RUNNING,
            worker=worker,
            heartbeat_at=now,
            started_at=func.coalesce(Run.started_at, now),
            attempt=case((Run.status == RunStatus.RUNNING, Run.attempt + 1), else_=Run.attempt),
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
    if run is None or run.status != RunStatus.RUNNING or run.attempt < run.max_attempts:
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
        .values(status=RunStatus.FAILED, finished_at=now, error=error)
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
        .where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.attempt == attempt)
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
    session: Session, *, run_id: int, status: RunStatus, error: str | None = None, attempt: int | None = None
) -> bool:
    """Set a final status. Only a queued/running run changes (and, with `attempt`, only that execution's).

    Returns False when the run was already finished or has moved on to another attempt.
    """
    begin_write(session)
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status must be one of {sorted(s.value for s in FINISHED_STATUSES)}, got {status!r}")
    where = [Run.id == run_id, Run.status.in_(ACTIVE_STATUSES)]
    if attempt is not None:
        where.append(Run.attempt == attempt)
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if status == RunStatus.SUCCEEDED:
        values["progress"] = 1.0
    result = session.execute(update(Run).where(*where).values(**values).execution_options(synchronize_session="fetch"))
    if result.rowcount != 1:
        session.rollback()
        return False
    message = status if error is None else f"{status}: {error}"
    add_event(session, run_id=run_id, message=message, level="error" if status == RunStatus.FAILED else "info")
    return True


# --- cancel, requeue, preempt ---


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
        .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
        .values(status=RunStatus.CANCELLED, cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session="fetch")
    )
    if queued.rowcount == 1:
        add_event(session, run_id=run_id, message="cancelled before start", commit=False)
    else:
        running = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.cancel_requested.is_(False))
            .values(cancel_requested=True)
            .execution_options(synchronize_session="fetch")
        )
        if running.rowcount == 1:
            add_event(session, run_id=run_id, message="cancel requested", commit=False)
    session.commit()
    return get_run(session, run_id=run_id)


def find_stale_runs(session: Session, *, older_than: timedelta) -> list[Run]:
    """Runs 'running' whose heartbeat stopped more than `older_than` ago (their worker died)."""
    cutoff = utcnow() - older_than
    stale = or_(Run.heartbeat_at < cutoff, and_(Run.heartbeat_at.is_(None), Run.started_at < cutoff))
    return list(session.scalars(select(Run).where(Run.status == RunStatus.RUNNING, stale).order_by(Run.id)))


def requeue_run(session: Session, *, run_id: int, attempt: int, reason: str) -> Run | None:
    """Bookkeeping for a lost run (from the reaper): back to 'queued' with attempt + 1 while attempts remain,
    else 'failed' with `reason` as the error; 'cancelled' if a cancel was pending.

    Only acts on that attempt of a still-running run, so two reapers never both requeue. Returns the updated
    run (check .status == 'queued' to enqueue a job for it), or None if someone else handled it.
    """
    run = get_run(session, run_id=run_id)
    if run is None or run.status != RunStatus.RUNNING or run.attempt != attempt:
        return None
    begin_write(session)
    base = update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.attempt == attempt)
    if run.cancel_requested:
        values: dict[str, Any] = {"status": RunStatus.CANCELLED, "finished_at": utcnow()}
        message = f"lost ({reason}) while cancelling: cancelled"
    elif attempt < run.max_attempts:
        values = {"status": RunStatus.QUEUED, "attempt": attempt + 1, "worker": None, "heartbeat_at": None}
        message = f"lost ({reason}); requeued, attempt {attempt + 1}/{run.max_attempts} resumes from its checkpoint"
    else:
        values = {
            "status": RunStatus.FAILED,
            "finished_at": utcnow(),
            "error": f"{reason}; gave up after {attempt} attempts",
        }
        message = f"lost ({reason}); failed after {attempt}/{run.max_attempts} attempts"
    result = session.execute(base.values(**values).execution_options(synchronize_session="fetch"))
    if result.rowcount != 1:
        session.rollback()
        return None
    add_event(
        session, run_id=run_id, message=message, level="warning" if values["status"] == RunStatus.QUEUED else "error"
    )
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
        .where(
            Run.id == run_id, Run.status == RunStatus.RUNNING, Run.attempt == attempt, Run.cancel_requested.is_(False)
        )
        .values(
            status=RunStatus.QUEUED,
            attempt=attempt + 1,
            max_attempts=Run.max_attempts + 1,
            worker=None,
            heartbeat_at=None,
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
