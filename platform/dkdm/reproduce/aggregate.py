"""Collect the grid's outputs (per-seed scores, curves, the teacher's scores) into plain tables."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dkdm.errors import DkdmError
from dkdm.reproduce.params import ExperimentParams, run_name
from dkdm.reproduce.stats import Interval, relative_change, t_interval


@dataclass
class VariantResult:
    variant: str
    label: str
    method: str
    rho: float | None
    fd: list[float] = field(default_factory=list)
    fd_teacher: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    setup_seconds: list[float] = field(default_factory=list)   # outside the training loop: the pool's preparation
    pool_work: list[float] = field(default_factory=list)       # teacher image-steps the pool's preparation spent
    curves: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)  # seed -> (step, fd, fd')

    def interval(self, metric: str, confidence: float) -> Interval:
        return t_interval(getattr(self, metric), confidence)

    def mean_curve(self, column: int) -> list[tuple[int, float, float, float]]:
        """(step, mean, min, max) over seeds at each step every seed reached."""
        if not self.curves:
            return []
        steps = sorted(set.intersection(*(set(s for s, *_ in rows) for rows in self.curves.values())))
        out = []
        for step in steps:
            values = [row[column] for rows in self.curves.values() for row in rows if row[0] == step]
            out.append((step, sum(values) / len(values), min(values), max(values)))
        return out

    def flatness(self, column: int) -> float:
        """Relative change of the seed-mean curve over its last quarter of steps (nan without a curve)."""
        curve = self.mean_curve(column)
        if len(curve) < 2:
            return float("nan")
        last_step = curve[-1][0]
        start = next((c for c in curve if c[0] >= 0.75 * last_step), curve[-2])
        if start[0] == last_step:
            start = curve[-2]
        return relative_change(start[1], curve[-1][1])


@dataclass
class Results:
    metric_fd: str
    metric_fd_teacher: str
    metric_noise_floor: str
    num_samples: int
    teacher: dict[str, list[float]]
    variants: dict[str, VariantResult]
    missing: list[str]
    metric_noise_floor_teacher: str = ""  # FD' floor: the teacher's fresh samples against the held-out reference


def _read_curve(path: Path) -> list[tuple[int, float, float]]:
    with path.open(newline="") as handle:
        return [(int(r["step"]), float(r["fd"]), float(r["fd_teacher"])) for r in csv.DictReader(handle)]


def collect(params: ExperimentParams, root: Path, default_rho: float) -> Results:
    """Read outputs/ under `root` (the experiment folder). Missing runs are listed, not fatal: a partial grid
    still gives a report, with fewer seeds in its intervals."""
    teacher_file = root / "outputs" / "teacher_eval" / "metrics.json"
    if not teacher_file.is_file():
        raise DkdmError(f"{teacher_file} does not exist; run `dkdm reproduce teacher-eval` first (or dvc repro)")
    teacher = json.loads(teacher_file.read_text())
    names = (teacher["metric_fd"], teacher["metric_fd_teacher"], teacher["metric_noise_floor"])
    floor_teacher = teacher.get("metric_noise_floor_teacher", f"{names[1]}_noise_floor")
    teacher_values = {name: [float(row[name]) for row in teacher["seeds"] if name in row]
                      for name in (*names, floor_teacher)}
    exp = params.experiment
    variants: dict[str, VariantResult] = {}
    missing: list[str] = []
    for variant in dict.fromkeys([*exp.variants, *exp.rho_sweep]):
        spec = exp.variant_specs[variant]
        rho = (spec.rho or default_rho) if spec.method == "dynamic" else None
        result = VariantResult(variant, exp.label(variant), spec.method, rho)
        for seed in exp.seeds:
            name = run_name(variant, seed)
            metrics_file = root / "outputs" / "evaluation" / name / "metrics.json"
            if not metrics_file.is_file():
                missing.append(name)
                continue
            metrics = json.loads(metrics_file.read_text())
            result.seeds.append(seed)
            result.fd.append(float(metrics.get(names[0], math.nan)))
            result.fd_teacher.append(float(metrics.get(names[1], math.nan)))
            if "train_seconds_per_100_iters" in metrics:
                result.train_seconds.append(float(metrics["train_seconds_per_100_iters"]))
            record_file = root / "outputs" / "students" / name / "run.json"
            record = json.loads(record_file.read_text()) if record_file.is_file() else {}
            if record.get("setup_seconds") is not None:
                result.setup_seconds.append(float(record["setup_seconds"]))
            if record.get("pool_teacher_image_steps") is not None:
                result.pool_work.append(float(record["pool_teacher_image_steps"]))
            curve = root / "outputs" / "students" / name / "curve.csv"
            if curve.is_file():
                result.curves[seed] = _read_curve(curve)
        variants[variant] = result
    return Results(*names, int(teacher["num_samples"]), teacher_values, variants, missing, floor_teacher)


def published_results(folder: Path, params: ExperimentParams, num_samples: int) -> Results:
    """A committed report folder as Results: per-seed scores from its results.csv, the teacher's and the noise
    floor's means from its summary.json (a one-value list each; the figures draw only the mean). Lets a report's
    score figures be redrawn without the grid's outputs/; the curves are not committed, so neither is their figure."""
    table, summary = folder / "results.csv", folder / "summary.json"
    for path in (table, summary):
        if not path.is_file():
            raise DkdmError(f"{path} does not exist; give a folder written by `dkdm reproduce report`")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if columns[:4] != ["variant", "method", "rho", "seed"] or len(columns) != 6:
        raise DkdmError(f"{table}: expected columns variant,method,rho,seed,<fd>,<fd_teacher>, got {','.join(columns)}")
    fd, fd_teacher = columns[4:]
    teacher = json.loads(summary.read_text()).get("teacher", {})
    floor, floor_teacher = f"{fd}_noise_floor", f"{fd_teacher}_noise_floor"
    variants: dict[str, VariantResult] = {}
    for row in rows:
        name = row["variant"]
        if name not in params.experiment.variant_specs:
            raise DkdmError(f"{table}: variant {name!r} is not in the experiment's variant_specs")
        result = variants.setdefault(name, VariantResult(name, params.experiment.label(name), row["method"],
                                                         float(row["rho"]) if row["rho"] else None))
        result.seeds.append(int(row["seed"]))
        result.fd.append(float(row[fd]))
        result.fd_teacher.append(float(row[fd_teacher]))
    teacher_values = {k: [float(teacher[k])] for k in (fd, fd_teacher, floor, floor_teacher)
                      if teacher.get(k) is not None}
    return Results(fd, fd_teacher, floor, num_samples, teacher_values, variants, [], floor_teacher)
