"""/teams: the caller's team, and (admin tokens only) new teams with their first token."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import AdminTeam, CurrentTeam, SessionDep
from api.routes.responses import errors
from api.schemas import TeamCreate, TeamPublic, TokenCreated
from api.services import teams as service

router = APIRouter(prefix="/teams", tags=["teams"], responses=errors(401))


@router.get("/me")
def me(session: SessionDep, team: CurrentTeam) -> TeamPublic:
    return service.get_team(session, team_id=team.team_id)


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(403, 409))
def create_team(body: TeamCreate, session: SessionDep, admin: AdminTeam) -> TokenCreated:
    """Admin only: a new team and its first token (shown once)."""
    return service.create_team_with_token(session, name=body.name, admin=body.admin)
