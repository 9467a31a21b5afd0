"""Sample images and checkpoints of a run: rows from store/, files only through the artifacts resolver."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.orm import Session

from api.schemas import CheckpointPublic, SamplePublic
from api.services.errors import NotFoundError
from store import artifacts
from store import checkpoints as store_checkpoints
from store import samples as store_samples
from store.models import Run

CHUNK = 1 << 20


def list_samples(session: Session, *, run: Run, step: int | None = None) -> list[SamplePublic]:
    return [SamplePublic.model_validate(s) for s in store_samples.list_samples(session, run_id=run.id, step=step)]


def sample_steps(session: Session, *, run: Run) -> list[int]:
    return store_samples.sample_steps(session, run_id=run.id)


def sample_image_path(session: Session, *, run: Run, sample_id: int, data_dir: Path, thumb: bool = False) -> Path:
    """The image file of one of the run's samples. The path comes from the row, resolved inside DATA_DIR."""
    sample = store_samples.get_sample(session, sample_id=sample_id)
    if sample is None or sample.run_id != run.id:
        raise NotFoundError(f"sample {sample_id} not found in run {run.id}")
    relpath = sample.thumb_path if thumb and sample.thumb_path else sample.image_path
    return _existing(data_dir, relpath, what=f"image of sample {sample_id}")


def list_checkpoints(session: Session, *, run: Run) -> list[CheckpointPublic]:
    return [CheckpointPublic.model_validate(c) for c in store_checkpoints.list_checkpoints(session, run_id=run.id)]


def checkpoint_path(session: Session, *, run: Run, checkpoint_id: int, data_dir: Path) -> Path:
    """The checkpoint's folder (or file) inside DATA_DIR."""
    checkpoint = store_checkpoints.get_checkpoint(session, checkpoint_id=checkpoint_id, run_id=run.id)
    if checkpoint is None:
        raise NotFoundError(f"checkpoint {checkpoint_id} not found in run {run.id}")
    return _existing(data_dir, checkpoint.path, what=f"checkpoint {checkpoint_id}")


def tar_stream(folder: Path) -> Iterator[bytes]:
    """An uncompressed tar of `folder`'s regular files, streamed in chunks (checkpoints are large)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        info = tarfile.TarInfo(name=f"{folder.name}/{path.relative_to(folder).as_posix()}")
        info.size, info.mtime, info.mode = path.stat().st_size, int(path.stat().st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        if info.size % tarfile.BLOCKSIZE:
            yield tarfile.NUL * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)


def _existing(data_dir: Path, relpath: str, *, what: str) -> Path:
    try:
        path = artifacts.resolve(data_dir, relpath)
    except artifacts.ArtifactPathError as err:
        raise NotFoundError(f"{what}: {err}") from err
    if not path.exists():
        raise NotFoundError(f"{what}: file is missing")
    return path
