"""The data folder layout and the resolver that refuses any path leaving it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from store import artifacts


@pytest.mark.parametrize(
    "relpath",
    ["../outside", "runs/../../etc/passwd", "/etc/passwd", "runs/1/../../../x", "", "C:/windows", "a\x00b", "..\\x"],
)
def test_resolver_refuses_escapes(tmp_path, relpath):
    with pytest.raises(artifacts.ArtifactPathError):
        artifacts.resolve(tmp_path, relpath)


def test_resolver_refuses_symlink_out_of_the_folder(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    os.symlink(outside, data / "link")
    with pytest.raises(artifacts.ArtifactPathError):
        artifacts.resolve(data, "link/secret.txt")
    assert artifacts.resolve(data, "runs/1/x.png") == (data / "runs/1/x.png").resolve()


def test_save_sample_image_writes_png_and_thumbnail(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(256, 200, 3), dtype=np.uint8)
    saved = artifacts.save_sample_image(tmp_path, run_id=7, step=10, index=3, seed=42, image=image)
    assert saved.image_path == "runs/7/samples/step_000010/003_seed42.png"
    full = Image.open(artifacts.resolve(tmp_path, saved.image_path))
    assert np.array_equal(np.asarray(full), image)
    thumb = Image.open(artifacts.resolve(tmp_path, saved.thumb_path))
    assert max(thumb.size) == artifacts.THUMBNAIL_SIZE
    with pytest.raises(ValueError, match="uint8"):
        artifacts.save_sample_image(tmp_path, run_id=7, step=1, index=0, seed=0, image=image.astype(np.float32))


def test_run_dir_and_delete(tmp_path):
    folder = artifacts.run_dir(tmp_path, 5)
    (folder / "checkpoints" / "step_000001").mkdir(parents=True)
    assert (
        artifacts.relative_to_data(tmp_path, folder / "checkpoints" / "step_000001")
        == "runs/5/checkpoints/step_000001"
    )
    with pytest.raises(artifacts.ArtifactPathError):
        artifacts.relative_to_data(tmp_path / "runs", tmp_path)
    artifacts.delete_run_artifacts(tmp_path, 5)
    assert not folder.exists()
    artifacts.delete_run_artifacts(tmp_path, 5)  # missing is fine
