"""/health: liveness for load balancers and the container health check (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import ServicesDep, SessionDep
from api.schemas import Health
from api.services import health as service

router = APIRouter(tags=["health"])


@router.get("/health")
def health(session: SessionDep, services: ServicesDep, response: Response) -> Health:
    """200 when the database answers (`status` 'degraded' and `broker` false while the broker is down), else 503."""
    result = service.check(session, broker=services.queue.app)
    if not result.database:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return result
