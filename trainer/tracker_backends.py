"""The tracker writers: TensorBoard event files (SummaryWriter) and an MLflow run (MlflowClient), synchronous.

trainer/trackers.py guards them for live runs (warnings, a background thread for MLflow) and trainer/tracker_export.py
drives them for exports. The libraries are the optional `trackers` extra, imported when a writer is made.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trainer.callbacks import NullCallback, Sample

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'flowdppo[trackers]'"
# MLflow's limits (mlflow.utils.validation): param values, keys, params and metrics per log_batch call.
MLFLOW_MAX_PARAM_VALUE, MLFLOW_MAX_KEY = 6000, 250
MLFLOW_MAX_PARAMS_PER_BATCH, MLFLOW_MAX_METRICS_PER_BATCH = 100, 1000
_MLFLOW_KEY_UNSAFE = re.compile(r"[^\w\-. /]")  # MLflow names: alphanumerics, _ - . space /


def _require(module: str, kind: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the {kind} mirror needs the optional trackers extra: {EXTRA_HINT} ({err})") from err


class TensorBoardMirror(NullCallback):
    """TensorBoard event files in `log_dir`: every metric as a scalar, every sample as an image plus a text entry.

    Sample tags are `samples/<index>` (the run's fixed sample set: same prompt and seed at every step), the text
    `samples/<index>/caption` holds prompt, seed and rewards. A resumed run purges the steps it replays.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | Path):
        _require("tensorboard", "tensorboard")
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def _open(self, step: int) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            resumed = self.log_dir.is_dir() and any(self.log_dir.glob("events.out.tfevents.*"))
            self._writer = SummaryWriter(str(self.log_dir), purge_step=step if resumed else None, flush_secs=30)
        return self._writer

    def on_metrics(self, step: int, metrics: dict[str, float], wall: float | None = None) -> None:
        writer = self._open(step)
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step, walltime=wall)

    def on_samples(self, step: int, samples: list[Sample], wall: float | None = None) -> None:
        writer = self._open(step)
        for s in samples:
            tag = f"samples/{s.index:03d}"
            writer.add_image(tag, s.image, global_step=step, walltime=wall, dataformats="HWC")
            writer.add_text(f"{tag}/caption", caption(s), global_step=step, walltime=wall)

    def close(self, status: str = "FINISHED") -> None:
        if self._writer is not None:
            self._writer.close()


def caption(sample: Sample) -> str:
    rewards = ", ".join(f"{k}={v:.4g}" for k, v in sample.rewards.items())
    return f"{sample.prompt} (seed {sample.seed}{'; ' + rewards if rewards else ''})"


class MLflowMirror(NullCallback):
    """One MLflow run through `MlflowClient`: metrics by log_batch (step + timestamp), samples by log_image.

    The experiment and run are created on the first report; the run is found again (tag `flowdppo.run_key`) when
    a resumed run reports to the same tracker. Params are the run config, flattened and cut to MLflow's limits.
    Synchronous: live runs wrap it in `BackgroundMirror` (an unreachable server retries for minutes per call).
    batch_metrics=True (exports) sends up to 1000 points per request instead of one request per step.

    Images go only where this machine is meant to write: the server's proxied store (`mlflow-artifacts:`), our own
    `artifact_location`, or anywhere when `allow_local_artifacts` (an export, on the user's machine). A server whose
    runs' artifacts live at a local path or in a cloud bucket would otherwise have *this* machine write there.
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "flowdppo",
        run_name: str | None = None,
        *,
        params: dict[str, Any] | None = None,
        run_key: str | None = None,
        artifact_location: str | None = None,
        allow_local_artifacts: bool = False,
        batch_metrics: bool = False,
        tags: dict[str, str] | None = None,
    ):
        tracking = _require("mlflow.tracking", "mlflow")
        self.client = tracking.MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        # Hashed: a tag value safe inside the search filter's quotes, whatever the folder or URL it names.
        self.run_key = hashlib.sha1(run_key.encode()).hexdigest()[:20] if run_key else None
        self.params, self.artifact_location, self.tags = params or {}, artifact_location, dict(tags or {})
        self.allow_local_artifacts = allow_local_artifacts  # export: the user's own machine
        self.run_id: str | None = None
        self._images_ok, self.batch_metrics, self._pending = True, batch_metrics, []

    def _run(self) -> str:
        if self.run_id is None:
            self.run_id = self._find_or_create_run()
        return self.run_id

    def _find_or_create_run(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        else:
            exp_id = exp.experiment_id
        if self.run_key is not None:
            found = self.client.search_runs([exp_id], f"tags.`flowdppo.run_key` = '{self.run_key}'", max_results=1)
            if found:
                self._check_artifact_uri(found[0].info.artifact_uri)
                self.client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
        tags = {**self.tags, **({"flowdppo.run_key": self.run_key} if self.run_key else {})}
        run = self.client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self._check_artifact_uri(run.info.artifact_uri)
        entities = _require("mlflow.entities", "mlflow")
        items = [entities.Param(k, v) for k, v in flatten_params(self.params).items()]
        for i in range(0, len(items), MLFLOW_MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=items[i : i + MLFLOW_MAX_PARAMS_PER_BATCH])
        return run.info.run_id

    def _check_artifact_uri(self, artifact_uri: str) -> None:
        """The server names where artifacts go (see the class docstring): images only where this machine may write."""
        ours = self.artifact_location is not None and artifact_uri.startswith(self.artifact_location.rstrip("/") + "/")
        proxied = urlsplit(artifact_uri).scheme == "mlflow-artifacts"
        if not (ours or proxied or self.allow_local_artifacts):
            self._images_ok = False
            log.warning("mlflow run artifacts go to %r, not through the server: images are not mirrored", artifact_uri)

    def on_metrics(self, step: int, metrics: dict[str, float], wall: float | None = None) -> None:
        entities = _require("mlflow.entities", "mlflow")
        ms = int((wall if wall is not None else time.time()) * 1000)
        self._pending.extend(entities.Metric(mlflow_key(k), float(v), ms, step) for k, v in metrics.items())
        if not self.batch_metrics or len(self._pending) >= MLFLOW_MAX_METRICS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        while self._pending:  # taken off before sending: a failed batch is dropped, never re-sent forever
            chunk, self._pending = (
                self._pending[:MLFLOW_MAX_METRICS_PER_BATCH],
                self._pending[MLFLOW_MAX_METRICS_PER_BATCH:],
            )
            self.client.log_batch(self._run(), metrics=chunk)

    def on_samples(self, step: int, samples: list[Sample], wall: float | None = None) -> None:
        run_id = self._run()
        if not self._images_ok:
            return
        for s in samples:
            ms = int((wall if wall is not None else time.time()) * 1000)
            self.client.log_image(run_id, s.image, key=f"samples/{s.index:03d}", step=step, timestamp=ms)
        captions = {f"{s.index:03d}": caption(s) for s in samples}
        self.client.log_dict(run_id, captions, f"samples/step_{step:06d}.json")

    def close(self, status: str = "FINISHED") -> None:
        self._flush()
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def mlflow_key(key: str) -> str:
    return _MLFLOW_KEY_UNSAFE.sub("_", key)[:MLFLOW_MAX_KEY]


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"rewards": [{"name": "shapes"}]} -> {"rewards.0.name": "shapes"}, values str, cut to MLflow's limits."""
    out: dict[str, str] = {}
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | list) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            out[mlflow_key(name)] = str(value)[:MLFLOW_MAX_PARAM_VALUE]
    return out
