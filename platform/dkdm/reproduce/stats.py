"""Intervals over seeds and the pairwise decision every verdict is built from (lower scores are better)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Outcome = Literal["better", "worse", "tie", "unknown"]


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its two-sided t-interval (n-1 degrees of freedom); nan bounds when n < 2."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a"
        if self.n < 2 or not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}g} (n={self.n})"
        return f"{self.mean:.{digits}g} ± {self.half_width:.{digits}g}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    n = int(data.size)
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, 0, nan)
    mean = float(data.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, float("nan"))
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; nan when either side has fewer than 2 values.

    Two identical constant samples give p = 1 and two different constant samples p = 0 (scipy returns nan
    there, but a zero-variance difference is as certain as a difference gets)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        return float("nan")
    if x.std(ddof=1) == 0 and y.std(ddof=1) == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def relative_change(first: float, last: float) -> float:
    """(last - first) / |first|: how much a curve still moved over its final stretch."""
    if not (math.isfinite(first) and math.isfinite(last)) or first == 0:
        return float("nan")
    return (last - first) / abs(first)


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b) with its Welch (Satterthwaite degrees of freedom) interval; nan bounds below 2 values a side.
    n is the smaller side's count; sd the difference's standard error."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nan = float("nan")
    if x.size == 0 or y.size == 0:
        return Interval(nan, nan, nan, 0, nan)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Interval(diff, nan, nan, int(min(x.size, y.size)), nan)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return Interval(diff, diff, diff, int(min(x.size, y.size)), 0.0)
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return Interval(diff, diff - half, diff + half, int(min(x.size, y.size)), se)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at any alpha: reject where adjusted < alpha), in the
    input's order; nan p-values (too few seeds) stay nan and do not count in the family's size."""
    p = [float(v) for v in p_values]
    finite = sorted((v, i) for i, v in enumerate(p) if math.isfinite(v))
    m = len(finite)
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, (value, index) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * value))  # monotone: never below an earlier step's
        out[index] = running
    return out


def bootstrap_ratio(numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95, *,
                    resamples: int = 10000, seed: int = 0) -> Interval:
    """mean(numerator) / mean(denominator) with a percentile bootstrap interval: each side resampled with
    replacement over its own values (seeds), independently, `resamples` times from a generator seeded `seed`.
    n is the smaller side's count, sd the bootstrap distribution's standard deviation."""
    x = np.asarray([v for v in numerator if math.isfinite(v)], dtype=np.float64)
    y = np.asarray([v for v in denominator if math.isfinite(v)], dtype=np.float64)
    nan = float("nan")
    if x.size == 0 or y.size == 0 or y.mean() == 0:
        return Interval(nan, nan, nan, 0, nan)
    ratio = float(x.mean() / y.mean())
    rng = np.random.default_rng(seed)
    xs = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
    ys = y[rng.integers(0, y.size, (resamples, y.size))].mean(axis=1)
    ratios = xs / ys
    low, high = np.quantile(ratios, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(ratio, float(low), float(high), int(min(x.size, y.size)), float(ratios.std()))


def log_area(steps: Sequence[float], values: Sequence[float], total: float) -> float:
    """Area under log(value) over the fraction of the run (step / total), trapezoids between recorded points,
    divided by the fraction covered: the curve's mean log score, lower for a curve that drops sooner."""
    s = np.asarray(steps, dtype=np.float64) / total
    v = np.asarray(values, dtype=np.float64)
    if s.size < 2 or np.any(v <= 0) or not np.all(np.isfinite(v)):
        return float("nan")
    logs = np.log(v)
    return float(np.sum((s[1:] - s[:-1]) * (logs[1:] + logs[:-1]) / 2) / (s[-1] - s[0]))
