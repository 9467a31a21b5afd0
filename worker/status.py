"""The workers view: which Celery workers answer, which queues they serve, and the runs the database says they run."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.orm import Session

from store import runs


@dataclass
class WorkerInfo:
    name: str  # Celery node name, e.g. gpu0@host (= runs.worker)
    online: bool  # answered a ping
    queues: list[str] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)  # runs 'running' on it according to the database


def list_workers(session: Session, *, app: Celery, timeout: float = 1.0) -> list[WorkerInfo]:
    """Every worker that answers a ping, plus any worker a running run names (shown offline if it did not answer:
    the reaper will requeue its run once the heartbeat is stale)."""
    inspect = app.control.inspect(timeout=timeout)
    online = {name for reply in (app.control.ping(timeout=timeout) or []) for name in reply}
    queues = {name: sorted(q["name"] for q in qs) for name, qs in ((inspect.active_queues() or {}).items())}
    infos = {name: WorkerInfo(name=name, online=True, queues=queues.get(name, [])) for name in online}
    for run in runs.active_runs(session):
        if run.worker:
            infos.setdefault(run.worker, WorkerInfo(name=run.worker, online=False)).run_ids.append(run.id)
    return sorted(infos.values(), key=lambda w: w.name)
