"""Collect the grid's outputs (per-seed scores, curves, the teacher's scores) into plain tables."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    teacher_values = {name: [float(row[name]) for row in teacher["seeds"] if name in row] for name in names}
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
            curve = root / "outputs" / "students" / name / "curve.csv"
            if curve.is_file():
                result.curves[seed] = _read_curve(curve)
        variants[variant] = result
    return Results(*names, int(teacher["num_samples"]), teacher_values, variants, missing)
