"""Metrics: keys, downsampled series (one run or several), summaries, and the live stream (server-sent events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from api.deps import CurrentTeam, RunForTeam, ServicesDep, SessionDep
from api.routes.responses import errors
from api.schemas import DbId, MetricKey, MetricsPublic, StepQuery, SummariesPublic
from api.services import metrics as service
from api.services.runs import get_owned_run

router = APIRouter(tags=["metrics"], responses=errors(401, 404))
MaxPoints = Annotated[int, Query(ge=1, le=service.MAX_POINTS_LIMIT)]
Keys = Annotated[list[MetricKey] | None, Query(max_length=1000, description="Repeat for several keys; omitted = all.")]
RunIds = Annotated[list[DbId], Query(min_length=1, max_length=100, description="Repeat for several runs.")]


@router.get("/runs/{run_id}/metrics/keys")
def metric_keys(run: RunForTeam, session: SessionDep) -> list[str]:
    return service.metric_keys(session, runs=[run])


@router.get("/runs/{run_id}/metrics")
def run_metrics(
    run: RunForTeam,
    session: SessionDep,
    key: Keys = None,
    step_min: StepQuery | None = None,
    step_max: StepQuery | None = None,
    max_points: MaxPoints = 1000,
) -> MetricsPublic:
    """At most `max_points` buckets per series, each with the last, min and max value."""
    return service.read_metrics(
        session, runs=[run], keys=key, step_min=step_min, step_max=step_max, max_points=max_points
    )


@router.get("/metrics")
def metrics_of_runs(
    session: SessionDep,
    team: CurrentTeam,
    run_id: RunIds,
    key: Keys = None,
    step_min: StepQuery | None = None,
    step_max: StepQuery | None = None,
    max_points: MaxPoints = 1000,
) -> MetricsPublic:
    """Several runs at once, with one bucket width for all so that their series line up."""
    runs = [get_owned_run(session, team_id=team.team_id, run_id=r) for r in run_id]
    return service.read_metrics(
        session, runs=runs, keys=key, step_min=step_min, step_max=step_max, max_points=max_points
    )


@router.get("/metrics/summary")
def summaries(
    session: SessionDep,
    team: CurrentTeam,
    run_id: RunIds,
    key: Annotated[
        list[MetricKey] | None,
        Query(max_length=1000, description="Default: reward, KL to reference, mask/clip fractions."),
    ] = None,
) -> SummariesPublic:
    """Final and best value of each key per run, and wall time (the `flowdppo compare` table)."""
    runs = [get_owned_run(session, team_id=team.team_id, run_id=r) for r in run_id]
    return service.summaries(session, runs=runs, keys=key or service.SUMMARY_KEYS)


@router.get("/runs/{run_id}/metrics/stream", response_class=EventSourceResponse)
def stream(run: RunForTeam, services: ServicesDep, after_step: StepQuery = -1) -> EventSourceResponse:
    """Server-sent events: `metrics` {step, values} per new step, `status` on change, `end` when the run is over."""
    return EventSourceResponse(_encoded(service.live_events(services, run_id=run.id, after_step=after_step)))


async def _encoded(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    async for item in events:
        yield {"event": item["event"], "data": json.dumps(item["data"])}
