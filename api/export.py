"""`flowdppo export`: a finished run, from the platform (every point, every sample) or a local folder, to a tracker.

The run is read through the typed client (api/client.py) or from a `flowdppo train --out` folder and written with
the trainer's mirror classes (trainer/tracker_export.py), so an export holds what a live mirror would have.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from api.client import EXACT_WINDOW, Client
from trainer.callbacks import Sample
from trainer.tracker_export import ExportedRun, export_run, read_local_run

FINISHED = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}  # platform -> MLflow run status


def read_platform_run(client: Client, run_id: int, *, window: int = EXACT_WINDOW) -> ExportedRun:
    """Run `run_id` with all its metric points (exact, with wall times) and samples; it must have finished."""
    run = client.get_run(run_id)
    if run.status not in FINISHED:
        raise ValueError(f"run {run_id} is {run.status}: export it once it has finished")
    exported = ExportedRun(
        name=run.name or f"run-{run.id}",
        key=f"platform:{client.base_url}:{run.id}",
        config=run.config,
        status=FINISHED[run.status],
    )
    last_step = max(run.step, run.total_steps)
    for series in client.metric_points(run_id, step_max=last_step, window=window):
        walls = series.wall or [None] * len(series.steps)
        for step, value, wall in zip(series.steps, series.last, walls, strict=True):
            _, values = exported.metrics.setdefault(step, (wall, {}))
            values[series.key] = float("nan") if value is None else value
    for step in client.sample_steps(run_id):
        exported.samples[step] = [
            Sample(
                prompt=s.prompt,
                seed=s.seed,
                index=s.index,
                image=_decode(client.sample_image(run_id, s.id)),
                rewards={k: float(v) for k, v in s.rewards.items() if isinstance(v, int | float)},
            )
            for s in client.samples(run_id, step=step)
        ]
    return exported


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8


def export(source: str, to: str, target: str, *, client: Callable[[], Client], experiment: str = "") -> str:
    """Export `source` (a run id, or a `flowdppo train --out` folder) to `to` ("tensorboard" | "mlflow") at `target`.

    Returns where the run went. A folder that exists wins over a run id of the same spelling.
    """
    if Path(source).is_dir():
        run: Any = read_local_run(source)
    elif source.isdigit():
        with client() as c:
            run = read_platform_run(c, int(source))
    else:
        raise ValueError(f"{source!r} is neither a run id nor a `flowdppo train --out` folder")
    return export_run(run, to, target, experiment=experiment)
