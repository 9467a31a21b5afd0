"""/reviews: blind pairwise review (a pair to judge, votes) and win rates with 95% Wilson intervals."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.deps import CurrentTeam, SessionDep
from api.routes.responses import errors
from api.schemas import DbId, ReviewPair, StepQuery, VoteCreate, VotePublic, WinRate
from api.services import reviews as service

router = APIRouter(prefix="/reviews", tags=["reviews"], responses=errors(401))


@router.get("/pair", responses=errors(404, 409))
def next_pair(
    session: SessionDep,
    team: CurrentTeam,
    run_id: Annotated[list[DbId], Query(max_length=2, description="Exactly two runs.")],
    step: StepQuery | None = None,
) -> ReviewPair:
    """Two samples with the same prompt and seed from the two runs, sides randomised."""
    return service.next_pair(session, team_id=team.team_id, run_ids=run_id, step=step)


@router.post("/votes", status_code=status.HTTP_201_CREATED, responses=errors(404, 409))
def add_vote(body: VoteCreate, session: SessionDep, team: CurrentTeam) -> VotePublic:
    return service.add_vote(session, team_id=team.team_id, body=body)


@router.get("/win-rates")
def win_rates(
    session: SessionDep, team: CurrentTeam, run_id: Annotated[list[DbId] | None, Query(max_length=100)] = None
) -> list[WinRate]:
    return service.win_rates(session, team_id=team.team_id, run_ids=run_id)
