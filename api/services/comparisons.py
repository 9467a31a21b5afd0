"""Comparisons: one base config submitted as named variants with the same seeds, read back aligned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.schemas import (
    AlignedSeries,
    ComparisonAligned,
    ComparisonCreate,
    ComparisonPublic,
    ComparisonsPublic,
    RunPublic,
)
from api.services.configs import resolve_train_config
from api.services.errors import InvalidConfigError, NotFoundError
from api.services.metrics import read_metrics
from api.services.queue import TaskQueue
from api.services.runs import check_queue_room, enqueue
from api.services.sweeps import MAX_SWEEP_RUNS, sweep_runs
from store import comparisons as store_comparisons
from store.models import Comparison, Run
from trainer.config import TrainConfig
from trainer.loss_rules import OWN_KNOBS

# Every method of the paper's comparison (issue 12; spec §4, §9-11) as the overrides that select it on a base config.
METHODS: dict[str, dict[str, Any]] = {
    "clip": {"loss": "clip"},
    "dppo": {"loss": "dppo"},
    "dppo-symmetric": {"loss": "dppo", "dppo_mask": "symmetric"},  # spec §9: the "w/o asymmetry" ablation
    "dppo-first-order": {"loss": "dppo", "dppo_mask": "first_order"},  # spec §9: Appendix E
    "grpo-guard": {"loss": "grpo_guard"},  # spec §10: clip_range None -> 2e-6
    # spec §11: beta_kl 1e-4, as the shapes-nft preset; deterministic ODE rollouts need per-sample initial noise
    "nft": {"loss": "nft", "beta": 1e-4, "shared_initial_noise": False},
    "none": {"loss": "none"},  # plain policy gradient (spec §4)
}
# What `flowdppo up --demo` submits, and the dashboard's default selection.
CLIP_VS_DPPO = {"clip": {"loss": "clip"}, "dppo": {"loss": "dppo"}}


def method_variants(names: Sequence[str], base: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The comparison variants for `names` (keys of METHODS) on `base` (a config dict; None = the defaults).

    A method's variant also puts back to their defaults the other methods' own knobs that `base` sets (say a base
    with dppo_mask='symmetric' and the variant clip), so that one base serves every method.
    """
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise InvalidConfigError(
            [{"loc": ("body", "variants"), "msg": f"methods must be among {list(METHODS)}, got {list(names)}"}]
        )
    base = dict(base or {})
    out = {}
    for name in names:
        overrides = dict(METHODS[name])
        owner_loss = overrides["loss"]
        for knob, owner in OWN_KNOBS.items():
            default = TrainConfig.model_fields[knob].default
            if owner != owner_loss and knob in base and base[knob] != default:
                overrides.setdefault(knob, default)
        out[name] = overrides
    return out


def create_comparison(
    session: Session,
    *,
    queue: TaskQueue,
    input_roots: Sequence[Path],
    team_id: int,
    body: ComparisonCreate,
    max_runs: int = MAX_SWEEP_RUNS,
    reward_hosts: Sequence[str] = (),
    max_queued: int = 0,
) -> ComparisonPublic:
    """Validate the base and every variant, grid point and seed (all errors at once; a sweep of more than
    `max_runs` runs is refused), store them in one transaction, then enqueue."""
    base = resolve_train_config(
        preset=body.preset,
        config=body.config,
        overrides=body.overrides,
        input_roots=input_roots,
        reward_hosts=reward_hosts,
    )
    variants = sweep_runs(base, body, input_roots=input_roots, max_runs=max_runs, reward_hosts=reward_hosts)
    check_queue_room(session, team_id=team_id, adding=len(variants), max_queued=max_queued)
    comparison, runs = store_comparisons.create_comparison(
        session,
        team_id=team_id,
        name=body.name or body.preset or "comparison",
        base_config=base.model_dump(mode="json"),
        variants=variants,
        tags=body.tags,
        preset=body.preset,
        seeds=body.seeds,
        grid=body.grid,
    )
    for run in runs:  # after the commit: a worker re-reads the run by id
        enqueue(session, queue=queue, run=run)
    return _public(comparison, runs)


def _owned(session: Session, *, team_id: int, comparison_id: int) -> Comparison:
    comparison = store_comparisons.get_comparison(session, comparison_id=comparison_id, team_id=team_id)
    if comparison is None:
        raise NotFoundError(f"comparison {comparison_id} not found")
    return comparison


def _public(comparison: Comparison, runs: Sequence[Run]) -> ComparisonPublic:
    out = ComparisonPublic.model_validate(comparison)
    out.runs = [RunPublic.model_validate(r) for r in runs]
    return out


def get_comparison(session: Session, *, team_id: int, comparison_id: int) -> ComparisonPublic:
    comparison = _owned(session, team_id=team_id, comparison_id=comparison_id)
    return _public(comparison, store_comparisons.comparison_runs(session, comparison_id=comparison.id))


def list_comparisons(session: Session, *, team_id: int, limit: int = 100) -> ComparisonsPublic:
    rows = store_comparisons.list_comparisons(session, team_id=team_id, limit=limit)
    data = [_public(c, store_comparisons.comparison_runs(session, comparison_id=c.id)) for c in rows]
    return ComparisonsPublic(data=data, count=len(data))


def aligned(
    session: Session,
    *,
    team_id: int,
    comparison_id: int,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = 500,
) -> ComparisonAligned:
    """The comparison's runs and, per key, their values on the steps every run has (one shared bucket width)."""
    comparison = _owned(session, team_id=team_id, comparison_id=comparison_id)
    runs = store_comparisons.comparison_runs(session, comparison_id=comparison.id)
    metrics = read_metrics(
        session, runs=runs, keys=keys, step_min=step_min, step_max=step_max, max_points=max_points, with_wall=False
    )
    by_key: dict[str, dict[int, dict[int, float | None]]] = {}
    for s in metrics.data:
        by_key.setdefault(s.key, {})[s.run_id] = dict(zip(s.steps, s.last, strict=True))
    series = []
    for key, per_run in by_key.items():
        common = sorted(set.intersection(*(set(points) for points in per_run.values()))) if per_run else []
        values = {run_id: [points[step] for step in common] for run_id, points in per_run.items()}
        series.append(AlignedSeries(key=key, steps=common, values=values))
    return ComparisonAligned(comparison=_public(comparison, runs), series=series)
