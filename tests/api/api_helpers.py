"""Factories of the API tests: teams with tokens, runs as a worker leaves them, points, samples, checkpoints."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from api.services import Services
from store import artifacts, checkpoints, metrics, samples, teams
from store import runs as store_runs

API = "/api/v1"
TINY = {"steps": 2, "prompts_per_step": 2, "group_size": 2, "num_minibatches": 1, "eval_every": 0}


@dataclass
class TeamToken:
    team_id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_team_token(session: Session, *, admin: bool = False) -> TeamToken:
    team = teams.create_team(session, name=f"team-{uuid.uuid4().hex[:10]}")
    _, plaintext = teams.create_token(session, team_id=team.id, is_admin=admin)
    session.commit()
    return TeamToken(team_id=team.id, name=team.name, token=plaintext)


def make_run(session: Session, *, team_id: int, status: str = "queued", **kwargs: Any) -> int:
    """A run row as the worker would leave it (no job is queued)."""
    run = store_runs.create_run(session, team_id=team_id, config={"steps": 10}, **kwargs)
    if status != "queued":
        run.status = status
    session.commit()  # on SQLite every transaction holds the write lock (store.session): end it
    return run.id


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
    folder = artifacts.run_dir(data_dir, run_id) / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    (folder / "trainable.safetensors").write_bytes(b"\x00" * 1500)
    relpath = artifacts.relative_to_data(data_dir, folder)
    checkpoint_id = checkpoints.add_checkpoint(session, run_id=run_id, step=step, path=relpath).id
    session.commit()
    return checkpoint_id


def broker_messages(services: Services) -> list[dict[str, Any]]:
    """The jobs waiting in the filesystem broker: [{"task": name, "args": [...], "queue": name}]."""
    out = []
    for path in sorted((services.settings.broker_folder / "out").glob("*.msg")):
        message = json.loads(path.read_text())
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": args, "queue": path.name.split(".")[-2]})
    return out


def jobs_for(services: Services, run_id: int) -> list[dict[str, Any]]:
    return [m for m in broker_messages(services) if m["args"] == [run_id]]
