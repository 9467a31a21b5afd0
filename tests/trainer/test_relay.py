"""Rank 0's reports reach the parent's callback through the relay folder unchanged, and the parent's stop reaches rank
0's should_stop (trainer/relay.py)."""

import os
from pathlib import Path

import numpy as np

from trainer.callbacks import NullCallback, Sample
from trainer.relay import PARENT_PID_ENV, RelayCallback, RelayReader


class Recorder(NullCallback):
    def __init__(self):
        self.events = []

    def on_metrics(self, step, metrics):
        self.events.append(("metrics", step, metrics))

    def on_samples(self, step, samples):
        self.events.append(("samples", step, samples))

    def on_checkpoint(self, step, path):
        self.events.append(("checkpoint", step, path))


def test_reports_are_replayed_in_order_once(tmp_path, monkeypatch):
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getpid()))
    rank0, reader, parent = RelayCallback(tmp_path), RelayReader(tmp_path), Recorder()
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    rank0.on_metrics(1, {"reward/total/mean": 0.25, "kl_old/mean": 1e-7})
    rank0.on_samples(1, [Sample(prompt="a red circle", seed=0, index=0, image=image, rewards={"shapes": 0.5})])
    assert reader.replay(parent) == 2
    rank0.on_checkpoint(2, tmp_path / "checkpoints" / "step_000002")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"kind": "metrics", "step": 3')  # a line still being written: not replayed yet
    assert reader.replay(parent) == 1 and reader.replay(parent) == 0
    kinds = [(kind, step) for kind, step, _ in parent.events]
    assert kinds == [("metrics", 1), ("samples", 1), ("checkpoint", 2)]
    assert parent.events[0][2] == {"reward/total/mean": 0.25, "kl_old/mean": 1e-7}  # floats round-trip exactly
    sample = parent.events[1][2][0]
    assert (sample.prompt, sample.seed, sample.rewards) == ("a red circle", 0, {"shapes": 0.5})
    assert np.array_equal(sample.image, image) and parent.events[2][2] == Path(tmp_path / "checkpoints/step_000002")


def test_stop_flag_and_a_gone_parent_stop_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv(PARENT_PID_ENV, str(os.getpid()))
    rank0, reader = RelayCallback(tmp_path), RelayReader(tmp_path)
    assert not rank0.should_stop()
    reader.request_stop()
    assert rank0.should_stop()
    monkeypatch.setenv(PARENT_PID_ENV, str(2**22 + 12345))  # no such process: the worker died
    assert RelayCallback(tmp_path / "other").should_stop()
