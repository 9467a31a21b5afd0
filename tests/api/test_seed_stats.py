"""The statistics over seeds against direct computations: the t quantile against published table values and a
numerical integral of the density, the interval against numpy, area, KL alignment, budget and frontier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from api.services import seed_stats

# t(0.975, df) from the NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2 (upper critical values of the
# Student's t distribution, alpha = 0.025 one-sided), printed to 3 decimals.
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045, 100: 1.984}


def _t_density(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


@pytest.mark.parametrize("df", sorted(TABLE))
def test_t_quantile_matches_the_table_and_the_integrated_density(df):
    t = seed_stats.t_quantile(0.975, df)
    assert abs(t - TABLE[df]) < 5e-4  # the table's rounding
    # P(0 <= T <= t) = 0.475 by Simpson's rule on the density (a direct computation, no library)
    n = 20_000
    xs = np.linspace(0.0, t, n + 1)
    ys = np.array([_t_density(x, df) for x in xs])
    area = (t / n / 3) * (ys[0] + ys[-1] + 4 * ys[1:-1:2].sum() + 2 * ys[2:-1:2].sum())
    assert abs(area - 0.475) < 1e-9


def test_t_interval_equals_mean_plus_minus_t_s_over_sqrt_n():
    values = [0.61, 0.64, 0.58, 0.66, 0.6]
    iv = seed_stats.t_interval(values)
    x = np.array(values)
    half = 2.7764451051977987 * x.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert iv.n == 5 and math.isclose(iv.mean, x.mean())
    assert math.isclose(iv.lo, x.mean() - half, rel_tol=1e-12) and math.isclose(iv.hi, x.mean() + half, rel_tol=1e-12)


def test_t_interval_edge_cases():
    assert seed_stats.t_interval([]) == seed_stats.Interval(None, None, None, 0)
    assert seed_stats.t_interval([0.3, None, float("nan")]) == seed_stats.Interval(0.3, None, None, 1)
    same = seed_stats.t_interval([0.5, 0.5, 0.5])
    assert same.lo == same.hi == 0.5
    with pytest.raises(ValueError, match="0.5 < p < 1"):
        seed_stats.t_quantile(0.2, 3)


def test_seed_band_counts_seeds_per_step():
    band = seed_stats.seed_band([{0: 1.0, 1: 2.0}, {0: 3.0, 1: None, 2: 5.0}])
    assert band.steps == [0, 1, 2] and band.n == [2, 1, 1]
    assert band.mean == [2.0, 2.0, 5.0] and band.lo[1] is None and band.lo[0] < 2.0 < band.hi[0]


def test_area_under_curve_is_the_mean_height_over_the_span():
    assert seed_stats.area_under_curve({0: 0.0, 10: 1.0}) == 0.5
    assert math.isclose(seed_stats.area_under_curve({0: 1.0, 5: 1.0, 20: 2.0}), (5 * 1.0 + 15 * 1.5) / 20)
    assert seed_stats.area_under_curve({7: 0.4}) == 0.4 and seed_stats.area_under_curve({}) is None


def test_kl_alignment_budget_and_frontier():
    kl = {1: 0.1, 2: 0.2, 4: 0.4}
    assert seed_stats.align_at_or_before(kl, [0, 2, 3, 10]) == {0: 0.0, 2: 0.2, 3: 0.2, 10: 0.4}
    reward = {0: 0.5, 2: 0.7, 3: 0.6, 10: 0.9}
    kl_at = seed_stats.align_at_or_before(kl, list(reward))
    assert seed_stats.reward_within_kl(reward, kl_at, 0.25) == 0.7
    assert seed_stats.reward_within_kl(reward, {0: None}, 0.25) is None
    assert seed_stats.pareto_envelope([0.0, 0.2, 0.2, 0.4, 0.3], [0.5, 0.7, 0.6, 0.65, 0.8]) == (
        [0.0, 0.2, 0.3],
        [0.5, 0.7, 0.8],
    )
