"""A job whose pool process dies (kill -9, the OOM killer, a segfault) is noticed by the worker's main process.

Celery's main process learns at once that its pool child is gone (WorkerLostError, after `worker_lost_wait`); with
reject_on_worker_lost it puts the message back in the queue, but the run row still says 'running' on this worker,
so without this module the run waited for the heartbeat reaper (RUN_STALE_AFTER_SECONDS, 3 min by default). Here,
in the main process, before the message is put back: the run that the dead child was running is requeued as a new
attempt with store.lifecycle.requeue_run, the reaper's fenced requeue (only that attempt of a still-running run
changes; a cancel pending means cancelled, no attempt left means failed). The message put back then claims the
queued run like any job, and the next execution resumes from the last recorded checkpoint.

The reaper stays the safety net for a worker whose main process dies too (a whole machine): nobody is left here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.worker.request import Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from store import lifecycle, runs
from store.enums import RunStatus
from store.models import Run
from store.session import make_engine

log = logging.getLogger(__name__)


def requeue_lost_run(session: Session, *, run_id: int, worker: str, reason: str) -> Run | None:
    """Requeue run `run_id` if it is 'running' on `worker`, whose job process just died; None if it is not.

    A worker runs one job at a time, so the run that names it is the dead child's: its current attempt is the one
    fenced off. Returns the updated run (queued, or failed/cancelled), or None when there was nothing to do (the job
    died before claiming the run, or the run finished or moved on).
    """
    run = runs.get_run(session, run_id=run_id)
    if run is None or run.status != RunStatus.RUNNING or run.worker != worker:
        return None
    updated = lifecycle.requeue_run(session, run_id=run.id, attempt=run.attempt, reason=reason)
    if updated is not None:
        log.warning("run %s lost (%s): now %s (attempt %s)", run.id, reason, updated.status, updated.attempt)
    return updated


@lru_cache(maxsize=1)
def _sessions() -> sessionmaker[Session]:
    # In the worker's main process, which forks the pool children: no pooled connection may outlive its use, or a
    # child would inherit its socket (NullPool opens and closes one per session).
    from worker.settings import WorkerSettings

    engine = make_engine(WorkerSettings().DATABASE_URL, poolclass=NullPool)
    return sessionmaker(bind=engine, expire_on_commit=False)


def _is_worker_lost(request: Request, exc: BaseException) -> bool:
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if isinstance(exc, WorkerLostError):
        return True
    # billiard >= 4.3 may report the child's exit as SystemExit; Celery treats it as lost unless it revoked the job.
    revoked = getattr(request, "_already_cancelled", False) or getattr(request, "_already_revoked", False)
    return isinstance(exc, SystemExit | KeyboardInterrupt) and not revoked


class LostJobRequest(Request):
    """A job's request in the worker's main process: a lost job's run is requeued before its message is put back."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        if _is_worker_lost(self, exc_info.exception) and self.args:
            reason = f"its job process on {self.hostname} died: {exc_info.exception}"
            try:
                with _sessions()() as session:
                    requeue_lost_run(session, run_id=int(self.args[0]), worker=self.hostname, reason=reason)
            except (SQLAlchemyError, ValueError, TypeError):  # the reaper requeues it later; the message goes back
                log.exception("could not requeue the run of lost job %s", self.id)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class RecoveringTask(Task):
    """The base of the platform's tasks (the app's task_cls): their requests are LostJobRequests."""

    Request = "worker.recovery:LostJobRequest"
