"""A platform run mirrors to the trackers in its config (docs/trackers.md), inside its own artifact folder only.

The job's store callback stays the run's record; the mirrors hold the same points (read back with TensorBoard's
EventAccumulator and MlflowClient), and a remote MLflow server that reached the worker is left out, never called.
"""

from __future__ import annotations

import numpy as np
import pytest

from store import artifacts, metrics, runs
from worker import jobs

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

KEY = "reward/total/mean"
TRACKERS = [
    {"kind": "tensorboard"},
    {"kind": "mlflow", "uri": "sqlite:///mlflow.db"},
    {"kind": "mlflow", "uri": "http://127.0.0.1:9"},  # refused at submission; stored directly, as if it slipped by
]


@pytest.mark.slow
@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_run_mirrors_inside_its_folder_and_leaves_remote_servers_out(session, ctx, make_run, tiny_config):
    run = make_run(tiny_config(trackers=TRACKERS), name="mirrored")
    assert jobs.run_training(run.id, ctx=ctx) == jobs.Outcome.SUCCEEDED
    session.rollback()
    stored = [(p.step, p.value) for p in metrics.read_points(session, run_id=run.id, keys=[KEY])]
    assert [s for s, _ in stored] == [1, 2, 3]
    out_dir = artifacts.run_dir(ctx.data_dir, run.id)

    events = EventAccumulator(str(out_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars(KEY)] == [(s, float(np.float32(v))) for s, v in stored]
    assert [i.step for i in events.Images("samples/000")] == [2]

    client = MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    (mirrored,) = client.search_runs([client.get_experiment_by_name("flowdppo").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(mirrored.info.run_id, KEY)] == stored
    assert mirrored.info.status == "FINISHED" and mirrored.info.run_name == "mirrored"

    messages = [e.message for e in runs.list_events(session, run_id=run.id)]
    assert any("127.0.0.1:9" in m and "left out" in m for m in messages), messages


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_missing_extra_fails_the_run_naming_it(session, ctx, make_run, tiny_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    run = make_run(tiny_config(trackers=[{"kind": "tensorboard"}]))

    def never(*_a, **_k):
        raise AssertionError("the trainer must not start")

    assert jobs.run_training(run.id, ctx=ctx, train_fn=never) == jobs.Outcome.FAILED
    session.rollback()
    assert "flowdppo[trackers]" in runs.get_run(session, run_id=run.id).error
