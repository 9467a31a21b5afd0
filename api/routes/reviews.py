"""/reviews: blind pairwise review (a pair to judge, votes) and win rates with 95% Wilson intervals."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentTeam, SessionDep
from api.schemas import ReviewPair, VoteCreate, VotePublic, WinRate
from api.services import reviews as service

router = APIRouter(prefix="/reviews", tags=["reviews"])


@router.get("/pair")
def next_pair(
    session: SessionDep,
    team: CurrentTeam,
    run_id: Annotated[list[int], Query(description="Exactly two runs.")],
    step: int | None = None,
) -> ReviewPair:
    """Two samples with the same prompt and seed from the two runs, sides randomised."""
    return service.next_pair(session, team_id=team.team_id, run_ids=run_id, step=step)


@router.post("/votes", status_code=status.HTTP_201_CREATED)
def add_vote(body: VoteCreate, session: SessionDep, team: CurrentTeam) -> VotePublic:
    return service.add_vote(session, team_id=team.team_id, body=body)


@router.get("/win-rates")
def win_rates(
    session: SessionDep, team: CurrentTeam, run_id: Annotated[list[int] | None, Query()] = None
) -> list[WinRate]:
    return service.win_rates(session, team_id=team.team_id, run_ids=run_id)
