"""Statistics over seeds, as pure functions of plain lists: the 95% t-interval, curves averaged over seeds, the area
under a held-out curve, the reward reached within a KL budget and the reward-vs-KL frontier.

platform.md "Sweeps and aggregates". Used by api/services/aggregates.py (REST and the dashboard) and by
bench/paper_claims.py. Interval: Student's t with n - 1 degrees of freedom around the mean of n seeds,
mean ± t_{0.975, n-1} · s / sqrt(n) (s the sample standard deviation); no interval for n < 2. The t quantile is
computed here (bisection on the regularized incomplete beta function), so nothing beyond the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of n values and its 95% t-interval (lo, hi are None for n < 2; everything None for n = 0)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0

    def clamp(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / clamp(1.0 - qab * x / qap)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # even step
        d, c = 1.0 / clamp(1.0 + aa * d), clamp(1.0 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d, c = 1.0 / clamp(1.0 + aa * d), clamp(1.0 + aa / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom: 1 - I_{df/(df+t²)}(df/2, 1/2) / 2 for t >= 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0.5 < p < 1), by bisection on t_cdf to 1e-12."""
    if not 0.5 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


_T_CACHE: dict[int, float] = {}


def t_critical(n: int) -> float:
    """t_{0.975, n-1}: the half-width factor of a 95% interval over n values."""
    if n not in _T_CACHE:
        _T_CACHE[n] = t_quantile(0.5 + CONFIDENCE / 2.0, n - 1)
    return _T_CACHE[n]


def t_interval(values: Sequence[float | None]) -> Interval:
    """Mean and 95% t-interval of the finite values (None and NaN are left out)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, None, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_critical(n) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass
class Band:
    """A curve averaged over seeds: per step the mean, the interval and how many seeds have the step."""

    steps: list[int]
    mean: list[float | None]
    lo: list[float | None]
    hi: list[float | None]
    n: list[int]


def seed_band(curves: Sequence[Mapping[int, float | None]]) -> Band:
    """Mean and interval per step over the seeds' curves (step -> value); a step counts the seeds that logged it."""
    steps = sorted(set().union(*(c.keys() for c in curves))) if curves else []
    band = Band(steps=steps, mean=[], lo=[], hi=[], n=[])
    for step in steps:
        iv = t_interval([c.get(step) for c in curves])
        band.mean.append(iv.mean)
        band.lo.append(iv.lo)
        band.hi.append(iv.hi)
        band.n.append(iv.n)
    return band


def _finite_points(points: Mapping[int, float | None]) -> list[tuple[int, float]]:
    return sorted((s, float(v)) for s, v in points.items() if v is not None and math.isfinite(v))


def area_under_curve(points: Mapping[int, float | None]) -> float | None:
    """Trapezoid area of step -> value over its steps, divided by the step span (the curve's mean height).

    One point: its value. None when there is none.
    """
    pts = _finite_points(points)
    if not pts:
        return None
    if len(pts) == 1 or pts[-1][0] == pts[0][0]:
        return pts[-1][1]
    area = sum((s1 - s0) * (v0 + v1) / 2.0 for (s0, v0), (s1, v1) in zip(pts, pts[1:], strict=False))
    return area / (pts[-1][0] - pts[0][0])


def align_at_or_before(points: Mapping[int, float | None], steps: Sequence[int]) -> dict[int, float | None]:
    """For each of `steps`, the value of `points` at the last step <= it (the KL at each eval step).

    Step 0 without an earlier point is the base model itself: KL 0.
    """
    pts = _finite_points(points)
    out: dict[int, float | None] = {}
    i, last = 0, None
    for step in sorted(steps):
        while i < len(pts) and pts[i][0] <= step:
            last = pts[i][1]
            i += 1
        out[step] = last if last is not None else (0.0 if step == 0 else None)
    return out


def reward_within_kl(
    reward: Mapping[int, float | None], kl_at: Mapping[int, float | None], budget: float
) -> float | None:
    """The best reward among the steps whose KL is within `budget` (None if none is)."""
    ok = [v for s, v in _finite_points(reward) if (k := kl_at.get(s)) is not None and k <= budget]
    return max(ok) if ok else None


def pareto_envelope(kl: Sequence[float | None], reward: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """The frontier of (KL, reward) points: sorted by KL, the points that beat every lower-KL point's reward."""
    # at equal KL the higher reward first, so the lower one is dominated
    pts = sorted(
        ((k, r) for k, r in zip(kl, reward, strict=True) if k is not None and r is not None),
        key=lambda p: (p[0], -p[1]),
    )
    xs: list[float] = []
    ys: list[float] = []
    for k, r in pts:
        if not ys or r > ys[-1]:
            xs.append(k)
            ys.append(r)
    return xs, ys
