"""ui/plots.py without a browser or a database: traces per run and metric, colours kept per run, EMA smoothing."""

from __future__ import annotations

import math

import pytest

from ui import plots


def _lines(run_ids: list[int], n: int = 5) -> list[plots.Line]:
    return [plots.Line(r, list(range(n)), [float(r + i) for i in range(n)]) for r in run_ids]


def test_ema_matches_the_debiased_recurrence() -> None:
    # w = 0.5: s1 = 0.5*1 / (1-0.5) = 1; s2 = (0.25 + 0.5*3) / 0.75 = 7/3; s3 = (0.875 + 0.5*5)/0.875 ... by hand
    values = [1.0, 3.0, 5.0]
    w = 0.5
    expected, raw = [], 0.0
    for n, v in enumerate(values, start=1):
        raw = w * raw + (1 - w) * v
        expected.append(raw / (1 - w**n))
    assert plots.ema(values, w) == pytest.approx(expected)
    assert plots.ema(values, w)[:2] == pytest.approx([1.0, 7 / 3])
    assert plots.ema(values, 0.0) == values  # no smoothing is the identity
    assert plots.ema([2.0] * 10, 0.9) == pytest.approx([2.0] * 10)  # debiased: a constant stays constant


def test_ema_skips_gaps_and_refuses_bad_weights() -> None:
    smoothed = plots.ema([1.0, None, math.nan, 3.0], 0.5)
    assert smoothed[1] is None and smoothed[2] is None
    assert smoothed[3] == pytest.approx(plots.ema([1.0, 3.0], 0.5)[1])  # gaps do not move the average
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="smoothing weight"):
            plots.ema([1.0], bad)


def test_run_colors_are_stable_whatever_the_picking_order() -> None:
    assert (
        plots.run_colors([7, 3, 5])
        == plots.run_colors([3, 5, 7])
        == {3: plots.PALETTE[0], 5: plots.PALETTE[1], 7: plots.PALETTE[2]}
    )
    many = plots.run_colors(list(range(12)))
    assert many[10] == plots.PALETTE[0]  # wraps around after the palette


def test_metric_figure_one_subplot_per_key_and_one_colour_per_run() -> None:
    runs = [11, 12, 13]
    colors = plots.run_colors(runs)
    labels = {r: f"#{r} v{r}" for r in runs}
    keys = ["reward/total/mean", "kl_ref/mean", "grad_norm"]
    fig = plots.metric_figure({k: _lines(runs) for k in keys}, labels=labels, colors=colors, smoothing=0.6)
    assert [a.text for a in fig.layout.annotations] == [plots.metric_title(k) for k in keys]
    smoothed = [t for t in fig.data if t.meta == "smoothed"]
    raw = [t for t in fig.data if t.meta == "raw"]
    assert len(smoothed) == len(raw) == len(runs) * len(keys)
    for trace in fig.data:  # every trace of a run, in every subplot, has the run's colour
        assert trace.line.color == colors[int(trace.legendgroup)]
    assert all(t.opacity == plots.RAW_OPACITY for t in raw)  # the raw line is faint behind the smoothed one
    in_legend = [t.name for t in fig.data if t.showlegend]
    assert in_legend == [labels[r] for r in runs]  # one legend entry per run, toggling it across subplots
    first = next(t for t in smoothed if t.legendgroup == "11")
    assert list(first.y) == pytest.approx(plots.ema([11.0, 12.0, 13.0, 14.0, 15.0], 0.6))


def test_metric_figure_without_smoothing_has_no_raw_copy_and_draws_bands() -> None:
    band = plots.Line(1, [1, 2], [1.0, 1.0], lo=[0.9, 0.95], hi=[1.1, 1.05])
    fig = plots.metric_figure({plots.RATIO_RANGE: [band]}, labels={1: "a"}, colors={1: "#4e79a7"}, smoothing=0.0)
    assert [t.meta for t in fig.data] == ["band", "band", "smoothed"]
    assert fig.data[1].fill == "tonexty" and list(fig.data[1].y) == [0.9, 0.95]


def test_reward_kl_figure_one_path_per_run() -> None:
    colors = plots.run_colors([1, 2])
    fig = plots.reward_kl_figure(
        {1: ([0.0, 1e-3], [0.6, 0.7], [10, 20]), 2: ([0.0, 5e-4], [0.6, 0.8], [10, 20])},
        labels={1: "#1 clip", 2: "#2 dppo"},
        colors=colors,
    )
    assert [t.name for t in fig.data] == ["#1 clip", "#2 dppo"]
    assert [t.line.color for t in fig.data] == [colors[1], colors[2]]
    assert list(fig.data[1].x) == [0.0, 5e-4] and list(fig.data[1].customdata) == [10, 20]
    assert "KL to reference" in fig.layout.xaxis.title.text
