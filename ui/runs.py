"""Runs tab: the team's runs with status, progress, current reward, elapsed time and worker; filter, cancel, open.

Refreshed live by a gr.Timer that stops once nothing is queued or running (and restarts on submit or refresh).
Data: api.services.runs (list, cancel) and api.services.metrics (latest reward).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gradio as gr
import pandas as pd

from api.schemas import ACTIVE_STATUSES, RunFilter, RunStatus
from api.services import Services
from api.services import metrics as metric_service
from api.services import runs as run_service
from ui.common import elapsed_s, format_duration, format_value, owned_runs, team_session

STATUSES = ["all", *(s.value for s in RunStatus)]
COLUMNS = ["id", "name", "kind", "status", "progress", "step", "reward", "elapsed", "worker", "ranks", "tags", "group"]
PAGE = 100
TICK_SECONDS = 2.0
BAR_CELLS = 10


@dataclass
class RunsTable:
    frame: pd.DataFrame
    active: bool  # something is queued or running: keep refreshing


def progress_bar(progress: float) -> str:
    filled = round(max(0.0, min(1.0, progress)) * BAR_CELLS)
    return "█" * filled + "░" * (BAR_CELLS - filled) + f" {progress:.0%}"


def runs_table(services: Services, token: str | None, status: str | None = "all", tag: str | None = "") -> RunsTable:
    """The newest runs (one page) under the filters, with each run's latest reward/total/mean."""
    with team_session(services, token) as (session, principal):
        page = run_service.list_runs(
            session,
            team_id=principal.team_id,
            filters=RunFilter(status=None if status in (None, "", "all") else status, tag=(tag or "").strip() or None),
            limit=PAGE,
        )
        # summaries() reads only id/name/variant/status/step/times of its runs: the page's rows carry them all.
        latest = metric_service.summaries(session, runs=page.data, keys=("reward/total/mean",)).data
    reward = {s.run_id: s.metrics.get("reward/total/mean") for s in latest}
    now = datetime.now(UTC)
    rows = [
        [
            r.id,
            _name(r),
            r.kind,
            r.status + (" (cancelling)" if r.cancel_requested and r.status in ACTIVE_STATUSES else ""),
            progress_bar(r.progress),
            f"{r.step}/{r.total_steps}",
            format_value(reward[r.id].final) if reward.get(r.id) else "",
            format_duration(elapsed_s(r, now)),
            r.worker or "",
            r.num_processes,
            ", ".join(r.tags),
            r.comparison_id or "",
        ]
        for r in page.data
    ]
    return RunsTable(pd.DataFrame(rows, columns=COLUMNS), any(r.status in ACTIVE_STATUSES for r in page.data))


def _name(run: Any) -> str:
    if run.variant and run.variant not in run.name:
        return f"{run.name} / {run.variant}"
    return run.name


def cancel_run(services: Services, token: str | None, run_id: int | None) -> str:
    if not run_id:
        raise gr.Error("Select a run first (click its row).")
    with team_session(services, token) as (session, principal):
        (run,) = owned_runs(session, principal, [int(run_id)])
        updated = run_service.cancel_run(session, run=run, queue=services.queue)
    if updated.status == RunStatus.CANCELLED:
        return f"Run #{updated.id} cancelled."
    return f"Run #{updated.id}: cancel requested; it stops after its current step."


def build(services: Services, token: gr.BrowserState) -> Any:
    """Components and events; returns (refresh function, its outputs, the timer, the selected-run box)."""
    with gr.Row():
        status = gr.Dropdown(STATUSES, value="all", label="Status", scale=1)
        tag = gr.Textbox(label="Tag", placeholder="filter by tag", scale=1)
        refresh = gr.Button("Refresh", scale=0)
    table = gr.Dataframe(
        headers=COLUMNS, interactive=False, elem_id="runs-table", label="Runs (click a row to select it)", wrap=True
    )
    with gr.Row():
        selected = gr.Number(label="Selected run", precision=0, value=None, scale=1, elem_id="runs-selected")
        open_detail = gr.Button("Open detail", scale=0)
        cancel = gr.Button("Cancel run", variant="stop", scale=0)
        message = gr.Markdown()
    timer = gr.Timer(TICK_SECONDS, active=False)

    def refresh_table(token: str, status: str, tag: str) -> tuple:
        view = runs_table(services, token, status, tag)
        return view.frame, gr.Timer(active=view.active)

    def select_row(frame: pd.DataFrame, evt: gr.SelectData) -> int | None:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return int(frame.iloc[row]["id"]) if 0 <= row < len(frame) else None

    inputs, outputs = [token, status, tag], [table, timer]
    gr.on([refresh.click, status.change, tag.submit], refresh_table, inputs, outputs, api_name="runs")
    timer.tick(refresh_table, inputs, outputs, api_name="runs_tick", show_progress="hidden")
    table.select(select_row, table, selected, api_visibility="private")
    cancel.click(lambda t, r: cancel_run(services, t, r), [token, selected], message, api_name="cancel_run").then(
        refresh_table, inputs, outputs, api_visibility="private"
    )
    return refresh_table, inputs, outputs, selected, open_detail
