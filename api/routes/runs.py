"""/runs: create (preset or config + overrides), list (filters, cursor), get, cancel, delete, events, evaluate."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Interval
from fastapi import APIRouter, Query, status

from api.deps import CurrentTeam, RunFilterQuery, RunForTeam, ServicesDep, SessionDep
from api.routes.responses import errors
from api.schemas import INT64_MAX, EvaluateCreate, Message, RunCreate, RunEventPublic, RunPublic, RunsPublic
from api.services import runs as service

router = APIRouter(prefix="/runs", tags=["runs"], responses=errors(401))
EventCursor = Annotated[int, Interval(ge=0, le=INT64_MAX)]


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(429, 503))
def create_run(body: RunCreate, session: SessionDep, team: CurrentTeam, services: ServicesDep) -> RunPublic:
    """Validate (422 naming the field), store, commit, then enqueue on the `train` queue."""
    settings = services.settings
    return service.create_run(
        session,
        queue=services.queue,
        input_roots=settings.INPUT_ROOTS,
        team_id=team.team_id,
        body=body,
        reward_hosts=settings.remote_reward_hosts,
        max_queued=settings.MAX_QUEUED_RUNS_PER_TEAM,
    )


@router.get("")
def list_runs(
    session: SessionDep,
    team: CurrentTeam,
    filters: RunFilterQuery,  # query parameters status, kind, tag, comparison_id, parent_run_id
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunsPublic:
    """Newest first, without configs (GET /runs/{run_id} has them); pass `next_cursor` back as `cursor`."""
    return service.list_runs(session, team_id=team.team_id, filters=filters, cursor=cursor, limit=limit)


@router.get("/{run_id}", responses=errors(404))
def get_run(run: RunForTeam) -> RunPublic:
    return RunPublic.model_validate(run)


@router.post("/{run_id}/cancel", responses=errors(404))
def cancel_run(run: RunForTeam, session: SessionDep, services: ServicesDep) -> RunPublic:
    """A queued run is cancelled at once (its job is revoked); a running one stops after its current step."""
    return service.cancel_run(session, run=run, queue=services.queue)


@router.delete("/{run_id}", responses=errors(404, 409))
def delete_run(run: RunForTeam, session: SessionDep, services: ServicesDep) -> Message:
    """Delete a run that is not running (409 otherwise), with its evaluations, rows and files."""
    service.delete_run(session, run=run, data_dir=services.settings.DATA_DIR)
    return Message(message=f"run {run.id} deleted")


@router.get("/{run_id}/events", responses=errors(404))
def list_events(run: RunForTeam, session: SessionDep, after_id: EventCursor | None = None) -> list[RunEventPublic]:
    return service.list_events(session, run=run, after_id=after_id)


@router.post("/{run_id}/evaluate", status_code=status.HTTP_201_CREATED, responses=errors(404, 409, 429, 503))
def evaluate(run: RunForTeam, body: EvaluateCreate, session: SessionDep, services: ServicesDep) -> RunPublic:
    """An eval run (parent_run_id = this run) of a checkpoint, or of the base model when checkpoint_id is null."""
    settings = services.settings
    return service.evaluate(
        session,
        queue=services.queue,
        input_roots=settings.INPUT_ROOTS,
        run=run,
        body=body,
        max_queued=settings.MAX_QUEUED_RUNS_PER_TEAM,
    )
