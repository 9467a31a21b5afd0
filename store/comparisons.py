"""Comparisons: one base config run as several named variants (e.g. clip vs dppo with the same seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Comparison, Run
from store.runs import create_run
from store.session import begin_write


@dataclass(frozen=True)
class VariantRun:
    """One variant to submit: its name, its overrides (for display) and its full validated config."""

    name: str
    config: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


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
) -> tuple[Comparison, list[Run]]:
    """The comparison and one queued run per variant, in one transaction. Enqueue the runs after this returns."""
    begin_write(session)
    names = [v.name for v in variants]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"variants need distinct names, got {names}")
    comparison = Comparison(
        team_id=team_id,
        name=name,
        base_config=base_config,
        variants=[{"name": v.name, "overrides": v.overrides} for v in variants],
    )
    session.add(comparison)
    session.flush()
    runs = [
        create_run(
            session,
            team_id=team_id,
            config=v.config,
            name=f"{name} / {v.name}",
            tags=tags,
            preset=preset,
            max_attempts=max_attempts,
            comparison_id=comparison.id,
            variant=v.name,
            commit=False,
        )
        for v in variants
    ]
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
