"""Who is connected: Celery workers answering a ping, and the runs the database says each one is running."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas import WorkerPublic
from api.services.queue import TaskQueue
from store import runs as store_runs
from worker.status import list_workers as worker_status  # a plain function (celery + store), not a task module


def list_workers(session: Session, *, queue: TaskQueue, team_id: int, timeout: float = 1.0) -> list[WorkerPublic]:
    """Connected workers with the ids of the caller's runs each one executes.

    Other teams' runs are hidden, but a worker busy with one still appears (the capacity is shared).
    """
    own = {r.id for r in store_runs.active_runs(session) if r.team_id == team_id}
    return [
        WorkerPublic(name=w.name, online=w.online, queues=w.queues, run_ids=[r for r in w.run_ids if r in own])
        for w in worker_status(session, app=queue.app, timeout=timeout)
    ]
