"""`dkdm reproduce run-all --jobs N`: the same commands dvc.yaml runs, N at a time (dvc repro runs one stage at a
time; these UNets are too small for torch to use a second core well, separate processes do). Finished runs
(their metrics.json exists) are skipped, and a student trained for the current definition is only re-evaluated,
so an interrupted grid continues where it stopped. At the end the outputs are committed to DVC, so `dvc status` and
`dvc repro` see what `dvc repro` would have produced (a definition edited mid-run is recorded as it is at the end)."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from dkdm.console import summary
from dkdm.errors import DkdmError
from dkdm.reproduce.params import ExperimentParams, distill_config, experiment_settings, run_name
from dkdm.reproduce.runs import EVALUATION_DIR, STUDENTS_DIR, TEACHER_EVAL_DIR
from dkdm.stages.common import read_json

if TYPE_CHECKING:
    from training.distill.config import DistillConfig


def _command(directory: Path, params_file: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "dkdm", "reproduce", *args, "--dir", str(directory), "--params", params_file]


def _run(cmd: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    with log.open("a") as handle:
        prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
        handle.write(f"$ {prefix}{' '.join(cmd)}\n")
        handle.flush()
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=False, cwd=cwd,
                              env={**os.environ, **env} if env else None)
    if done.returncode != 0:
        raise DkdmError(f"run-all: `{' '.join(cmd[3:])}` failed (exit {done.returncode}); see {log}")


class Slots:
    """One slot per job; with GPUs, each slot is one device (CUDA_VISIBLE_DEVICES), so concurrent commands never
    share a GPU and every command sees its device as cuda:0."""

    def __init__(self, jobs: int, gpus: list[str] | None) -> None:
        self._free: queue.Queue[dict[str, str]] = queue.Queue()
        for overlay in ([{"CUDA_VISIBLE_DEVICES": g} for g in gpus] if gpus else [{} for _ in range(jobs)]):
            self._free.put(overlay)

    def run(self, log: Path, *cmds: list[str]) -> None:
        """Run `cmds` one after the other on one slot."""
        overlay = self._free.get()
        try:
            for cmd in cmds:
                _run(cmd, log, env=overlay)
        finally:
            self._free.put(overlay)


def _create_tracking_store(params: ExperimentParams, directory: Path) -> None:
    """Create the MLflow store before processes share it: two commands creating a fresh SQLite store at once
    race in its schema migration ("duplicate column name")."""
    from dkdm.reproduce.params import ensure_tracking_experiment
    from dkdm.tracking import _client, check_reachable, experiment_id

    settings = experiment_settings(params, directory)
    if settings.tracking.enabled:
        check_reachable(settings.tracking)
        ensure_tracking_experiment(settings, directory)
        experiment_id(_client(settings.tracking), settings.tracking.experiment)


def _dvc_commit(directory: Path, params_file: str, log: Path) -> bool:
    """Record the grid's outputs in dvc.lock (and the cache) when the folder is a DVC pipeline of a DVC repo."""
    if params_file != "params.yaml" or not (directory / "dvc.yaml").is_file():
        return False  # dvc.yaml reads params.yaml: other params files are not what its stages declare
    if not any((parent / ".dvc").is_dir() for parent in (directory, *directory.parents)):
        return False
    _run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", "dvc.yaml"], log, cwd=directory)
    return True


def run_all(params: ExperimentParams, directory: Path, params_file: str, jobs: int, *,
            dvc_commit: bool = True, gpus: list[str] | None = None) -> float:
    """The grid, `jobs` commands at a time (with `gpus`, one command per listed GPU)."""
    directory = directory.resolve()
    if gpus:
        jobs = len(gpus)
    slots = Slots(jobs, gpus)
    _create_tracking_store(params, directory)
    log = directory / "outputs" / "run-all.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cmd = lambda *a: _command(directory, params_file, *a)  # noqa: E731 - a local shorthand
    shared = directory / "outputs"
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        if not (shared / "data" / "dataset.npz").is_file():
            slots.run(log, cmd("stage", "data"))
        # The teacher and the feature classifier are independent; the reference needs both.
        waits = [pool.submit(slots.run, log, cmd("stage", name)) for name, marker in
                 (("teacher", "teacher/teacher.safetensors"), ("features", "features/real_stats.safetensors"))
                 if not (shared / marker).is_file()]
        for future in waits:
            future.result()
        # D' (the data-free training set) and the held-out FD' reference are independent draws of the teacher.
        waits = [pool.submit(slots.run, log, cmd("stage", name)) for name, marker in
                 (("reference", "reference/teacher_stats.safetensors"), ("heldout", "heldout/info.json"))
                 if not (shared / marker).is_file()]
        for future in waits:
            future.result()
        futures = []
        if not (directory / TEACHER_EVAL_DIR / "metrics.json").is_file():
            futures.append(pool.submit(slots.run, log, cmd("teacher-eval")))
        exp = params.experiment
        # Variant-major order: a grid stopped early has every seed of its first variants (a verdict needs seeds
        # more than it needs variants), so list the variants of the main claims first.
        for variant in exp.variants:
            for seed in exp.seeds:
                if (directory / EVALUATION_DIR / run_name(variant, seed) / "metrics.json").is_file():
                    continue
                which = ("--variant", variant, "--seed", str(seed))
                steps = [cmd("evaluate-one", *which)]
                settings = experiment_settings(params, directory, variant)
                config = distill_config(settings, exp.variant_specs[variant], seed)
                if not _trained(directory, config, settings.distill.student, variant, seed):
                    steps.insert(0, cmd("run-one", *which))
                futures.append(pool.submit(slots.run, log, *steps))
        for future in futures:
            future.result()
    _run(cmd("report"), log)
    seconds = time.monotonic() - started
    committed = dvc_commit and _dvc_commit(directory, params_file, log)
    summary(f"run-all: grid of {len(params.experiment.variants)} variants x {len(params.experiment.seeds)} seeds "
            f"done in {seconds / 60:.1f} min ({jobs} jobs) -> {directory / 'outputs' / 'report' / 'report.md'}"
            + ("; outputs committed to DVC (dvc.lock)" if committed else ""))
    return seconds


def _trained(directory: Path, config: DistillConfig, student: object, variant: str, seed: int) -> bool:
    """The student exists and was trained for the current definition (method, rho, budget, architecture): only its
    evaluation is missing. Anything else is retrained (run-one resumes an interrupted run)."""
    record_file = directory / STUDENTS_DIR / run_name(variant, seed) / "run.json"
    if not (record_file.is_file() and record_file.with_name("student.safetensors").is_file()):
        return False
    record = read_json(record_file)
    return (record.get("method"), record.get("rho"), record.get("iterations"), record.get("steps"),
            record.get("student", student)) == (config.method, config.rho, config.iterations, config.iterations,
                                                student)
