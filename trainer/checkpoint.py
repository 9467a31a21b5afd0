"""Resumable checkpoints: trainable weights (and EMA) as safetensors, optimizer state, step (the RNG is derived).

Layout: <out_dir>/checkpoints/step_000010/{trainable.safetensors, ema.safetensors?, old.safetensors?, optimizer.pt,
state.json}; old.safetensors holds Diffusion-NFT's old weights theta_old (spec §11).
A checkpoint is written to a temporary folder and renamed, so a crash never leaves a half-written one behind.
All randomness of a run is derived from (seed, step), so the step is the whole RNG state needed to resume.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step_"  # a checkpoint folder is step_000010; a save in progress is step_000010.tmp


@dataclass
class CheckpointState:
    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    ema: dict[str, torch.Tensor] | None
    old: dict[str, torch.Tensor] | None = None  # theta_old (spec §11), for loss='nft'


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"{STEP_PREFIX}{step:06d}"


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder (step_000010 -> 10); None for any other name (a .tmp save, the base model)."""
    digits = Path(path).name.removeprefix(STEP_PREFIX)
    return int(digits) if Path(path).name.startswith(STEP_PREFIX) and digits.isdigit() else None


def checkpoint_folders(out_dir: Path) -> list[Path]:
    """Every checkpoint folder under out_dir, complete or not (a crashed save leaves its .tmp folder behind)."""
    return sorted((Path(out_dir) / CHECKPOINTS).glob(STEP_PREFIX + "*"))


def save_checkpoint(
    out_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
    config_json: str,
    old: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint for `step` and return its folder."""
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    if old is not None:
        save_file({k: v.contiguous().cpu() for k, v in old.items()}, str(tmp / "old.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": json.loads(config_json)}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under out_dir, or None."""
    done = [p for p in checkpoint_folders(out_dir) if checkpoint_step(p) is not None and (p / "state.json").is_file()]
    return max(done, key=checkpoint_step, default=None)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> CheckpointState:
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected state.json, trainable.safetensors)")
    state = json.loads((path / "state.json").read_text())
    ema_file, old_file = path / "ema.safetensors", path / "old.safetensors"
    return CheckpointState(
        step=int(state["step"]),
        trainable=load_file(str(path / "trainable.safetensors"), device=str(map_location)),
        optimizer=torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True),
        ema=load_file(str(ema_file), device=str(map_location)) if ema_file.is_file() else None,
        old=load_file(str(old_file), device=str(map_location)) if old_file.is_file() else None,
    )


def load_weights(
    path: Path, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Only the weights of a checkpoint (EMA when present and asked for): what evaluation needs."""
    path = Path(path)
    ema_file = path / "ema.safetensors"
    chosen = ema_file if use_ema and ema_file.is_file() else path / "trainable.safetensors"
    if not chosen.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {chosen}")
    return load_file(str(chosen), device=str(map_location))
