"""A Compare page of 6 runs x 10k steps: every function the page calls on opening (metrics charts, reward vs KL,
summary, config diff, sample grid, runs table) reads downsampled series (at most compare.MAX_POINTS per series)
and the stored thumbnails. How fast it opens (target: under a second) is measured by bench/page_load.py.
"""

from __future__ import annotations

import pytest
from factories import make_team_token

from api.services import Services
from ui import compare, runs, samples
from worker.seed import seed_comparison

pytestmark = pytest.mark.slow

RUNS, STEPS = 6, 10_000
CHART_KEYS = (
    "reward/total/mean",
    "kl_old/mean",
    "kl_ref/mean",
    "mask/fraction",
    "clip/fraction",
    "ratio/min",
    "ratio/max",
    "grad_norm",
)


def test_compare_and_samples_of_6_runs_x_10k_steps_read_downsampled_series(services: Services) -> None:
    with services.session() as session:
        team = make_team_token(session)
        variants = ("clip", "dppo", "cps-clip", "cps-dppo", "b-clip", "b-dppo")[:RUNS]
        _, run_ids = seed_comparison(
            session,
            team_id=team.team_id,
            data_dir=services.settings.DATA_DIR,
            steps=STEPS,
            variants=variants,
            sample_every=2_500,
            keys=CHART_KEYS,
        )
    keys = [k for k in compare.DEFAULT_KEYS if k != "approx_kl"]
    view = compare.compare_view(services, team.token, run_ids, keys, 0.6, "step")
    grid = samples.grid_html(*samples.sample_grid(services, team.token, run_ids, None))
    table = runs.runs_table(services, team.token)
    points = max(len(t.x) for t in view.chart.data)
    assert points <= compare.MAX_POINTS and points >= compare.MAX_POINTS * 0.9  # downsampled, not truncated
    assert view.chart.data[0].x[-1] == STEPS
    assert grid.count("<img") == RUNS * 4 and len(table.frame) >= RUNS
