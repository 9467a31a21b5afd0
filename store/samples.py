"""Logged sample images: rows per (run, step, index) pointing at PNGs under the data folder (see artifacts.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from store.models import Sample
from store.session import begin_write


@dataclass(frozen=True)
class NewSample:
    """What the worker records for one image (the image itself is already saved by artifacts.save_sample_image)."""

    step: int
    prompt: str
    seed: int
    index: int
    image_path: str
    thumb_path: str | None = None
    rewards: dict[str, float] | None = None


def add_samples(session: Session, *, run_id: int, samples: Sequence[NewSample]) -> list[Sample]:
    """Insert or overwrite (a redelivered job logs the same step again) and return the rows, ids kept stable."""
    begin_write(session)
    if not samples:
        return []
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for s in samples:
        rows[(s.step, s.index)] = {
            "run_id": run_id,
            "step": s.step,
            "prompt": s.prompt,
            "seed": s.seed,
            "index": s.index,
            "rewards": dict(s.rewards or {}),
            "image_path": s.image_path,
            "thumb_path": s.thumb_path,
        }
    stmt = insert(Sample).values(list(rows.values()))
    updated = ("prompt", "seed", "rewards", "image_path", "thumb_path")
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "step", "index"], set_={c: stmt.excluded[c] for c in updated}
    )
    session.execute(stmt)
    session.commit()
    steps = sorted({s.step for s in samples})
    found = session.scalars(
        select(Sample)
        .where(Sample.run_id == run_id, Sample.step.in_(steps))
        .order_by(Sample.step, Sample.index)
        .execution_options(populate_existing=True)
    )
    return [s for s in found if (s.step, s.index) in rows]


def get_sample(session: Session, *, sample_id: int) -> Sample | None:
    return session.get(Sample, sample_id)


def list_samples(session: Session, *, run_id: int, step: int | None = None, limit: int = 1000) -> list[Sample]:
    """The run's samples, at one step or all, ordered by step then index."""
    query = select(Sample).where(Sample.run_id == run_id)
    if step is not None:
        query = query.where(Sample.step == step)
    return list(session.scalars(query.order_by(Sample.step, Sample.index).limit(limit)))


def sample_steps(session: Session, *, run_id: int) -> list[int]:
    """Steps at which the run logged samples (the step slider's stops)."""
    query = select(Sample.step).where(Sample.run_id == run_id).distinct().order_by(Sample.step)
    return list(session.scalars(query))


def nearest_sample_step(session: Session, *, run_id: int, step: int) -> int | None:
    """The logged sample step closest to `step` (ties go to the earlier one), or None if the run has none."""
    before = session.scalar(select(func.max(Sample.step)).where(Sample.run_id == run_id, Sample.step <= step))
    after = session.scalar(select(func.min(Sample.step)).where(Sample.run_id == run_id, Sample.step >= step))
    if before is None or after is None:
        return after if before is None else before
    return before if step - before <= after - step else after


def matched_pairs(
    session: Session, *, left_run_id: int, right_run_id: int, left_step: int, right_step: int
) -> list[tuple[Sample, Sample]]:
    """Samples of two runs with the same prompt and seed (for side-by-side views and blind review)."""
    right = aliased(Sample)
    query = (
        select(Sample, right)
        .join(right, (right.prompt == Sample.prompt) & (right.seed == Sample.seed))
        .where(Sample.run_id == left_run_id, Sample.step == left_step)
        .where(right.run_id == right_run_id, right.step == right_step)
        .order_by(Sample.index)
    )
    return [(a, b) for a, b in session.execute(query)]
