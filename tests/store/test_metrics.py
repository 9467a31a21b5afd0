"""Metrics: the UPSERT never doubles a point, downsampling keeps min/max/last per bucket, summaries are right."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from store import metrics, runs, teams
from store.models import Metric


@pytest.fixture
def run_ids(session):
    team = teams.create_team(session, name="m")
    return [runs.create_run(session, team_id=team.id, config={"steps": 10}).id for _ in range(2)]


def _count(session, run_id):
    return session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == run_id))


def test_upsert_never_doubles_a_point(session, run_ids):
    rid = run_ids[0]
    metrics.append_metrics(session, run_id=rid, step=1, values={"loss": 1.0, "reward/total/mean": 0.1})
    metrics.append_metrics(session, run_id=rid, step=1, values={"loss": 2.0})  # a redelivered job recomputes step 1
    metrics.append_metrics(session, run_id=rid, rows=[(1, "loss", 3.0), (1, "loss", 4.0), (2, "loss", 5.0)])
    assert _count(session, rid) == 3
    points = {(p.key, p.step): p.value for p in metrics.read_points(session, run_id=rid)}
    assert points == {("loss", 1): 4.0, ("reward/total/mean", 1): 0.1, ("loss", 2): 5.0}
    assert metrics.append_metrics(session, run_id=rid, rows=[]) == 0
    with pytest.raises(ValueError):
        metrics.append_metrics(session, run_id=rid, values={"a": 1.0})


def test_nan_and_inf_round_trip(session, run_ids):
    rid = run_ids[0]
    metrics.append_metrics(session, run_id=rid, rows=[(1, "x", math.nan), (2, "x", math.inf), (3, "x", 1.0)])
    values = [p.value for p in metrics.read_points(session, run_id=rid)]
    assert math.isnan(values[0]) and values[1:] == [math.inf, 1.0]
    summary = metrics.summarize(session, run_ids=[rid], key="x", higher_is_better=False)[rid]
    assert (summary.best, summary.best_step, summary.final) == (1.0, 3, 1.0)


def _equal_buckets(lo: int, hi: int, max_points: int) -> Callable[[int], int]:
    width = math.ceil((hi - lo + 1) / max_points)
    return lambda step: (step - lo) // width


def _bucketing(lo: int, hi: int, max_points: int) -> Callable[[int], int]:
    """read_series' documented bucketing, as a step -> bucket function: equal buckets of `width` steps from lo while
    that width is under a block; else block j = (step - 1) // 10 (j = 0 .. n - 1 from lo's block) goes to bucket
    j * buckets // n, buckets = min(max_points, n)."""
    if math.ceil((hi - lo + 1) / max_points) < 10:
        return _equal_buckets(lo, hi, max_points)
    first, n = (lo - 1) // 10, (hi - 1) // 10 - (lo - 1) // 10 + 1
    return lambda step: ((step - 1) // 10 - first) * min(max_points, n) // n


def _reference(points: dict[int, float], bucket_of: Callable[[int], int]) -> list[tuple[int, float, float, float]]:
    buckets: dict[int, list[tuple[int, float]]] = {}
    for step in sorted(points):
        buckets.setdefault(bucket_of(step), []).append((step, points[step]))
    out = []
    for _, bucket in sorted(buckets.items()):
        finite = [v for _, v in bucket if not math.isnan(v)]  # NaN points never count as a min or a max
        low, high = (min(finite), max(finite)) if finite else (math.nan, math.nan)
        out.append((bucket[-1][0], bucket[-1][1], low, high))
    return out


@pytest.mark.parametrize("max_points", [1, 7, 100, 5000])
def test_read_series_downsamples_min_max_last(session, run_ids, max_points):
    rng = random.Random(max_points)
    a = {s: rng.uniform(-1, 1) for s in range(1, 1001) if rng.random() > 0.1}  # gaps, like a resumed run
    b = {s: rng.uniform(-1, 1) for s in range(1, 401)}
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    walls = {s: t0 + timedelta(seconds=s * 1.5 + rng.random(), microseconds=rng.randrange(10**6)) for s in a | b}
    metrics.append_metrics(session, run_id=run_ids[0], rows=[(s, "k", v, walls[s]) for s, v in a.items()])
    metrics.append_metrics(session, run_id=run_ids[1], rows=[(s, "k", v, walls[s]) for s, v in b.items()])
    series = metrics.read_series(session, run_ids=run_ids, keys=["k", "absent"], max_points=max_points)
    assert [(s.run_id, s.key) for s in series] == [
        (run_ids[0], "k"),
        (run_ids[0], "absent"),
        (run_ids[1], "k"),
        (run_ids[1], "absent"),
    ]
    bucket_of = _bucketing(min(min(a), min(b)), max(max(a), max(b)), max_points)  # the same for every series
    for s, points in ((series[0], a), (series[2], b)):
        assert len(s.steps) <= max_points
        want = _reference(points, bucket_of)
        assert s.steps == [w[0] for w in want]
        for i, values in enumerate((s.last, s.min, s.max), start=1):
            assert values == pytest.approx([w[i] for w in want])
        # the wall time of each bucket's last point, to the microsecond
        assert s.wall == pytest.approx([walls[w[0]].timestamp() for w in want], abs=1e-6)
    assert series[1].steps == [] and series[3].steps == [] and series[1].wall == []
    if max_points >= 1000:  # width 1: exact points
        assert series[0].steps == sorted(a) and series[0].last == [a[k] for k in sorted(a)]
    (bare,) = metrics.read_series(session, run_ids=[run_ids[0]], keys=["k"], max_points=max_points, with_wall=False)
    assert bare.steps == series[0].steps and bare.last == series[0].last and bare.wall == []


def test_rows_with_wall_times_and_naive_times_refused(session, run_ids):
    rid = run_ids[0]
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    metrics.append_metrics(
        session, run_id=rid, rows=[(1, "x", 1.0, when), (2, "x", 2.0)], wall_time=when.replace(hour=13)
    )
    assert [p.wall_time for p in metrics.read_points(session, run_id=rid)] == [when, when.replace(hour=13)]
    with pytest.raises(ValueError, match="naive"):
        metrics.append_metrics(session, run_id=rid, rows=[(3, "x", 1.0, datetime(2026, 1, 1))])
    assert _count(session, rid) == 2


def test_blocks_answer_as_the_points_do(session, run_ids):
    """Long-range reads come from the rollup: overwritten points (a redelivered step lowering a block's max), NaN,
    negative steps, gaps, keys logged every 10th step and points merged one step at a time into their blocks all read
    back as a bucketing of the points would."""
    rng = random.Random(0)
    rid = run_ids[0]
    points = {
        "k": {s: rng.uniform(-1, 1) for s in range(-25, 3001) if rng.random() > 0.2},
        "eval": {s: rng.uniform(0, 1) for s in range(0, 3001, 10)},
        "nan": {s: math.nan for s in range(1, 3001)},
    }
    for start in range(-25, 3001, 500):  # the worker's chunks, then every step once more, some much lower
        rows = [(s, k, v) for k, vs in points.items() for s, v in vs.items() if start <= s < start + 500]
        metrics.append_metrics(session, run_id=rid, rows=rows)
    for s in sorted(points["k"])[::7]:
        points["k"][s] = -5.0 + rng.random()
        metrics.append_metrics(session, run_id=rid, step=s, values={"k": points["k"][s]})
    points["stepwise"] = {}
    for s in [*range(2, 301, 2), *range(1, 301, 2)]:  # one call per step, merged into its block; gaps filled late
        points["stepwise"][s] = math.nan if s % 13 == 0 else rng.uniform(-1, 1)
        metrics.append_metrics(session, run_id=rid, step=s, values={"stepwise": points["stepwise"][s]})
    for max_points, step_min, step_max in [
        (100, None, None),
        (37, None, None),
        (50, 1, 2000),
        (10, 5, 3000),
        (30, 1, 300),
    ]:
        got = metrics.read_series(
            session, run_ids=[rid], keys=list(points), step_min=step_min, step_max=step_max, max_points=max_points
        )
        lo = -25 if step_min is None else step_min
        hi = 3000 if step_max is None else step_max
        if step_min in (None, 1):
            bucket_of = _bucketing(lo, hi, max_points)
        else:  # step_min inside a block: equal buckets of the points
            bucket_of = _equal_buckets(lo, hi, max_points)
        for series in got:
            in_range = {s: v for s, v in points[series.key].items() if lo <= s <= hi}
            want = _reference(in_range, bucket_of)
            assert len(series.steps) <= max_points
            assert series.steps == [w[0] for w in want], (max_points, series.key)
            for i, values in enumerate((series.last, series.min, series.max), start=1):
                assert values == pytest.approx([w[i] for w in want], nan_ok=True)


def test_read_series_step_range(session, run_ids):
    rid = run_ids[0]
    metrics.append_metrics(session, run_id=rid, rows=[(s, "k", float(s)) for s in range(1, 101)])
    (s,) = metrics.read_series(session, run_ids=[rid], keys=["k"], step_min=41, step_max=60, max_points=10)
    assert s.steps == list(range(42, 61, 2)) and s.min == [float(x) for x in range(41, 60, 2)]
    (empty,) = metrics.read_series(session, run_ids=[rid], keys=["k"], step_min=500)
    assert empty.steps == []
    with pytest.raises(ValueError):
        metrics.read_series(session, run_ids=[rid], keys=["k"], max_points=0)


def test_keys_points_and_summaries(session, run_ids):
    r1, r2 = run_ids
    metrics.append_metrics(session, run_id=r1, rows=[(1, "reward", 0.2), (2, "reward", 0.9), (3, "reward", 0.5)])
    metrics.append_metrics(session, run_id=r1, rows=[(1, "loss", 1.0)])
    metrics.append_metrics(session, run_id=r2, rows=[(1, "kl", 0.1)])
    assert metrics.metric_keys(session, run_ids=[r1, r2]) == ["kl", "loss", "reward"]
    assert [(p.step, p.key) for p in metrics.read_points(session, run_id=r1, after_step=1)] == [
        (2, "reward"),
        (3, "reward"),
    ]
    summary = metrics.summarize(session, run_ids=[r1, r2], key="reward")
    assert list(summary) == [r1]
    s = summary[r1]
    assert (s.final_step, s.final, s.best_step, s.best) == (3, 0.5, 2, 0.9)
    low = metrics.summarize(session, run_ids=[r1], key="reward", higher_is_better=False)[r1]
    assert (low.best_step, low.best) == (1, 0.2)
    assert metrics.summarize(session, run_ids=[], key="reward") == {}


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)  # synchronous_commit is PostgreSQL's
def test_points_commit_without_waiting_for_the_flush_and_only_they(session, run_ids):
    """PostgreSQL: the transaction that writes points skips the WAL flush (SET LOCAL); the next one does not."""
    show = text("SHOW synchronous_commit")
    assert session.execute(show).scalar() == "on"
    # as the worker writes: inside a transaction of its own (store.lifecycle.fenced_write)
    with Session(bind=session.connection(), join_transaction_mode="create_savepoint") as writes:
        metrics.append_metrics(writes, run_id=run_ids[0], step=1, values={"k": 1.0})
    assert session.execute(show).scalar() == "off"
    session.commit()
    assert session.execute(show).scalar() == "on"
    assert [p.value for p in metrics.read_points(session, run_id=run_ids[0])] == [1.0]
