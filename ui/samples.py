"""Samples tab: a grid (rows = prompt and seed, columns = runs) at each run's logged step nearest the slider, and one
prompt across steps for a single run. Images are the stored thumbnails, inlined (no file route to guard).

Data: api.services.samples (rows and image paths through the artifacts resolver).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from api.services import Services
from api.services import samples as sample_service
from ui import plots, sweep
from ui.common import comparison_choices, comparison_run_ids, owned_runs, run_choices, run_label, team_session


@dataclass
class Cell:
    """One image: where it came from, its rewards, and the thumbnail as a data URI ('' when the file is gone)."""

    run_id: int
    step: int
    prompt: str
    seed: int
    rewards: dict[str, Any]
    src: str


def nearest(steps: Sequence[int], step: int | None) -> int | None:
    """The logged step closest to `step` (ties to the earlier; None = the latest), None if nothing was logged."""
    if not steps:
        return None
    if step is None:
        return steps[-1]
    return min(steps, key=lambda s: (abs(s - step), s))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _cell(session: Any, services: Services, run: Any, sample: Any, *, thumb: bool = True) -> Cell:
    try:
        path = sample_service.sample_image_path(
            session, run=run, sample_id=sample.id, data_dir=services.settings.DATA_DIR, thumb=thumb
        )
        src = data_uri(path)
    except Exception:  # noqa: BLE001 - a missing file shows as an empty cell, never breaks the grid
        src = ""
    return Cell(run.id, sample.step, sample.prompt, sample.seed, dict(sample.rewards), src)


def sample_grid(
    services: Services, token: str | None, run_ids: list[int] | None, step: int | None = None
) -> tuple[list[Any], dict[int, int | None], dict[tuple[str, int], dict[int, Cell]]]:
    """The runs, each run's shown step (nearest logged to `step`), and cells keyed by (prompt, seed) then run."""
    with team_session(services, token) as (session, principal):
        runs = owned_runs(session, principal, run_ids)
        shown: dict[int, int | None] = {}
        rows: dict[tuple[str, int], dict[int, Cell]] = {}
        for run in runs:
            shown[run.id] = nearest(sample_service.sample_steps(session, run=run), step)
            if shown[run.id] is None:
                continue
            for sample in sample_service.list_samples(session, run=run, step=shown[run.id]):
                rows.setdefault((sample.prompt, sample.seed), {})[run.id] = _cell(session, services, run, sample)
    return runs, shown, rows


def max_sample_step(services: Services, token: str | None, run_ids: list[int] | None) -> int:
    with team_session(services, token) as (session, principal):
        steps = [sample_service.sample_steps(session, run=r) for r in owned_runs(session, principal, run_ids)]
    return max((s[-1] for s in steps if s), default=0)


def prompt_history(
    services: Services, token: str | None, run_id: int | None, prompt_key: str | None
) -> tuple[list[tuple[str, str]], list[Cell]]:
    """A run's (prompt, seed) choices and, for the chosen one, its image at every logged step."""
    if run_id is None:
        return [], []
    with team_session(services, token) as (session, principal):
        (run,) = owned_runs(session, principal, [run_id])
        samples = sample_service.list_samples(session, run=run)
        keys = list(dict.fromkeys((s.prompt, s.seed) for s in samples))
        choices = [(f"{p} (seed {seed})", f"{seed}|{p}") for p, seed in keys]
        if prompt_key is None and keys:
            prompt_key = f"{keys[0][1]}|{keys[0][0]}"
        cells = []
        if prompt_key:
            seed, prompt = prompt_key.split("|", 1)
            chosen = [s for s in samples if s.prompt == prompt and s.seed == int(seed)]
            cells = [_cell(session, services, run, s) for s in chosen]
    return choices, cells


def _rewards_html(rewards: dict[str, Any]) -> str:
    parts = [
        f"{html.escape(k)} {v:.3f}" if isinstance(v, int | float) else html.escape(f"{k} {v}")
        for k, v in sorted(rewards.items())
    ]
    return "<br>".join(parts)


def _figure(cell: Cell | None, caption: str = "") -> str:
    if cell is None or not cell.src:
        return '<td class="fd-cell fd-missing">no image</td>'
    title = html.escape(f"{cell.prompt} · seed {cell.seed} · step {cell.step}")
    return (
        f'<td class="fd-cell"><figure><img src="{cell.src}" tabindex="0" alt="{title}" title="{title} '
        f'(click to enlarge)"><figcaption>{caption}{_rewards_html(cell.rewards)}</figcaption></figure></td>'
    )


def grid_html(runs: Sequence[Any], shown: dict[int, int | None], rows: dict[tuple[str, int], dict[int, Cell]]) -> str:
    """An HTML table: a header per run (its colour, label and shown step), a row per prompt and seed."""
    if not runs:
        return '<p class="fd-empty">Pick runs (or a comparison group) to see their samples side by side.</p>'
    colors = plots.run_colors([r.id for r in runs])
    head = "".join(
        f'<th style="border-bottom:4px solid {colors[r.id]}">{html.escape(run_label(r))}<br>'
        f"<small>{'step ' + str(shown[r.id]) if shown[r.id] is not None else 'no samples yet'}</small></th>"
        for r in runs
    )
    body = "".join(
        f'<tr><th class="fd-prompt">{html.escape(prompt)}<br><small>seed {seed}</small></th>'
        + "".join(_figure(cells.get(r.id)) for r in runs)
        + "</tr>"
        for (prompt, seed), cells in rows.items()
    )
    return f'<table class="fd-grid"><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def history_html(cells: Sequence[Cell]) -> str:
    if not cells:
        return '<p class="fd-empty">No samples for this run yet.</p>'
    row = "".join(_figure(c, caption=f"<b>step {c.step}</b><br>") for c in cells)
    return f'<table class="fd-grid fd-history"><tbody><tr>{row}</tr></tbody></table>'


def build(services: Services, token: gr.BrowserState) -> Any:
    with gr.Row():
        group = gr.Dropdown(label="Comparison group", choices=[], value=None, scale=2)
        runs = gr.Dropdown(label="Runs (columns)", choices=[], value=[], multiselect=True, scale=3)
        step = gr.Slider(0, 1, value=0, step=1, label="Step (each run shows its nearest logged step)", scale=3)
    sweep.build_samples(services, token, group, runs)  # a sweep's seed and same-prompt pickers: ui/sweep.py
    grid = gr.HTML(elem_id="samples-grid")
    gr.Markdown("#### One prompt across steps")
    with gr.Row():
        single = gr.Dropdown(label="Run", choices=[], value=None)
        prompt = gr.Dropdown(label="Prompt and seed", choices=[], value=None)
    history = gr.HTML(elem_id="samples-history")

    def show_grid(token: str, run_ids: list[int], at: float | None) -> str:
        return grid_html(*sample_grid(services, token, run_ids, None if at is None else int(at)))

    def on_runs(token: str, run_ids: list[int]) -> tuple:
        top = max_sample_step(services, token, run_ids)
        follow = run_ids[-1] if run_ids else gr.skip()  # the history below follows the last picked run
        return gr.Slider(minimum=0, maximum=max(top, 1), value=top), show_grid(token, run_ids, top), follow

    def show_history(token: str, run_id: int | None, key: str | None) -> tuple:
        choices, cells = prompt_history(services, token, run_id, key)
        value = key if key in [c[1] for c in choices] else (choices[0][1] if choices else None)
        return gr.Dropdown(choices=choices, value=value), history_html(cells)

    def pickers(token: str) -> tuple:
        choices = run_choices(services, token)
        return (
            gr.Dropdown(choices=comparison_choices(services, token)),
            gr.Dropdown(choices=choices),
            gr.Dropdown(choices=choices),
        )

    group.input(lambda t, c: comparison_run_ids(services, t, c), [token, group], runs, api_name="samples_group_runs")
    runs.change(on_runs, [token, runs], [step, grid, single], api_name="samples_runs")
    step.release(show_grid, [token, runs, step], grid, api_name="samples_grid")
    single.change(lambda t, r: show_history(t, r, None), [token, single], [prompt, history], api_name="prompt_choices")
    prompt.input(show_history, [token, single, prompt], [prompt, history], api_name="prompt_history")
    return pickers, [group, runs, single]
