"""Plotly figures of the Compare tab as pure functions of plain data (testable without a browser or a database).

Colours: one per run, the same in every chart of a page (`run_colors`). Smoothing: a debiased exponential moving
average (`ema`, TensorBoard's), drawn over the faint raw line. Series arrive downsampled (api max_points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trainer.loss_registry import trust_region_metrics

# Tableau 10: distinguishable, colour-blind friendlier than plotly's default, and fine on white.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
RAW_OPACITY = 0.25
BAND_OPACITY = 0.15
RATIO_RANGE = "ratio/min..max"  # a pseudo-key: the band between ratio/min and ratio/max
TITLES = {
    "reward/total/mean": "reward (train rollouts)",
    "eval/reward/total/mean": "reward (held-out, ODE)",
    "kl_old/mean": "KL to old policy",
    "kl_ref/mean": "KL to reference (base)",
    RATIO_RANGE: "ratio range (min..max)",
    "grad_norm": "grad norm",
    # the trust-region shares, named with the losses that report them: "mask/fraction (dppo)", ...
    **{key: f"{key} ({', '.join(losses)})" for key, losses in trust_region_metrics().items()},
}


@dataclass
class Line:
    """One run's series of one metric: x (steps or seconds), y, and optionally a band lo..hi around it."""

    run_id: int
    x: Sequence[float]
    y: Sequence[float | None]
    lo: Sequence[float | None] | None = None
    hi: Sequence[float | None] | None = None
    hover: Sequence[str] | None = field(default=None, repr=False)


def _array(values: Sequence[float | None]) -> np.ndarray:
    """float64 with NaN for gaps: plotly validates and serialises arrays at once (lists go element by element)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def run_colors(run_ids: Sequence[int]) -> dict[int, str]:
    """A colour per run by its position among the selected runs (sorted by id, so the order of picking is moot)."""
    return {run_id: PALETTE[i % len(PALETTE)] for i, run_id in enumerate(sorted(dict.fromkeys(run_ids)))}


def ema(values: Sequence[float | None], weight: float) -> list[float | None]:
    """Debiased exponential moving average: s_t = w·s_{t-1} + (1-w)·v_t, divided by (1 - w^n) over n seen points.

    weight 0 returns the values; None/NaN points stay None and do not move the average.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out: list[float | None] = []
    last, n = 0.0, 0
    for v in values:
        if v is None or math.isnan(v):
            out.append(None)
            continue
        last, n = weight * last + (1.0 - weight) * v, n + 1
        out.append(last / (1.0 - weight**n))
    return out


def metric_title(key: str) -> str:
    return TITLES.get(key, key)


def _metric_grid(keys: list[str], columns: int) -> tuple[go.Figure, int]:
    """Subplots for `keys`, `columns` a row, each titled by its metric; returns (figure, number of rows)."""
    keys = keys or ["(no metric selected)"]
    rows = math.ceil(len(keys) / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[metric_title(k) for k in keys],
        horizontal_spacing=0.08,
        vertical_spacing=min(0.12, 0.35 / max(rows - 1, 1)),
    )
    return fig, rows


def metric_figure(
    lines: Mapping[str, Sequence[Line]],
    *,
    labels: Mapping[int, str],
    colors: Mapping[int, str],
    smoothing: float = 0.0,
    x_title: str = "step",
    columns: int = 2,
) -> go.Figure:
    """One subplot per metric key (in the given order); per run a faint raw line and its EMA in the run's colour.

    The legend has one entry per run (legendgroup): clicking it hides that run in every subplot.
    """
    fig, rows = _metric_grid(list(lines), columns)
    traces, rows_of, cols_of = [], [], []
    in_legend: set[int] = set()
    for i, key in enumerate(lines):
        row, col = i // columns + 1, i % columns + 1
        for line in lines[key]:
            for trace in _run_traces(line, key, labels, colors, smoothing, show_legend=line.run_id not in in_legend):
                traces.append(trace)
                rows_of.append(row)
                cols_of.append(col)
            in_legend.add(line.run_id)
        fig.update_xaxes(title_text=x_title, title_standoff=2, row=row, col=col)
    return _fill_grid(fig, traces, rows_of, cols_of, rows)


def _fill_grid(fig: go.Figure, traces: list[dict], rows_of: list[int], cols_of: list[int], rows: int) -> go.Figure:
    """The metric grid's traces and layout, shared by the per-run and the per-variant figures."""
    if traces:  # one call: plotly validates each trace once (add_trace per trace copies and re-validates)
        fig.add_traces(traces, rows=rows_of, cols=cols_of)
    fig.update_layout(
        height=max(320, 270 * rows + 40),
        margin=dict(l=50, r=20, t=80, b=40),
        template="plotly_white",
        legend=dict(orientation="h", yref="container", y=0.995, yanchor="top", x=0.5, xanchor="center"),
        hovermode="x unified",
    )
    return fig


def _run_traces(
    line: Line, key: str, labels: Mapping[int, str], colors: Mapping[int, str], smoothing: float, *, show_legend: bool
) -> list[dict]:
    """Scatter traces as dicts: the band (lo..hi) if any, the faint raw line when smoothing, the smoothed line."""
    color, label = colors[line.run_id], labels.get(line.run_id, f"#{line.run_id}")
    common = dict(type="scatter", mode="lines", legendgroup=str(line.run_id), x=_array(line.x))
    quiet = dict(showlegend=False, hoverinfo="skip")
    traces = []
    if line.lo is not None and line.hi is not None:  # a band (the ratio range)
        traces.append(
            dict(common, **quiet, y=_array(line.hi), line=dict(color=color, width=0), name=f"{label} max", meta="band")
        )
        traces.append(
            dict(
                common,
                **quiet,
                y=_array(line.lo),
                line=dict(color=color, width=0),
                fill="tonexty",
                fillcolor=_alpha(color, BAND_OPACITY),
                name=f"{label} min",
                meta="band",
            )
        )
    if smoothing > 0:
        traces.append(
            dict(
                common,
                **quiet,
                y=_array(line.y),
                line=dict(color=color, width=1),
                opacity=RAW_OPACITY,
                name=f"{label} (raw)",
                meta="raw",
            )
        )
    traces.append(
        dict(
            common,
            y=_array(ema(line.y, smoothing)),
            line=dict(color=color, width=2),
            name=label,
            showlegend=show_legend,
            meta="smoothed",
            hovertemplate=f"{label}: %{{y:.4g}}<extra>{metric_title(key)}</extra>",
        )
    )
    return traces


REWARD_KL_POINTS = 12  # a run's path is drawn through at most this many means of consecutive steps


def reward_kl_figure(
    points: Mapping[int, tuple[Sequence[float | None], Sequence[float | None], Sequence[int]]],
    *,
    labels: Mapping[int, str],
    colors: Mapping[int, str],
    smoothing: float = 0.0,
    reward_title: str = "reward",
    max_points: int = REWARD_KL_POINTS,
) -> go.Figure:
    """The paper's efficiency view: reward (y) against KL to the reference model (x), one path per run.

    points: run_id -> (kl_ref, reward, steps), aligned on the same steps. Both axes are EMA-smoothed alike, then
    averaged over at most `max_points` runs of consecutive steps: per-step points zigzag (both noisy), the means
    read as a path. A circle marks the start and arrows point the way training went.
    A run higher up at the same KL bought more reward per unit of drift from the base model.
    """
    fig = go.Figure()
    for run_id, (kl, reward, steps) in points.items():
        color, label = colors[run_id], labels.get(run_id, f"#{run_id}")
        x, y, at = _chunk_means(ema(kl, smoothing), ema(reward, smoothing), steps, max_points)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=label,
                line=dict(color=color, width=1.5),
                marker=_path_markers(len(x), color),
                legendgroup=str(run_id),
                customdata=at,
                hovertemplate=f"{label}<br>step %{{customdata}}<br>KL %{{x:.3g}}<br>reward %{{y:.4g}}<extra></extra>",
            )
        )
    _efficiency_layout(fig, "reward vs KL to reference (higher and further left is better)", reward_title)
    return fig


def _chunk_means(
    kl: Sequence[float | None], reward: Sequence[float | None], steps: Sequence[int], n: int
) -> tuple[list[float], list[float], list[int]]:
    """Means of (kl, reward) over at most n runs of consecutive points (each labelled by its last step)."""
    pts = [(k, r, s) for k, r, s in zip(kl, reward, steps, strict=True) if k is not None and r is not None]
    if len(pts) <= n:
        return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
    edges = np.linspace(0, len(pts), n + 1).round().astype(int)
    chunks = [pts[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]
    return (
        [float(np.mean([p[0] for p in c])) for c in chunks],
        [float(np.mean([p[1] for p in c])) for c in chunks],
        [c[-1][2] for c in chunks],
    )


def _path_markers(n: int, color: str) -> dict:
    """A circle at the start, then arrows turned along the path (plotly's angleref='previous')."""
    return dict(
        size=[9] + [11] * max(n - 1, 0),
        symbol=["circle-open"] + ["arrow"] * max(n - 1, 0),
        angleref="previous",
        color=color,
        line=dict(color=color, width=1.5),
    )


def _efficiency_layout(fig: go.Figure, title: str, reward_title: str) -> None:
    fig.update_layout(
        title=title,
        template="plotly_white",
        xaxis_title="KL to reference (kl_ref/mean)",
        yaxis_title=reward_title,
        height=430,
        margin=dict(l=50, r=20, t=60, b=100),
        legend=dict(orientation="h", yref="container", y=0.02, x=0.5, xanchor="center", yanchor="bottom"),
    )


# --- seed aggregates (api/services/aggregates.py) ---
@dataclass
class Band:
    """A variant's curve of one metric averaged over seeds: x, the mean, its 95% interval lo..hi (None: n < 2)."""

    label: str
    color: str
    x: Sequence[float]
    mean: Sequence[float | None]
    lo: Sequence[float | None]
    hi: Sequence[float | None]
    n: Sequence[int] = ()


def variant_colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per variant in the order given (the comparison's)."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(dict.fromkeys(labels))}


def band_figure(bands: Mapping[str, Sequence[Band]], *, x_title: str = "step", columns: int = 2) -> go.Figure:
    """One subplot per metric; per variant its mean over seeds and the 95% band (fill between hi and lo)."""
    fig, rows = _metric_grid(list(bands), columns)
    traces, rows_of, cols_of, shown = [], [], [], set()
    for i, key in enumerate(bands):
        row, col = i // columns + 1, i % columns + 1
        for band in bands[key]:
            for trace in _band_traces(band, key, show_legend=band.label not in shown):
                traces.append(trace)
                rows_of.append(row)
                cols_of.append(col)
            shown.add(band.label)
        fig.update_xaxes(title_text=x_title, title_standoff=2, row=row, col=col)
    return _fill_grid(fig, traces, rows_of, cols_of, rows)


def _band_traces(band: Band, key: str, *, show_legend: bool) -> list[dict]:
    common = dict(type="scatter", mode="lines", legendgroup=band.label, x=_array(band.x))
    quiet = dict(showlegend=False, hoverinfo="skip", line=dict(color=band.color, width=0))
    return [
        dict(common, **quiet, y=_array(band.hi), name=f"{band.label} 95% hi", meta="band"),
        dict(
            common,
            **quiet,
            y=_array(band.lo),
            fill="tonexty",
            fillcolor=_alpha(band.color, 0.2),
            name=f"{band.label} 95% lo",
            meta="band",
        ),
        dict(
            common,
            y=_array(band.mean),
            line=dict(color=band.color, width=2),
            name=band.label,
            showlegend=show_legend,
            meta="mean",
            customdata=list(band.n) or [0] * len(band.x),
            hovertemplate=f"{band.label}: %{{y:.4g}} (n=%{{customdata}})<extra>{metric_title(key)}</extra>",
        ),
    ]


@dataclass
class Frontier:
    """A variant's mean (KL, reward) at each eval step, in step order, and the envelope (best reward within KL)."""

    label: str
    color: str
    kl: Sequence[float | None]
    reward: Sequence[float | None]
    steps: Sequence[int]
    envelope_kl: Sequence[float] = ()
    envelope_reward: Sequence[float] = ()


def frontier_figure(frontiers: Sequence[Frontier], *, reward_title: str = "held-out reward") -> go.Figure:
    """Reward vs KL to the base per variant: the path of its seed means (a circle at the start, arrows along the
    way) and, dashed, its frontier: the best reward reached within each KL."""
    fig = go.Figure()
    for f in frontiers:
        pts = [(k, r, s) for k, r, s in zip(f.kl, f.reward, f.steps, strict=True) if k is not None and r is not None]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=f.label,
                legendgroup=f.label,
                line=dict(color=f.color, width=1.5),
                marker=_path_markers(len(pts), f.color),
                customdata=[p[2] for p in pts],
                meta="path",
                hovertemplate=f"{f.label}<br>step %{{customdata}}<br>KL %{{x:.3g}}<br>reward %{{y:.4g}}"
                "<extra>mean over seeds</extra>",
            )
        )
        if f.envelope_kl:
            fig.add_trace(
                go.Scatter(
                    x=list(f.envelope_kl),
                    y=list(f.envelope_reward),
                    mode="lines",
                    line=dict(color=f.color, width=1, dash="dash", shape="hv"),
                    name=f"{f.label} frontier",
                    legendgroup=f.label,
                    showlegend=False,
                    hoverinfo="skip",
                    meta="envelope",
                )
            )
    title = "reward vs KL to the base, mean over seeds (arrows: training direction; dashed: best within KL)"
    _efficiency_layout(fig, title, reward_title)
    return fig


def _alpha(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
