"""/comparisons: submit one base config as named variants (same seeds), list them, read them back aligned."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.aggregate_schemas import ComparisonAggregate
from api.deps import CurrentTeam, ServicesDep, SessionDep
from api.routes.responses import errors
from api.schemas import (
    ComparisonAligned,
    ComparisonCreate,
    ComparisonPublic,
    ComparisonsPublic,
    DbId,
    MetricKey,
    StepQuery,
)
from api.services import aggregates
from api.services import comparisons as service

router = APIRouter(prefix="/comparisons", tags=["comparisons"], responses=errors(401))


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(429, 503))
def create_comparison(
    body: ComparisonCreate, session: SessionDep, team: CurrentTeam, services: ServicesDep
) -> ComparisonPublic:
    """All variants (x grid x seeds) are validated first (422 naming the field), stored together, then enqueued."""
    settings = services.settings
    return service.create_comparison(
        session,
        queue=services.queue,
        input_roots=settings.INPUT_ROOTS,
        team_id=team.team_id,
        body=body,
        max_runs=settings.MAX_SWEEP_RUNS,
        reward_hosts=settings.remote_reward_hosts,
        max_queued=settings.MAX_QUEUED_RUNS_PER_TEAM,
    )


@router.get("")
def list_comparisons(
    session: SessionDep, team: CurrentTeam, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> ComparisonsPublic:
    return service.list_comparisons(session, team_id=team.team_id, limit=limit)


@router.get("/{comparison_id}", responses=errors(404))
def get_comparison(comparison_id: DbId, session: SessionDep, team: CurrentTeam) -> ComparisonPublic:
    return service.get_comparison(session, team_id=team.team_id, comparison_id=comparison_id)


@router.get("/{comparison_id}/aligned", responses=errors(404))
def aligned(
    comparison_id: DbId,
    session: SessionDep,
    team: CurrentTeam,
    key: Annotated[
        list[MetricKey] | None, Query(max_length=1000, description="Repeat for several keys; omitted = all keys.")
    ] = None,
    step_min: StepQuery | None = None,
    step_max: StepQuery | None = None,
    max_points: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> ComparisonAligned:
    """The runs and, per key, their values on the steps every run has."""
    return service.aligned(
        session,
        team_id=team.team_id,
        comparison_id=comparison_id,
        keys=key,
        step_min=step_min,
        step_max=step_max,
        max_points=max_points,
    )


@router.get("/{comparison_id}/aggregate", responses=errors(404))
def aggregate(
    comparison_id: DbId,
    session: SessionDep,
    team: CurrentTeam,
    key: Annotated[
        list[MetricKey] | None,
        Query(max_length=1000, description="Curves to average; omitted = held-out reward, reward, KL."),
    ] = None,
    kl_budget: Annotated[
        float | None,
        Query(gt=0, allow_inf_nan=False, description="KL budget of reward_at_kl; omitted = smallest mean final KL."),
    ] = None,
    max_points: Annotated[int, Query(ge=1, le=10_000)] = aggregates.DEFAULT_MAX_POINTS,
) -> ComparisonAggregate:
    """Per variant, over its seeds: mean curves with 95% t-bands, summary intervals, the reward-vs-KL frontier."""
    return aggregates.comparison_aggregate(
        session,
        team_id=team.team_id,
        comparison_id=comparison_id,
        keys=key,
        kl_budget=kl_budget,
        max_points=max_points,
    )
