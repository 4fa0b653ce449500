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


def compare(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> tuple[Outcome, float]:
    """Is `a` better (lower) than `b`? `better`/`worse` when Welch's test rejects equal means at `alpha`,
    `tie` when it does not, `unknown` when a side has fewer than 2 seeds."""
    p = welch_p(a, b)
    if not math.isfinite(p):
        return "unknown", p
    if p >= alpha:
        return "tie", p
    return ("better" if float(np.mean(a)) < float(np.mean(b)) else "worse"), p


def relative_change(first: float, last: float) -> float:
    """(last - first) / |first|: how much a curve still moved over its final stretch."""
    if not (math.isfinite(first) and math.isfinite(last)) or first == 0:
        return float("nan")
    return (last - first) / abs(first)
