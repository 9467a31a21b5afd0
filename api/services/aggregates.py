"""A comparison (or any runs) aggregated over seeds: per variant, curves with 95% bands on step and rollout axes,
summary intervals (final and best held-out reward, area under the held-out curve, final KL to the base, reward
within a KL budget) and the reward-vs-KL frontier. platform.md "Sweeps and aggregates".

Reads: the runs, then one batched series read for every (run, key) (store.metrics.read_series), whatever the
number of runs. Failed and cancelled runs are counted and left out; queued and running runs count with what they
have logged so far. The math is api/services/seed_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from api.aggregate_schemas import (
    BandPublic,
    ComparisonAggregate,
    FrontierPublic,
    IntervalPublic,
    SeedRun,
    VariantAggregate,
)
from api.services import seed_stats
from api.services.comparisons import get_comparison
from store import comparisons as store_comparisons
from store import metrics as store_metrics
from store.enums import ACTIVE_STATUSES, RunStatus
from store.models import Run

REWARD_KEY = "eval/reward/total/mean"  # held-out, ODE sampler
KL_KEY = "kl_ref/mean"
DEFAULT_KEYS = (REWARD_KEY, "reward/total/mean", KL_KEY)
LEFT_OUT = (RunStatus.FAILED, RunStatus.CANCELLED)
DEFAULT_MAX_POINTS = 1000  # per series: exact (one bucket per step) for runs of up to 1000 steps

Points = dict[int, float | None]  # step -> value


@dataclass
class _RunStats:
    """One included run's summary numbers, from its held-out reward and KL points."""

    reward: Points
    kl_at: Points  # KL at each eval step
    final_reward: float | None
    best_reward: float | None
    auc: float | None
    final_kl: float | None


@dataclass
class _Cell:
    name: str
    runs: list[Run] = field(default_factory=list)


def comparison_aggregate(
    session: Session,
    *,
    team_id: int,
    comparison_id: int,
    keys: Sequence[str] | None = None,
    kl_budget: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> ComparisonAggregate:
    """The comparison's variants aggregated over their seeds (404 for another team's comparison)."""
    comparison = get_comparison(session, team_id=team_id, comparison_id=comparison_id)
    runs = store_comparisons.comparison_runs(session, comparison_id=comparison_id)
    variants, budget = aggregate_runs(session, runs=runs, keys=keys, kl_budget=kl_budget, max_points=max_points)
    return ComparisonAggregate(
        comparison=comparison, reward_key=REWARD_KEY, kl_key=KL_KEY, kl_budget=budget, variants=variants
    )


def aggregate_runs(
    session: Session,
    *,
    runs: Sequence[Run],
    keys: Sequence[str] | None = None,
    kl_budget: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> tuple[list[VariantAggregate], float | None]:
    """Runs grouped by variant (a run without one is its own group) and aggregated; returns the KL budget used."""
    keys = list(dict.fromkeys(keys or DEFAULT_KEYS))
    cells: dict[str, _Cell] = {}
    for run in runs:
        name = run.variant or f"#{run.id}"
        cells.setdefault(name, _Cell(name)).runs.append(run)
    included = [r for r in runs if r.status not in LEFT_OUT]
    points = _read_points(session, included, [*keys, *(k for k in (REWARD_KEY, KL_KEY) if k not in keys)], max_points)
    stats = {r.id: _run_stats(points, r.id) for r in included}
    finals = [seed_stats.t_interval([stats[r.id].final_kl for r in c.runs if r.id in stats]) for c in cells.values()]
    if kl_budget is None:
        kl_budget = min((iv.mean for iv in finals if iv.mean is not None), default=None)
    out = [_variant(cell, keys, points, stats, kl_budget) for cell in cells.values()]
    return out, kl_budget


def _read_points(
    session: Session, runs: Sequence[Run], keys: Sequence[str], max_points: int
) -> dict[tuple[int, str], Points]:
    """(run id, key) -> step -> value, from one series read over [0, the longest configured run]."""
    if not runs:
        return {}
    hi = max(int(r.config.get("steps", 0) or r.total_steps or 0) for r in runs)
    series = store_metrics.read_series(
        session,
        run_ids=[r.id for r in runs],
        keys=keys,
        step_min=0,  # both bounds given: no per-series bounds query
        step_max=max(hi, 0),
        max_points=max(1, min(max_points, 10_000)),
        with_wall=False,
    )
    return {
        (s.run_id, s.key): {st: (v if math.isfinite(v) else None) for st, v in zip(s.steps, s.last, strict=True)}
        for s in series
    }


def _run_stats(points: Mapping[tuple[int, str], Points], run_id: int) -> _RunStats:
    reward = points.get((run_id, REWARD_KEY), {})
    kl = points.get((run_id, KL_KEY), {})
    finite = [(s, v) for s, v in sorted(reward.items()) if v is not None]
    kl_finite = [v for _, v in sorted(kl.items()) if v is not None]
    return _RunStats(
        reward=reward,
        kl_at=seed_stats.align_at_or_before(kl, list(reward)),
        final_reward=finite[-1][1] if finite else None,
        best_reward=max((v for _, v in finite), default=None),
        auc=seed_stats.area_under_curve(reward),
        final_kl=kl_finite[-1] if kl_finite else None,
    )


def _variant(
    cell: _Cell,
    keys: Sequence[str],
    points: Mapping[tuple[int, str], Points],
    stats: Mapping[int, _RunStats],
    kl_budget: float | None,
) -> VariantAggregate:
    mine = [stats[r.id] for r in cell.runs if r.id in stats]
    ids = [r.id for r in cell.runs if r.id in stats]
    per_step = _rollouts_per_step(cell.runs)
    curves = [_band(key, [points.get((i, key), {}) for i in ids], per_step) for key in keys]
    reward_band = seed_stats.seed_band([s.reward for s in mine])
    kl_band = seed_stats.seed_band([s.kl_at for s in mine])
    kl_mean = dict(zip(kl_band.steps, kl_band.mean, strict=True))
    frontier_kl = [kl_mean.get(s) for s in reward_band.steps]
    env_kl, env_reward = seed_stats.pareto_envelope(frontier_kl, reward_band.mean)
    within = [
        seed_stats.reward_within_kl(s.reward, s.kl_at, kl_budget) if kl_budget is not None else None for s in mine
    ]
    return VariantAggregate(
        variant=cell.name,
        runs=[SeedRun(run_id=r.id, seed=r.seed, status=r.status, included=r.id in stats) for r in cell.runs],
        n_runs=len(cell.runs),
        n_included=len(ids),
        n_failed=sum(r.status in LEFT_OUT for r in cell.runs),
        n_active=sum(r.status in ACTIVE_STATUSES for r in cell.runs),
        rollouts_per_step=per_step,
        curves=curves,
        final_reward=_interval([s.final_reward for s in mine]),
        best_reward=_interval([s.best_reward for s in mine]),
        auc=_interval([s.auc for s in mine]),
        final_kl=_interval([s.final_kl for s in mine]),
        reward_at_kl=_interval(within),
        frontier=FrontierPublic(
            steps=reward_band.steps,
            kl=frontier_kl,
            reward=reward_band.mean,
            envelope_kl=env_kl,
            envelope_reward=env_reward,
        ),
    )


def _rollouts_per_step(runs: Sequence[Run]) -> int:
    """prompts_per_step x group_size of the variant's runs (the same for all seeds of a cell)."""
    config: dict[str, Any] = runs[0].config if runs else {}
    return int(config.get("prompts_per_step", 0)) * int(config.get("group_size", 0))


def _band(key: str, curves: Sequence[Points], per_step: int) -> BandPublic:
    band = seed_stats.seed_band(curves)
    return BandPublic(
        key=key,
        steps=band.steps,
        rollouts=[s * per_step for s in band.steps],
        mean=band.mean,
        lo=band.lo,
        hi=band.hi,
        n=band.n,
    )


def _interval(values: Sequence[float | None]) -> IntervalPublic:
    iv = seed_stats.t_interval(values)
    return IntervalPublic(mean=iv.mean, lo=iv.lo, hi=iv.hi, n=iv.n)
