"""A synthetic reproduction grid (scores, curves, teacher evaluation) for the report tests: the report runs on it in
seconds, without training anything. Not a conftest: tests import it."""
from __future__ import annotations

import json
from pathlib import Path

from dkdm.reproduce.params import ExperimentParams, read_params

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "reproduce"
# (FD, FD') per variant: dynamic < data_free clearly; shuffled/iterative missing; the rho sweep improving.
MEANS = {"dynamic": (3.0, 1.0), "data_free": (6.0, 4.0), "data_based": (2.0, 0.8), "rho_0p1": (4.0, 2.0)}


def synthetic_experiment(root: Path, extra: dict[str, tuple[float, float]] | None = None,
                         pool_work: dict[str, float] | None = None) -> ExperimentParams:
    """The CI definition with four of its variants (and `extra` ones) in `root`, every seed scored, and the teacher's
    evaluation; `pool_work` gives variants' recorded pool preparation work (run.json)."""
    means = {**MEANS, **(extra or {})}
    text = (EXPERIMENT / "params-ci.yaml").read_text().replace("../../platform/dkdm/configs/ci.yaml", "ci")
    text = text.replace("variants: [dynamic, data_free, dit_dynamic, dit_data_free]",
                        f"variants: [{', '.join(means)}]")
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(text)
    params = read_params(root)
    for variant, (fd, fdp) in means.items():
        for k, seed in enumerate(params.experiment.seeds):
            folder = root / "outputs" / "evaluation" / f"{variant}-s{seed}"
            folder.mkdir(parents=True)
            jitter = 0.01 * (k - 0.5)
            (folder / "metrics.json").write_text(json.dumps({"fd_digits": fd + jitter,
                                                             "fd_digits_teacher": fdp + jitter,
                                                             "train_seconds_per_100_iters": 1.0}))
            curve = root / "outputs" / "students" / f"{variant}-s{seed}" / "curve.csv"
            curve.parent.mkdir(parents=True)
            curve.write_text(f"step,fd,fd_teacher\n4,{fd * 2},{fdp * 3}\n8,{fd},{fdp}\n")
            if variant in (pool_work or {}):
                (curve.parent / "run.json").write_text(json.dumps({"setup_seconds": 2.0 + k,
                                                                   "pool_teacher_image_steps": pool_work[variant]}))
    teacher = root / "outputs" / "teacher_eval" / "metrics.json"
    teacher.parent.mkdir(parents=True)
    teacher.write_text(json.dumps({
        "num_samples": 48, "sampling_steps": 5, "metric_fd": "fd_digits", "metric_fd_teacher": "fd_digits_teacher",
        "metric_noise_floor": "fd_digits_noise_floor", "metric_noise_floor_teacher": "fd_digits_teacher_noise_floor",
        "seeds": [{"seed": s, "fd_digits": 2.5, "fd_digits_teacher": 0.5, "fd_digits_noise_floor": 0.3,
                   "fd_digits_teacher_noise_floor": 0.5}
                  for s in params.experiment.seeds]}))
    return params
