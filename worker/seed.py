"""Synthetic finished runs, as workers leave them, written through store/ functions: a deterministic clip vs dppo
comparison (metrics with spec §7 names, sample images with thumbnails, checkpoints, events) for the dashboard's
tests and bench/page_load.py. Nothing trains: the curves are made up (dppo climbs higher with less drift).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from store import artifacts, checkpoints, metrics, samples
from store import comparisons as store_comparisons
from store import runs as store_runs
from store.enums import RunStatus
from store.models import utcnow
from store.session import begin_write
from trainer.presets import get_preset

SECONDS_PER_STEP = 1.05  # seeded runs log step s at start + s x 1.05 s
PROMPTS = ["a red circle", "two blue squares", "a green triangle above a yellow circle", "three purple stars"]
COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (230, 200, 40),
    "purple": (140, 60, 180),
}


def curves(variant: str, steps: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible per-step metrics: dppo climbs higher with less drift from the base than clip."""
    dppo = variant.endswith("dppo")
    n = len(steps)
    scale = max(steps[-1], 1) / 6
    gain = 0.22 if dppo else 0.12
    reward = 0.62 + gain * (1 - np.exp(-steps / scale)) + rng.normal(0, 0.02, n)
    kl_ref = (0.8 if dppo else 1.6) * (steps / max(steps[-1], 1)) ** 0.8 * 1e-3 + np.abs(rng.normal(0, 2e-5, n))
    out = {
        "reward/total/mean": reward,
        "reward/shapes/mean": reward,
        "kl_old/mean": np.abs(rng.normal(8e-6 if dppo else 2e-5, 3e-6, n)),
        "kl_ref/mean": kl_ref,
        "ratio/min": 1 - np.abs(rng.normal(0.004 if dppo else 0.012, 0.002, n)),
        "ratio/max": 1 + np.abs(rng.normal(0.004 if dppo else 0.012, 0.002, n)),
        "grad_norm": np.abs(rng.normal(0.3, 0.05, n)),
        "approx_kl": np.abs(rng.normal(1e-5, 3e-6, n)),
        "time/rollout_s": np.full(n, 0.6),
        "time/reward_s": np.full(n, 0.05),
        "time/train_s": np.full(n, 0.4),
    }
    out["mask/fraction" if dppo else "clip/fraction"] = np.clip(rng.normal(0.08 if dppo else 0.35, 0.02, n), 0, 1)
    return out


def shape_image(prompt: str, quality: float, seed: int, size: int = 32) -> np.ndarray:
    """A small picture of the prompt's first colour as a disc; `quality` sharpens it (better runs look better)."""
    rng = np.random.default_rng(seed)
    colour = next((c for name, c in COLOURS.items() if name in prompt), (120, 120, 120))
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    disc = (r < size * 0.3).astype(float)
    noise = rng.normal(0, (1 - quality) * 60, (size, size, 1))
    img = 235 - disc[..., None] * (235 - np.array(colour)) + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def seed_comparison(
    session: Session,
    *,
    team_id: int,
    data_dir: Path,
    steps: int = 60,
    variants: tuple[str, ...] = ("clip", "dppo"),
    sample_every: int = 20,
    keys: tuple[str, ...] | None = None,
    seed: int = 0,
) -> tuple[int, list[int]]:
    """A finished comparison with `steps` steps per run; returns (comparison id, run ids in variant order)."""
    base = get_preset("shapes-dppo").model_copy(update={"steps": steps}).model_dump(mode="json")
    vrs = [
        store_comparisons.VariantRun(name=v, config={**base, "loss": v.split("-")[-1]}, overrides={"loss": v})
        for v in variants
    ]
    comparison, runs = store_comparisons.create_comparison(
        session,
        team_id=team_id,
        name=f"seeded {' vs '.join(variants)}",
        base_config=base,
        variants=vrs,
        preset="shapes-dppo",
    )
    rng = np.random.default_rng(seed)
    all_steps = np.arange(1, steps + 1)
    for run in runs:
        series = curves(run.variant or "", all_steps.astype(float), rng)
        start = utcnow() - timedelta(seconds=steps * SECONDS_PER_STEP)
        wall = {int(s): start + timedelta(seconds=int(s) * SECONDS_PER_STEP) for s in all_steps}
        rows = [
            (int(s), k, float(v[i]), wall[int(s)])
            for k, v in series.items()
            if keys is None or k in keys
            for i, s in enumerate(all_steps)
        ]
        rows += [
            (int(s), "eval/reward/total/mean", float(series["reward/total/mean"][s - 1] + 0.03), wall[int(s)])
            for s in all_steps
            if s % 10 == 0
        ]
        metrics.append_metrics(session, run_id=run.id, rows=rows)
        session.commit()
        level = series["reward/total/mean"]
        add_samples(
            session,
            data_dir,
            run_id=run.id,
            variant=run.variant or "",
            steps=steps,
            last=steps,
            every=sample_every,
            reward=lambda step, _quality, index, level=level: float(level[max(step - 1, 0)]) + 0.01 * index,
        )
        folder = artifacts.run_dir(data_dir, run.id) / "checkpoints" / f"step_{steps:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "state.json").write_text(f'{{"step": {steps}}}')
        checkpoints.add_checkpoint(
            session, run_id=run.id, step=steps, path=artifacts.relative_to_data(data_dir, folder)
        )
        store_runs.add_event(session, run_id=run.id, message=f"finished {steps} steps")
        mark_succeeded(session, run.id, steps=steps, seconds=steps * SECONDS_PER_STEP, started_at=start)
    return comparison.id, [r.id for r in runs]


def add_samples(
    session: Session,
    data_dir: Path,
    *,
    run_id: int,
    variant: str,
    steps: int,
    last: int,
    every: int,
    reward: Callable[[int, float, int], float],
) -> None:
    """Sample images every `every` steps up to `last` of a `steps`-step run, sharper over time (more so for dppo);
    reward(step, quality, index) gives each image's shapes reward."""
    gain = 0.9 if variant.endswith("dppo") else 0.5
    for step in range(0, last + 1, every):
        quality = min(0.2 + gain * step / max(steps, 1), 1.0)
        new = []
        for index, prompt in enumerate(PROMPTS):
            image = shape_image(prompt, quality, seed=run_id * 1000 + step + index)
            saved = artifacts.save_sample_image(
                data_dir, run_id=run_id, step=step, index=index, seed=index, image=image
            )
            new.append(
                samples.NewSample(
                    step=step,
                    prompt=prompt,
                    seed=index,
                    index=index,
                    image_path=saved.image_path,
                    thumb_path=saved.thumb_path,
                    rewards={"shapes": round(reward(step, quality, index), 4)},
                )
            )
        samples.add_samples(session, run_id=run_id, samples=new)
        session.commit()


def mark_succeeded(
    session: Session,
    run_id: int,
    *,
    steps: int,
    seconds: float,
    started_at: datetime | None = None,
) -> None:
    run = store_runs.get_run(session, run_id=run_id)
    assert run is not None
    begin_write(session)
    start = started_at or utcnow() - timedelta(seconds=seconds)
    run.status, run.step, run.total_steps, run.progress = RunStatus.SUCCEEDED, steps, steps, 1.0
    run.started_at, run.finished_at, run.worker = start, start + timedelta(seconds=seconds), "celery@seeded"
    session.commit()
