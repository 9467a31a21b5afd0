"""The Celery app, configured from settings only: late acks, reject on worker loss, prefetch 1, one queue per kind
(the queues and task names are store/broker.py's, shared with the API)."""

from __future__ import annotations

import importlib

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_shutting_down
from kombu import Queue as KombuQueue

from store.broker import TASK_NAMES, Queue, task_id
from worker import shutdown
from worker.settings import WorkerSettings


def create_celery_app(settings: WorkerSettings) -> Celery:
    # task_cls: a job whose pool process dies has its run requeued by the main process at once (worker/recovery.py).
    app = Celery(
        "flowdppo", broker=settings.BROKER_URL, include=["worker.tasks"], task_cls="worker.recovery:RecoveringTask"
    )
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        # A job is acknowledged only when it returns, and handed out again if its worker process dies: the run
        # then resumes from its last checkpoint (platform.md "Job semantics").
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Seconds the main process waits for a dead child's result before WorkerLostError (Celery's default 10 s);
        # results are ignored (the database holds them), so waiting only delays the requeue of its run.
        worker_lost_wait=1.0,
        task_queues=[KombuQueue(q.value, routing_key=q.value) for q in Queue],
        task_default_queue=Queue.TRAIN.value,
        task_routes={name: {"queue": queue.value} for queue, name in TASK_NAMES.items()},
        task_ignore_result=True,  # the database holds every outcome
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = create_celery_app(WorkerSettings())


@worker_init.connect
def _preload_trainer(**_kwargs: object) -> None:
    # Import torch/diffusers once in the parent, so each forked child (one per job) starts at once. Importing torch
    # does not initialise CUDA; the first CUDA call happens in the child, after the fork.
    importlib.import_module("trainer.train")
    importlib.import_module("trainer.evaluate")


@worker_process_init.connect
def _limit_torch_threads(**_kwargs: object) -> None:
    # In each job's process (the pool child, after the fork): CPU slots of `flowdppo up` share the cores
    # (worker/slots.py); torch would otherwise start one thread per core in every slot.
    threads = WorkerSettings().WORKER_TORCH_THREADS
    if threads:
        import torch

        torch.set_num_threads(threads)


# A stop (SIGTERM) preempts the running job at its next step boundary instead of waiting for it to finish
# (worker/shutdown.py); weak=False: the receivers are module functions, kept alive anyway.
worker_shutting_down.connect(shutdown.on_worker_shutting_down, weak=False)
worker_process_init.connect(shutdown.on_worker_process_init, weak=False)


def enqueue_run(
    run_id: int, kind: str, *, attempt: int, celery_app: Celery | None = None, queue: str | None = None
) -> None:
    """Send the run's job to its queue (default: its kind's; store.broker.run_queue for a run of several ranks)
    under the attempt's task id (store.broker.task_id), which a cancel revokes. Call after the run's row is
    committed (the worker re-reads it by id)."""
    (celery_app or app).send_task(
        TASK_NAMES[Queue(kind)], args=[run_id], queue=queue or Queue(kind).value, task_id=task_id(run_id, attempt)
    )
