"""Blind pairwise review votes and per-pair win rates with 95% Wilson intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from store.models import VOTE_CHOICES, ReviewVote, Sample
from store.session import begin_write

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class WinRate:
    """Run `run_id` against `opponent_id`: a tie counts half a win. win_rate/ci_* are None without votes."""

    run_id: int
    opponent_id: int
    wins: int
    losses: int
    ties: int
    win_rate: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion (successes may be fractional: ties count 0.5)."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def add_vote(
    session: Session, *, team_id: int, reviewer: str, left_sample_id: int, right_sample_id: int, choice: str
) -> ReviewVote:
    begin_write(session)
    if choice not in VOTE_CHOICES:
        raise ValueError(f"choice must be one of {VOTE_CHOICES}, got {choice!r}")
    if left_sample_id == right_sample_id:
        raise ValueError("left_sample_id and right_sample_id must differ")
    vote = ReviewVote(
        team_id=team_id,
        reviewer=reviewer,
        left_sample_id=left_sample_id,
        right_sample_id=right_sample_id,
        choice=choice,
    )
    session.add(vote)
    session.commit()
    return vote


def win_rates(session: Session, *, team_id: int, run_ids: Sequence[int] | None = None) -> list[WinRate]:
    """One WinRate per ordered pair of runs that met in the team's votes (both directions are listed).

    With run_ids, only votes where both samples belong to those runs count.
    """
    left, right = aliased(Sample), aliased(Sample)
    query = (
        select(left.run_id, right.run_id, ReviewVote.choice)
        .join(left, ReviewVote.left_sample_id == left.id)
        .join(right, ReviewVote.right_sample_id == right.id)
        .where(ReviewVote.team_id == team_id)
    )
    if run_ids is not None:
        query = query.where(left.run_id.in_(list(run_ids)), right.run_id.in_(list(run_ids)))
    tally: dict[tuple[int, int], list[int]] = {}  # (run, opponent) -> [wins, losses, ties]
    for left_run, right_run, choice in session.execute(query):
        if left_run == right_run:
            continue
        for me, other, won in ((left_run, right_run, "left"), (right_run, left_run, "right")):
            counts = tally.setdefault((me, other), [0, 0, 0])
            counts[2 if choice == "tie" else 0 if choice == won else 1] += 1
    out = []
    for (me, other), (wins, losses, ties) in sorted(tally.items()):
        n = wins + losses + ties
        rate = (wins + 0.5 * ties) / n
        low, high = wilson_interval(wins + 0.5 * ties, n)
        out.append(WinRate(me, other, wins, losses, ties, rate, low, high))
    return out
