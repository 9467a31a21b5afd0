"""Metric blocks: each series rolled up every BLOCK_STEPS steps (min, max, and the last point with its wall time).

A plot of a long run asks for a few hundred buckets of many steps each. Read from the points, every point is
aggregated on every read (a comparison of 4 runs x 6 keys x 10k steps: 240k rows, ~150 ms on PostgreSQL, nearly all
of it the aggregation, not the reads); read from the blocks, a tenth as many rows. A bucket made of whole blocks has
exactly the min, max and last of its points, so the answer is the same as from the points.

Steps 10j+1 .. 10j+10 form block j: the trainer counts steps from 1, so a run of N steps fills whole blocks.
append_metrics keeps the blocks in the same transaction as the points. New points merge into their blocks (on
PostgreSQL, inside the upsert); a block whose point was overwritten (a redelivered step) is recomputed from the points
(`refresh`), since the new value can lower a max or raise a min, which no merge could undo. SQLite recomputes every
block it touches (in process, no round trips).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

BLOCK_STEPS = 10


def block_sql(step: str) -> str:
    """The block of `step` in SQL: x - ((x % 10) + 10) % 10 floors x = step - 1 to a multiple of 10 in both
    databases (their % keeps the dividend's sign), negative steps included."""
    x = f"({step} - 1)"
    return f"(({x} - ((({x} % {BLOCK_STEPS}) + {BLOCK_STEPS}) % {BLOCK_STEPS})) / {BLOCK_STEPS})"


def block_of(step: int) -> int:
    return (step - 1) // BLOCK_STEPS


def first_step(block: int) -> int:
    return block * BLOCK_STEPS + 1


def last_step(block: int) -> int:
    return (block + 1) * BLOCK_STEPS


def block_layout(lo: int, hi: int, max_points: int) -> tuple[int, int, int] | None:
    """(first block, last block, buckets) to read steps [lo, hi] from the blocks in at most max_points buckets, or
    None when a bucket of the points would be narrower than a block (short ranges are read from the points).

    Block j of the range (j = 0 .. n - 1) goes to bucket j * buckets // n, buckets = min(max_points, n): every
    bucket is made of whole blocks, and their widths differ by at most one block, so a plot keeps its full
    max_points resolution (a width rounded up to a multiple of the block could lose up to half of it).
    """
    if -(-(hi - lo + 1) // max_points) < BLOCK_STEPS:  # ceil: the bucket width from the points alone
        return None
    first, last = block_of(lo), block_of(hi)
    return first, last, min(max_points, last - first + 1)


_REFRESH = text(
    f"""
    INSERT INTO metric_blocks (run_id, key, block, last_step, last_value, last_wall, vmin, vmax)
    SELECT b.run_id, b.key, b.block, b.last_step, m.value, m.wall_time, b.vmin, b.vmax
    FROM (
        SELECT run_id, key, {block_sql("step")} AS block, max(step) AS last_step, min(value) AS vmin,
               max(value) AS vmax
        FROM metrics
        WHERE run_id = :run_id AND key IN :keys AND step >= :lo AND step <= :hi
        GROUP BY run_id, key, {block_sql("step")}
    ) AS b JOIN metrics AS m ON m.run_id = b.run_id AND m.key = b.key AND m.step = b.last_step
    WHERE true
    ON CONFLICT (run_id, key, block) DO UPDATE SET
        last_step = excluded.last_step, last_value = excluded.last_value, last_wall = excluded.last_wall,
        vmin = excluded.vmin, vmax = excluded.vmax
    """
).bindparams(bindparam("keys", expanding=True))  # "WHERE true": SQLite's parser needs it before ON CONFLICT


def refresh(session: Session, *, run_id: int, keys: Sequence[str], step_lo: int, step_hi: int) -> None:
    """Recompute, from the points, the blocks of `keys` that hold steps in [step_lo, step_hi] (in the caller's
    transaction). Blocks of those keys in that range that were not touched come out unchanged."""
    session.execute(
        _REFRESH,
        {
            "run_id": run_id,
            "keys": list(keys),
            "lo": first_step(block_of(step_lo)),
            "hi": last_step(block_of(step_hi)),
        },
    )
