"""Compare tab: any metric vs step (or wall time) for several runs, reward vs KL-to-reference, summary, config diff.

Data: api.services.metrics (downsampled series, summaries); figures: ui.plots.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from api.schemas import ACTIVE_STATUSES
from api.services import Services
from api.services import metrics as metric_service
from trainer.loss_registry import trust_region_metrics
from ui import plots, sweep
from ui.common import (
    comparison_choices,
    comparison_run_ids,
    format_duration,
    format_value,
    owned_runs,
    run_choices,
    run_label,
    team_session,
)

MAX_POINTS = 400  # per series: a chart never carries more, whatever the run length
TRUST = "mask|clip/fraction"  # pseudo-key: each run's trust-region share (the loss registry's: mask/ or clip/fraction)
DEFAULT_KEYS = [
    "reward/total/mean",
    "eval/reward/total/mean",
    "kl_old/mean",
    "kl_ref/mean",
    TRUST,
    plots.RATIO_RANGE,
    "grad_norm",
    "approx_kl",
]
PSEUDO_KEYS = {TRUST: tuple(trust_region_metrics()), plots.RATIO_RANGE: ("ratio/min", "ratio/max")}
REWARD, KL_REF = "reward/total/mean", "kl_ref/mean"
X_AXES = ["step", "wall time (s)"]
LIVE_SECONDS = 5.0  # chart refresh while a selected run is active
plots.TITLES[TRUST] = " / ".join(plots.metric_title(key) for key in PSEUDO_KEYS[TRUST])


@dataclass
class CompareView:
    chart: Any
    reward_kl: Any
    summary: pd.DataFrame
    config_diff: pd.DataFrame
    active: bool = False  # a selected run is queued or running: keep the charts live


def metric_options(services: Services, token: str | None, run_ids: list[int] | None) -> list[str]:
    """The defaults (with the pseudo-keys) followed by every other key the selected runs logged."""
    with team_session(services, token) as (session, principal):
        runs = owned_runs(session, principal, run_ids)
        logged = metric_service.metric_keys(session, runs=runs) if runs else []
    hidden = {k for pair in PSEUDO_KEYS.values() for k in pair}
    return DEFAULT_KEYS + [k for k in logged if k not in DEFAULT_KEYS and k not in hidden]


def compare_view(
    services: Services,
    token: str | None,
    run_ids: list[int] | None,
    keys: list[str] | None,
    smoothing: float = 0.6,
    x_axis: str = "step",
) -> CompareView:
    """Everything the tab shows for the selected runs, from one metrics read and one summaries read."""
    keys = list(keys or DEFAULT_KEYS)
    wall = x_axis != "step"
    with team_session(services, token) as (session, principal):
        runs = owned_runs(session, principal, run_ids)
        fetch = _expand(keys) | {REWARD, KL_REF}
        series = metric_service.read_metrics(
            session, runs=runs, keys=sorted(fetch), max_points=MAX_POINTS, with_wall=wall
        ).data
        summaries = metric_service.summaries(session, runs=runs).data if runs else []
    by_key: dict[str, dict[int, Any]] = {}
    for s in series:
        if s.steps:
            by_key.setdefault(s.key, {})[s.run_id] = s
    labels = {r.id: run_label(r) for r in runs}
    colors = plots.run_colors([r.id for r in runs])
    to_x = {r.id: _x_mapper(by_key, r, wall) for r in runs}  # run id -> (series, steps) -> x values
    lines = {key: _lines(key, by_key, [r.id for r in runs], to_x) for key in keys}
    chart = plots.metric_figure(
        {k: v for k, v in lines.items() if v},
        labels=labels,
        colors=colors,
        smoothing=smoothing,
        x_title="wall time (s)" if wall else "step",
    )
    reward_kl = plots.reward_kl_figure(
        _reward_kl_points(by_key, [r.id for r in runs]),
        labels=labels,
        colors=colors,
        smoothing=smoothing,
        reward_title=plots.metric_title(REWARD),
    )
    active = any(r.status in ACTIVE_STATUSES for r in runs)
    return CompareView(chart, reward_kl, summary_table(summaries, labels), config_diff(runs, labels), active)


def _expand(keys: Sequence[str]) -> set[str]:
    return {k for key in keys for k in PSEUDO_KEYS.get(key, (key,))}


def _lines(key: str, by_key: Mapping[str, Mapping[int, Any]], run_ids: Sequence[int], to_x: Mapping) -> list:
    """The runs' lines of one (pseudo-)key; a run without the metric has no line."""
    out = []
    for run_id in run_ids:
        if key == plots.RATIO_RANGE:
            lo, hi = by_key.get("ratio/min", {}).get(run_id), by_key.get("ratio/max", {}).get(run_id)
            if lo is None or hi is None:
                continue
            common = sorted(set(lo.steps) & set(hi.steps))
            lows, highs = dict(zip(lo.steps, lo.min, strict=True)), dict(zip(hi.steps, hi.max, strict=True))
            mid = [_mid(lows[s], highs[s]) for s in common]
            out.append(
                plots.Line(
                    run_id, to_x[run_id](lo, common), mid, [lows[s] for s in common], [highs[s] for s in common]
                )
            )
            continue
        candidates = PSEUDO_KEYS[key] if key == TRUST else (key,)
        found = next((by_key[k][run_id] for k in candidates if run_id in by_key.get(k, {})), None)
        if found is not None:
            out.append(plots.Line(run_id, to_x[run_id](found, found.steps), found.last))
    return out


def _mid(lo: float | None, hi: float | None) -> float | None:
    return None if lo is None or hi is None else (lo + hi) / 2


def _x_mapper(by_key: Mapping[str, Mapping[int, Any]], run: Any, wall: bool):
    """(series, steps) -> x: the steps themselves, or the run's elapsed seconds when each step was logged.

    Elapsed seconds are exact: each bucket's `wall` (when its last point was written) minus the run's start, so
    pauses, evaluations, checkpoints and a requeue show as they happened. A run without a start time (imported
    points) counts from its first logged point.
    """
    if not wall:
        return lambda series, steps: list(steps)
    if run.started_at is not None:
        start = run.started_at.timestamp()
    else:
        firsts = [s.wall[0] for per_run in by_key.values() if (s := per_run.get(run.id)) is not None and s.wall]
        start = min(firsts, default=0.0)

    def elapsed(series: Any, steps: Sequence[int]) -> list[float]:
        at = dict(zip(series.steps, series.wall, strict=True))
        return [round(at[step] - start, 3) for step in steps]

    return elapsed


def _reward_kl_points(by_key: Mapping[str, Mapping[int, Any]], run_ids: Sequence[int]) -> dict:
    out = {}
    for run_id in run_ids:
        reward, kl = by_key.get(REWARD, {}).get(run_id), by_key.get(KL_REF, {}).get(run_id)
        if reward is None or kl is None:
            continue
        kl_at = dict(zip(kl.steps, kl.last, strict=True))
        steps = [s for s in reward.steps if s in kl_at]
        reward_at = dict(zip(reward.steps, reward.last, strict=True))
        out[run_id] = ([kl_at[s] for s in steps], [reward_at[s] for s in steps], steps)
    return out


SUMMARY_COLUMNS = [
    "run",
    "status",
    "step",
    "best reward (step)",
    "final reward",
    "final eval reward",
    "final KL to base",
    "mask/clip fraction",
    "time",
]


def summary_table(summaries: Sequence[Any], labels: Mapping[int, str]) -> pd.DataFrame:
    """One row per run: best and final reward, final held-out reward, KL to base, trust-region share, wall time."""
    rows = []
    for s in summaries:
        m = s.metrics
        best = m.get(REWARD)
        trust = next((m[key] for key in PSEUDO_KEYS[TRUST] if m.get(key)), None)
        rows.append(
            [
                labels.get(s.run_id, f"#{s.run_id}"),
                s.status,
                f"{s.step}/{s.total_steps}",
                f"{format_value(best.best)} ({best.best_step})" if best else "",
                format_value(best.final) if best else "",
                format_value(m["eval/reward/total/mean"].final) if "eval/reward/total/mean" in m else "",
                format_value(m[KL_REF].final, 3) if KL_REF in m else "",
                format_value(trust.final, 3) if trust else "",
                format_duration(s.duration_s),
            ]
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (lists of dicts by index: rewards.0.name)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}."))
        else:
            out[name] = value
    return out


def config_diff(runs: Sequence[Any], labels: Mapping[int, str]) -> pd.DataFrame:
    """The config fields whose values differ between the runs (a single run: nothing to diff)."""
    columns = ["field", *(labels[r.id] for r in runs)]
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = []
    for key in keys:
        values = [json.dumps(f.get(key, "—")) if not isinstance(f.get(key), str) else f[key] for f in flat]
        if len(runs) > 1 and len(set(values)) > 1:
            rows.append([key, *values])
    return pd.DataFrame(rows, columns=columns)


def build(services: Services, token: gr.BrowserState) -> Any:
    """The tab's components and events; returns the function that refreshes its pickers (for the tab's select)."""
    with gr.Row():
        group = gr.Dropdown(label="Comparison group", choices=[], value=None, scale=2)
        runs = gr.Dropdown(label="Runs", choices=[], value=[], multiselect=True, scale=3)
    with gr.Row():
        keys = gr.Dropdown(label="Metrics", choices=DEFAULT_KEYS, value=DEFAULT_KEYS, multiselect=True, scale=4)
        smoothing = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="Smoothing (EMA)", scale=2)
        x_axis = gr.Radio(X_AXES, value="step", label="x axis", scale=1)
        refresh = gr.Button("Refresh", scale=0, elem_id="compare-refresh")
    wire_aggregate = sweep.build(services, token, runs, keys)  # "aggregate seeds": ui/sweep.py
    chart = gr.Plot(label="Metrics vs step", show_label=False, elem_id="compare-chart")
    with gr.Row():
        reward_kl = gr.Plot(label="Reward vs KL to reference", show_label=False, elem_id="compare-reward-kl")
    wire_aggregate([chart, reward_kl])
    summary = gr.Dataframe(
        headers=SUMMARY_COLUMNS, label="Summary", interactive=False, elem_id="compare-summary", wrap=True
    )
    diff = gr.Dataframe(label="Config diff (fields that differ)", interactive=False, elem_id="compare-diff")

    timer = gr.Timer(LIVE_SECONDS, active=False)

    def show(token: str, run_ids: list[int], metric_keys: list[str], weight: float, axis: str) -> tuple:
        view = compare_view(services, token, run_ids, metric_keys, weight, axis)
        return view.chart, view.reward_kl, view.summary, view.config_diff, gr.Timer(active=view.active)

    def pickers(token: str) -> tuple:
        return gr.Dropdown(choices=comparison_choices(services, token)), gr.Dropdown(
            choices=run_choices(services, token)
        )

    group.input(lambda t, c: comparison_run_ids(services, t, c), [token, group], runs, api_name="comparison_runs")
    runs.change(
        lambda t, r: gr.Dropdown(choices=metric_options(services, t, r)), [token, runs], keys, api_name="metric_keys"
    )
    inputs, outputs = [token, runs, keys, smoothing, x_axis], [chart, reward_kl, summary, diff, timer]
    gr.on(
        [runs.change, keys.change, smoothing.release, x_axis.change, refresh.click],
        show,
        inputs,
        outputs,
        api_name="compare",
    )
    timer.tick(show, inputs, outputs, api_name="compare_tick", show_progress="hidden")
    return pickers, [group, runs]
