"""Scalar metrics: idempotent batched ingest (UPSERT on run+key+step) and downsampled series for plots.

`read_series` returns at most `max_points` buckets per series, each with the min, the max and the last value in
the bucket (the last value keeps the curve's shape, min/max keep its spikes), computed in SQL so a 10k-step
series never travels to Python in full. Buckets wider than a block are made of whole blocks and read from the
rollup (store.metric_blocks), a tenth as many rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, TextClause, bindparam, column, select, text, union_all
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from store import metric_blocks
from store.metric_blocks import BLOCK_STEPS, block_layout, block_sql
from store.models import Metric, UTCDateTime, utcnow
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
    """One downsampled series: parallel lists, one entry per bucket. `steps` holds each bucket's last step, `wall`
    the wall time (Unix seconds) at which that last point was logged (empty when read with with_wall=False)."""

    run_id: int
    key: str
    steps: list[int] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


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


def _aware(wall_time: datetime) -> datetime:
    if wall_time.tzinfo is None:
        raise ValueError(f"naive datetime {wall_time!r}: metric wall times must be timezone-aware (UTC)")
    return wall_time


def append_metrics(
    session: Session,
    *,
    run_id: int,
    rows: Iterable[tuple[int, str, float] | tuple[int, str, float, datetime]] | None = None,
    step: int | None = None,
    values: Mapping[str, float] | None = None,
    wall_time: datetime | None = None,
) -> int:
    """Insert-or-overwrite points for a run, and keep their blocks (store.metric_blocks), in one commit. Returns the
    number of points written.

    Args:
        rows: (step, key, value) triples, any number of steps; a 4th item is that point's wall time (imports).
        step, values: the one-step form, as the trainer reports: append_metrics(..., step=3, values={...}).
        wall_time: when the points were measured (rows without their own); default now.
    A point written twice (a redelivered job recomputing a step) keeps the latest value, never a second row.
    """
    begin_write(session)
    wall_time = _aware(wall_time or utcnow())
    points: dict[tuple[str, int], tuple[float | None, datetime]] = {}  # one statement may not touch a row twice
    if rows is not None:
        for row in rows:
            points[(row[1], int(row[0]))] = (_to_db(row[2]), _aware(row[3]) if len(row) > 3 else wall_time)
    if values is not None:
        if step is None:
            raise ValueError("append_metrics: `values` needs `step`")
        for key, value in values.items():
            points[(key, int(step))] = (_to_db(value), wall_time)
    if not points:
        return 0
    keys, steps = list(dict.fromkeys(k for k, _ in points)), [s for _, s in points]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Not waiting for the WAL flush (this transaction only; ~60% of a per-step call): a database crash can lose
        # the last ~0.6 s of points, never corrupt them, and those are re-logged: the run resumes from its last
        # checkpoint, whose (synchronous) commit flushed every point before it.
        session.execute(_ASYNC_COMMIT)
        # One statement whatever the batch size: the points travel as four arrays (one round trip, no per-row
        # parameter sets), unnest() turns them back into rows; it merges new points into their blocks and names the
        # keys whose blocks it could not (a point overwritten: only a recompute can lower a max).
        overwritten = session.execute(
            _UPSERT_PG,
            {
                "run_id": run_id,
                "keys": [k for k, _ in points],
                "steps": steps,
                "values": [v for v, _ in points.values()],
                "walls": [w for _, w in points.values()],
            },
        ).scalar_one()
        if overwritten:
            metric_blocks.refresh(session, run_id=run_id, keys=overwritten, step_lo=min(steps), step_hi=max(steps))
    elif dialect == "sqlite":
        stmt = sqlite.insert(Metric)
        stmt = stmt.on_conflict_do_update(
            index_elements=["run_id", "key", "step"],
            set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time},
        )
        payload = [
            {"run_id": run_id, "key": k, "step": s, "value": v, "wall_time": w} for (k, s), (v, w) in points.items()
        ]
        session.execute(stmt, payload)  # executemany: SQLite is in-process, a parameter set costs no round trip
        metric_blocks.refresh(session, run_id=run_id, keys=keys, step_lo=min(steps), step_hi=max(steps))
    else:
        raise NotImplementedError(f"append_metrics supports sqlite and postgresql, not {dialect}")
    session.commit()
    return len(points)


_ASYNC_COMMIT = text("SET LOCAL synchronous_commit = off")
# The statement sees the table as it was before it: `old` marks the points that overwrite one. Blocks that got only
# new points take them incrementally (min, max, and the last point if it is later); the keys of the others come back
# for a recompute from the points (store.metric_blocks.refresh). A per-step call costs about half what a recompute
# of every touched block would.
_UPSERT_PG = text(
    f"""
    WITH p AS (
        SELECT * FROM unnest(CAST(:keys AS varchar[]), CAST(:steps AS integer[]), CAST(:values AS float8[]),
                             CAST(:walls AS timestamptz[])) AS p(key, step, value, wall_time)
    ), upsert AS (
        INSERT INTO metrics (run_id, key, step, value, wall_time)
        SELECT :run_id, key, step, value, wall_time FROM p
        ON CONFLICT (run_id, key, step) DO UPDATE SET value = excluded.value, wall_time = excluded.wall_time
    ), old AS (  -- one index lookup per point (LIMIT keeps the planner from scanning the run's points instead)
        SELECT p.key FROM p CROSS JOIN LATERAL (
            SELECT 1 FROM metrics AS m WHERE m.run_id = :run_id AND m.key = p.key AND m.step = p.step LIMIT 1
        ) AS hit
    ), b AS (
        SELECT key, {block_sql("step")} AS block, max(step) AS last_step, min(value) AS vmin, max(value) AS vmax
        FROM p WHERE key NOT IN (SELECT key FROM old) GROUP BY key, {block_sql("step")}
    ), merge AS (
        INSERT INTO metric_blocks AS mb (run_id, key, block, last_step, last_value, last_wall, vmin, vmax)
        SELECT :run_id, b.key, b.block, b.last_step, p.value, p.wall_time, b.vmin, b.vmax
        FROM b JOIN p ON p.key = b.key AND p.step = b.last_step
        ON CONFLICT (run_id, key, block) DO UPDATE SET
            vmin = least(mb.vmin, excluded.vmin), vmax = greatest(mb.vmax, excluded.vmax),
            last_step = greatest(mb.last_step, excluded.last_step),
            last_value = CASE WHEN excluded.last_step > mb.last_step THEN excluded.last_value ELSE mb.last_value END,
            last_wall = CASE WHEN excluded.last_step > mb.last_step THEN excluded.last_wall ELSE mb.last_wall END
    )
    SELECT coalesce(array_agg(DISTINCT key), '{{}}') FROM old
    """
)


def metric_keys(session: Session, *, run_ids: Sequence[int]) -> list[str]:
    """Every key logged by any of the runs, sorted."""
    query = select(Metric.key).where(Metric.run_id.in_(list(run_ids))).distinct().order_by(Metric.key)
    return list(session.scalars(query))


@dataclass(frozen=True)
class _Source:
    """Where buckets are read from: the points, or the blocks (whole-block buckets). `pos` is what buckets are cut
    on (a step, or a block number); the other fields name the columns holding a row's last step, last value (and
    its wall time), min and max; `pos_of_last` is the SQL of a bucket's last step's position (for the join back)."""

    table: str
    pos: str
    step: str
    value: str
    wall: str
    vmin: str
    vmax: str
    pos_of_last: str
    bucket: str  # the SQL of a row's bucket number


_POINTS = _Source(
    table="metrics",
    pos="step",
    step="step",
    value="value",
    wall="wall_time",
    vmin="value",
    vmax="value",
    pos_of_last="b.last_step",
    bucket="(step - :lo) / :width",
)
_BLOCKS = _Source(
    table="metric_blocks",
    pos="block",
    step="last_step",
    value="last_value",
    wall="last_wall",
    vmin="vmin",
    vmax="vmax",
    pos_of_last=block_sql("b.last_step"),
    bucket="(CAST(block - :lo AS bigint) * :buckets) / :blocks",  # block_layout; block * buckets can pass 2^31
)

# PostgreSQL: per series (LATERAL), one index range scan on (run_id, key, pos) and a hash aggregate on the bucket
# number alone; the last value (and its wall time) of a bucket is the max of [step, value, wall] arrays (steps are
# unique). Each series comes back as one row of arrays, so 24 rows cross the wire instead of 12k.
_BUCKETS_SQL_PG = """
    SELECT s.run_id, s.key, b.steps, b.last, b.wall, b.vmin, b.vmax
    FROM unnest(CAST(:run_ids AS integer[]), CAST(:keys AS varchar[])) AS s(run_id, key)
    CROSS JOIN LATERAL (
        SELECT array_agg(last_step ORDER BY last_step) AS steps, array_agg(lv[2] ORDER BY last_step) AS last,
               array_agg(lv[3] ORDER BY last_step) AS wall, array_agg(vmin ORDER BY last_step) AS vmin,
               array_agg(vmax ORDER BY last_step) AS vmax
        FROM (
            SELECT max({s.step}) AS last_step, max(ARRAY[{s.step}::float8, {s.value}{wall}]) AS lv,
                   min({s.vmin}) AS vmin, max({s.vmax}) AS vmax
            FROM {s.table}
            WHERE run_id = s.run_id AND key = s.key AND {s.pos} >= :lo AND {s.pos} <= :hi
            GROUP BY {s.bucket}
        ) AS g
    ) AS b
"""
_WALL_PG = ", date_part('epoch', {s.wall})"  # float8 seconds: costs ~10% of the query, so only when asked

# Portable (SQLite): aggregate per bucket, then join back on the bucket's last step for its value and wall time.
_BUCKETS_SQL = """
    WITH b AS (
        SELECT run_id, key, {s.bucket} AS bucket, max({s.step}) AS last_step,
               min({s.vmin}) AS vmin, max({s.vmax}) AS vmax
        FROM {s.table}
        WHERE run_id IN :run_ids AND key IN :keys AND {s.pos} >= :lo AND {s.pos} <= :hi
        GROUP BY run_id, key, {s.bucket}
    )
    SELECT b.run_id, b.key, b.last_step, m.{s.value}, m.{s.wall}, b.vmin, b.vmax
    FROM b JOIN {s.table} AS m ON m.run_id = b.run_id AND m.key = b.key AND m.{s.pos} = {s.pos_of_last}
    ORDER BY b.run_id, b.key, b.last_step
"""


def _buckets_sql(source: _Source) -> TextClause:
    return (
        text(_BUCKETS_SQL.format(s=source))
        .bindparams(bindparam("run_ids", expanding=True), bindparam("keys", expanding=True))
        .columns(
            column("run_id", Integer),
            column("key", String),
            column("last_step", Integer),
            column("value", Float),
            column("wall_time", UTCDateTime()),
            column("vmin", Float),
            column("vmax", Float),
        )
    )


def read_series(
    session: Session,
    *,
    run_ids: Sequence[int],
    keys: Sequence[str],
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    with_wall: bool = True,
) -> list[Series]:
    """One Series per (run, key) requested, in request order (empty if nothing was logged).

    Steps in [step_min, step_max] are cut into buckets, the same for every series, so that the longest series has
    at most `max_points` buckets: equal buckets of `width` steps, or, when that width would be a block or more,
    buckets of whole blocks read from the rollup (store.metric_blocks.block_layout: widths differ by at most one
    block). When the range is short enough, width is 1 and the points are exact (min == max == last).
    with_wall=False leaves `wall` empty (a little faster on PostgreSQL).
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    out = {(r, k): Series(run_id=r, key=k) for r in run_ids for k in keys}
    if not out:
        return []
    lo, hi = step_min, step_max
    if lo is None or hi is None:
        # Per series, its first and last step: one index entry each on (run_id, key, step). Spelled as ORDER BY ..
        # LIMIT 1: min()/max() scanned every point of the series when the planner's statistics lagged behind fresh
        # points (76 ms for 4 runs x 6 keys x 10k steps, three times the buckets' own query).
        def edge(run_id: int, key: str, order: Any) -> Any:
            where = (Metric.run_id == run_id, Metric.key == key)
            return select(Metric.step).where(*where).order_by(order).limit(1).scalar_subquery()

        bounds = union_all(*(select(edge(r, k, Metric.step.asc()), edge(r, k, Metric.step.desc())) for r, k in out))
        found = [(a, b) for a, b in session.execute(bounds) if a is not None]
        if not found:
            return list(out.values())
        lo = min(a for a, _ in found) if lo is None else lo
        hi = max(b for _, b in found) if hi is None else hi
    if hi < lo:
        return list(out.values())
    source = _POINTS
    params: dict[str, Any] = {"lo": lo, "hi": hi, "width": max(1, math.ceil((hi - lo + 1) / max_points))}
    layout = block_layout(lo, hi, max_points)
    # a step_min or step_max inside a block would cut it: such a range is read from the points
    whole_blocks = (step_min is None or (step_min - 1) % BLOCK_STEPS == 0) and (
        step_max is None or step_max % BLOCK_STEPS == 0
    )
    if layout is not None and whole_blocks:
        first, last, buckets = layout
        source, params = _BLOCKS, {"lo": first, "hi": last, "buckets": buckets, "blocks": last - first + 1}
    if session.get_bind().dialect.name == "postgresql":
        _read_buckets_pg(session, out, source, params, with_wall)
    else:
        for run_id, key, step, last, wall, vmin, vmax in session.execute(
            _buckets_sql(source), {**params, "run_ids": run_ids, "keys": keys}
        ):
            series = out[(run_id, key)]
            series.steps.append(int(step))
            series.last.append(_from_db(last))
            series.min.append(_from_db(vmin))
            series.max.append(_from_db(vmax))
            if with_wall:
                series.wall.append(wall.timestamp())
    return list(out.values())


def _read_buckets_pg(
    session: Session, out: dict[tuple[int, str], Series], source: _Source, params: dict[str, Any], with_wall: bool
) -> None:
    query = text(_BUCKETS_SQL_PG.format(s=source, wall=_WALL_PG.format(s=source) if with_wall else ""))
    params = {**params, "run_ids": [r for r, _ in out], "keys": [k for _, k in out]}
    for run_id, key, steps, last, wall, vmin, vmax in session.execute(query, params):
        if steps is None:  # nothing logged in the range
            continue
        series = out[(run_id, key)]
        series.steps = steps
        series.last, series.min, series.max = _nan(last), _nan(vmin), _nan(vmax)
        if with_wall:
            series.wall = wall


def _nan(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values] if None in values else values


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
