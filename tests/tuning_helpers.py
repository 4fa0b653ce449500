"""Shared set-up of the tuning tests: tiny pipeline inputs (teacher, digits classifier, FD' reference) and a
profile file, plus helpers that read a study and its MLflow runs back. Not a conftest: tests import it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

STEPS = 10  # diffusion length of the test profile: enough for a pool and sampling, cheap on 2 shared cores
# The smallest budget that still evaluates twice (so the pruner has an intermediate value to act on).
FAST_TUNE_ENV = {
    "DKDM_TUNE__ITERATIONS": "4", "DKDM_TUNE__EVAL_EVERY": "2", "DKDM_TUNE__EVAL_SAMPLES": "16",
    "DKDM_TUNE__FINAL_SAMPLES": "24", "DKDM_TUNE__EVAL_BATCH_SIZE": "32", "DKDM_TUNE__SAMPLER_STARTUP_TRIALS": "2",
}


def make_inputs(root: Path) -> dict[str, Path]:
    """An untrained ci-teacher, a 1-epoch digits classifier and FD' statistics of 48 teacher samples."""
    import torch

    from training.data.digits import load_digits
    from training.diffusion import create_diffusion
    from training.eval import DigitsFeatureExtractor, compute_reference_stats, generate_samples, train_digits_classifier
    from training.models import create_model, get_preset, save_checkpoint

    paths = {"teacher": root / "teacher" / "teacher.safetensors",
             "classifier": root / "features" / "classifier.safetensors",
             "teacher_stats": root / "reference" / "teacher_stats.safetensors"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    digits = load_digits("train")
    train_digits_classifier(digits.images[:400], digits.labels[:400], seed=0, epochs=1, out_path=paths["classifier"])
    torch.manual_seed(0)
    config = get_preset("ci-teacher")
    teacher = create_model(config)
    diffusion = {"steps": STEPS, "noise_schedule": "cosine", "learn_sigma": True}
    save_checkpoint(paths["teacher"], teacher, model_config=config, diffusion_config=diffusion)
    extractor = DigitsFeatureExtractor.from_file(paths["classifier"])
    samples = generate_samples(teacher, create_diffusion(**diffusion), 48, batch_size=48, seed=1, device="cpu",
                               progress=False)
    compute_reference_stats(samples, extractor, paths["teacher_stats"])
    return paths


def write_profile(path: Path, tracking_uri: str, *, profile: str = "tunetest") -> Path:
    data: dict[str, Any] = {
        "profile": profile,
        "data": {"dataset": "digits", "image_size": 8, "channels": 1},
        "diffusion": {"steps": STEPS, "noise_schedule": "cosine", "learn_sigma": True},
        "teacher": {"preset": "ci-teacher"},
        "features": {"kind": "digits"},
        "distill": {
            "student": "ci-student", "rho": 0.2, "teacher_batch_size": 64,
            "train": {"iterations": 4, "batch_size": 8, "lr": 1e-3, "log_every": 2, "ema_rate": 0.9},
            "runs": {"dynamic": {"method": "dynamic", "source": "outputs/pool"}},
        },
        "evaluate": {"respacing": "5", "num_samples": 16},
        "tracking": {"uri": tracking_uri, "system_metrics": False, "flush_timeout_s": 5.0},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def input_flags(paths: dict[str, Path]) -> list[str]:
    return ["--teacher", str(paths["teacher"]), "--teacher-stats", str(paths["teacher_stats"]),
            "--classifier", str(paths["classifier"])]


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **FAST_TUNE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(extra or {})}
    env.pop("DKDM_DEBUG", None)
    return env


def start_worker(cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dkdm.tuning", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load(storage: Any, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def journal(path: Path) -> Any:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def study_runs(tracking_uri: str, study: str) -> tuple[list[Any], list[Any]]:
    """(parent runs with stage tune, trial runs) of a study in the `dkdm` experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("dkdm")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`dkdm.study` = '{study}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("dkdm.stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("dkdm.stage") == "trial"]
    return parents, trials
