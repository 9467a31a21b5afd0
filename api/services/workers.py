"""Who is connected: Celery workers answering a ping over the broker, and the runs the database says each one runs.

The api's own producer app (api.services.queue) asks the broker, so nothing here imports the worker package.
"""

from __future__ import annotations

from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from api.schemas import WorkerPublic
from api.services.errors import UnavailableError
from api.services.health import broker_error
from api.services.queue import TaskQueue
from store import runs as store_runs


def list_workers(session: Session, *, queue: TaskQueue, team_id: int, timeout: float = 1.0) -> list[WorkerPublic]:
    """Every worker that answers a ping, plus any worker a running run names (shown offline if it did not answer:
    the reaper requeues its run once the heartbeat is stale), with the ids of the caller's runs each one executes.

    Other teams' runs are hidden, but a worker busy with one still appears (the capacity is shared).
    """
    problem = broker_error(queue.app)  # a ping to a dead broker would retry for seconds, then fail with a 500
    if problem is not None:
        raise UnavailableError(f"cannot list the workers: {problem}")
    control = queue.app.control
    try:
        online = {name for reply in (control.ping(timeout=timeout) or []) for name in reply}
        active_queues = control.inspect(timeout=timeout).active_queues() or {}
    except (KombuError, OSError) as err:
        raise UnavailableError(f"cannot list the workers: the broker stopped answering: {err}") from err
    workers = {
        name: WorkerPublic(name=name, online=True, queues=sorted(q["name"] for q in active_queues.get(name, [])))
        for name in online
    }
    for run in store_runs.active_runs(session):
        if run.worker:
            worker = workers.setdefault(run.worker, WorkerPublic(name=run.worker, online=False))
            if run.team_id == team_id:
                worker.run_ids.append(run.id)
    return sorted(workers.values(), key=lambda w: w.name)
