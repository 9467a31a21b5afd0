"""A synthetic finished sweep, written through store/ as workers leave runs: variants x seeds with seed-to-seed
spread, held-out rewards every 10 steps, sample images, and optionally a failed run. For the dashboard's tests, the
aggregate screenshot (docs/dashboard.md says it is synthetic) and bench/page_load.py. Nothing trains.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from store import comparisons as store_comparisons
from store import metrics
from store import runs as store_runs
from store.enums import RunStatus
from store.models import utcnow
from store.session import begin_write
from trainer.presets import get_preset
from worker.seed import SECONDS_PER_STEP, add_samples, curves, mark_succeeded

EVAL_EVERY = 10


def seed_sweep(
    session: Session,
    *,
    team_id: int,
    data_dir: Path,
    steps: int = 60,
    variants: tuple[str, ...] = ("clip", "dppo"),
    seeds: tuple[int, ...] = (0, 1, 2),
    failed: tuple[str, int] | None = None,
    sample_every: int = 20,
) -> tuple[int, dict[tuple[str, int], int]]:
    """A finished sweep; `failed` = (variant, seed) of a run that failed half-way. Returns (comparison id,
    (variant, seed) -> run id)."""
    base = get_preset("shapes-dppo").model_copy(update={"steps": steps}).model_dump(mode="json")
    todo = [
        store_comparisons.VariantRun(name=v, config={**base, "loss": v, "seed": s}, overrides={"loss": v}, seed=s)
        for v in variants
        for s in seeds
    ]
    comparison, runs = store_comparisons.create_comparison(
        session,
        team_id=team_id,
        name=f"seeded sweep {' vs '.join(variants)} x {len(seeds)} seeds",
        base_config=base,
        variants=todo,
        preset="shapes-dppo",
        seeds=seeds,
    )
    ids = {}
    for run in runs:
        variant, seed = run.variant or "", int(run.seed or 0)
        ids[(variant, seed)] = run.id
        dies = failed == (variant, seed)
        last = steps // 2 if dies else steps
        rng = np.random.default_rng(1000 * variants.index(variant) + seed)
        all_steps = np.arange(1, last + 1)
        full = curves(variant, np.arange(1, steps + 1, dtype=float), rng)  # the whole run's shape, cut at `last`
        series = {k: v[:last] for k, v in full.items()}
        offset = rng.normal(0, 0.015)  # a seed's own level: the spread the aggregate's band shows
        start = utcnow() - timedelta(seconds=steps * SECONDS_PER_STEP)
        wall = {int(s): start + timedelta(seconds=int(s) * SECONDS_PER_STEP) for s in range(0, last + 1)}
        rows = [(int(s), k, float(v[i]), wall[int(s)]) for k, v in series.items() for i, s in enumerate(all_steps)]
        held_out = [0.66 + rng.normal(0, 0.004)] + [
            float(series["reward/total/mean"][s - 1]) + 0.03 + offset for s in range(EVAL_EVERY, last + 1, EVAL_EVERY)
        ]
        rows += [
            (s, "eval/reward/total/mean", v, wall[s])
            for s, v in zip(range(0, last + 1, EVAL_EVERY), held_out, strict=False)
        ]
        metrics.append_metrics(session, run_id=run.id, rows=rows)
        add_samples(
            session,
            data_dir,
            run_id=run.id,
            variant=variant,
            steps=steps,
            last=last,
            every=sample_every,
            reward=lambda _step, quality, _index, seed=seed: 0.6 + 0.2 * quality + 0.01 * seed,
        )
        if dies:
            store_runs.add_event(session, run_id=run.id, level="error", message="synthetic failure half-way")
            begin_write(session)
            run.status, run.step, run.total_steps, run.error = RunStatus.FAILED, last, steps, "synthetic failure"
            run.started_at, run.finished_at = start, start + timedelta(seconds=last * SECONDS_PER_STEP)
            session.commit()
        else:
            mark_succeeded(session, run.id, steps=steps, seconds=steps * SECONDS_PER_STEP, started_at=start)
    return comparison.id, ids
