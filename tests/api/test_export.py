"""`flowdppo export RUN`: a finished platform run, every point and sample, into TensorBoard and MLflow, read back."""

from __future__ import annotations

import numpy as np
import pytest
from factories import add_points, add_sample_images, make_run

import flowdppo
from api import cli
from api.client import Client
from api.export import read_platform_run
from store import lifecycle as store_lifecycle

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

KEYS = {"reward/total/mean": 0.25, "kl_old/mean": 0.5}
STEPS = range(11)  # over several windows of the test's window=4: steps 0-3, 4-7, 8-11


@pytest.fixture
def api_client(client, team, monkeypatch) -> Client:
    api_client = Client(token=team.token, http=client)
    monkeypatch.setattr(cli, "_client", lambda args: api_client)
    return api_client


@pytest.fixture
def finished_run(session, services, team) -> int:
    run = make_run(session, team_id=team.team_id, status="running", name="exported")
    add_points(session, run_id=run, steps=STEPS, keys=KEYS)
    add_sample_images(session, data_dir=services.settings.DATA_DIR, run_id=run, step=5, prompts=["a", "b"])
    store_lifecycle.finish_run(session, run_id=run, status="succeeded")
    session.commit()
    return run


def expected(key: str) -> list[tuple[int, float]]:
    return [(s, KEYS[key] + s / 1000) for s in STEPS]  # factories.add_points


def test_every_point_across_windows(api_client, finished_run):
    run = read_platform_run(api_client, finished_run, window=4)
    assert sorted(run.metrics) == list(STEPS) and run.status == "FINISHED" and run.name == "exported"
    for key in KEYS:
        assert [(s, run.metrics[s][1][key]) for s in STEPS] == expected(key)
    assert all(wall is not None for wall, _ in run.metrics.values())
    assert [(s.index, s.prompt, s.image.shape) for s in run.samples[5]] == [(0, "a", (8, 8, 3)), (1, "b", (8, 8, 3))]


def test_export_run_to_tensorboard_and_mlflow(api_client, finished_run, tmp_path, capsys):
    assert flowdppo.main(["export", str(finished_run), "--to", "tensorboard", str(tmp_path / "tb")]) == 0
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for key in KEYS:
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(s, float(np.float32(v))) for s, v in expected(key)]  # event files hold float32
    assert [i.step for i in events.Images("samples/001")] == [5]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert flowdppo.main(["export", str(finished_run), "--to", "mlflow", uri]) == 0
    assert "exported to mlflow" in capsys.readouterr().out
    mlflow = MlflowClient(tracking_uri=uri)
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("flowdppo").experiment_id])
    for key in KEYS:
        assert [(m.step, m.value) for m in mlflow.get_metric_history(run.info.run_id, key)] == expected(key)
    assert run.info.run_name == "exported" and run.data.params["steps"] == "10"


def test_an_unfinished_run_is_not_exported(api_client, session, team, tmp_path, capsys):
    run = make_run(session, team_id=team.team_id, status="running")
    assert flowdppo.main(["export", str(run), "--to", "tensorboard", str(tmp_path)]) == 2
    assert "is running" in capsys.readouterr().err
