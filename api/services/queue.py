"""Enqueueing jobs by task name (store/broker.py's TASK_NAMES), without importing the worker's tasks."""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Celery

from api.services.errors import UnavailableError
from store.broker import DEFAULT_VISIBILITY_TIMEOUT, TASK_NAMES, Queue, task_id, transport_options

log = logging.getLogger(__name__)


def make_celery_app(
    broker_url: str, broker_folder: str | None = None, *, visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
) -> Celery:
    """A producer-only Celery app on the same broker, with the same transport options, as the workers.

    The filesystem transport (embedded mode) keeps its messages in `broker_folder`; workers must use the same one.
    On Redis `visibility_timeout` must be the workers' (settings.BROKER_VISIBILITY_TIMEOUT): the workers view pings
    them, and a ping re-queues every running job older than the pinging app's timeout (store/broker.py).
    """
    app = Celery("flowdppo-api", broker=broker_url)
    folder = Path(broker_folder) if broker_folder is not None else None
    app.conf.update(
        broker_transport_options=transport_options(broker_url, folder=folder, visibility_timeout=visibility_timeout),
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


class TaskQueue:
    """Sends a run's job to its queue. Call only after the run's row is committed (the worker re-reads it)."""

    def __init__(self, app: Celery):
        self.app = app

    def enqueue_run(self, *, run_id: int, kind: str, attempt: int = 1, queue_name: str | None = None) -> None:
        """`queue_name`: store.broker.run_queue's (a run of W > 1 ranks goes to train-w<W>); default: the kind's."""
        queue = Queue(kind)
        try:
            self.app.send_task(
                TASK_NAMES[queue],
                args=[run_id],
                queue=queue_name or queue.value,
                task_id=task_id(run_id, attempt),
                retry=True,
                retry_policy={"max_retries": 3},
            )
        except Exception as err:  # kombu raises transport-specific errors; the caller gets one meaningful type
            log.exception("could not enqueue run %s", run_id)
            raise UnavailableError(f"the broker did not accept run {run_id}: {err}") from err

    def revoke_run(self, *, run_id: int, attempt: int) -> None:
        """Tell the workers to drop the queued job of a cancelled run unopened (best effort: a worker that misses
        the broadcast, one started later, still skips it after one status query). Every attempt's id up to this one:
        a job a dead pool child held comes back under the id of the attempt it was sent for."""
        try:
            self.app.control.revoke([task_id(run_id, a) for a in range(1, attempt + 1)])
        except Exception:  # a broker blip only costs that worker one cheap skip
            log.warning("could not revoke the job of run %s", run_id, exc_info=True)
