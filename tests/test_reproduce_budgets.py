"""The finite-budget analysis of the reproduction on synthetic inputs with known answers: Holm's adjustment, the
bootstrap ratio interval, the Welch difference interval, the log-curve area, and the per-budget verdict rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dkdm.reproduce.aggregate import VariantResult
from dkdm.reproduce.budgets import AUC, budget_label, decide_all, grid_values, point_values
from dkdm.reproduce.claims import Claim
from dkdm.reproduce.stats import bootstrap_ratio, holm, log_area, welch_difference


def test_holm_matches_the_hand_computed_step_down():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # nan (too few seeds) stays nan and does not enlarge the family; adjusted values are capped at 1
    adjusted = holm([float("nan"), 0.01, 0.04])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.02, 0.04])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_bootstrap_ratio_is_exact_without_spread_and_matches_the_delta_method_with_it():
    exact = bootstrap_ratio([2.0, 2.0, 2.0], [1.0, 1.0], resamples=500)
    assert (exact.mean, exact.low, exact.high) == (2.0, 2.0, 2.0)
    rng = np.random.default_rng(1)
    x, y = 10 + rng.standard_normal(400), 5 + rng.standard_normal(400)
    iv = bootstrap_ratio(x, y, 0.95, resamples=20000, seed=3)
    ratio = x.mean() / y.mean()
    # delta method: se(r) = r * sqrt(var(x)/(n mx^2) + var(y)/(n my^2)); the percentile interval of a smooth
    # statistic at n = 400 agrees with +-1.96 se to a few percent (10% allowed: bootstrap noise plus skew).
    se = ratio * math.sqrt(x.var(ddof=1) / (400 * x.mean() ** 2) + y.var(ddof=1) / (400 * y.mean() ** 2))
    assert iv.mean == pytest.approx(ratio)
    assert iv.low < ratio < iv.high
    assert iv.half_width == pytest.approx(1.96 * se, rel=0.1)
    assert bootstrap_ratio(x, y, 0.95, resamples=2000, seed=3) == bootstrap_ratio(x, y, 0.95, resamples=2000, seed=3)
    assert bootstrap_ratio([], [1.0]).n == 0


def test_welch_difference_interval_by_hand():
    # [1,2,3] - [4,5,6]: diff -3, se sqrt(1/3 + 1/3) = 0.8165, df 4, t(0.975, 4) = 2.776445 -> half 2.26699
    iv = welch_difference([1, 2, 3], [4, 5, 6])
    assert iv.mean == pytest.approx(-3.0)
    assert iv.half_width == pytest.approx(2.26699, abs=1e-4)
    assert welch_difference([1, 1], [3, 3]).low == -2.0
    assert math.isnan(welch_difference([1.0], [2.0, 3.0]).low)


def test_log_area_is_the_mean_log_score_over_the_run():
    e = math.e
    assert log_area([0, 50, 100], [1, e, e**2], 100) == pytest.approx(1.0)
    assert log_area([50, 100], [e**2, 1.0], 100) == pytest.approx(1.0)  # normalised by the fraction covered
    assert math.isnan(log_area([100], [1.0], 100)) and math.isnan(log_area([0, 1], [1.0, 0.0], 1))


def _variant(name: str, early: float, late: float, seeds=(0, 1, 2, 3, 4)) -> VariantResult:
    """Curves at 100..800 of 800 iterations: `early` until 200, `late` from 400 on; seed jitter +-0.05."""
    r = VariantResult(name, name, "dynamic", None)
    for k, seed in enumerate(seeds):
        j = 0.05 * (k - 2)
        rows = [(step, (early if step <= 200 else late) + j, (early if step <= 200 else late) + j)
                for step in range(100, 900, 100)]
        r.curves[seed] = rows
        r.seeds.append(seed)
        r.fd.append(late + j)
        r.fd_teacher.append(late + j)
    return r


def test_budget_points_read_the_curve_and_the_final_evaluation():
    r = _variant("a", 9.0, 3.0)
    values = point_values(r, "fd", [0.125, 0.25, 0.5, 1.0], 800)
    assert list(values) == ["1/8", "1/4", "1/2", "end", AUC]
    assert values["1/8"] == pytest.approx([8.9, 8.95, 9.0, 9.05, 9.1])
    assert values["1/2"] == pytest.approx([2.9, 2.95, 3.0, 3.05, 3.1])
    assert values["end"] == r.fd
    assert [budget_label(b) for b in (0.125, 0.3, 1.0)] == ["1/8", "0.3", "end"]


def test_first_significant_budget_whether_it_stays_and_holm_over_the_table():
    # fast beats slow early only (9 vs 3 at 1/8 and 1/4, equal from 1/2 on); same vs same never differs.
    variants = {"fast": _variant("fast", 3.0, 3.0), "slow": _variant("slow", 9.0, 3.0),
                "same": _variant("same", 5.0, 5.0)}
    values = grid_values(variants, [0.125, 0.25, 0.5, 1.0], 800)
    points = ["1/8", "1/4", "1/2", "end", AUC]
    early = Claim("early", "fast converges sooner", "Fig. 4", "fd", (("fast", "slow"),))
    never = Claim("never", "same beats slow at the end", "p", "fd", (("same", "slow"),))
    decided = decide_all([early, never], values, points, 0.05)
    first, second = decided
    assert first.verdict == "reproduced"
    pair = first.pairs[0]
    assert pair.first_budget == "1/8" and not pair.stays  # equal from 1/2 on: significant early only
    assert pair.auc is not None and pair.auc.outcome == "better"
    # "same" (5) is better than slow (9) early and worse than it (3) late: a reversal is "not reproduced"
    assert second.verdict == "not reproduced"
    # one family: 10 tests; every adjusted p is at least its raw p and Holm's order holds
    comps = [c for r in decided for c in r.comparisons]
    assert len(comps) == 10 and all(c.p_holm >= c.p for c in comps)


def test_holm_can_turn_a_raw_significance_off():
    # Welch p of [1, 2, 3] vs [4, 5, 6] is 0.02131 (test_reproduce.py works it out by hand)
    a = VariantResult("a", "a", "dynamic", None, fd=[1.0, 2.0, 3.0], seeds=[0, 1, 2])
    b = VariantResult("b", "b", "dynamic", None, fd=[4.0, 5.0, 6.0], seeds=[0, 1, 2])
    values = grid_values({"a": a, "b": b}, [1.0], 100)
    claim = Claim("k", "a beats b", "p", "fd", (("a", "b"),))
    alone = decide_all([claim], values, ["end"], 0.05)[0]
    p = alone.comparisons[0].p
    assert p == pytest.approx(0.02131, abs=1e-4) and alone.verdict == "reproduced"  # raw p passes on its own
    # the same comparison in a family of five identical tests: Holm multiplies the smallest p by 5
    crowd = decide_all([claim] * 5, values, ["end"], 0.05)
    assert all(r.verdict == "inconclusive" for r in crowd)
    assert crowd[0].comparisons[0].p_holm == pytest.approx(min(1.0, 5 * p))


def test_a_claim_without_scores_is_inconclusive_and_named():
    values = grid_values({"a": _variant("a", 3, 3)}, [1.0], 800)
    result = decide_all([Claim("k", "a beats b", "p", "fd", (("a", "b"),))], values, ["end", AUC], 0.05)[0]
    assert result.verdict == "inconclusive" and result.missing == ["b"]


def test_report_gives_each_cheaper_pool_its_work_ratio_and_verdict_line(tmp_path, monkeypatch):
    from dkdm.console import Context
    from dkdm.reproduce.params import experiment_settings
    from dkdm.reproduce.report import write_report
    from reproduce_helpers import synthetic_experiment

    # pool_k10 spent 5x less teacher work; its students score FD' 1.5 against the paper pool's 1.0 (seed jitter
    # +-0.005): significantly worse even after Holm over the table.
    params = synthetic_experiment(tmp_path, extra={"pool_k10": (3.2, 1.5)},
                                  pool_work={"dynamic": 128000.0, "pool_k10": 25600.0})
    settings = experiment_settings(params, tmp_path, tracking={"enabled": False})
    monkeypatch.chdir(tmp_path)
    data = write_report(Context(settings=settings, profile_file=tmp_path / "params.yaml"), params)
    assert data["pools"]["pool_k10"] == {"teacher_image_steps": 25600.0, "times_less": 5.0, "estimated": False}
    assert data["verdicts"]["pool_pool_k10"]["verdict"] == "reproduced"
    report = (tmp_path / "outputs" / "report" / "report.md").read_text()
    assert "- A pool made with 5× less teacher work (pool_k10) is worse than the paper's" in report
    assert "| pool_k10 | 25,600 | 5 | 2.5 ± 6.35 |" in report  # setup seconds 2 and 3 over the two seeds
