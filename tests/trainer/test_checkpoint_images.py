"""Checkpoint folder names (trainer.checkpoint) and 8-bit pixels (trainer.images): each defined once."""

import torch

from trainer.checkpoint import checkpoint_dir, checkpoint_folders, checkpoint_step, latest_checkpoint
from trainer.images import to_uint8_hwc


def test_checkpoint_step_reads_what_checkpoint_dir_writes(tmp_path):
    assert checkpoint_step(checkpoint_dir(tmp_path, 10)) == 10
    assert checkpoint_step(tmp_path / "step_000010.tmp") is None and checkpoint_step(tmp_path / "base") is None
    for step in (2, 10):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
        (checkpoint_dir(tmp_path, step) / "state.json").write_text("{}")
    (tmp_path / "checkpoints" / "step_000011.tmp").mkdir()  # a save that crashed: listed, never the latest
    assert len(checkpoint_folders(tmp_path)) == 3 and latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 10)


def test_uint8_pixels_round_to_the_nearest_code():
    images = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    pixels = to_uint8_hwc(images)
    assert pixels.shape == (1, 2, 2, 3) and pixels.dtype.name == "uint8"
    assert pixels[0, :, :, 0].flatten().tolist() == [0, 0, 2, 255]  # round half to even, clamped to [0, 1]
