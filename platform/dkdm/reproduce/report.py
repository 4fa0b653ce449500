"""The reproduction report: scores with intervals, the teacher and the noise floor beside them, one verdict line
per paper claim, the curves; written to outputs/report/ and logged as an MLflow run (dkdm.stage=reproduce)."""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

from dkdm.console import Context, summary
from dkdm.reproduce import plots
from dkdm.reproduce.aggregate import Results, collect, published_results
from dkdm.reproduce.claims import ClaimResult, decide, paper_claims
from dkdm.reproduce.params import ExperimentParams, distill_config, repo_root
from dkdm.reproduce.runs import EXPERIMENT_TAG, REPORT_DIR, STUDENTS_DIR
from dkdm.reproduce.stats import t_interval
from dkdm.stages.common import read_json, write_json
from dkdm.tracking import start_run


def _values(results: Results, metric: str) -> dict[str, list[float]]:
    return {v: getattr(r, metric) for v, r in results.variants.items()}


def verdicts(results: Results, params: ExperimentParams) -> list[tuple[ClaimResult, ClaimResult]]:
    """Per claim: the verdict on the claim's own metric and, for reference, on the other one."""
    exp = params.experiment
    sweep = [(results.variants[v].rho, v) for v in exp.rho_sweep if results.variants[v].rho is not None]
    out = []
    for claim in paper_claims(sweep):
        other = "fd_teacher" if claim.metric == "fd" else "fd"
        main = decide(claim, _values(results, claim.metric), exp.alpha)
        alt = decide(dataclasses.replace(claim, metric=other), _values(results, other), exp.alpha)
        out.append((main, alt))
    return out


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


def markdown(ctx: Context, params: ExperimentParams, results: Results, decided: list, figures: dict[str, Path | None],
             wall: tuple[float | None, float]) -> str:
    exp = params.experiment
    settings = ctx.settings
    conf = 1 - exp.alpha
    config = distill_config(settings, exp.variant_specs[exp.variants[0]], exp.seeds[0])
    fd, fdp, floor = results.metric_fd, results.metric_fd_teacher, results.metric_noise_floor
    lines = [f"# Reproducing DKDM's claims: {settings.profile} ({settings.scale} scale)", ""]
    if exp.note:
        lines += [f"> **{exp.note.strip()}**", ""]
    span, trained = wall
    lines += [
        f"Teacher `{settings.teacher.preset}` → student `{settings.distill.student}`, "
        f"dataset `{settings.data.dataset}`, "
        f"T = {settings.diffusion.steps}. Every student: {config.iterations} iterations, batch {config.batch_size}, "
        f"lr {config.lr:g}, EMA {config.ema_rate}; {len(exp.seeds)} seeds ({', '.join(map(str, exp.seeds))}). "
        f"Scores use the EMA weights, {results.num_samples} samples, {settings.evaluate.respacing or 'all'} "
        f"sampling steps; `{fd}` is against the real data, `{fdp}` against the teacher's samples (the paper's FID').",
        "",
        f"Wall time: {_fmt((span or float('nan')) / 60, 3)} min from the grid's first output to its last; student "
        f"training alone {trained / 60:.1f} min summed.",
        "",
    ]
    if results.missing:
        lines += [f"**Incomplete grid:** {len(results.missing)} runs missing ({', '.join(results.missing)}); their "
                  "variants have fewer seeds below.", ""]
    lines += ["## Scores", "", f"Mean ± {conf:.0%} t-interval over seeds (n-1 degrees of freedom); lower is better.",
              "", f"| variant | method | rho | n | {fd} | {fdp} | flat ({fdp}, last quarter) |",
              "|---|---|---|---|---|---|---|"]
    t_fd, t_fdp = t_interval(results.teacher.get(fd, []), conf), t_interval(results.teacher.get(fdp, []), conf)
    lines.append(f"| **teacher** | — | — | {t_fd.n} | {t_fd.text()} | {t_fdp.text()} | — |")
    t_floor = t_interval(results.teacher.get(floor, []), conf)
    lines.append(f"| *noise floor* (two sets of {results.num_samples} teacher samples) | — | — | {t_floor.n} | "
                 f"{t_floor.text()} | — | — |")
    for r in results.variants.values():
        change = r.flatness(2)
        flat = "—" if not math.isfinite(change) else (
            f"{'yes' if abs(change) < exp.flat_tolerance else 'no'} ({change:+.0%})")
        rho = _fmt(r.rho) if r.rho is not None else "—"
        lines.append(f"| {r.label} | {r.method} | {rho} | {len(r.seeds)} | {r.interval('fd', conf).text()} | "
                     f"{r.interval('fd_teacher', conf).text()} | {flat} |")
    lines += ["", f"A curve is *flat* when the seed-mean {fdp} moved less than {exp.flat_tolerance:.0%} over the last "
              "quarter of the budget (periodic evaluation on a smaller sample; see the figure).", ""]
    lines += ["## Verdicts", "",
              f"Rule, fixed before reading the results: each claim is a list of comparisons *A better (lower) than B*; "
              f"a comparison counts when Welch's t-test (two-sided, α = {exp.alpha}) rejects equal means over the "
              "seeds. **reproduced**: every listed comparison is significant in the paper's direction; **not "
              "reproduced**: any listed comparison (or, for rho, any larger-rho-worse pair) is significant the other "
              "way; **inconclusive**: otherwise. The verdict uses the paper's metric for the claim; the other "
              "metric's verdict is shown for reference. No correction for multiple comparisons.", "",
              f"| claim | paper | verdict ({fd} / {fdp} for Table 11) | other metric | comparisons |",
              "|---|---|---|---|---|"]
    labels = {v: r.label for v, r in results.variants.items()}
    for main, alt in decided:
        comps = "; ".join(c.text(labels) for c in main.comparisons) or f"missing: {', '.join(main.missing)}"
        lines.append(f"| {main.claim.statement} | {main.claim.paper} | **{main.verdict}** "
                     f"(on {fd if main.claim.metric == 'fd' else fdp}) | {alt.verdict} "
                     f"(on {fd if alt.claim.metric == 'fd' else fdp}) | {comps} |")
    dyn, t_fdp_mean = results.variants.get("dynamic"), t_interval(results.teacher.get(fdp, []), conf).mean
    if dyn and dyn.fd_teacher and math.isfinite(t_fdp_mean) and t_fdp_mean > 0:
        ratio = t_interval(dyn.fd_teacher, conf).mean / t_fdp_mean
        lines += ["", f"Student/teacher {fdp} ratio (dynamic): {ratio:.2f} (the paper's Table 11: 2.60 / 2.09 = 1.24)."]
    lines += ["", "## Figures", ""]
    for title, path in figures.items():
        if path is not None:
            lines += [f"**{title}**", "", f"![{title}]({path.name})", ""]
    lines += ["## How this was produced", "",
              f"From `{_shown_path(ctx.profile_file)}` (base profile `{params.base_profile}`). "
              "`dkdm reproduce run-all --dir experiments/reproduce -j N` runs the grid of "
              "`experiments/reproduce/dvc.yaml` N processes at a time and commits its outputs to DVC; "
              "`dvc --cd experiments/reproduce repro` runs the same stages one at a time; "
              "`dkdm reproduce use NAME` switches to params-NAME.yaml (e.g. `cifar10` for paper scale).",
              f"CPU-scale numbers are FD in a {settings.features.kind} feature space, not FID: only orderings and "
              "ratios are comparable with the paper."]
    return "\n".join(lines) + "\n"


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
    decided = verdicts(results, params)
    wall = _wall_seconds()
    text = markdown(ctx, params, results, decided, figures, wall)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = REPORT_DIR / ".report.md.tmp"
    tmp.write_text(text)
    tmp.replace(REPORT_DIR / "report.md")
    _write_csv(results, conf)
    summary_data = {
        "verdicts": {m.claim.key: {"verdict": m.verdict, "metric": m.claim.metric, "other_metric_verdict": a.verdict}
                     for m, a in decided},
        "teacher": {k: t_interval(v, conf).mean for k, v in results.teacher.items()},
        "variants": {v: {"n": len(r.seeds), "fd": t_interval(r.fd, conf).mean,
                         "fd_teacher": t_interval(r.fd_teacher, conf).mean} for v, r in results.variants.items()},
        "missing": results.missing, "wall_seconds": wall[0], "train_seconds": wall[1],
    }
    write_json(REPORT_DIR / "summary.json", summary_data)
    _log(ctx, results, summary_data, figures)
    counts = {}
    for main, _ in decided:
        counts[main.verdict] = counts.get(main.verdict, 0) + 1
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
