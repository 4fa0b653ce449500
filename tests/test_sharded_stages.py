"""Sharded stages under a job of 2 gloo processes (tests/dist_driver.py runs a stage as a `dkdm` command does under
torchrun): D', evaluation and `sample` give the same images as one process; prepare-pool gives each rank its own
pool and records one MLflow run. Also the moments of respaced pool states against the paper's on the `ci` teacher.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dkdm import profiles
from training.distill import PoolConfig, PoolError, PoolPrep, load_pool, prepare_pool, read_pool_meta

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "dist_driver.py"
# Small batches, so that both ranks draw several (and unequal numbers of) batches: 128/20 and 64/10 -> 7 each.
SHARDED = {"DKDM_REFERENCE__BATCH_SIZE": "20", "DKDM_EVALUATE__BATCH_SIZE": "10"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKDM_")}
    env.update({"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'platform'}", "OMP_NUM_THREADS": "1",
                "GLOO_SOCKET_IFNAME": "lo", "DKDM_TRACKING__ENABLED": "false", **SHARDED, **extra})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cwd: Path, args: list[str], *, processes: int = 1, **env: str) -> str:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    out = subprocess.run([sys.executable, *launcher, str(DRIVER), *args], cwd=cwd, env=_env(**env),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} x{processes}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A ci project with its data, trained teacher and features, made by the user's commands."""
    root = tmp_path_factory.mktemp("sharded")
    (root / "params.yaml").write_text((profiles.packaged_dir() / "ci.yaml").read_text())
    for command in ("data", "train-teacher", "features"):
        out = subprocess.run([sys.executable, "-m", "dkdm", command], cwd=root, env=_env(), capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_two_processes_draw_the_same_images_as_one(project):
    ref = project / "outputs" / "reference" / "teacher_samples.safetensors"
    evaluation = project / "outputs" / "evaluation" / "teacher"
    single: dict[str, object] = {}
    _run(project, ["reference"])
    single["reference"] = load_file(str(ref))["images"]
    single["stats"] = (project / "outputs" / "reference" / "teacher_stats.json").read_text()
    _run(project, ["evaluate-teacher"])
    single["evaluate"] = np.load(evaluation / "samples.npz")["arr_0"]
    single["metrics"] = json.loads((evaluation / "metrics.json").read_text())
    _run(project, ["sample", "outputs/teacher/teacher.safetensors", "10", "one.npz"])

    shown = _run(project, ["reference"], processes=2)
    assert "2 process(es)" in shown and shown.count("reference:") == 1, "only rank 0 prints the summary"
    assert torch.equal(load_file(str(ref))["images"], single["reference"]), "D' of 2 ranks = D' of 1 process"
    assert (project / "outputs" / "reference" / "teacher_stats.json").read_text() == single["stats"]
    _run(project, ["evaluate-teacher"], processes=2)
    assert np.array_equal(np.load(evaluation / "samples.npz")["arr_0"], single["evaluate"])
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "peak_memory_mb"} == {
        k: v for k, v in single["metrics"].items() if k != "peak_memory_mb"}  # type: ignore[union-attr]
    assert json.loads((evaluation / "info.json").read_text())["world_size"] == 2
    _run(project, ["sample", "outputs/teacher/teacher.safetensors", "10", "two.npz"], processes=2)
    one, two = np.load(project / "one.npz")["arr_0"], np.load(project / "two.npz")["arr_0"]
    assert one.shape == (10, 8, 8, 1) and np.array_equal(one, two)
    assert not list(project.rglob("*.partial*")) and not list(project.rglob("*.tmp"))


def test_fd_prime_reference_is_a_held_out_set_not_d_prime(project):
    """With reference.heldout_seed (on in the ci and default profiles) the FD' statistics come from a second teacher
    set: D' stays the same whatever that seed, the statistics follow it, and neither is D''s own statistics."""
    from training.eval.features import DigitsFeatureExtractor
    from training.eval.stats import compute_reference_stats, load_reference_stats

    folder = project / "outputs" / "reference"
    shown = _run(project, ["reference"], processes=2)
    assert "FD' against 128 held-out samples (seed 1000)" in shown
    d_prime, stats = load_file(str(folder / "teacher_samples.safetensors"))["images"], load_reference_stats(
        folder / "teacher_stats.safetensors")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["heldout_seed"], metrics["heldout_samples"]) == (1000.0, 128.0)
    _run(project, ["reference"], DKDM_REFERENCE__HELDOUT_SEED="7")
    assert torch.equal(load_file(str(folder / "teacher_samples.safetensors"))["images"], d_prime)
    other = load_reference_stats(folder / "teacher_stats.safetensors")
    assert not np.allclose(other.mu, stats.mu), "the FD' reference follows reference.heldout_seed"
    extractor = DigitsFeatureExtractor.from_file(project / "outputs" / "features" / "classifier.safetensors")
    own = compute_reference_stats(d_prime.permute(0, 2, 3, 1).contiguous().numpy(), extractor, None, name="d_prime")
    assert not np.allclose(own.mu, stats.mu) and not np.allclose(own.mu, other.mu), "D' is not its own reference"
    refused = subprocess.run([sys.executable, "-m", "dkdm", "reference"], cwd=project,
                             env=_env(DKDM_REFERENCE__HELDOUT_SEED="1"), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "heldout_seed: 1 is also D''s seed" in refused.stderr, refused.stderr


def test_each_rank_prepares_its_own_pool_in_one_recorded_job(project):
    import mlflow

    _run(project, ["pool"], processes=2, DKDM_TRACKING__ENABLED="true")
    path = project / "outputs" / "pool" / "pool.safetensors"
    meta = read_pool_meta(path)
    per_rank = round(0.2 * 20) * 16  # ci: round(rho * T) * b
    settings = meta["settings"]
    assert (settings["world_size"], settings["per_rank_entries"]) == (2, per_rank)
    assert settings["num_entries"] == 2 * per_rank
    shards = [load_pool(path, rank=r, world_size=2) for r in (0, 1)]
    assert all(len(shard) == per_rank for shard in shards), "each rank keeps round(rho*T)*b states, as officially"
    assert not torch.equal(shards[0].x, shards[1].x), "ranks draw their own noise"
    work = [int((20 - shard.s).sum()) for shard in shards]
    assert meta["teacher_image_steps_per_rank"] == work and meta["teacher_image_steps"] == sum(work)
    with pytest.raises(PoolError, match="prepared by 2 process.*this job has 1"):
        load_pool(path)

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["dkdm"], filter_string="tags.`dkdm.stage` = 'pool'",
                              output_format="list")
    assert len(runs) == 1, "one job, one run"
    run = runs[0].data
    assert run.params["world_size"] == "2"
    assert run.metrics["pool_teacher_image_steps"] == sum(work)
    assert run.metrics["pool_entries"] == 2 * per_rank


def test_respaced_states_keep_the_full_chains_moments_on_the_ci_teacher(project, tmp_path):
    """K = 5 hops instead of up to 19 steps. Per band of end steps, the states' mean must agree within 4 standard
    errors (sampling noise alone, measured from the per-image means of both pools) and their std within 2.5%:
    two paper pools of different seeds differ by up to 0.7% here, K = 5 by 1.1%; a hop that took the posterior
    variance instead of the teacher's learned one was 2.7% off, K = 2 is 4.9% off in the lowest band."""
    from training.diffusion import create_diffusion
    from training.models import load_checkpoint

    torch.set_num_threads(1)
    teacher, meta = load_checkpoint(project / "outputs" / "teacher" / "teacher.safetensors")
    diffusion = create_diffusion(**meta.diffusion_config)
    T = diffusion.num_timesteps
    pools = {}
    for name, prep in (("paper", PoolPrep()), ("respaced", PoolPrep(procedure="respaced", steps=5))):
        config = PoolConfig(rho=6.25, batch_size=16, teacher_batch_size=256, prep=prep)  # 125 * 16 = 2000 states
        out = prepare_pool(teacher, diffusion, config, tmp_path / f"{name}.safetensors", image_shape=(1, 8, 8),
                           device="cpu", progress=False)
        pools[name] = (load_pool(out), read_pool_meta(out)["teacher_image_steps"])
    (paper, paper_work), (fast, fast_work) = pools["paper"], pools["respaced"]
    assert paper_work / fast_work > 2.0
    for lo, hi in ((1, 5), (6, 10), (11, 15), (16, T - 1)):
        a = paper.x[(paper.s >= lo) & (paper.s <= hi)].flatten(1)
        b = fast.x[(fast.s >= lo) & (fast.s <= hi)].flatten(1)
        se = (a.mean(1).var() / len(a) + b.mean(1).var() / len(b)).sqrt()
        assert abs(float(a.mean() - b.mean())) < 4 * float(se), (lo, hi, float(a.mean()), float(b.mean()))
        assert abs(float(b.std() / a.std()) - 1) < 0.025, (lo, hi, float(a.std()), float(b.std()))
