"""Sweeps: a comparison's variants x grid points x seeds expanded into validated runs, bounded in size.

platform.md "Sweeps and aggregates". A cell is a variant at one grid point (`dppo delta=1e-06`); every cell runs
once per seed. The runs of a cell share its name (Run.variant) and differ by seed, which is what the aggregates
(api/services/aggregates.py) average over.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.schemas import ComparisonCreate
from api.services.configs import apply_overrides
from api.services.errors import InvalidConfigError
from store.comparisons import VariantRun
from trainer.config import TrainConfig

MAX_SWEEP_RUNS = 64  # default of Settings.MAX_SWEEP_RUNS: variants x grid points x seeds per submission
MAX_CELL_NAME = 100  # Run.variant's column width


@dataclass(frozen=True)
class SweepCell:
    """One variant at one grid point: its run name (Run.variant), the body's variant and the grid values."""

    name: str
    variant: str
    point: dict[str, Any]


def format_value(value: Any) -> str:
    """Grid values in cell names: floats as %g (1e-06, 0.0001), everything else as given."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first key slowest; [{}] for no grid."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep_cells(body: ComparisonCreate) -> list[SweepCell]:
    """The cells in submission order: each variant, crossed with the grid when the grid applies to it."""
    gridded = set(body.variants if body.grid_variants is None else body.grid_variants)
    cells = []
    for variant in body.variants:
        for point in grid_points(body.grid) if variant in gridded and body.grid else [{}]:
            name = " ".join([variant, *(f"{k}={format_value(v)}" for k, v in point.items())])
            cells.append(SweepCell(name=name, variant=variant, point=point))
    return cells


def check_sweep(body: ComparisonCreate, *, max_runs: int) -> None:
    """422 before anything is expanded, validated or stored: unknown grid_variants, more than `max_runs` runs.

    The size error names the field that takes the count over the limit, read in the order variants, grid, seeds;
    the count is arithmetic, so a huge grid is refused without being enumerated.
    """
    errors = [
        _error(("body", "grid_variants"), f"{name!r} is not one of the variants {list(body.variants)}", name)
        for name in body.grid_variants or []
        if name not in body.variants
    ]
    points = math.prod(len(values) for values in body.grid.values()) if body.grid else 1
    gridded = len(set(body.variants if body.grid_variants is None else body.grid_variants) & set(body.variants))
    n_cells = len(body.variants) - gridded + gridded * points
    n_seeds = len(body.seeds or [None])
    counts = {"variants": len(body.variants), "grid": n_cells, "seeds": n_cells * n_seeds}
    over = next((field for field, n in counts.items() if n > max_runs), None)
    if over is not None:
        errors.append(
            _error(
                ("body", over),
                f"the sweep would queue {counts['seeds']} runs ({len(body.variants)} variants, {points} grid points, "
                f"{n_seeds} seeds); at most {max_runs} runs per sweep (MAX_SWEEP_RUNS)",
                getattr(body, over) if over != "variants" else list(body.variants),
            )
        )
    if errors:
        raise InvalidConfigError(errors)


def _check_names(cells: Sequence[SweepCell]) -> None:
    errors = [
        _error(("body", "variants", c.variant), f"run name {c.name!r} is over {MAX_CELL_NAME} characters", c.name)
        for c in cells
        if len(c.name) > MAX_CELL_NAME
    ]
    if errors:
        raise InvalidConfigError(errors)


def sweep_runs(
    base: TrainConfig,
    body: ComparisonCreate,
    *,
    input_roots: Sequence[Path],
    max_runs: int = MAX_SWEEP_RUNS,
    reward_hosts: Sequence[str] = (),
) -> list[VariantRun]:
    """The runs to store: per cell (variant overrides, then its grid point), per seed. All errors at once."""
    check_sweep(body, max_runs=max_runs)
    cells = sweep_cells(body)
    _check_names(cells)
    errors: list[dict[str, Any]] = []
    configs: dict[str, TrainConfig] = {}
    variant_configs: dict[str, TrainConfig] = {}
    for cell in cells:
        try:
            if cell.variant not in variant_configs:
                loc = ("body", "variants", cell.variant)
                variant_configs[cell.variant] = apply_overrides(
                    base, body.variants[cell.variant], input_roots=input_roots, loc=loc, reward_hosts=reward_hosts
                )
            configs[cell.name] = apply_overrides(
                variant_configs[cell.variant],
                cell.point,
                input_roots=input_roots,
                loc=("body", "grid"),
                reward_hosts=reward_hosts,
            )
        except InvalidConfigError as err:
            errors.extend(e for e in err.errors if e not in errors)
    if errors:
        raise InvalidConfigError(errors)
    runs = []
    for cell in cells:
        overrides = {**body.variants[cell.variant], **cell.point}
        for seed in body.seeds or [None]:
            config = configs[cell.name]
            if seed is not None:  # validated like any override (TrainConfig's bounds on seed)
                config = apply_overrides(config, {"seed": seed}, input_roots=input_roots, loc=("body", "seeds"))
            dumped = config.model_dump(mode="json")
            runs.append(VariantRun(name=cell.name, config=dumped, overrides=overrides, seed=seed))
    return runs


def _error(loc: tuple[Any, ...], msg: str, value: Any) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": "value_error", "input": value}
