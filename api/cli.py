"""`flowdppo token|submit|runs|watch|cancel|sweep|compare`: tokens (operator commands) and a REST client CLI.

`flowdppo api` and `flowdppo up` serve the API with the dashboard: they live in server.py, the composition root.

Client commands take --url/--token or env FLOWDPPO_URL / FLOWDPPO_TOKEN. Heavy imports happen inside handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.enums import RunKind, RunStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _compare_columns() -> list[tuple[str, str, str]]:
    """(header, key, field) of the `flowdppo compare` table; the trust-region columns come from the loss registry."""
    from trainer.loss_registry import trust_region_metrics

    return [
        ("reward final", "reward/total/mean", "final"),
        ("reward best", "reward/total/mean", "best"),
        ("eval reward", "eval/reward/total/mean", "final"),
        ("kl_ref", "kl_ref/mean", "final"),
        *[(key.replace("/fraction", " frac"), key, "final") for key in trust_region_metrics()],  # mask frac, clip frac
    ]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("token", help="API tokens.")
    token_sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser("create", help="Create a token for a team (the team is created if needed).")
    create.add_argument("--team", required=True)
    create.add_argument("--admin", action="store_true", help="May create teams through the API.")
    create.set_defaults(handler=_token_create)
    listing = token_sub.add_parser("list", help="A team's tokens (prefix, role, dates; never the secret).")
    listing.add_argument("--team", required=True)
    listing.set_defaults(handler=_token_list)
    revoke = token_sub.add_parser("revoke", help="Revoke a token by id (see `token list`); refused from then on.")
    revoke.add_argument("token_id", type=int, metavar="ID")
    revoke.set_defaults(handler=_token_revoke)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=None, help="Server URL (env FLOWDPPO_URL, default http://127.0.0.1:8000).")
    client.add_argument("--token", default=None, help="Bearer token (env FLOWDPPO_TOKEN).")

    p = subparsers.add_parser("submit", parents=[client], help="Submit a run from a preset or a config file.")
    p.add_argument("source", metavar="PRESET_OR_CONFIG", help="A preset name or a .json/.yaml config file.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="")
    p.add_argument("--tag", dest="tags", action="append", default=[])
    p.add_argument("--watch", action="store_true", help="Then follow it like `flowdppo watch`.")
    p.set_defaults(handler=_submit)

    p = subparsers.add_parser("runs", parents=[client], help="List runs, newest first.")
    p.add_argument("--status", choices=[s.value for s in RunStatus])
    p.add_argument("--kind", choices=[k.value for k in RunKind])
    p.add_argument("--tag")
    p.add_argument("--comparison", type=int, dest="comparison_id")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=_runs)

    p = subparsers.add_parser("watch", parents=[client], help="Follow a run live until it finishes.")
    p.add_argument("run_id", type=int, metavar="RUN")
    p.set_defaults(handler=_watch)

    p = subparsers.add_parser("cancel", parents=[client], help="Cancel a run (a running one stops within a step).")
    p.add_argument("run_id", type=int, metavar="RUN")
    p.set_defaults(handler=_cancel)

    from api import sweep_cli

    sweep_cli.register(subparsers, client)  # flowdppo sweep submit|show

    p = subparsers.add_parser("compare", parents=[client], help="Summary metrics of runs side by side.")
    p.add_argument("run_ids", type=int, nargs="+", metavar="RUN")
    p.set_defaults(handler=_compare)

    p = subparsers.add_parser(
        "export", parents=[client], help="Export a finished run (or a `train --out` folder) to TensorBoard or MLflow."
    )
    p.add_argument("source", metavar="RUN", help="A run id, or a folder written by `flowdppo train --out`.")
    p.add_argument("--to", nargs=2, required=True, metavar=("tensorboard|mlflow", "DIR|URI"))
    p.add_argument("--experiment", default="flowdppo", help="MLflow experiment (created if missing).")
    p.set_defaults(handler=_export)


# --- operator commands ---


def _operator_session() -> Session:
    """A session on the configured database (DATABASE_URL): token commands are run by the operator, not over REST."""
    from api.settings import Settings
    from store.session import make_sessionmaker

    return make_sessionmaker(Settings().DATABASE_URL)()


def _token_create(args: argparse.Namespace) -> int:
    from api.services import teams

    with _operator_session() as session:
        created = teams.create_token(session, team_name=args.team, admin=args.admin)
    print(
        f"token for team {created.team.name!r}{' (admin)' if created.is_admin else ''}; shown once:", file=sys.stderr
    )
    print(created.token)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from api.services import teams
    from api.services.errors import NotFoundError

    try:
        with _operator_session() as session:
            tokens = teams.list_tokens(session, team_name=args.team)
    except NotFoundError as err:
        return _fail(err)
    table = Table("id", "prefix", "role", "created", "revoked")
    for t in tokens:
        revoked = f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else ""
        table.add_row(str(t.id), t.prefix, _role(t.is_admin), f"{t.created_at:%Y-%m-%d %H:%M}", revoked)
    Console().print(table)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from api.services import teams
    from api.services.errors import NotFoundError

    try:
        with _operator_session() as session:
            token = teams.revoke_token(session, token_id=args.token_id)
    except NotFoundError as err:
        return _fail(err)
    print(f"token {token.id} ({token.prefix}, {_role(token.is_admin)}) revoked at {token.revoked_at:%Y-%m-%d %H:%M}")
    return 0


def _role(is_admin: bool) -> str:
    return "admin" if is_admin else "member"


# --- client commands ---


def _client(args: argparse.Namespace) -> Any:
    from api.client import Client

    return Client(args.url, args.token)


def _fail(err: Exception) -> int:
    from api.client import ApiError

    if isinstance(err, ApiError) and isinstance(err.detail, list):
        print(f"error {err.status_code}:", file=sys.stderr)
        for e in err.detail:
            print(f"  {'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}", file=sys.stderr)
    else:
        print(f"error: {err}", file=sys.stderr)
    return 2


def _submit(args: argparse.Namespace) -> int:
    import httpx
    import yaml

    from api.client import ApiError
    from trainer.config import parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        return _fail(err)
    source = Path(args.source)
    config = yaml.safe_load(source.read_text()) if source.is_file() else None  # JSON is YAML too
    preset = None if config is not None else args.source
    try:
        with _client(args) as client:
            run = client.create_run(preset=preset, config=config, overrides=overrides, name=args.name, tags=args.tags)
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    print(f"run {run.id} queued ({run.name or preset or source.name}, {run.total_steps} steps)")
    if args.watch:
        args.run_id = run.id
        return _watch(args)
    return 0


def _runs_table(runs: list[Any], *, width: int) -> Any:
    """`flowdppo runs`: one line per run at any terminal width (80 columns too). The short columns keep their
    width; the name and the worker share what is left and are cut with an ellipsis, never wrapped."""
    from rich.table import Table

    rows = [
        (
            str(run.id),
            run.name,
            run.kind,
            "cancelling" if run.cancel_requested and run.status == RunStatus.RUNNING else run.status,
            f"{run.step}/{run.total_steps}" if run.kind == RunKind.TRAIN else f"{run.progress:.0%}",
            run.created_at.strftime("%m-%d %H:%M"),
            run.worker or "",
        )
        for run in runs
    ]
    headers = ("id", "name", "kind", "status", "step", "created", "worker")
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    # Each column costs its text plus 3 (a space either side and a border), and the table 1 more for its edge.
    left = width - 1 - 3 * len(headers) - sum(w for i, w in enumerate(widths) if i not in (1, 6))
    name_width = min(widths[1], max(6, left - min(widths[6], max(6, left * 2 // 5))))
    worker_width = min(widths[6], max(6, left - name_width))
    table = Table()
    for i, header in enumerate(headers):
        cut = {1: name_width, 6: worker_width}.get(i)
        table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=cut, min_width=cut or widths[i])
    for row in rows:
        table.add_row(*row)
    return table


def _runs(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    from api.client import ApiError
    from api.schemas import RunFilter

    filters = RunFilter(status=args.status, kind=args.kind, tag=args.tag, comparison_id=args.comparison_id)
    try:
        with _client(args) as client:
            page = client.list_runs(filters, limit=args.limit)
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    console = Console()
    console.print(_runs_table(page.data, width=console.width))
    if page.next_cursor:
        print(f"more: --limit {args.limit * 2}", file=sys.stderr)
    return 0


def _watch(args: argparse.Namespace) -> int:
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from api.client import ApiError

    columns = [
        TextColumn("run {task.fields[run]} [bold]{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("reward {task.fields[reward]}"),
        TimeElapsedColumn(),
    ]
    final = "unknown"
    try:
        with _client(args) as client, Progress(*columns) as progress:
            run = client.get_run(args.run_id)
            task = progress.add_task("run", total=run.total_steps or None, run=run.id, status=run.status, reward="-")
            for event in client.stream(run.id):
                if event.event == "metrics":
                    reward = event.data["values"].get("reward/total/mean")
                    fields = {"reward": f"{reward:.4f}"} if reward is not None else {}
                    # step s is the s-th finished training step (0: the base model's evaluation)
                    progress.update(task, completed=min(event.data["step"], run.total_steps or 1 << 30), **fields)
                elif event.event == "status":
                    status = event.data["status"] + (" (cancelling)" if event.data["cancel_requested"] else "")
                    progress.update(task, status=status, completed=event.data["step"])
                elif event.event == "end":
                    final = event.data["status"]
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    print(f"run {args.run_id}: {final}")
    return 0 if final == RunStatus.SUCCEEDED else 1


def _cancel(args: argparse.Namespace) -> int:
    import httpx

    from api.client import ApiError

    try:
        with _client(args) as client:
            run = client.cancel_run(args.run_id)
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    note = "stops after its current step" if run.status == RunStatus.RUNNING else run.status
    print(f"run {run.id}: {note}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.table import Table

    from api.client import ApiError

    try:
        with _client(args) as client:
            summaries = client.summaries(args.run_ids)
    except (ApiError, httpx.HTTPError) as err:
        return _fail(err)
    columns = _compare_columns()
    table = Table("run", "name", "status", "steps", *(header for header, _, _ in columns), "time")
    for s in summaries.data:
        cells = []
        for _, key, field in columns:
            m = s.metrics.get(key)
            value = None if m is None else getattr(m, field)
            cells.append("-" if value is None else f"{value:.4g}")
        duration = "-" if s.duration_s is None else f"{s.duration_s / 60:.1f} min"
        table.add_row(str(s.run_id), s.variant or s.name, s.status, f"{s.step}/{s.total_steps}", *cells, duration)
    Console().print(table)
    return 0


def _export(args: argparse.Namespace) -> int:
    import os

    from api.export import export

    kind, target = args.to
    if kind not in ("tensorboard", "mlflow"):
        return _fail(ValueError(f"--to {kind!r}: must be tensorboard DIR or mlflow URI"))
    # An unreachable MLflow server should fail the export in seconds, not after MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        where = export(args.source, kind, target, client=lambda: _client(args), experiment=args.experiment)
    except Exception as err:  # the export's failure, whatever the tracker raised, is the user's answer
        return _fail(err)
    print(f"{args.source} exported to {kind}: {where}")
    return 0
