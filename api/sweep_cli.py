"""`flowdppo sweep submit|show`: a base config x variants x seeds (x a grid) through REST, and its seed aggregate.

    flowdppo sweep submit shapes-dppo --variant clip loss=clip --variant dppo loss=dppo --seeds 3 --set steps=30
    flowdppo sweep submit shapes-dppo --variant dppo --grid delta=1e-5,1e-6,1e-7 --seeds 0,1,2
    flowdppo sweep show 12 [--kl-budget 5e-3]

Registered by api/cli.py (same --url/--token options). Heavy imports happen inside handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction, client: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("sweep", help="Seeds x variants (x grid) as one comparison; its seed aggregate.")
    sub = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    submit = sub.add_parser("submit", parents=[client], help="Submit a sweep (all runs validated, then queued).")
    submit.add_argument("source", metavar="PRESET_OR_CONFIG", help="A preset name or a .json/.yaml config file.")
    submit.add_argument(
        "--variant",
        dest="variants",
        action="append",
        nargs="+",
        default=[],
        metavar="NAME [KEY=VALUE ...]",
        help="A named variant and its overrides; repeat. Default: clip (loss=clip) and dppo (loss=dppo).",
    )
    submit.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a list: 0,1,2. Default 3.")
    submit.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="Grid values of one key; repeat."
    )
    submit.add_argument("--grid-variant", dest="grid_variants", action="append", default=None, metavar="NAME")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--name", default="")
    submit.add_argument("--tag", dest="tags", action="append", default=[])
    submit.set_defaults(handler=_submit)
    show = sub.add_parser("show", parents=[client], help="Per variant over seeds: summary with 95% intervals.")
    show.add_argument("comparison_id", type=int, metavar="COMPARISON")
    show.add_argument("--kl-budget", type=float, default=None, help="Default: the smallest mean final KL.")
    show.set_defaults(handler=_show)


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2]; '4,7,9' -> [4, 7, 9]."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1 and "," not in text:
        count = int(parts[0])
        if count < 1:
            raise ValueError(f"--seeds {text!r}: need at least one seed")
        return list(range(count))
    return [int(p) for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """['delta=1e-5,1e-6'] -> {'delta': [1e-05, 1e-06]} (values are YAML scalars, as --set's)."""
    import yaml

    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = [_scalar(yaml, v.strip()) for v in raw.split(",")]
    return out


def _scalar(yaml: Any, text: str) -> Any:
    """A number when it reads as one (YAML 1.1 takes '1e-5' for a string), else a YAML scalar."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_variants(items: list[list[str]]) -> dict[str, dict[str, Any]]:
    from trainer.config import parse_overrides

    if not items:
        return {"clip": {"loss": "clip"}, "dppo": {"loss": "dppo"}}
    out = {}
    for name, *pairs in items:
        bad = [p for p in pairs if "=" not in p]
        if bad:
            raise ValueError(f"--variant {name}: expected KEY=VALUE, got {bad[0]!r} (give PRESET_OR_CONFIG first)")
        out[name] = parse_overrides(pairs)
    return out


def _submit(args: argparse.Namespace) -> int:
    import httpx
    import yaml

    from api.cli import _client, _fail
    from api.client import ApiError
    from trainer.config import parse_overrides

    try:
        variants = parse_variants(args.variants)
        seeds, grid, overrides = parse_seeds(args.seeds), parse_grid(args.grid), parse_overrides(args.overrides)
    except ValueError as err:
        return _fail(err)
    source = Path(args.source)
    config = yaml.safe_load(source.read_text()) if source.is_file() else None
    preset = None if config is not None else args.source
    try:
        with _client(args) as client:
            comparison = client.create_comparison(
                variants,
                preset=preset,
                config=config,
                overrides=overrides,
                name=args.name,
                tags=args.tags,
                seeds=seeds,
                grid=grid,
                grid_variants=args.grid_variants,
            )
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    cells = list(dict.fromkeys(r.variant for r in comparison.runs))
    _out(
        f"sweep {comparison.id} queued: {len(comparison.runs)} runs = {len(cells)} variants x {len(seeds)} seeds "
        f"({', '.join(c or '' for c in cells)}); `flowdppo sweep show {comparison.id}` for the aggregate"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    import httpx
    from rich.table import Table

    from api.cli import _client, _fail
    from api.client import ApiError

    try:
        with _client(args) as client:
            agg = client.aggregate(args.comparison_id, kl_budget=args.kl_budget)
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    budget = "-" if agg.kl_budget is None else f"{agg.kl_budget:.3g}"
    table = Table(
        "variant",
        "runs (in/failed)",
        "final eval reward",
        "best eval reward",
        "AUC",
        "final KL",
        f"reward @ KL<={budget}",
        title=f"comparison {agg.comparison.id} {agg.comparison.name}: {agg.interval}",
    )
    for v in agg.variants:
        table.add_row(
            v.variant,
            f"{v.n_runs} ({v.n_included}/{v.n_failed})",
            *(format_interval(iv) for iv in (v.final_reward, v.best_reward, v.auc, v.final_kl, v.reward_at_kl)),
        )
    _out(table)
    return 0


def format_interval(iv: Any, digits: int = 4) -> str:
    """'0.712 [0.70, 0.72] n=3'; '-' without values; no bracket for n = 1."""
    if iv.mean is None:
        return "-"
    if iv.lo is None:
        return f"{iv.mean:.{digits}g} n={iv.n}"
    return f"{iv.mean:.{digits}g} [{iv.lo:.{digits}g}, {iv.hi:.{digits}g}] n={iv.n}"


def _out(renderable: Any) -> None:
    from rich.console import Console

    Console(width=160).print(renderable)
