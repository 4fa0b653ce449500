"""Verdicts at finite budgets: every claim compared at fixed fractions of the run and by the area under its log-score
curve, with Holm's correction over the whole claim table.

Rule (fixed in code before the run; the report prints it):
- points: each fraction b of `experiment.budgets` (the curve's periodic score at step b * iterations; b = 1 is the
  final evaluation at evaluate.num_samples), and AUC, the mean log score over the run (stats.log_area);
- every comparison "A better (lower) than B" at every point is one Welch t-test (two-sided) over the seeds;
- the family is every comparison of the claim table: all claims' listed and reversal pairs at all points, on each
  claim's own metric; Holm's step-down adjustment over that family, significant where adjusted p < alpha;
- reproduced: every listed pair is significant in the claimed direction at one point at least;
- not reproduced: any listed or reversal pair is significant the other way at any point;
- inconclusive: otherwise (including a variant without scores).
Per pair the report gives the first budget where it is significant and whether it stays so at every later budget.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dkdm.reproduce.aggregate import VariantResult
from dkdm.reproduce.claims import Claim, Verdict
from dkdm.reproduce.stats import Interval, Outcome, holm, log_area, welch_difference, welch_p

AUC = "AUC"
Values = Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]  # metric -> point -> variant -> per-seed scores


def budget_label(fraction: float) -> str:
    if fraction == 1:
        return "end"
    inverse = 1 / fraction
    return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{fraction:g}"


def _value_at(rows: Sequence[tuple[int, float, float]], step: int, column: int) -> float:
    """The curve's score at `step`: the last recorded point at or before it (nan before the first)."""
    before = [row for row in rows if row[0] <= step]
    return before[-1][column] if before else float("nan")


def point_values(result: VariantResult, metric: str, budgets: Sequence[float], iterations: int) -> dict[str, list]:
    """Per point (budget labels, then AUC): the per-seed scores of one variant on `metric` (fd or fd_teacher)."""
    column = 1 if metric == "fd" else 2
    out: dict[str, list[float]] = {}
    for fraction in budgets:
        if fraction == 1:
            out[budget_label(fraction)] = list(getattr(result, metric))
        else:
            step = round(fraction * iterations)
            out[budget_label(fraction)] = [_value_at(rows, step, column) for rows in result.curves.values()]
    out[AUC] = [log_area([r[0] for r in rows], [r[column] for r in rows], iterations)
                for rows in result.curves.values()]
    return {k: [v for v in values if math.isfinite(v)] for k, values in out.items()}


def grid_values(variants: Mapping[str, VariantResult], budgets: Sequence[float], iterations: int) -> Values:
    return {metric: _by_point({name: point_values(r, metric, budgets, iterations) for name, r in variants.items()})
            for metric in ("fd", "fd_teacher")}


def _by_point(per_variant: Mapping[str, Mapping[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for variant, points in per_variant.items():
        for point, values in points.items():
            out.setdefault(point, {})[variant] = values
    return out


@dataclass(frozen=True)
class PointComparison:
    better: str
    worse: str
    point: str
    listed: bool            # a listed pair (False: a reversal check)
    difference: Interval    # mean(better) - mean(worse), Welch interval: negative supports the claim
    p: float
    p_holm: float
    outcome: Outcome


@dataclass(frozen=True)
class PairSummary:
    better: str
    worse: str
    first_budget: str | None  # first budget where the claimed direction is significant
    stays: bool               # ... and significant at every later budget too
    auc: PointComparison | None


@dataclass(frozen=True)
class BudgetClaimResult:
    claim: Claim
    verdict: Verdict
    comparisons: list[PointComparison] = field(default_factory=list)
    pairs: list[PairSummary] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def decide_all(claims: Sequence[Claim], values: Values, points: Sequence[str], alpha: float) -> list[BudgetClaimResult]:
    """The rule of this module over the whole claim table (one Holm family)."""
    tests: list[tuple[int, str, str, str, bool]] = []
    missing: dict[int, list[str]] = {}
    for k, claim in enumerate(claims):
        needed = sorted({v for pair in (*claim.pairs, *claim.reversals) for v in pair})
        absent = [v for v in needed if not any(values[claim.metric].get(p, {}).get(v) for p in points)]
        if absent:
            missing[k] = absent
            continue
        for listed, pairs in ((True, claim.pairs), (False, claim.reversals)):
            tests += [(k, a, b, point, listed) for a, b in pairs for point in points]
    raw = [welch_p(values[claims[k].metric][pt].get(a, ()), values[claims[k].metric][pt].get(b, ()))
           for k, a, b, pt, _ in tests]
    adjusted = holm(raw)
    compared: dict[int, list[PointComparison]] = {}
    for (k, a, b, point, listed), p, p_holm in zip(tests, raw, adjusted, strict=True):
        x, y = values[claims[k].metric][point].get(a, ()), values[claims[k].metric][point].get(b, ())
        diff = welch_difference(x, y, 1 - alpha)
        outcome: Outcome = "unknown" if not math.isfinite(p_holm) else "tie" if p_holm >= alpha else (
            "better" if diff.mean < 0 else "worse")
        compared.setdefault(k, []).append(PointComparison(a, b, point, listed, diff, p, p_holm, outcome))
    results = []
    for k, claim in enumerate(claims):
        if k in missing:
            results.append(BudgetClaimResult(claim, "inconclusive", missing=missing[k]))
            continue
        comps = compared.get(k, [])
        pairs = [_summary(a, b, [c for c in comps if (c.better, c.worse) == (a, b)]) for a, b in claim.pairs]
        if any(c.outcome == "worse" for c in comps):
            verdict: Verdict = "not reproduced"
        elif claim.pairs and all(any(c.outcome == "better" for c in comps if (c.better, c.worse) == pair and c.listed)
                                 for pair in claim.pairs):
            verdict = "reproduced"
        else:
            verdict = "inconclusive"
        results.append(BudgetClaimResult(claim, verdict, comps, pairs))
    return results


def _summary(better: str, worse: str, comps: list[PointComparison]) -> PairSummary:
    budgets = [c for c in comps if c.point != AUC]
    first = next((i for i, c in enumerate(budgets) if c.outcome == "better"), None)
    stays = first is not None and all(c.outcome == "better" for c in budgets[first:])
    auc = next((c for c in comps if c.point == AUC), None)
    return PairSummary(better, worse, None if first is None else budgets[first].point, stays, auc)
