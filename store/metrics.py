"""Scalar metrics: idempotent batched ingest (UPSERT on run+key+step) and downsampled series for plots.

`read_series` returns at most `max_points` buckets per series, each with the min, the max and the last value in
the bucket (the last value keeps the curve's shape, min/max keep its spikes), computed in SQL so a 10k-step
series never travels to Python in full.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Metric, utcnow
from store.session import begin_write

DEFAULT_MAX_POINTS = 1000


@dataclass(frozen=True)
class MetricPoint:
    key: str
    step: int
    value: float  # NaN where the trainer reported NaN
    wall_time: datetime | None = None


@dataclass
class Series:
    """One downsampled series: parallel lists, one entry per bucket. `steps` holds each bucket's last step."""

    run_id: int
    key: str
    steps: list[int] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class MetricSummary:
    """Final and best value of one key for one run (for runs tables)."""

    final_step: int
    final: float
    best_step: int
    best: float


def _to_db(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _from_db(value: float | None) -> float:
    return math.nan if value is None else float(value)


def append_metrics(
    session: Session,
    *,
    run_id: int,
    rows: Iterable[tuple[int, str, float]] | None = None,
    step: int | None = None,
    values: Mapping[str, float] | None = None,
    wall_time: datetime | None = None,
) -> int:
    """Insert-or-overwrite points for a run, in batched multi-row UPSERTs. Returns the number of points written.

    Args:
        rows: (step, key, value) triples, any number of steps.
        step, values: the one-step form, as the trainer reports: append_metrics(..., step=3, values={...}).
        wall_time: when the points were measured; default now.
    A point written twice (a redelivered job recomputing a step) keeps the latest value, never a second row.
    """
    begin_write(session)
    wall_time = wall_time or utcnow()
    points: dict[tuple[str, int], float | None] = {}  # dedupe: one statement may not touch a row twice
    if rows is not None:
        for row_step, key, value in rows:
            points[(key, int(row_step))] = _to_db(value)
    if values is not None:
        if step is None:
            raise ValueError("append_metrics: `values` needs `step`")
        for key, value in values.items():
            points[(key, int(step))] = _to_db(value)
    if not points:
        return 0
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"append_metrics supports sqlite and postgresql, not {dialect}")
    payload = [
        {"run_id": run_id, "key": key, "step": s, "value": v, "wall_time": wall_time} for (key, s), v in points.items()
    ]
    stmt = insert(Metric)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "key", "step"],
        set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time},
    )
    # One statement, many parameter sets: the driver's executemany (psycopg pipelines it) beats compiling a huge
    # multi-row VALUES clause in Python by about 6x.
    session.execute(stmt, payload)
    session.commit()
    return len(payload)


def metric_keys(session: Session, *, run_ids: Sequence[int]) -> list[str]:
    """Every key logged by any of the runs, sorted."""
    query = select(Metric.key).where(Metric.run_id.in_(list(run_ids))).distinct().order_by(Metric.key)
    return list(session.scalars(query))


# PostgreSQL: one pass; the last value of a bucket is the max of [step, value] arrays (steps are unique).
_BUCKETS_SQL_PG = text(
    """
    SELECT run_id, key, max(step), (max(ARRAY[step::float8, value]))[2], min(value), max(value)
    FROM metrics
    WHERE run_id IN :run_ids AND key IN :keys AND step >= :lo AND step <= :hi
    GROUP BY run_id, key, (step - :lo) / :width
    ORDER BY 1, 2, 3
    """
).bindparams(bindparam("run_ids", expanding=True), bindparam("keys", expanding=True))

# Portable: aggregate per bucket, then join back on the bucket's last step for its value.
_BUCKETS_SQL = text(
    """
    WITH b AS (
        SELECT run_id, key, (step - :lo) / :width AS bucket, max(step) AS last_step,
               min(value) AS vmin, max(value) AS vmax
        FROM metrics
        WHERE run_id IN :run_ids AND key IN :keys AND step >= :lo AND step <= :hi
        GROUP BY run_id, key, (step - :lo) / :width
    )
    SELECT b.run_id, b.key, b.last_step, m.value, b.vmin, b.vmax
    FROM b JOIN metrics AS m ON m.run_id = b.run_id AND m.key = b.key AND m.step = b.last_step
    ORDER BY b.run_id, b.key, b.last_step
    """
).bindparams(bindparam("run_ids", expanding=True), bindparam("keys", expanding=True))


def read_series(
    session: Session,
    *,
    run_ids: Sequence[int],
    keys: Sequence[str],
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> list[Series]:
    """One Series per (run, key) requested, in request order (empty if nothing was logged).

    Steps in [step_min, step_max] are cut into equal buckets of `width` steps, the same for every series, so that
    the longest series has at most `max_points` buckets. When the range is short enough, width is 1 and the
    points are exact (min == max == last).
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    out = {(r, k): Series(run_id=r, key=k) for r in run_ids for k in keys}
    if not out:
        return []
    lo, hi = step_min, step_max
    if lo is None or hi is None:
        # Per-series min/max are index lookups on (run_id, key, step); one IN-list query would scan every point.
        bounds = union_all(
            *(
                select(func.min(Metric.step), func.max(Metric.step)).where(Metric.run_id == r, Metric.key == k)
                for r, k in out
            )
        )
        found = [(a, b) for a, b in session.execute(bounds) if a is not None]
        if not found:
            return list(out.values())
        lo = min(a for a, _ in found) if lo is None else lo
        hi = max(b for _, b in found) if hi is None else hi
    if hi < lo:
        return list(out.values())
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    params: dict[str, Any] = {"lo": lo, "hi": hi, "width": width, "run_ids": run_ids, "keys": keys}
    query = _BUCKETS_SQL
    if session.get_bind().dialect.name == "postgresql":
        query = _BUCKETS_SQL_PG
        session.execute(text("SET LOCAL work_mem = '64MB'"))  # keep the hash aggregate of array states in memory
    for run_id, key, step, last, vmin, vmax in session.execute(query, params):
        series = out[(run_id, key)]
        series.steps.append(int(step))
        series.last.append(_from_db(last))
        series.min.append(_from_db(vmin))
        series.max.append(_from_db(vmax))
    return list(out.values())


def read_points(
    session: Session,
    *,
    run_id: int,
    keys: Sequence[str] | None = None,
    after_step: int | None = None,
    limit: int = 10_000,
) -> list[MetricPoint]:
    """Raw points in step order, for live updates (`after_step` = the last step the client has)."""
    query = select(Metric.key, Metric.step, Metric.value, Metric.wall_time).where(Metric.run_id == run_id)
    if keys is not None:
        query = query.where(Metric.key.in_(list(keys)))
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    rows = session.execute(query.order_by(Metric.step, Metric.key).limit(limit))
    return [MetricPoint(key=k, step=s, value=_from_db(v), wall_time=w) for k, s, v, w in rows]


def latest_metrics(session: Session, *, run_id: int, keys: Sequence[str] | None = None) -> dict[str, MetricPoint]:
    """The last logged point of every key (or of `keys`) of a run."""
    last = select(Metric.key, func.max(Metric.step).label("step")).where(Metric.run_id == run_id)
    if keys is not None:
        last = last.where(Metric.key.in_(list(keys)))
    last = last.group_by(Metric.key).subquery()
    query = select(Metric.key, Metric.step, Metric.value, Metric.wall_time).join(
        last, (Metric.key == last.c.key) & (Metric.step == last.c.step)
    )
    rows = session.execute(query.where(Metric.run_id == run_id))
    return {k: MetricPoint(key=k, step=s, value=_from_db(v), wall_time=w) for k, s, v, w in rows}


_SUMMARY_SQL = """
    WITH agg AS (
        SELECT run_id, max(step) AS final_step, {best}(value) AS best
        FROM metrics WHERE run_id IN :run_ids AND key = :key GROUP BY run_id
    )
    SELECT agg.run_id, agg.final_step, f.value, agg.best,
           (SELECT min(m.step) FROM metrics AS m
            WHERE m.run_id = agg.run_id AND m.key = :key AND m.value = agg.best) AS best_step
    FROM agg JOIN metrics AS f ON f.run_id = agg.run_id AND f.key = :key AND f.step = agg.final_step
"""


def summarize(
    session: Session, *, run_ids: Sequence[int], key: str, higher_is_better: bool = True
) -> dict[int, MetricSummary]:
    """Final and best value of `key` per run (runs without the key are absent); NaN points never count as best."""
    if not run_ids:
        return {}
    query = text(_SUMMARY_SQL.format(best="max" if higher_is_better else "min")).bindparams(
        bindparam("run_ids", expanding=True)
    )
    out: dict[int, MetricSummary] = {}
    for run_id, final_step, final, best, best_step in session.execute(query, {"run_ids": list(run_ids), "key": key}):
        out[run_id] = MetricSummary(
            final_step=int(final_step),
            final=_from_db(final),
            best_step=int(best_step if best_step is not None else final_step),
            best=_from_db(best),
        )
    return out
