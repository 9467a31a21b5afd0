"""Run detail tab: status and error, config, events, evaluations, checkpoints (download, evaluate), workers.

Data: api.services.runs (get, events, evaluate, list evaluations), .samples (checkpoints), .workers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from api.schemas import ACTIVE_STATUSES, EvaluateCreate, RunFilter, RunPublic
from api.services import Services
from api.services import runs as run_service
from api.services import samples as sample_service
from api.services import workers as worker_service
from ui.common import elapsed_s, format_duration, owned_runs, run_label, team_session

WORKER_COLUMNS = ["worker", "state", "queues", "your runs"]
# Gradio copies a returned file into its own cache (cleaned by the Blocks' delete_cache, ui/app.py), so an archive
# here is only needed until the handler returns; one folder, one file per checkpoint, pruned by age on every click.
# In the system temp folder because Gradio serves files only from there, the working folder or allowed_paths.
# One folder per user (mode 0700): on a shared host another user can neither block it nor read the archives.
ARCHIVE_DIR = Path(tempfile.gettempdir()) / f"flowdppo-checkpoint-archives-{os.getuid()}"
ARCHIVE_MAX_AGE_S = 3600


def run_header(run: RunPublic) -> str:
    lines = [
        f"### {run_label(run)} — {run.status}",
        f"kind **{run.kind}** · step **{run.step}/{run.total_steps}** ({run.progress:.0%}) · "
        f"elapsed **{format_duration(elapsed_s(run)) or '—'}** · worker **{run.worker or '—'}** · "
        f"attempt {run.attempt} · created {run.created_at:%Y-%m-%d %H:%M:%S} UTC",
    ]
    if run.tags:
        lines.append("tags: " + ", ".join(f"`{t}`" for t in run.tags))
    if run.comparison_id:
        lines.append(f"comparison group #{run.comparison_id} (variant `{run.variant}`)")
    if run.parent_run_id:
        lines.append(f"evaluation of run #{run.parent_run_id} (checkpoint {run.checkpoint_id or 'base model'})")
    if run.cancel_requested and run.status in ACTIVE_STATUSES:
        lines.append("**cancel requested**: it stops after the current step")
    if run.error:
        lines.append(f"**error**\n```\n{run.error}\n```")
    return "\n\n".join(lines)


def run_detail(services: Services, token: str | None, run_id: int | None) -> dict[str, Any]:
    """Everything the tab shows for one run."""
    if not run_id:
        raise gr.Error("Enter a run id (or click a row in Runs).")
    with team_session(services, token) as (session, principal):
        (row,) = owned_runs(session, principal, [int(run_id)])
        run = RunPublic.model_validate(row)
        events = run_service.list_events(session, run=row)
        checkpoints = sample_service.list_checkpoints(session, run=row)
        filters = RunFilter(parent_run_id=run.id)
        evals = run_service.list_runs(session, team_id=principal.team_id, filters=filters, limit=100).data
    return {
        "header": run_header(run),
        "config": run.config,
        "events": pd.DataFrame(
            [[f"{e.time:%H:%M:%S}", e.level, e.message] for e in events], columns=["time", "level", "message"]
        ),
        "checkpoints": pd.DataFrame(
            [[c.id, c.step, f"{c.created_at:%Y-%m-%d %H:%M:%S}"] for c in checkpoints], columns=["id", "step", "saved"]
        ),
        "checkpoint_choices": [("base model", "base")]
        + [(f"step {c.step} (#{c.id})", str(c.id)) for c in checkpoints],
        "evaluations": pd.DataFrame(
            [[e.id, e.name, e.status, f"{e.progress:.0%}"] for e in evals],
            columns=["id", "name", "status", "progress"],
        ),
    }


def _checkpoint_id(choice: str | None) -> int | None:
    return None if choice in (None, "", "base") else int(choice)


def evaluate(services: Services, token: str | None, run_id: int | None, checkpoint: str | None) -> str:
    """Queue an evaluation run of a checkpoint (or of the base model); it shows in Runs and in Samples."""
    with team_session(services, token) as (session, principal):
        (row,) = owned_runs(session, principal, [int(run_id or 0)])
        created = run_service.evaluate(
            session,
            queue=services.queue,
            input_roots=services.settings.INPUT_ROOTS,
            run=row,
            body=EvaluateCreate(checkpoint_id=_checkpoint_id(checkpoint)),
            max_queued=services.settings.MAX_QUEUED_RUNS_PER_TEAM,
        )
    return f"Evaluation run #{created.id} queued ({created.name})."


def download_checkpoint(services: Services, token: str | None, run_id: int | None, checkpoint: str | None) -> str:
    """A tar of the checkpoint folder (what the REST download streams) in ARCHIVE_DIR, for Gradio to serve."""
    checkpoint_id = _checkpoint_id(checkpoint)
    if checkpoint_id is None:
        raise gr.Error("Choose a checkpoint of the run (the base model ships with the package).")
    with team_session(services, token) as (session, principal):
        (row,) = owned_runs(session, principal, [int(run_id or 0)])
        path = sample_service.checkpoint_path(
            session, run=row, checkpoint_id=checkpoint_id, data_dir=services.settings.DATA_DIR
        )
    if path.is_file():
        return str(path)
    ARCHIVE_DIR.mkdir(mode=0o700, exist_ok=True)
    prune_archives(max_age_s=ARCHIVE_MAX_AGE_S)
    out = ARCHIVE_DIR / f"run{row.id}-{path.name}.tar"
    # written under a unique name, then renamed: a concurrent click for the same checkpoint never reads half a tar
    fd, part = tempfile.mkstemp(dir=ARCHIVE_DIR, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in sample_service.tar_stream(path):
                f.write(chunk)
        os.replace(part, out)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return str(out)


def prune_archives(*, max_age_s: float) -> None:
    """Delete archives older than max_age_s: by then Gradio holds its own copy."""
    cutoff = time.time() - max_age_s
    for old in ARCHIVE_DIR.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except FileNotFoundError:  # another server process pruned it first
            continue


def workers_table(services: Services, token: str | None) -> pd.DataFrame:
    with team_session(services, token) as (session, principal):
        found = worker_service.list_workers(session, queue=services.queue, team_id=principal.team_id)
    rows = [
        [w.name, "online" if w.online else "offline", ", ".join(w.queues), ", ".join(map(str, w.run_ids))]
        for w in found
    ]
    return pd.DataFrame(rows, columns=WORKER_COLUMNS)


def build(services: Services, token: gr.BrowserState) -> tuple[Any, Any, list[Any]]:
    """Components and events; returns (the run id box, the load function, its outputs) for click-through."""
    with gr.Row():
        run_id = gr.Number(label="Run id", precision=0, value=None, scale=1, elem_id="detail-run-id")
        load = gr.Button("Load", scale=0)
    header = gr.Markdown(elem_id="detail-header")
    with gr.Row():
        with gr.Column(scale=1):
            config = gr.JSON(label="Config", open=False)
        with gr.Column(scale=1):
            events = gr.Dataframe(headers=["time", "level", "message"], label="Events", interactive=False, wrap=True)
            evaluations = gr.Dataframe(
                headers=["id", "name", "status", "progress"], label="Evaluations of this run", interactive=False
            )
    gr.Markdown("#### Checkpoints")
    checkpoints = gr.Dataframe(headers=["id", "step", "saved"], label="Checkpoints", interactive=False)
    with gr.Row():
        checkpoint = gr.Dropdown(label="Checkpoint", choices=[], value=None, scale=2)
        evaluate_btn = gr.Button("Evaluate", scale=0)
        download_btn = gr.Button("Download", scale=0)
        file = gr.File(label="Checkpoint archive", scale=2, height=90)
    message = gr.Markdown()
    gr.Markdown("#### Workers")
    workers_btn = gr.Button("Ping workers", size="sm")
    workers = gr.Dataframe(headers=WORKER_COLUMNS, label="Workers", interactive=False)

    def show(token: str, rid: int | None) -> tuple:
        d = run_detail(services, token, rid)
        return (
            d["header"],
            d["config"],
            d["events"],
            d["evaluations"],
            d["checkpoints"],
            gr.Dropdown(choices=d["checkpoint_choices"], value="base"),
        )

    outputs = [header, config, events, evaluations, checkpoints, checkpoint]
    gr.on([load.click, run_id.submit], show, [token, run_id], outputs, api_name="run_detail")
    evaluate_btn.click(
        lambda t, r, c: evaluate(services, t, r, c), [token, run_id, checkpoint], message, api_name="evaluate"
    ).then(show, [token, run_id], outputs, api_visibility="private")
    download_btn.click(
        lambda t, r, c: download_checkpoint(services, t, r, c),
        [token, run_id, checkpoint],
        file,
        api_name="download_checkpoint",
    )
    workers_btn.click(lambda t: workers_table(services, t), token, workers, api_name="workers")
    return run_id, show, outputs
