"""`flowdppo export DIR --to tensorboard DIR | mlflow URI` on a local `flowdppo train --out` folder, read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

import flowdppo
from trainer.callbacks import JsonlCallback, Sample
from trainer.tracker_export import read_local_run

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS = [0, 1, 2, 5]


@pytest.fixture
def run_folder(tmp_path):
    """A folder as `flowdppo train --out` leaves it, written by the CLI's own JsonlCallback."""
    out = tmp_path / "run"
    jsonl = JsonlCallback(out)
    (out / "config.json").write_text(json.dumps({"loss": "dppo", "rewards": [{"name": "shapes", "weight": 1.0}]}))
    for step in STEPS:
        jsonl.on_metrics(step, {"reward/total/mean": 0.1 + step / 3, "kl_old/mean": step * 1e-7})
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    jsonl.on_samples(5, [Sample(prompt="a blue circle", seed=3, index=0, image=image, rewards={"shapes": 0.75})])
    return out


def test_local_folder_read_back(run_folder):
    run = read_local_run(run_folder)
    assert sorted(run.metrics) == STEPS and run.config["loss"] == "dppo"
    (sample,) = run.samples[5]
    assert sample.prompt == "a blue circle" and sample.rewards == {"shapes": 0.75} and sample.image.shape == (8, 8, 3)


def test_export_folder_to_tensorboard(run_folder, tmp_path, capsys):
    assert flowdppo.main(["export", str(run_folder), "--to", "tensorboard", str(tmp_path / "tb")]) == 0
    assert "exported to tensorboard" in capsys.readouterr().out
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    expected = [(s, float(np.float32(0.1 + s / 3))) for s in STEPS]  # float32 in event files
    assert [(e.step, e.value) for e in events.Scalars("reward/total/mean")] == expected
    (image,) = events.Images("samples/000")
    assert (image.step, image.width, image.height) == (5, 8, 8)


def test_export_folder_to_mlflow(run_folder, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert flowdppo.main(["export", str(run_folder), "--to", "mlflow", uri, "--experiment", "exported"]) == 0
    assert "exported to mlflow" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exported").experiment_id])
    history = client.get_metric_history(run.info.run_id, "reward/total/mean")
    assert [(m.step, m.value) for m in history] == [(s, 0.1 + s / 3) for s in STEPS]
    assert run.data.params["rewards.0.name"] == "shapes" and run.info.status == "FINISHED"
    assert run.data.tags["flowdppo.source"] == f"local:{run_folder.resolve()}"
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "images"))
    assert (tmp_path / "mlflow-artifacts").is_dir()  # beside the database, not in the working directory


def test_export_refuses_what_it_cannot_read(tmp_path, capsys):
    assert flowdppo.main(["export", str(tmp_path), "--to", "tensorboard", str(tmp_path / "tb")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert flowdppo.main(["export", "not-a-run", "--to", "tensorboard", str(tmp_path / "tb")]) == 2
    assert "neither a run id" in capsys.readouterr().err
    assert flowdppo.main(["export", "1", "--to", "wandb", str(tmp_path)]) == 2
    assert "tensorboard DIR or mlflow URI" in capsys.readouterr().err
