"""/health: liveness for load balancers and the container health check (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import SessionDep
from api.schemas import Health
from api.services import health as service

router = APIRouter(tags=["health"])


@router.get("/health")
def health(session: SessionDep, response: Response) -> Health:
    """200 when the database answers, 503 otherwise."""
    result = service.check(session)
    if result.status != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return result
