"""The heartbeat reaper: runs 'running' with a dead worker are marked lost and requeued (or failed after
max_attempts), and queued runs whose job message is gone from the broker are sent again (worker/lost_messages.py).
The database, not the broker, is the truth about runs (platform.md "Broker facts")."""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from store import lifecycle
from store.enums import RunStatus
from store.models import Run
from worker.lost_messages import Enqueue, MissingMessages, waiting_run_ids
from worker.ranks import queued_rank_queues
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def reap_stale_runs(session: Session, *, stale_after: timedelta, enqueue: Enqueue) -> list[Run]:
    """One pass: every lost run is requeued (attempt + 1, event) and its job sent again, or failed with the error
    shown once max_attempts is used up. Safe to run from several processes at once. Returns the runs changed."""
    changed = []
    for run in lifecycle.find_stale_runs(session, older_than=stale_after):
        seconds, worker = int(stale_after.total_seconds()), run.worker
        reason = f"worker {worker or '?'} stopped sending heartbeats (none for {seconds} s)"
        updated = lifecycle.requeue_run(session, run_id=run.id, attempt=run.attempt, reason=reason)
        if updated is None:
            continue  # another reaper (or the worker itself) got there first
        if updated.status == RunStatus.QUEUED:
            try:
                enqueue(updated.id, updated.kind, updated.attempt)
            except Exception as err:  # the broker is down: the run must not stay queued with no job behind it
                lifecycle.finish_run(
                    session, run_id=updated.id, status=RunStatus.FAILED, error=f"could not requeue: {err}"
                )
        log.warning("run %s lost on %s: now %s (attempt %s)", run.id, worker, updated.status, updated.attempt)
        changed.append(updated)
    return changed


def run_reaper(settings: WorkerSettings, stop: threading.Event | None = None, *, watch_parent: bool = False) -> None:
    """Reap every REAPER_INTERVAL_SECONDS until `stop` is set (or, with watch_parent, the parent process exits)."""
    from store.session import make_sessionmaker
    from worker.celery_app import create_celery_app, enqueue_run

    stop = stop or threading.Event()
    app = create_celery_app(settings)
    factory: sessionmaker[Session] = make_sessionmaker(settings.DATABASE_URL)
    parent = os.getppid()

    def enqueue(run_id: int, kind: str, attempt: int) -> None:
        enqueue_run(run_id, kind, attempt=attempt, celery_app=app)

    missing = MissingMessages(after=settings.BROKER_RESEND_AFTER_SECONDS)
    while not stop.is_set():
        if watch_parent and os.getppid() != parent:
            return
        try:
            with factory() as session:
                reap_stale_runs(session, stale_after=settings.stale_after, enqueue=enqueue)
        except Exception:  # a database hiccup must not end the reaper; the next pass retries
            log.exception("reaper pass failed")
        resend_lost_messages(app, factory, missing, enqueue=enqueue)
        stop.wait(settings.REAPER_INTERVAL_SECONDS)


def resend_lost_messages(
    app: Celery, factory: sessionmaker[Session], missing: MissingMessages, *, enqueue: Enqueue
) -> list[int]:
    """Re-send the queued runs whose job message is gone from the broker (worker/lost_messages.py)."""
    try:
        with factory() as session:  # the queues of the rank counts waiting (a W > 1 run waits in train-w<W>)
            extra = queued_rank_queues(session)
        waiting = waiting_run_ids(app, extra_queues=extra)  # before the database read: a later run is only noted
    except Exception as err:  # the broker is down: nothing can be sent now anyway
        log.warning("reaper: cannot list the broker's queues (%s)", err)
        return []
    if waiting is None:
        return []  # a broker that cannot be listed
    try:
        with factory() as session:
            return missing.resend(session, waiting=waiting, enqueue=enqueue)
    except Exception:
        log.exception("reaper: re-sending lost messages failed")
        return []


if __name__ == "__main__":  # `python -m worker.reaper`: what `flowdppo worker` starts beside Celery
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reaper %(levelname)s %(message)s")
    run_reaper(WorkerSettings(), watch_parent=True)
