"""The reproduction report: scores with intervals, the teacher and the noise floor beside them, one verdict line
per paper claim, the curves; written to outputs/report/ and logged as an MLflow run (dkdm.stage=reproduce)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkdm.console import Context, summary
from dkdm.reproduce import plots, tables
from dkdm.reproduce.aggregate import Results, collect, published_results
from dkdm.reproduce.budgets import AUC, BudgetClaimResult, Values, budget_label, decide_all, grid_values
from dkdm.reproduce.claims import Claim, architecture_claim, paper_claims, pool_claim
from dkdm.reproduce.params import ExperimentParams, distill_config, repo_root
from dkdm.reproduce.runs import EXPERIMENT_TAG, REPORT_DIR, STUDENTS_DIR
from dkdm.reproduce.stats import t_interval
from dkdm.stages.common import read_json, write_json
from dkdm.tracking import start_run

DIT_PAIR = ("dit_dynamic", "dit_data_free")  # the cross-architecture rows (Table 5), when the grid defines them


def pool_variants(params: ExperimentParams) -> dict[str, int | None]:
    """The dynamic variants that prepare their pool another way (their settings set distill.pool_prep): name -> K."""
    out = {}
    for name, spec in params.experiment.variant_specs.items():
        prep = spec.settings.get("distill", {}).get("pool_prep")
        if spec.method == "dynamic" and isinstance(prep, dict):
            out[name] = prep.get("steps")
    return out


def claim_table(results: Results, params: ExperimentParams, rows: list[tables.PoolRow]) -> list[Claim]:
    """The paper's claims, the cross-architecture pair, one line per cheaper pool: the one family Holm covers."""
    exp = params.experiment
    sweep = [(results.variants[v].rho, v) for v in exp.rho_sweep if results.variants[v].rho is not None]
    claims = paper_claims(sweep)
    if all(v in exp.variant_specs for v in DIT_PAIR):
        claims.append(architecture_claim(*DIT_PAIR))
    for row in (r for r in rows if r.variant != "dynamic"):
        label = exp.label(row.variant)
        claims.append(pool_claim("dynamic", row.variant, f"A pool made with {row.times_less:.3g}× less teacher work "
                                 f"({label}) is worse than the paper's"))
    return claims


def verdicts(results: Results, params: ExperimentParams, settings, rows: list[tables.PoolRow]
             ) -> tuple[list[BudgetClaimResult], Values, list[str]]:
    """The fixed rule of dkdm.reproduce.budgets over the claim table: (results, the per-point scores, the points)."""
    exp = params.experiment
    iterations = settings.distill.train.iterations
    values = grid_values(results.variants, exp.budgets, iterations)
    points = [*(budget_label(b) for b in exp.budgets), AUC]
    return decide_all(claim_table(results, params, rows), values, points, exp.alpha), values, points


def _wall_seconds() -> tuple[float | None, float]:
    """(span from the grid's first output to its last one, the report excluded, so that redrawing the report later
    does not change it; summed student training seconds)."""
    stamps = [p.stat().st_mtime for p in Path("outputs").rglob("*")
              if p.is_file() and REPORT_DIR not in p.parents and p.suffix != ".log"]
    trained = sum(float(read_json(p).get("seconds") or 0.0) for p in STUDENTS_DIR.glob("*/run.json"))
    return (max(stamps) - min(stamps) if stamps else None), trained


def _shown_path(path: str | Path) -> str:
    """A path as the report shows it: relative to the repository when inside one (the report gets committed)."""
    path = Path(path).resolve()
    root = repo_root(path.parent)
    return str(path.relative_to(root)) if root is not None else str(path)


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"


def markdown(ctx: Context, params: ExperimentParams, results: Results, analysis: Analysis,
             figures: dict[str, Path | None], wall: tuple[float | None, float]) -> str:
    exp = params.experiment
    settings = ctx.settings
    conf = 1 - exp.alpha
    config = distill_config(settings, exp.variant_specs[exp.variants[0]], exp.seeds[0])
    fd, fdp = results.metric_fd, results.metric_fd_teacher
    lines = [f"# Reproducing DKDM's claims: {settings.profile} ({settings.scale} scale)", ""]
    if exp.note:
        lines += [f"> **{exp.note.strip()}**", ""]
    span, trained = wall
    lines += [
        f"Teacher `{settings.teacher.preset}` → student `{settings.distill.student}` (unless the row says otherwise), "
        f"dataset `{settings.data.dataset}`, T = {settings.diffusion.steps}. Every student: {config.iterations} "
        f"iterations, batch {config.batch_size}, lr {config.lr:g}, EMA {config.ema_rate}; {len(exp.seeds)} seeds "
        f"({', '.join(map(str, exp.seeds))}). Scores use the EMA weights, {results.num_samples} samples, "
        f"{settings.evaluate.respacing or 'all'} sampling steps; `{fd}` is against the real data, `{fdp}` against "
        f"held-out teacher samples (the paper's FID'; seed {exp.heldout_seed}, apart from the data-free training set "
        f"D', seed {settings.reference.seed}). Baselines' random flip: "
        f"{'on' if settings.data.random_flip else 'off'}.",
        "",
        f"Wall time: {_fmt((span or float('nan')) / 60, 3)} min from the grid's first output to its last; student "
        f"training alone {trained / 60:.1f} min summed.",
        "",
    ]
    if results.missing:
        lines += [f"**Incomplete grid:** {len(results.missing)} runs missing ({', '.join(results.missing)}); their "
                  "variants have fewer seeds below.", ""]
    lines += ["## Scores at the end", "",
              f"Mean ± {conf:.0%} t-interval over seeds (n-1 degrees of freedom); lower is better.",
              "", f"| variant | method | rho | n | {fd} | {fdp} | flat ({fdp}, last quarter) |",
              "|---|---|---|---|---|---|---|"]
    t_fd, t_fdp = t_interval(results.teacher.get(fd, []), conf), t_interval(results.teacher.get(fdp, []), conf)
    lines.append(f"| **teacher** | — | — | {t_fd.n} | {t_fd.text()} | {t_fdp.text()} | — |")
    floor_fd = t_interval(results.teacher.get(results.metric_noise_floor, []), conf)
    floor_fdp = t_interval(results.teacher.get(results.metric_noise_floor_teacher, []), conf)
    lines.append(f"| *noise floor* ({results.num_samples} samples: real draws vs the data; fresh teacher samples vs "
                 f"the held-out reference) | — | — | {floor_fd.n} | {floor_fd.text()} | {floor_fdp.text()} | — |")
    for r in results.variants.values():
        change = r.flatness(2)
        flat = "—" if not math.isfinite(change) else (
            f"{'yes' if abs(change) < exp.flat_tolerance else 'no'} ({change:+.0%})")
        rho = _fmt(r.rho) if r.rho is not None else "—"
        lines.append(f"| {r.label} | {r.method} | {rho} | {len(r.seeds)} | {r.interval('fd', conf).text()} | "
                     f"{r.interval('fd_teacher', conf).text()} | {flat} |")
    lines += ["", f"A curve is *flat* when the seed-mean {fdp} moved less than {exp.flat_tolerance:.0%} over the last "
              "quarter of the budget (periodic evaluation on a smaller sample; see the figure).", ""]
    lines += ["## Scores at finite budgets", "",
              f"The periodic evaluation ({settings.distill.eval_samples} samples) at each fraction of the run; "
              "*end* is the final evaluation above; AUC is the mean log score over the run (area under the log "
              f"curve over the run's fraction). Mean ± {conf:.0%} t-interval over seeds.", "",
              *tables.budget_table(results, analysis.values, analysis.points, "fd", conf), "",
              *tables.budget_table(results, analysis.values, analysis.points, "fd_teacher", conf), ""]
    lines += ["## Verdicts", "", RULE.format(alpha=exp.alpha, points=", ".join(analysis.points),
                                                 tests=analysis.family_size), "",
              *tables.verdict_table(analysis.decided, {v: r.label for v, r in results.variants.items()}, results)]
    lines += tables.ratio_line(results, results.variants.get("dynamic"), conf, exp.bootstrap)
    if any(row.variant != "dynamic" for row in analysis.pools):
        lines += ["", "## Pool preparation (beyond the paper)", "",
                  "Dynamic DKDM from its paper pool and from cheaper ones: the teacher work each preparation spent, "
                  "its wall time (setup outside the training loop) and the students' FD'.", "",
                  *tables.pool_table(analysis.pools, results, analysis.values, conf), ""]
        for result in analysis.decided:
            if result.claim.key.startswith(tables.POOL_KEY):
                phrase = result.claim.statement.replace(" is worse than", f" {tables.pool_phrase(result)} than")
                lines.append(f"- {phrase} (same fixed rule, Holm over the claim table).")
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
        if path is not None:
            lines += [f"**{title}**", "", f"![{title}]({path.name})", ""]
    lines += [*tables.CHANGES, ""]
    lines += ["## How this was produced", "",
              f"From `{_shown_path(ctx.profile_file)}` (base profile `{params.base_profile}`). "
              "`dkdm reproduce run-all --dir experiments/reproduce -j N` runs the grid of "
              "`experiments/reproduce/dvc.yaml` N processes at a time and commits its outputs to DVC; "
              "`dvc --cd experiments/reproduce repro` runs the same stages one at a time; "
              "`dkdm reproduce use NAME` switches to params-NAME.yaml (e.g. `cifar10` for paper scale).",
              f"CPU-scale numbers are FD in a {settings.features.kind} feature space, not FID: only orderings and "
              "ratios are comparable with the paper."]
    return "\n".join(lines) + "\n"


RULE = ("Rule, fixed in code before the run (dkdm/reproduce/budgets.py): every comparison *A better (lower) than B* "
        "is a Welch t-test (two-sided) over the seeds at each point ({points}); the family is every comparison of "
        "this table ({tests} tests: each claim's pairs, and for rho its reversal pairs, at every point, on the "
        "claim's metric), with Holm's step-down correction, significant where the adjusted p < α = {alpha}. "
        "**reproduced**: every listed pair is significant in the paper's direction at one point at least; **not "
        "reproduced**: any pair is significant the other way at any point; **inconclusive**: otherwise. Differences "
        "are mean(A) − mean(B) with Welch intervals (negative supports the claim); p is raw, Holm adjusted.")


@dataclass(frozen=True)
class Analysis:
    decided: list[BudgetClaimResult]
    values: Values
    points: list[str]
    pools: list[tables.PoolRow]

    @property
    def family_size(self) -> int:
        return sum(1 for r in self.decided for c in r.comparisons if math.isfinite(c.p))


def analyse(results: Results, params: ExperimentParams, settings) -> Analysis:
    conf = 1 - params.experiment.alpha
    pools = tables.pool_rows(results, "dynamic", pool_variants(params), settings.diffusion.steps, conf)
    decided, values, points = verdicts(results, params, settings, pools)
    return Analysis(decided, values, points, pools)


def write_report(ctx: Context, params: ExperimentParams) -> dict[str, Any]:
    exp = params.experiment
    results = collect(params, Path("."), ctx.settings.distill.rho)
    conf = 1 - exp.alpha
    methods = [v for v in exp.variants if v not in exp.rho_sweep or v == "dynamic"]
    figures = {
        "FD over iterations": plots.curves(results, REPORT_DIR / "fd_curves.png", methods),
        "Final scores per method": plots.scores(results, REPORT_DIR / "scores.png", list(results.variants), conf),
        "rho sweep": plots.rho_sweep(results, REPORT_DIR / "rho_sweep.png", exp.rho_sweep, conf),
    }
    analysis = analyse(results, params, ctx.settings)
    wall = _wall_seconds()
    text = markdown(ctx, params, results, analysis, figures, wall)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = REPORT_DIR / ".report.md.tmp"
    tmp.write_text(text)
    tmp.replace(REPORT_DIR / "report.md")
    _write_csv(results, conf)
    summary_data = {
        "verdicts": {r.claim.key: {"verdict": r.verdict, "metric": r.claim.metric,
                                   "first_budget": {f"{p.better}<{p.worse}": p.first_budget for p in r.pairs},
                                   "stays": {f"{p.better}<{p.worse}": p.stays for p in r.pairs}}
                     for r in analysis.decided},
        "teacher": {k: t_interval(v, conf).mean for k, v in results.teacher.items()},
        "variants": {v: {"n": len(r.seeds), "fd": t_interval(r.fd, conf).mean,
                         "fd_teacher": t_interval(r.fd_teacher, conf).mean} for v, r in results.variants.items()},
        "pools": {row.variant: {"teacher_image_steps": row.work if math.isfinite(row.work) else None,
                                "times_less": row.times_less, "estimated": row.estimated}
                  for row in analysis.pools},
        "missing": results.missing, "wall_seconds": wall[0], "train_seconds": wall[1],
    }
    write_json(REPORT_DIR / "summary.json", summary_data)
    _log(ctx, results, summary_data, figures)
    counts: dict[str, int] = {}
    for result in analysis.decided:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    # Absolute: the command works inside --dir, so a relative path would not name the file for the caller.
    summary(f"reproduce report: {', '.join(f'{n} {v}' for v, n in counts.items())} -> "
            f"{(REPORT_DIR / 'report.md').resolve()}")
    return summary_data


def redraw_figures(folder: Path, params: ExperimentParams, num_samples: int) -> list[Path]:
    """scores.png and rho_sweep.png of a report folder, redrawn in place from its results.csv and summary.json."""
    results = published_results(folder, params, num_samples)
    conf = 1 - params.experiment.alpha
    drawn = [plots.scores(results, folder / "scores.png", list(results.variants), conf),
             plots.rho_sweep(results, folder / "rho_sweep.png", params.experiment.rho_sweep, conf)]
    return [path for path in drawn if path is not None]


def _write_csv(results: Results, conf: float) -> Path:
    path = REPORT_DIR / "results.csv"
    with path.with_name(".results.csv.tmp").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "method", "rho", "seed", results.metric_fd, results.metric_fd_teacher])
        for v, r in results.variants.items():
            for seed, a, b in zip(r.seeds, r.fd, r.fd_teacher, strict=True):
                writer.writerow([v, r.method, "" if r.rho is None else r.rho, seed, f"{a:.6g}", f"{b:.6g}"])
    path.with_name(".results.csv.tmp").replace(path)
    return path


def _log(ctx: Context, results: Results, data: dict[str, Any], figures: dict[str, Path | None]) -> None:
    fd, fdp, floor = results.metric_fd, results.metric_fd_teacher, results.metric_noise_floor
    metrics: dict[str, float] = {}
    dyn = data["variants"].get("dynamic")
    if dyn:
        metrics.update({fd: dyn["fd"], fdp: dyn["fd_teacher"]})
    if floor in data["teacher"]:
        metrics[floor] = data["teacher"][floor]
    for name, value in data["teacher"].items():
        metrics[f"teacher/{name}"] = value
    for variant, row in data["variants"].items():
        metrics[f"{fd}/{variant}"] = row["fd"]
        metrics[f"{fdp}/{variant}"] = row["fd_teacher"]
    if data["wall_seconds"] is not None:
        metrics["wall_seconds"] = data["wall_seconds"]
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    tags = {**EXPERIMENT_TAG, **{f"dkdm.verdict.{k}": v["verdict"] for k, v in data["verdicts"].items()}}
    with start_run(ctx.settings, stage="reproduce", run_name=f"reproduce-{ctx.settings.profile}",
                   method="dynamic", student=ctx.settings.distill.student, tags=tags) as tracker:
        tracker.log_metrics(metrics, 0)
        for name in ("report.md", "summary.json", "results.csv"):
            tracker.log_artifact(REPORT_DIR / name, "report")
        for path in figures.values():
            if path is not None:
                tracker.log_artifact(path, "report")
