"""Comparisons: one base config run as several named variants (e.g. clip vs dppo with the same seeds).

A sweep is a comparison whose variants (x grid points) each run once per seed: its runs share a variant name and
differ by `seed` (platform.md "Sweeps and aggregates").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Comparison, Run
from store.runs import create_run
from store.session import begin_write


@dataclass(frozen=True)
class VariantRun:
    """One run to submit: its variant name, its overrides (for display), its full validated config, and in a sweep
    its seed (equal to config["seed"]; several runs share a variant name, one per seed)."""

    name: str
    config: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def variant_preset(preset: str | None, overrides: Mapping[str, Any]) -> str | None:
    """What a variant run is, for its `preset` field: the base preset and the variant's overrides, e.g.
    'shapes-dppo + loss=clip' (the clip run of a shapes-dppo comparison is not shapes-dppo), cut to the column."""
    if preset is None or not overrides:
        return preset
    text = f"{preset} + " + ", ".join(f"{key}={value}" for key, value in overrides.items())
    limit = Run.__table__.c.preset.type.length
    return text if len(text) <= limit else text[: limit - 1] + "…"


def create_comparison(
    session: Session,
    *,
    team_id: int,
    name: str,
    base_config: dict[str, Any],
    variants: Sequence[VariantRun],
    tags: Sequence[str] = (),
    preset: str | None = None,
    max_attempts: int = 3,
    seeds: Sequence[int] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[Comparison, list[Run]]:
    """The comparison and one queued run per variant (and seed), in one transaction. Enqueue after this returns.

    seeds, grid: what a sweep was asked for (kept for display); each run's own seed is VariantRun.seed.
    """
    begin_write(session)
    names = [(v.name, v.seed) for v in variants]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"variants need distinct (name, seed) pairs, got {names}")
    listed = {v.name: {"name": v.name, "overrides": v.overrides} for v in reversed(variants)}  # first one wins
    comparison = Comparison(
        team_id=team_id,
        name=name,
        base_config=base_config,
        variants=[listed[n] for n in dict.fromkeys(v.name for v in variants)],
        seeds=list(seeds) if seeds is not None else None,
        grid={k: list(values) for k, values in grid.items()} if grid else None,
    )
    session.add(comparison)
    session.flush()
    runs = [
        create_run(
            session,
            team_id=team_id,
            config=v.config,
            name=f"{name} / {v.name}" + (f" / seed {v.seed}" if v.seed is not None else ""),
            tags=tags,
            preset=variant_preset(preset, v.overrides),
            max_attempts=max_attempts,
            comparison_id=comparison.id,
            variant=v.name,
            commit=False,
        )
        for v in variants
    ]
    for run, v in zip(runs, variants, strict=True):
        run.seed = v.seed if v.seed is not None else run.config.get("seed")
    session.commit()
    return comparison, runs


def get_comparison(session: Session, *, comparison_id: int, team_id: int | None = None) -> Comparison | None:
    comparison = session.get(Comparison, comparison_id)
    if comparison is None or (team_id is not None and comparison.team_id != team_id):
        return None
    return comparison


def list_comparisons(session: Session, *, team_id: int, limit: int = 100) -> list[Comparison]:
    query = select(Comparison).where(Comparison.team_id == team_id).order_by(Comparison.id.desc()).limit(limit)
    return list(session.scalars(query))


def comparison_runs(session: Session, *, comparison_id: int) -> list[Run]:
    """The variant runs, in submission order."""
    return list(session.scalars(select(Run).where(Run.comparison_id == comparison_id).order_by(Run.id)))
