"""The artifact files under DATA_DIR: run folders, sample images (PNG + thumbnail), checkpoints; a safe resolver.

Layout (paths stored in the database are relative to the data folder, with forward slashes):
    runs/<run_id>/                                   the trainer's out_dir for the run
    runs/<run_id>/checkpoints/step_000010/           written by the trainer (resumed from on redelivery)
    runs/<run_id>/samples/step_000010/003_seed7.png  a logged sample
    runs/<run_id>/samples/step_000010/003_seed7.thumb.png
Paths are built from integers here, never taken from user input; `resolve` refuses anything leaving the folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

THUMBNAIL_SIZE = 128  # longest side in pixels


class ArtifactPathError(ValueError):
    """A relative path that is absolute, or escapes the data folder (e.g. '../../etc/passwd')."""


@dataclass(frozen=True)
class SavedImage:
    image_path: str  # relative to the data folder
    thumb_path: str


def run_relpath(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def run_dir(data_dir: Path | str, run_id: int) -> Path:
    """The run's folder (the trainer's out_dir); created on demand."""
    path = Path(data_dir) / run_relpath(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sample_relpath(run_id: int, step: int, index: int, seed: int) -> str:
    return f"{run_relpath(run_id)}/samples/step_{int(step):06d}/{int(index):03d}_seed{int(seed)}.png"


def thumb_relpath(image_relpath: str) -> str:
    return image_relpath.removesuffix(".png") + ".thumb.png"


def resolve(data_dir: Path | str, relpath: str) -> Path:
    """The absolute path of `relpath` inside `data_dir`; raises ArtifactPathError if it would leave the folder."""
    if not relpath or "\x00" in relpath:
        raise ArtifactPathError(f"invalid artifact path {relpath!r}")
    pure = PurePosixPath(relpath.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ArtifactPathError(f"artifact path {relpath!r} must be relative to the data folder, without '..'")
    root = Path(data_dir).resolve()
    path = (root / pure).resolve()  # also follows symlinks: a link pointing outside is refused too
    if not path.is_relative_to(root):
        raise ArtifactPathError(f"artifact path {relpath!r} resolves outside the data folder")
    return path


def relative_to_data(data_dir: Path | str, path: Path | str) -> str:
    """The stored form of an absolute path inside the data folder (e.g. a checkpoint the trainer wrote)."""
    root = Path(data_dir).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise ArtifactPathError(f"{path} is outside the data folder {root}")
    return resolved.relative_to(root).as_posix()


def save_sample_image(
    data_dir: Path | str, *, run_id: int, step: int, index: int, seed: int, image: np.ndarray
) -> SavedImage:
    """Write an (H, W, 3) uint8 image as PNG plus a thumbnail; returns both paths relative to the data folder."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}")
    relpath = sample_relpath(run_id, step, index, seed)
    path = resolve(data_dir, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image)
    _atomic_save(picture, path)
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    thumb = thumb_relpath(relpath)
    _atomic_save(picture, resolve(data_dir, thumb))
    return SavedImage(image_path=relpath, thumb_path=thumb)


def delete_run_artifacts(data_dir: Path | str, run_id: int) -> None:
    """Remove the run's folder (samples, checkpoints, logs); missing folders are fine."""
    shutil.rmtree(resolve(data_dir, run_relpath(run_id)), ignore_errors=True)


def _atomic_save(picture: object, path: Path) -> None:
    # Write then rename, so a reader (the API serving images) never sees half a PNG.
    tmp = path.with_suffix(".tmp")
    picture.save(tmp, format="PNG")  # type: ignore[attr-defined]
    tmp.replace(path)
