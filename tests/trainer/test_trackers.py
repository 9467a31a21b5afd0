"""Tracker mirrors, read back with the trackers' own readers: TensorBoard's EventAccumulator and MlflowClient.

One short `flowdppo train` run mirrors to TensorBoard, to an MLflow SQLite store and to an unreachable MLflow
server at once: the first two hold every point exactly (steps and values), the third only costs a warning.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import numpy as np
import pytest
from pydantic import ValidationError

import flowdppo
from trainer.callbacks import NullCallback, Sample
from trainer.config import TrainConfig
from trainer.trackers import (
    BackgroundMirror,
    MirroredCallback,
    MLflowMirror,
    TensorBoardMirror,
    TrackerSpec,
    flatten_params,
    mirrored,
    refused_hosts,
)

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY_RUN = [
    "steps=2",
    "prompts_per_step=2",
    "group_size=2",
    "num_minibatches=1",
    "eval_every=0",
    "sample_every=1",
    "num_logged_samples=2",
    "checkpoint_every=0",
]
TRACKERS = (
    'trackers=[{kind: tensorboard}, {kind: mlflow, uri: "sqlite:///mlflow/mlflow.db", experiment: tiny},'
    ' {kind: mlflow, uri: "http://127.0.0.1:9"}]'  # loopback port 9 (discard): nothing listens there
)


def read_tensorboard(log_dir):
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def read_mlflow(db_path, experiment):
    client = MlflowClient(tracking_uri=f"sqlite:///{db_path}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def jsonl_metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row.pop("step"): row for row in rows}


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    """`flowdppo train` with three trackers, one of them down; returns (exit code, out dir, warnings)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    env = pytest.MonkeyPatch()
    env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the dead server fails fast (default: minutes per call)
    env.setenv("OMP_NUM_THREADS", "1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("trainer.trackers").addHandler(handler)
    try:
        args = ["train", "shapes-dppo", "--out", str(out), "--set", TRACKERS]
        code = flowdppo.main(args + [a for pair in TINY_RUN for a in ("--set", pair)])
    finally:
        logging.getLogger("trainer.trackers").removeHandler(handler)
        env.undo()
    return code, out, [r.getMessage() for r in records]


@pytest.mark.slow
def test_tensorboard_holds_every_point_and_sample(mirrored_run):
    code, out, _ = mirrored_run
    assert code == 0
    expected = jsonl_metrics(out)
    events = read_tensorboard(out / "tensorboard")
    assert set(events.Tags()["scalars"]) == {k for row in expected.values() for k in row}
    for key in events.Tags()["scalars"]:
        got = [(e.step, e.value) for e in events.Scalars(key)]
        # TensorBoard stores scalars as float32: exact after the same rounding
        assert got == [(step, float(np.float32(row[key]))) for step, row in expected.items() if key in row]
    index = json.loads((out / "samples" / "step_000002" / "index.json").read_text())
    assert sorted(events.Tags()["images"]) == ["samples/000", "samples/001"]
    for entry in index:
        images = events.Images(f"samples/{entry['index']:03d}")
        assert [(i.step, i.width, i.height) for i in images] == [(1, 32, 32), (2, 32, 32)]
        (text,) = [t for t in events.Tensors(f"samples/{entry['index']:03d}/caption/text_summary") if t.step == 2]
        assert entry["prompt"] in text.tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_mlflow_holds_every_point_sample_and_param(mirrored_run):
    code, out, _ = mirrored_run
    assert code == 0
    expected = jsonl_metrics(out)
    client, run = read_mlflow(out / "mlflow" / "mlflow.db", "tiny")
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    for key in {k for row in expected.values() for k in row}:
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert got == [(step, row[key]) for step, row in expected.items() if key in row]  # float64: exact
    config = json.loads((out / "config.json").read_text())
    assert run.data.params["loss"] == config["loss"] and run.data.params["rewards.0.name"] == "shapes"
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 4  # 2 samples x 2 steps
    assert {a.path for a in client.list_artifacts(run.info.run_id, "samples")} == {
        "samples/step_000001.json",
        "samples/step_000002.json",
    }
    assert (out / "mlflow" / "mlflow-artifacts").is_dir()  # artifacts inside the run's folder, not ./mlruns


@pytest.mark.slow
def test_unreachable_tracker_warns_and_the_run_succeeds(mirrored_run):
    code, out, warnings = mirrored_run
    assert code == 0 and len(jsonl_metrics(out)) == 2
    dead = [w for w in warnings if "mlflow mirror" in w and "127.0.0.1" in w]
    assert len(dead) == 1, warnings  # rate-limited: metrics, samples and close all failed, one warning said so


class Failing(NullCallback):
    name = "failing"

    def __init__(self):
        self.calls = 0

    def on_metrics(self, step, metrics, wall=None):
        self.calls += 1
        raise ConnectionError("tracker down")

    def should_stop(self):
        return True  # a mirror never stops the run


class Recorder(NullCallback):
    def __init__(self):
        self.steps = []

    def on_metrics(self, step, metrics):
        self.steps.append(step)


def test_failing_mirror_warns_once_and_never_stops_the_run(caplog):
    primary, failing = Recorder(), Failing()
    callback = MirroredCallback(primary, [failing])
    with caplog.at_level(logging.WARNING, logger="trainer.trackers"):
        for step in range(100):
            callback.on_metrics(step, {"loss/total": 1.0})
    assert primary.steps == list(range(100)) and failing.calls == 100
    assert len(caplog.records) == 1 and "tracker down" in caplog.records[0].getMessage()
    assert not callback.should_stop()
    primary.owned = True  # e.g. the worker's StoreCallback attributes stay reachable through the wrapper
    assert callback.owned and callback.steps is primary.steps


def test_mirrored_ends_the_mlflow_run_with_the_runs_status(tmp_path):
    config = TrainConfig(trackers=[{"kind": "mlflow", "uri": "sqlite:///m.db"}])

    class Stopping(Recorder):
        def should_stop(self):
            return True

    with mirrored(Stopping(), config, tmp_path, run_name="stopped", run_key="a") as callback:
        callback.on_metrics(1, {"x": 1.0})
        assert callback.should_stop()
    with pytest.raises(RuntimeError), mirrored(Recorder(), config, tmp_path, run_name="failed", run_key="b") as cb:
        cb.on_metrics(1, {"x": 1.0})
        raise RuntimeError("the trainer's error")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    found = client.search_runs([client.get_experiment_by_name("flowdppo").experiment_id])
    assert {r.info.run_name: r.info.status for r in found} == {"stopped": "KILLED", "failed": "FAILED"}
    primary = Recorder()
    with mirrored(primary, TrainConfig(), tmp_path, run_name="none", run_key="c") as callback:
        assert callback is primary  # no trackers: nothing wrapped


def test_a_slow_tracker_never_holds_a_step(caplog):
    class Slow(NullCallback):
        name = "slow"

        def on_metrics(self, step, metrics, wall=None):
            time.sleep(5)

    mirror = BackgroundMirror(Slow(), max_pending=2, close_timeout=0.2)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="trainer.trackers"):
        for step in range(5):
            mirror.on_metrics(step, {"x": 1.0})
        mirror.close()
    assert time.monotonic() - start < 1.0
    assert "dropped" in caplog.text  # the queue of 2 filled up behind the sleeping call


def test_tensorboard_mirror_writes_exact_steps_and_walls(tmp_path):
    mirror = TensorBoardMirror(tmp_path / "tb")
    image = np.zeros((8, 8, 3), np.uint8)
    for step in (0, 3, 7):
        mirror.on_metrics(step, {"reward/total/mean": step / 8}, wall=1_000.0 + step)
    mirror.on_samples(7, [Sample(prompt="a red square", seed=1, index=4, image=image, rewards={"shapes": 1.0})])
    mirror.close()
    events = read_tensorboard(tmp_path / "tb")
    assert [(e.step, e.value, e.wall_time) for e in events.Scalars("reward/total/mean")] == [
        (0, 0.0, 1000.0),
        (3, 0.375, 1003.0),
        (7, 0.875, 1007.0),
    ]
    assert [i.step for i in events.Images("samples/004")] == [7]


def test_mlflow_images_go_only_where_this_machine_may_write(tmp_path, monkeypatch, caplog):
    # No artifact_location: MLflow would put artifacts in ./mlruns of the working directory, a path the server chose.
    monkeypatch.chdir(tmp_path)
    mirror = MLflowMirror(f"sqlite:///{tmp_path / 'm.db'}", "e", "r")
    image = np.zeros((8, 8, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="trainer.tracker_backends"):
        mirror.on_metrics(1, {"x": 2.0})
        mirror.on_samples(1, [Sample(prompt="p", seed=0, index=0, image=image)])
        mirror.close()
    assert "images are not mirrored" in caplog.text and not (tmp_path / "mlruns").exists()
    assert [m.value for m in mirror.client.get_metric_history(mirror.run_id, "x")] == [2.0]


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "tensorboard", "uri": "/var/log/tb"},
        {"kind": "tensorboard", "uri": "tb/../../elsewhere"},
        {"kind": "tensorboard", "uri": "tb\x00"},
        {"kind": "mlflow", "uri": ""},
        {"kind": "mlflow", "uri": "file:///tmp/mlruns"},
        {"kind": "mlflow", "uri": "sqlite:////etc/mlflow.db"},
        {"kind": "mlflow", "uri": "sqlite:///../mlflow.db"},
        {"kind": "mlflow", "uri": "databricks"},
        {"kind": "wandb"},
    ],
)
def test_a_tracker_writes_only_inside_the_run_or_to_a_server(spec):
    with pytest.raises(ValidationError) as err:
        TrainConfig(trackers=[spec])
    assert err.value.errors()[0]["loc"][:2] == ("trackers", 0)


def test_tracker_specs_accepted_and_hosts_checked():
    config = TrainConfig(
        trackers=[
            {"kind": "tensorboard"},
            {"kind": "mlflow", "uri": "sqlite:///mlflow.db"},
            {"kind": "mlflow", "uri": "https://mlflow.internal:5000/prefix"},
        ]
    )
    assert config.trackers[0].uri == "tensorboard"
    assert refused_hosts(config.trackers, []) == ["mlflow.internal:5000"]
    assert refused_hosts(config.trackers, ["mlflow.internal"]) == []
    assert refused_hosts(config.trackers, ["mlflow.internal:80"]) == ["mlflow.internal:5000"]
    assert TrainConfig.model_validate_json(config.to_json()) == config


def test_params_flattened_within_mlflow_limits():
    params = flatten_params({"rewards": [{"name": "shapes", "options": {}}], "note": "x" * 10_000, "a b?": 1})
    assert params == {"rewards.0.name": "shapes", "rewards.0.options": "{}", "note": "x" * 6000, "a b_": "1"}


def test_a_missing_extra_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'flowdppo\[trackers\]'"):
        TensorBoardMirror(tmp_path)
    args = ["train", "shapes-dppo", "--out", str(tmp_path), "--set", "trackers=[{kind: tensorboard}]"]
    assert flowdppo.main(args) == 2
    assert "flowdppo[trackers]" in capsys.readouterr().err
    assert TrackerSpec(kind="tensorboard").uri == "tensorboard"  # the config itself needs no extra
