"""A finished run as data (every metric point, every sample) and its export through the tracker mirrors.

`flowdppo export` reads a run from the platform (api/export.py) or from a `flowdppo train --out DIR` folder
(`read_local_run`) and writes it with `export_run` into TensorBoard event files or an MLflow tracking server,
with the same mirror classes a live run uses (trainer/trackers.py), so an export equals a live mirror.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainer.callbacks import Sample
from trainer.trackers import MLflowMirror, TensorBoardMirror


@dataclass
class ExportedRun:
    """Everything a tracker takes from one run. `metrics`: step -> (wall time in Unix seconds or None, values)."""

    name: str
    key: str  # where it came from: "platform:<url>:<id>" or "local:<dir>" (the MLflow tag flowdppo.source)
    config: dict[str, Any]
    metrics: dict[int, tuple[float | None, dict[str, float]]] = field(default_factory=dict)
    samples: dict[int, list[Sample]] = field(default_factory=dict)  # step -> the samples logged at it
    status: str = "FINISHED"  # MLflow's run status: FINISHED, FAILED or KILLED


def read_local_run(out_dir: str | Path) -> ExportedRun:
    """A `flowdppo train --out DIR` folder: config.json, metrics.jsonl and samples/step_*/index.json + PNGs."""
    from PIL import Image

    out_dir = Path(out_dir)
    metrics_file = out_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{out_dir} has no metrics.jsonl: not a `flowdppo train --out` folder")
    config_file = out_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    run = ExportedRun(name=out_dir.resolve().name, key=f"local:{out_dir.resolve()}", config=config)
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            step = int(row.pop("step"))
            run.metrics[step] = (None, {k: float(v) for k, v in row.items() if isinstance(v, int | float)})
    for index_file in sorted(out_dir.glob("samples/step_*/index.json")):
        step = int(index_file.parent.name.removeprefix("step_"))
        run.samples[step] = [
            Sample(
                prompt=e["prompt"],
                seed=e["seed"],
                index=e["index"],
                image=np.asarray(Image.open(index_file.parent / e["file"]).convert("RGB")),
                rewards=e.get("rewards", {}),
            )
            for e in json.loads(index_file.read_text())
        ]
    return run


def export_run(run: ExportedRun, to: Literal["tensorboard", "mlflow"], target: str, *, experiment: str = "") -> str:
    """Write `run` to TensorBoard event files in folder `target`, or to the MLflow tracking URI `target`.

    Synchronous, and errors propagate (an export that fails must say so). Returns where it went, for the user.
    """
    if to == "tensorboard":
        mirror: Any = TensorBoardMirror(target)
    elif to == "mlflow":
        artifacts = None  # sqlite: images beside the database, not in ./mlruns of wherever this runs
        if target.startswith("sqlite:///"):
            artifacts = (Path(target.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts").as_uri()
        mirror = MLflowMirror(
            target,
            experiment or "flowdppo",
            run.name,
            params=run.config,
            run_key=None,  # each export is a new MLflow run (finding the last one would append its points again)
            artifact_location=artifacts,
            allow_local_artifacts=True,
            batch_metrics=True,
            tags={"flowdppo.source": run.key[:5000]},
        )
    else:
        raise ValueError(f"to={to!r}: must be 'tensorboard' or 'mlflow'")
    try:
        for step, kind, payload, wall in _events(run):
            if kind == "metrics":
                mirror.on_metrics(step, payload, wall=wall)
            else:
                mirror.on_samples(step, payload, wall=wall)
    except BaseException:
        mirror.close("FAILED")
        raise
    mirror.close(run.status)
    if to == "mlflow":
        return f"{target} (experiment {experiment or 'flowdppo'!r}, run {mirror.run_id})"
    return target


def _events(run: ExportedRun) -> Iterator[tuple[int, str, Any, float | None]]:
    """Metrics and samples in step order, as the live run reported them."""
    for step in sorted(set(run.metrics) | set(run.samples)):
        wall, values = run.metrics.get(step, (None, {}))
        if values:
            yield step, "metrics", values, wall
        if step in run.samples:
            yield step, "samples", run.samples[step], wall
