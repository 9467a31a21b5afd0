"""Who is connected: Celery workers answering a ping, and the runs the database says each one is running."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas import WorkerPublic
from api.services.queue import TaskQueue
from store import runs as store_runs


def list_workers(session: Session, *, queue: TaskQueue, team_id: int, timeout: float = 1.0) -> list[WorkerPublic]:
    """Connected workers (by ping) with the ids of the caller's runs each one is executing.

    Other teams' runs are not listed, but a worker busy with one still appears (capacity is shared).
    """
    names = queue.connected_workers(timeout=timeout)
    running: dict[str, list[int]] = {}
    for run in store_runs.active_runs(session):
        if run.team_id == team_id and run.worker:
            running.setdefault(run.worker, []).append(run.id)
    queues = queue.worker_queues(timeout=timeout) if names else {}
    return [WorkerPublic(name=n, active_run_ids=running.get(n, []), queues=queues.get(n, [])) for n in sorted(names)]
