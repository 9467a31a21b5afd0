"""FastAPI dependencies: the services, a session per request, the calling team, and the run ownership check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.schemas import DbId, RunFilter, RunKind, RunStatus, Tag
from api.services import Services
from api.services import runs as run_service
from api.services import teams as team_service
from api.services.teams import Principal
from store.models import Run

bearer = HTTPBearer(auto_error=False, description="A team token: `flowdppo token create --team NAME`.")


async def get_services(request: Request) -> Services:
    """Async because it does no I/O: a sync dependency costs a threadpool round trip on every request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[Session]:
    """Async: opening a session does no I/O (it connects on first use), so only closing one that did goes to the
    threadpool (one round trip instead of the two of a sync generator's enter and exit)."""
    session = services.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():  # a rollback and the connection back to the pool: I/O
            with anyio.CancelScope(shield=True):  # a client that went away must not leak the connection
                await run_in_threadpool(session.close)
        else:
            session.close()


# scope="function": the session (and on SQLite its write lock, see store.session) is released as soon as the
# handler returns, before a streamed response (live metrics, checkpoint download) starts.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_current_team(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Async so that a token verified in the last AUTH_CACHE_SECONDS costs neither a query nor a threadpool hop;
    any other goes to the database (in the threadpool, a session of its own)."""
    token = None if credentials is None else credentials.credentials
    principal = None if token is None else services.tokens.get(token)
    if principal is None and token is not None:
        principal = await run_in_threadpool(_verify_token, services, token)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


def _verify_token(services: Services, token: str) -> Principal | None:
    with services.session() as session:
        principal = team_service.authenticate(session, token=token)
    if principal is not None:
        services.tokens.put(token, principal)
    return principal


CurrentTeam = Annotated[Principal, Depends(get_current_team)]


def get_admin(principal: CurrentTeam) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs an admin token")
    return principal


AdminTeam = Annotated[Principal, Depends(get_admin)]


def get_run_for_team(
    session: SessionDep, team: CurrentTeam, run_id: Annotated[DbId, Path(description="The run's id.")]
) -> Run:
    """The one ownership check of every /runs/{run_id}/... route: another team's run is a 404."""
    return run_service.get_owned_run(session, team_id=team.team_id, run_id=run_id)


RunForTeam = Annotated[Run, Depends(get_run_for_team)]


async def run_filter(  # async: no I/O, so no threadpool round trip
    status: RunStatus | None = None,
    kind: RunKind | None = None,
    tag: Tag | None = None,
    comparison_id: DbId | None = None,
    parent_run_id: DbId | None = None,
) -> RunFilter:
    """GET /runs' query parameters, typed and bounded as the columns they are compared with (docs/limits.md)."""
    return RunFilter(status=status, kind=kind, tag=tag, comparison_id=comparison_id, parent_run_id=parent_run_id)


RunFilterQuery = Annotated[RunFilter, Depends(run_filter)]
