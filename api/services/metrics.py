"""Metrics of runs: keys, downsampled series, summaries, and the live stream (new points and status changes)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy.orm import Session

from api.schemas import MetricsPublic, MetricSummary, RunSummary, Series, SummariesPublic
from api.services import Services
from store import metrics as store_metrics
from store import runs as store_runs
from store.enums import FINISHED_STATUSES
from store.models import Run, utcnow
from trainer.loss_registry import trust_region_metrics

# The compare table's columns (spec §7 names); "best" is the max for rewards and the min for everything else.
# The trust-region shares (mask/fraction, clip/fraction) are the loss registry's.
SUMMARY_KEYS = ("reward/total/mean", "eval/reward/total/mean", "kl_ref/mean", *trust_region_metrics())
MAX_POINTS_LIMIT = 10_000
STREAM_BATCH = 10_000  # points per poll of the live stream


def _finite(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


def higher_is_better(key: str) -> bool:
    return key.startswith(("reward/", "eval/reward/"))


def metric_keys(session: Session, *, runs: Sequence[Run]) -> list[str]:
    return store_metrics.metric_keys(session, run_ids=[r.id for r in runs])


def read_metrics(
    session: Session,
    *,
    runs: Sequence[Run],
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = 1000,
    with_wall: bool = True,
) -> MetricsPublic:
    """One series per (run, key); the same bucket width for all, so the runs line up. keys=None: every key.

    with_wall=False leaves each series' `wall` empty, for callers that only plot against steps (a bit faster).
    """
    run_ids = [r.id for r in runs]
    keys = list(keys) if keys else store_metrics.metric_keys(session, run_ids=run_ids)
    series = store_metrics.read_series(
        session,
        run_ids=run_ids,
        keys=keys,
        step_min=step_min,
        step_max=step_max,
        max_points=min(max(max_points, 1), MAX_POINTS_LIMIT),
        with_wall=with_wall,
    )
    return MetricsPublic(data=[_series(s) for s in series])


def _series(s: store_metrics.Series) -> Series:
    return Series(
        run_id=s.run_id,
        key=s.key,
        steps=s.steps,
        last=_finite(s.last),
        min=_finite(s.min),
        max=_finite(s.max),
        wall=s.wall,
    )


def summaries(session: Session, *, runs: Sequence[Run], keys: Sequence[str] = SUMMARY_KEYS) -> SummariesPublic:
    """Final and best value of each key per run, plus wall time (the `flowdppo compare` table)."""
    run_ids = [r.id for r in runs]
    per_key = {
        k: store_metrics.summarize(session, run_ids=run_ids, key=k, higher_is_better=higher_is_better(k)) for k in keys
    }
    data = []
    for run in runs:
        found = {k: per_key[k][run.id] for k in keys if run.id in per_key[k]}
        metrics = {
            k: MetricSummary(
                final_step=s.final_step, final=_finite([s.final])[0], best_step=s.best_step, best=_finite([s.best])[0]
            )
            for k, s in found.items()
        }
        data.append(
            RunSummary(
                run_id=run.id,
                name=run.name,
                variant=run.variant,
                status=run.status,
                step=run.step,  # type: ignore[arg-type]
                total_steps=run.total_steps,
                duration_s=_duration(run.started_at, run.finished_at),
                metrics=metrics,
            )
        )
    return SummariesPublic(data=data)


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or utcnow()) - start).total_seconds()


def _snapshot(session: Session, run_id: int, after_step: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The run's status fields (None if deleted) and its points after `after_step`, grouped by step."""
    run = store_runs.get_run(session, run_id=run_id)
    if run is None:
        return None, []
    status = {
        "status": run.status,
        "step": run.step,
        "total_steps": run.total_steps,
        "progress": run.progress,
        "cancel_requested": run.cancel_requested,
        "error": run.error,
        "worker": run.worker,
    }
    points = store_metrics.read_points(session, run_id=run_id, after_step=after_step, limit=STREAM_BATCH)
    by_step: dict[int, dict[str, float | None]] = {}
    for p in points:
        by_step.setdefault(p.step, {})[p.key] = None if math.isnan(p.value) else p.value
    if len(points) == STREAM_BATCH and len(by_step) > 1:
        by_step.pop(max(by_step))  # the batch may have cut the last step short: it comes whole next time
    return status, [{"step": s, "values": v} for s, v in sorted(by_step.items())]


async def live_events(
    services: Services, *, run_id: int, after_step: int = -1, poll_seconds: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events for one run: `status` when it changes, `metrics` per new step, then `end` once finished.

    Polls the database (the truth about runs, written by workers on any machine) every `poll_seconds`. Each
    yielded dict is {"event": name, "data": payload}; the caller must have checked ownership of `run_id`.
    """
    poll = poll_seconds if poll_seconds is not None else services.settings.SSE_POLL_SECONDS
    last_status: dict[str, Any] | None = None
    while True:
        status, steps = await anyio.to_thread.run_sync(_read_snapshot, services, run_id, after_step)
        if status is None:
            yield {"event": "end", "data": {"status": "deleted"}}
            return
        for item in steps:
            after_step = item["step"]
            yield {"event": "metrics", "data": item}
        if status != last_status:
            last_status = status
            yield {"event": "status", "data": status}
        if status["status"] in FINISHED_STATUSES and not steps:
            yield {"event": "end", "data": {"status": status["status"]}}
            return
        await anyio.sleep(poll)


def _read_snapshot(
    services: Services, run_id: int, after_step: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    with services.session() as session:
        return _snapshot(session, run_id, after_step)
