"""Test factories shared by every test folder (the FastAPI template's tests/utils): teams with tokens, runs in a
given state, metric points, sample images and checkpoint folders, all written through store/ functions.

Importable as `factories` from any test (tests/ is on sys.path: pytest puts the root conftest's folder there).
Pytest fixtures stay in the conftest.py files.
"""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from store import artifacts, checkpoints, metrics, samples, teams
from store import runs as store_runs
from store.enums import RunStatus
from store.models import utcnow
from store.session import begin_write


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TeamToken:
    team_id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_team_token(session: Session, *, admin: bool = False) -> TeamToken:
    """A new team (unique name) with one token."""
    team = teams.create_team(session, name=f"team-{uuid.uuid4().hex[:10]}")
    _, plaintext = teams.create_token(session, team_id=team.id, is_admin=admin)
    session.commit()
    return TeamToken(team_id=team.id, name=team.name, token=plaintext)


def make_run(session: Session, *, team_id: int, status: str = RunStatus.QUEUED, **kwargs: Any) -> int:
    """A run row as the worker would leave it (no job is queued)."""
    run = store_runs.create_run(session, team_id=team_id, config={"steps": 10}, **kwargs)
    if status != RunStatus.QUEUED:
        run.status = status
    session.commit()  # on SQLite every transaction holds the write lock (store.session): end it
    return run.id


def mark_running(session: Session, run_id: int, *, step: int, total: int) -> None:
    """The run as a worker shows it mid-way: running on a worker, at `step` of `total`."""
    run = store_runs.get_run(session, run_id=run_id)
    assert run is not None
    begin_write(session)
    run.status, run.step, run.total_steps, run.progress = RunStatus.RUNNING, step, total, step / total
    run.started_at, run.worker = utcnow() - timedelta(seconds=30), "celery@seeded"
    session.commit()


def add_points(session: Session, *, run_id: int, steps: range, keys: dict[str, float]) -> None:
    """Deterministic points: value = base + step / 1000."""
    rows = [(s, k, v + s / 1000) for s in steps for k, v in keys.items()]
    metrics.append_metrics(session, run_id=run_id, rows=rows)
    session.commit()


def add_sample_images(
    session: Session, *, data_dir: Path, run_id: int, step: int, prompts: list[str], seed: int = 0
) -> list[int]:
    """Samples with real PNGs under DATA_DIR, one per prompt, with index = position."""
    new = []
    for index, prompt in enumerate(prompts):
        image = np.full((8, 8, 3), (run_id * 40 + index) % 255, dtype=np.uint8)
        saved = artifacts.save_sample_image(
            data_dir, run_id=run_id, step=step, index=index, seed=seed + index, image=image
        )
        new.append(
            samples.NewSample(
                step=step,
                prompt=prompt,
                seed=seed + index,
                index=index,
                image_path=saved.image_path,
                thumb_path=saved.thumb_path,
                rewards={"shapes": 0.5},
            )
        )
    ids = [s.id for s in samples.add_samples(session, run_id=run_id, samples=new)]
    session.commit()
    return ids


def add_checkpoint_folder(session: Session, *, data_dir: Path, run_id: int, step: int) -> int:
    """A checkpoint folder (state.json and a small weights file) with its row."""
    folder = artifacts.run_dir(data_dir, run_id) / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    (folder / "trainable.safetensors").write_bytes(b"\x00" * 1500)
    relpath = artifacts.relative_to_data(data_dir, folder)
    checkpoint_id = checkpoints.add_checkpoint(session, run_id=run_id, step=step, path=relpath).id
    session.commit()
    return checkpoint_id
