"""Fault injection on the `ci` profile, through the user's command: `dkdm distill --run dynamic` is killed with
SIGKILL at three seeded random points after checkpoints exist, and resumed each time by running the same
command again. Against one uninterrupted run of the same command, the resumed one must give a bit-identical
student, a single FINISHED MLflow run whose loss history has every logged step once, and a complete curves CSV.
"""
from __future__ import annotations

import csv
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline_helpers import active_env, copy_tree

ITERATIONS, LOG_EVERY, CHECKPOINT_EVERY = 240, 4, 8
KILLS, SEED = 3, 22
# Longer than the ci profile's 12 steps so that a kill lands mid-run; the rest is the ci profile as shipped.
OVERRIDES = {"DKDM_DISTILL__TRAIN__ITERATIONS": str(ITERATIONS), "DKDM_DISTILL__TRAIN__LOG_EVERY": str(LOG_EVERY),
             "DKDM_DISTILL__TRAIN__CHECKPOINT_EVERY": str(CHECKPOINT_EVERY)}


def _env(repo: Path) -> dict[str, str]:
    return {**active_env(repo), **OVERRIDES}


def _dkdm(repo: Path, *args: str, timeout: int = 600) -> None:
    out = subprocess.run([sys.executable, "-m", "dkdm", *args], cwd=repo, env=_env(repo), capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"dkdm {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def _resume_step(repo: Path) -> int:
    """The step of the distillation's resume checkpoint (0 while there is none)."""
    from training.train.state import CheckpointError, read_meta

    for path in (repo / ".dkdm" / "work").glob("student-dynamic-*/resume.safetensors"):
        try:
            return int(read_meta(path)["step"])
        except (CheckpointError, ValueError, KeyError):
            return 0  # caught between the write and the rename of an atomic save: look again
    return 0


def _kill_after_checkpoint(repo: Path, target: int, jitter_s: float) -> int:
    """Start the distillation, wait until its checkpoint reaches step `target` (one it wrote itself), SIGKILL it
    `jitter_s` later (between two checkpoints, at a speed-dependent step); returns the step the next run resumes
    from."""
    before = _resume_step(repo)
    proc = subprocess.Popen([sys.executable, "-m", "dkdm", "distill", "--run", "dynamic"], cwd=repo, env=_env(repo),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _resume_step(repo) < max(target, before + 1):
        assert proc.poll() is None, f"distill ended before its checkpoint: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.02)
    time.sleep(jitter_s)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: raise ITERATIONS"
    step = _resume_step(repo)
    assert before < step < ITERATIONS
    return step


def _mlflow_runs(repo: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dkdm")
    return client, client.search_runs([exp.experiment_id], filter_string="tags.`dkdm.run` = 'dynamic'")


def _curve(repo: Path) -> list[dict[str, str]]:
    with (repo / "outputs" / "curves" / "dynamic.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_killed_three_times_and_resumed_equals_one_uninterrupted_run(tmp_path):
    base = tmp_path / "base"
    copy_tree(base)
    for args in (("profile", "use", "ci"), ("data",), ("teacher",), ("prepare-pool",)):
        _dkdm(base, *args)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for copy in (straight, killed):
        shutil.copytree(base, copy, symlinks=True)
    _dkdm(straight, "distill", "--run", "dynamic")

    # Seeded kill points: a checkpoint step to reach (the first checkpoint at the earliest, leaving most of the run
    # to go), then a random moment between that checkpoint and the next ones.
    rng = random.Random(SEED)
    targets = sorted(rng.sample(range(CHECKPOINT_EVERY, ITERATIONS // 2, CHECKPOINT_EVERY), KILLS))
    resumed_from = [_kill_after_checkpoint(killed, target, rng.uniform(0.0, 0.3)) for target in targets]
    _, runs = _mlflow_runs(killed)
    assert [r.info.status for r in runs] == ["RUNNING"], "a killed run stays attached to its one MLflow run"
    _dkdm(killed, "distill", "--run", "dynamic")
    assert resumed_from == sorted(set(resumed_from)), resumed_from

    ref = load_file(str(straight / "outputs/students/dynamic/student.safetensors"))
    got = load_file(str(killed / "outputs/students/dynamic/student.safetensors"))
    assert ref.keys() == got.keys()
    assert not [k for k in ref if not torch.equal(ref[k], got[k])], "the resumed student differs"

    steps = list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))
    client, runs = _mlflow_runs(killed)
    assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
    assert runs[0].data.tags["dkdm.resumed"] == str(KILLS)
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == steps, "gaps or repeated steps in the loss history"
    ref_client, ref_runs = _mlflow_runs(straight)
    ref_history = ref_client.get_metric_history(ref_runs[0].info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == sorted((m.step, m.value) for m in ref_history)

    rows = _curve(killed)
    assert [int(r["step"]) for r in rows] == steps
    assert rows == _curve(straight)
    print(f"\nMLflow runs after {KILLS} kills (resumed from steps {resumed_from}):")
    for run in client.search_runs([runs[0].info.experiment_id]):
        print(f"  {run.info.run_id}  {run.info.run_name:<28} {run.info.status:<9}"
              f" resumed={run.data.tags.get('dkdm.resumed', '0')}"
              f"  train/loss points={len(client.get_metric_history(run.info.run_id, 'train/loss'))}")
    print(f"outputs/curves/dynamic.csv: {len(rows)} rows (steps {rows[0]['step']}..{rows[-1]['step']})")
