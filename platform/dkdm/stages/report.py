"""Stage `report`: every evaluated student beside the teacher and the noise floor, stated plainly.

outputs/report/report.md (human), summary.json (`dvc metrics show`), comparison.csv (`dvc plots show`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dkdm.console import Context, summary
from dkdm.profiles import atomic_write_text
from dkdm.settings import Settings
from dkdm.stages.common import (
    REFERENCE_METRICS,
    REPORT_DIR,
    evaluation_dir,
    read_json,
    require,
    student_file,
    write_json,
)
from dkdm.tracking import start_run


def _metric_keys(settings: Settings) -> tuple[str, str, str, str, str]:
    """(fd, fd against the teacher, precision, recall, noise floor) in the profile's feature space."""
    from training.eval.extractor import METRICS_BY_KIND

    names = METRICS_BY_KIND[settings.features.kind]
    return names.fd, names.against_teacher(names.fd), names.precision, names.recall, names.noise_floor


SPACE_WORDS = {
    "digits": "the digits classifier's 64-d feature space (not Inception)",
    "learned": "the 64-d feature space of a network trained on the real data by the `features` stage (not Inception)",
    "inception": "Inception-v3 (FID protocol)",
}


def _params(path: Path) -> int | None:
    from training.models import read_checkpoint_meta

    try:
        return int(read_checkpoint_meta(path)["provenance"]["num_parameters"])
    except Exception:  # noqa: BLE001 - a count is a nicety in the table
        return None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def build_rows(settings: Settings) -> list[dict[str, Any]]:
    from dkdm.stages.common import TEACHER_FILE

    fd, fdt, prec, rec, _ = _metric_keys(settings)
    rows = []
    entries = [("teacher", "teacher", settings.teacher.preset, TEACHER_FILE)]
    entries += [(name, spec.method, settings.distill.student_for(name), student_file(name))
                for name, spec in settings.distill.runs.items()]
    for name, method, preset, weights in entries:
        metrics = read_json(require(evaluation_dir(name) / "metrics.json", f"dkdm evaluate --run {name}"))
        rows.append({
            "run": name, "method": method, "model": preset, "params": _params(weights),
            fd: metrics.get(fd), fdt: metrics.get(fdt), prec: metrics.get(prec), rec: metrics.get(rec),
            "gen_seconds_256": metrics.get("gen_seconds_256"),
            "train_seconds_per_100_iters": metrics.get("train_seconds_per_100_iters"),
        })
    return rows


def verdict(rows: list[dict[str, Any]], fd: str, floor: float | None) -> list[str]:
    """Plain sentences comparing DKDM runs with the data-free baseline, against the noise floor."""
    baseline = [r for r in rows if r["method"] == "data_free"]
    lines = []
    for row in rows:
        if row["method"] not in ("dynamic", "shuffled", "iterative") or not baseline or row[fd] is None:
            continue
        base = min(baseline, key=lambda r: abs((r["params"] or 0) - (row["params"] or 0)))
        if base[fd] is None:
            continue
        gap = base[fd] - row[fd]
        if floor is not None and abs(gap) <= floor:
            judged = f"within the noise floor ({floor:.3f}), so this run does not separate them"
        elif gap > 0:
            judged = f"{row['run']} is better by {gap:.3f}" + (f", {gap / floor:.1f}x the noise floor" if floor else "")
        else:
            judged = f"the data-free baseline is better by {-gap:.3f}" + (
                f", {-gap / floor:.1f}x the noise floor" if floor else "")
        lines.append(f"- {row['run']} ({row['method']}) {fd} {row[fd]:.3f} vs {base['run']} {base[fd]:.3f}: {judged}.")
    return lines


def _fd_reference(reference: dict[str, float]) -> str:
    count = int(reference.get("teacher_samples", 0))
    if "heldout_seed" in reference:
        return (f"a held-out set of {int(reference.get('heldout_samples', count))} teacher samples (seed "
                f"{int(reference['heldout_seed'])}), drawn apart from D' ({count} images, the data-free baseline's "
                "training set)")
    return f"the teacher's own samples D' ({count} images; the data-free baseline trains on them too)"


def render(settings: Settings, rows: list[dict[str, Any]], reference: dict[str, float]) -> str:
    fd, fdt, prec, rec, floor_key = _metric_keys(settings)
    floor = reference.get(floor_key)
    teacher = next(r for r in rows if r["method"] == "teacher")
    space = SPACE_WORDS[settings.features.kind]
    ev = settings.evaluate
    lines = [
        f"# DKDM report: profile `{settings.profile}`",
        "",
        f"Teacher `{settings.teacher.preset}` ({settings.teacher.source}ed), dataset `{settings.data.dataset}`, "
        f"T={settings.diffusion.steps} ({settings.diffusion.noise_schedule}). Each model drew {ev.num_samples} "
        f"samples with {ev.respacing or 'all'} {'DDIM' if ev.use_ddim else 'ancestral'} steps (seed {ev.seed}); "
        f"scores are in {space}. `{fd}` compares with the real training data, `{fdt}` with {_fd_reference(reference)}"
        ". Lower FD is better.",
        "",
        f"| run | method | model | params | {fd} | {fdt} | {prec} | {rec} | s / 256 images | train s / 100 it |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "–"
        lines.append(f"| {r['run']} | {r['method']} | {r['model']} | {params} | {_fmt(r[fd])} | {_fmt(r[fdt])} | "
                     f"{_fmt(r[prec])} | {_fmt(r[rec])} | {_fmt(r['gen_seconds_256'], 2)} | "
                     f"{_fmt(r['train_seconds_per_100_iters'], 1)} |")
    lines += [
        "",
        f"Noise floor ({floor_key}): {_fmt(floor)} — the FD between two random halves of the teacher's own samples;"
        " differences smaller than this are not evidence of anything.",
        *([f"Noise floor of {fdt}: {_fmt(teacher[fdt])} — the teacher's own {ev.num_samples} fresh samples against "
           "the held-out set; FD' differences smaller than this are not evidence either."]
          if "heldout_seed" in reference else []),
        f"Teacher's own score: {fd} {_fmt(teacher[fd])}; no student can be expected to beat its teacher here.",
        "",
        "## Comparison",
        *(verdict(rows, fd, floor) or ["- no DKDM run with a data-free baseline to compare"]),
        "",
        "One seed and a short CPU budget: this shows the pipeline and the direction of the effect, not the paper's "
        "numbers (see the paper profiles for those).",
    ]
    return "\n".join(lines) + "\n"


def run(ctx: Context) -> None:
    settings = ctx.settings
    rows = build_rows(settings)
    reference = read_json(require(REFERENCE_METRICS, "dkdm reference"))
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    text = render(settings, rows, reference)
    atomic_write_text(REPORT_DIR / "report.md", text)
    fd, fdt, prec, rec, floor_key = _metric_keys(settings)
    summary_data: dict[str, Any] = {floor_key: reference.get(floor_key)}
    for r in rows:
        summary_data[r["run"]] = {k: r[k] for k in (fd, fdt, prec, rec) if r[k] is not None}
    write_json(REPORT_DIR / "summary.json", summary_data)
    tmp = REPORT_DIR / ".comparison.csv.tmp"
    with tmp.open("w", newline="") as handle:
        # Generic column names so one plot definition in dvc.yaml serves every feature space.
        writer = csv.DictWriter(handle, fieldnames=["run", "method", "fd", "fd_teacher", "metric"])
        writer.writeheader()
        for r in rows:
            writer.writerow({"run": r["run"], "method": r["method"], "fd": _fmt(r[fd], 4),
                             "fd_teacher": _fmt(r[fdt], 4), "metric": fd})
    tmp.replace(REPORT_DIR / "comparison.csv")
    with start_run(settings, stage="report", run_name=f"report-{settings.profile}") as tracker:
        tracker.log_artifact(REPORT_DIR / "report.md", "report")
        tracker.log_metrics({f"{r['run']}/{fd}": r[fd] for r in rows if r[fd] is not None}, 0)
    best = min((r for r in rows if r["method"] != "teacher" and r[fd] is not None), key=lambda r: r[fd], default=None)
    best_text = f"best student {best['run']} {fd} {best[fd]:.3f}" if best else "no students"
    summary(f"report: {len(rows) - 1} students vs teacher {fd} {_fmt(rows[0][fd])}, noise floor "
            f"{_fmt(reference.get(floor_key))}; {best_text} -> {REPORT_DIR / 'report.md'}")
