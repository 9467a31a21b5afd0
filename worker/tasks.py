"""Celery tasks: take a run id, let jobs.py re-read the run from the store and do the work."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Task
from celery.exceptions import Reject

from store.session import make_sessionmaker
from worker import jobs, ranks, shutdown
from worker.celery_app import app, enqueue_run
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _settings_and_sessions() -> tuple[WorkerSettings, object]:
    # Built lazily in the child process that runs the job, never in the parent before it forks.
    settings = WorkerSettings()
    return settings, make_sessionmaker(settings.DATABASE_URL)


def _device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def job_context(task: Task) -> jobs.JobContext:
    settings, session_factory = _settings_and_sessions()
    return jobs.JobContext(
        session_factory=session_factory,  # type: ignore[arg-type]
        data_dir=settings.DATA_DIR,
        worker=task.request.hostname or "unknown",
        device=_device(settings.WORKER_DEVICE),
        heartbeat_seconds=settings.WORKER_HEARTBEAT_SECONDS,
        stale_after=settings.stale_after,
        shutting_down=shutdown.requested,
        enqueue=lambda run_id, kind, attempt: enqueue_run(run_id, kind, attempt=attempt, celery_app=task.app),
        reward_hosts=tuple(settings.remote_reward_hosts),
    )


def _not_while_stopping() -> None:
    """A job delivered after this worker was told to stop goes back to the broker untouched, for another worker.

    It happens: with the filesystem transport Celery's synloop drains the broker once more after the stop, and may
    fetch the very job that a preempted run just re-sent (a fresh pool child inherits the stop flag at fork).
    """
    if shutdown.requested():
        raise Reject("worker shutting down", requeue=True)


@app.task(bind=True, name="worker.tasks.train_run")
def train_run(self: Task, run_id: int) -> str:
    _not_while_stopping()
    if jobs.nothing_to_do(int(run_id), _settings_and_sessions()[1]):  # type: ignore[arg-type]
        return jobs.Outcome.SKIPPED.value  # cancelled while queued (and the revoke missed this worker)
    settings, sessions = _settings_and_sessions()
    if (forward := ranks.forward_queue(int(run_id), sessions, settings.WORKER_RANKS)) is not None:  # type: ignore[arg-type]
        queue, attempt = forward  # a re-send by the reaper or a preemption, to the queue of workers with enough GPUs
        enqueue_run(int(run_id), "train", attempt=attempt, celery_app=self.app, queue=queue)
        return jobs.Outcome.SKIPPED.value
    with shutdown.preemptible():  # SIGTERM: stop after the current step, checkpoint, requeue (worker/shutdown.py)
        outcome = jobs.run_training(int(run_id), ctx=job_context(self))
    log.info("train run %s: %s", run_id, outcome)
    return outcome.value


@app.task(bind=True, name="worker.tasks.evaluate_run")
def evaluate_run(self: Task, run_id: int) -> str:
    _not_while_stopping()
    if jobs.nothing_to_do(int(run_id), _settings_and_sessions()[1]):  # type: ignore[arg-type]
        return jobs.Outcome.SKIPPED.value
    with shutdown.preemptible():
        outcome = jobs.run_evaluation(int(run_id), ctx=job_context(self))
    log.info("eval run %s: %s", run_id, outcome)
    return outcome.value
