"""Blind pairwise review: pairs of samples with the same prompt and seed, votes, and win rates with intervals."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sqlalchemy.orm import Session

from api.schemas import ReviewPair, VoteCreate, VotePublic, WinRate
from api.services.errors import ConflictError, NotFoundError
from api.services.runs import get_owned_run
from store import runs as store_runs
from store import samples as store_samples
from store import votes as store_votes
from store.models import Sample


def next_pair(
    session: Session,
    *,
    team_id: int,
    run_ids: Sequence[int],
    step: int | None = None,
    rng: random.Random | None = None,
) -> ReviewPair:
    """A random matched pair (same prompt and seed) from two of the team's runs, sides shuffled.

    step: the training step to look at (the nearest logged one of each run); None = each run's latest samples.
    """
    if len(set(run_ids)) != 2:
        raise ConflictError(f"a review pair needs two different runs, got {list(run_ids)}")
    rng = rng or random.Random()
    left, right = (get_owned_run(session, team_id=team_id, run_id=r) for r in run_ids)
    steps = [_pick_step(session, run_id=r.id, step=step) for r in (left, right)]
    if None in steps:
        raise NotFoundError("both runs need logged samples to review")
    pairs = store_samples.matched_pairs(
        session,
        left_run_id=left.id,
        right_run_id=right.id,
        left_step=steps[0],
        right_step=steps[1],  # type: ignore[arg-type]
    )
    if not pairs:
        raise NotFoundError(f"runs {left.id} and {right.id} have no samples with the same prompt and seed")
    a, b = rng.choice(pairs)
    a, b = (a, b) if rng.random() < 0.5 else (b, a)  # blind: the side says nothing about the run
    return ReviewPair(left_sample_id=a.id, right_sample_id=b.id, prompt=a.prompt, seed=a.seed)


def _pick_step(session: Session, *, run_id: int, step: int | None) -> int | None:
    if step is None:
        steps = store_samples.sample_steps(session, run_id=run_id)
        return steps[-1] if steps else None
    return store_samples.nearest_sample_step(session, run_id=run_id, step=step)


def add_vote(session: Session, *, team_id: int, body: VoteCreate) -> VotePublic:
    """Record a judgement between two of the team's samples (from two different runs)."""
    left, right = (
        _owned_sample(session, team_id=team_id, sample_id=i) for i in (body.left_sample_id, body.right_sample_id)
    )
    if left.run_id == right.run_id:
        raise ConflictError("the two samples come from the same run")
    vote = store_votes.add_vote(
        session,
        team_id=team_id,
        reviewer=body.reviewer,
        left_sample_id=left.id,
        right_sample_id=right.id,
        choice=body.choice,
    )
    return VotePublic.model_validate(vote)


def _owned_sample(session: Session, *, team_id: int, sample_id: int) -> Sample:
    sample = store_samples.get_sample(session, sample_id=sample_id)
    # Another team's sample answers exactly as a missing one: the answer tells nothing of which ids exist.
    if sample is None or store_runs.get_run(session, run_id=sample.run_id, team_id=team_id) is None:
        raise NotFoundError(f"sample {sample_id} not found")
    return sample


def win_rates(session: Session, *, team_id: int, run_ids: Sequence[int] | None = None) -> list[WinRate]:
    """One row per ordered pair of runs that met in votes; ties count half; 95% Wilson interval."""
    return [WinRate.model_validate(w) for w in store_votes.win_rates(session, team_id=team_id, run_ids=run_ids)]
