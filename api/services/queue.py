"""Enqueueing jobs by task name (worker.tasks.train_run / evaluate_run), without importing the worker's tasks."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from api.services.errors import UnavailableError

log = logging.getLogger(__name__)

TASKS = {"train": ("worker.tasks.train_run", "train"), "eval": ("worker.tasks.evaluate_run", "eval")}


def make_celery_app(broker_url: str, broker_folder: str | None = None) -> Celery:
    """A producer-only Celery app on the same broker as the workers.

    The filesystem transport (embedded mode) keeps its messages in `broker_folder`; workers must use the same one.
    """
    app = Celery("flowdppo-api", broker=broker_url)
    options: dict[str, Any] = {}
    if broker_url.startswith("filesystem"):
        if broker_folder is None:
            raise ValueError("the filesystem transport needs broker_folder (settings.broker_folder)")
        from pathlib import Path

        folder = Path(broker_folder)
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    app.conf.update(
        broker_transport_options=options,
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

    def enqueue_run(self, *, run_id: int, kind: str) -> None:
        task_name, queue = TASKS[kind]
        try:
            self.app.send_task(task_name, args=[run_id], queue=queue, retry=True, retry_policy={"max_retries": 3})
        except Exception as err:  # kombu raises transport-specific errors; the caller gets one meaningful type
            log.exception("could not enqueue run %s", run_id)
            raise UnavailableError(f"the broker did not accept run {run_id}: {err}") from err
