"""What the API and the workers agree on about the broker (platform.md "Job semantics"): the queues, the task names
and the transport options, the one definition every Celery app of the platform uses (the worker's, the API's
producer, the container health check).

Here rather than in worker/ because the API may not import the worker. On Redis, any process whose connection
drains events (a worker, a `control.ping`, Flower) re-queues every unacknowledged job older than *its own*
visibility timeout, so a process left at kombu's default (1 h) would hand each longer run to a second worker.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from store.enums import RunKind


class Queue(StrEnum):
    """One queue per job kind (= runs.kind), so GPU pools can be split between training and evaluation."""

    TRAIN = RunKind.TRAIN.value
    EVAL = RunKind.EVAL.value


def train_queue(num_processes: int = 1) -> str:
    """The queue of a training run of `num_processes` ranks (spec §12): 'train' for one, 'train-w<W>' for W > 1,
    consumed only by workers that own W GPUs or more (`flowdppo worker --gpus ...`, or `--ranks W` on CPU)."""
    return Queue.TRAIN.value if num_processes <= 1 else f"{Queue.TRAIN.value}-w{num_processes}"


def run_queue(kind: str, config: dict[str, Any]) -> str:
    """The queue a run's job goes to: its kind's, and for training its rank count's."""
    return train_queue(int(config.get("num_processes", 1))) if kind == Queue.TRAIN.value else Queue(kind).value


def rank_queues(ranks: int) -> list[str]:
    """The training queues a worker that hosts `ranks` ranks serves: train-w2 ... train-w<ranks>."""
    return [train_queue(w) for w in range(2, ranks + 1)]


# The worker registers its tasks under these names; the API sends jobs by name, never importing worker/.
TASK_NAMES: dict[Queue, str] = {Queue.TRAIN: "worker.tasks.train_run", Queue.EVAL: "worker.tasks.evaluate_run"}


def task_id(run_id: int, attempt: int) -> str:
    """The Celery task id of a run's job for one attempt: known to whoever cancels the run, so the API can revoke a
    queued run's message and the workers drop it unopened (a new attempt is a new message with a new id)."""
    return f"run-{run_id}-attempt-{attempt}"


DEFAULT_VISIBILITY_TIMEOUT = 172_800  # seconds (48 h): above the longest run
DEFAULT_POLL_SECONDS = 0.5


def transport_options(
    broker_url: str,
    *,
    folder: Path | None = None,
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT,
    polling_interval: float = DEFAULT_POLL_SECONDS,
) -> dict[str, Any]:
    """`broker_transport_options` for `broker_url`.

    Args:
        broker_url: filesystem:// (embedded), redis://, rediss:// or sentinel://; other brokers get no options.
        folder: the filesystem transport's message folder (created here); required for filesystem://.
        visibility_timeout: Redis: seconds before an unacknowledged job is handed out again.
        polling_interval: filesystem transport: seconds between polls of the queues.
    """
    if broker_url.startswith("filesystem"):
        if folder is None:
            raise ValueError(f"broker {broker_url!r}: the filesystem transport needs `folder` (DATA_DIR/broker)")
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # fanout: revoke, ping, inspect
            "store_processed": False,
            "polling_interval": polling_interval,
        }
    if broker_url.startswith(("redis", "rediss", "sentinel")):
        return {"visibility_timeout": visibility_timeout}
    return {}
