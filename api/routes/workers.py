"""/workers: the Celery workers that answer a ping and the caller's runs they are executing."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentTeam, ServicesDep, SessionDep
from api.routes.responses import errors
from api.schemas import WorkerPublic
from api.services import workers as service

router = APIRouter(prefix="/workers", tags=["workers"], responses=errors(401))


@router.get("")
def list_workers(session: SessionDep, team: CurrentTeam, services: ServicesDep) -> list[WorkerPublic]:
    return service.list_workers(session, queue=services.queue, team_id=team.team_id)
