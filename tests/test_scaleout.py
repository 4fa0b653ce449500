"""Scale-out through the user's commands, on the `ci` profile, 2 CPU processes (gloo):

- `torchrun --nproc_per_node 2 -m dkdm teacher` / `... distill dynamic` are one job each: one MLflow run that
  records world_size 2 and the per-rank and global batch, one student file, both ranks' final weights identical
  (each rank states its sha256 on stderr; rank 0 tags the run with all of them), and round(rho*T)*b pool states
  on each rank, as in the official code;
- (slow) `dkdm distill dynamic` with runtime.nproc_per_node 2 launches itself; a rank killed with SIGKILL ends
  the job within seconds with one line, one process refuses the 2-process pool, and rerunning the command
  resumes to a student bit-identical to an uninterrupted 2-process run;
- (slow) `dvc repro` with runtime.nproc_per_node: 2 completes.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline_helpers import active_env, prepare_copy

BIN = Path(sys.executable).parent
# One thread per rank (2 shared cores), the loopback interface for gloo, no progress bars in captured output.
QUIET = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "DKDM_RUNTIME__PROGRESS": "false"}
HASH_LINE = re.compile(r"rank (\d+) of (\d+) weights sha256 ([0-9a-f]{64})")
STUDENT = Path("outputs/students/dynamic/student.safetensors")


def _env(repo: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**active_env(repo), **QUIET, **(extra or {})}


def _run(repo: Path, argv: list[str], extra: dict[str, str] | None = None, *, ok: bool = True,
         timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=repo, env=_env(repo, extra), capture_output=True, text=True, timeout=timeout)
    if ok:
        assert out.returncode == 0, f"{' '.join(argv)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def torchrun(repo: Path, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """What the README shows: `torchrun --nproc_per_node 2 -m dkdm ...`."""
    return _run(repo, [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "dkdm", *args], extra)


def dkdm(repo: Path, *args: str, extra: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    return _run(repo, [str(BIN / "dkdm"), *args], extra, ok=ok)


def rank_hashes(stderr: str) -> dict[int, str]:
    found = {int(m.group(1)): m.group(3) for m in HASH_LINE.finditer(stderr)}
    assert all(int(m.group(2)) == 2 for m in HASH_LINE.finditer(stderr)), stderr[-2000:]
    return found


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A fresh clone on the `ci` profile with its data, a 2-process teacher and a 2-process pool."""
    repo = tmp_path_factory.mktemp("scaleout") / "repo"
    prepare_copy(repo, "ci")
    dkdm(repo, "data")
    teacher = torchrun(repo, "teacher", extra={"DKDM_TEACHER__TRAIN__ITERATIONS": "8"})  # its size is not tested
    torchrun(repo, "prepare-pool")
    return repo, teacher


def mlflow_runs(repo: Path, run_name: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dkdm")
    return client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")


def test_two_process_teacher_is_one_ddp_job(ci_repo):
    repo, teacher = ci_repo
    hashes = rank_hashes(teacher.stderr)
    assert sorted(hashes) == [0, 1] and hashes[0] == hashes[1], teacher.stderr[-2000:]
    assert teacher.stdout.count("teacher: trained") == 1, "only rank 0 prints the summary"
    (run,) = mlflow_runs(repo, "teacher-ci-teacher")
    assert run.data.params["world_size"] == "2"
    assert run.data.params["batch_size_global"] == str(2 * int(run.data.params["batch_size_per_rank"]))


def test_torchrun_distill_is_one_job_with_one_run_and_identical_ranks(ci_repo):
    repo, _ = ci_repo
    out = torchrun(repo, "distill", "dynamic")

    hashes = rank_hashes(out.stderr)
    assert sorted(hashes) == [0, 1] and hashes[0] == hashes[1], out.stderr[-2000:]
    assert out.stdout.count("distill dynamic:") == 1, out.stdout
    assert sorted(p.name for p in (repo / STUDENT).parent.iterdir()) == [
        "mlflow_run.json", "student.json", "student.safetensors"]

    runs = mlflow_runs(repo, "dynamic-ci-student")
    assert len(runs) == 1, "one job, one MLflow run"
    params, tags = runs[0].data.params, runs[0].data.tags
    settings = yaml.safe_load((repo / "params.yaml").read_text())
    b, rho = settings["distill"]["train"]["batch_size"], settings["distill"]["rho"]
    steps = settings["diffusion"]["steps"]
    layout = (params["world_size"], params["batch_size_per_rank"], params["batch_size_global"])
    assert layout == ("2", str(b), str(2 * b))
    assert params["pool_states_per_rank"] == str(round(rho * steps) * b) == "64"  # round(0.2 * 20) * 16
    assert tags["dkdm.weights_sha256.rank0"] == tags["dkdm.weights_sha256.rank1"] == hashes[0]
    print(f"\nMLflow run {runs[0].info.run_id} {runs[0].info.run_name}: "
          + ", ".join(f"{k}={params[k]}" for k in ("world_size", "batch_size_per_rank", "batch_size_global",
                                                   "pool_states_per_rank")))
    for path in sorted((repo / "outputs").rglob("*")):
        if path.is_file() and "students" in path.parts:
            print(f"  {path.relative_to(repo)}  {path.stat().st_size} bytes")


# --------------------------------------------------------------------------- faults (slow)

ITERATIONS = 400
LONG = {"DKDM_DISTILL__TRAIN__ITERATIONS": str(ITERATIONS), "DKDM_DISTILL__TRAIN__CHECKPOINT_EVERY": "8",
        "DKDM_DISTILL__TRAIN__LOG_EVERY": "8"}
TWO = {**LONG, "DKDM_RUNTIME__NPROC_PER_NODE": "2"}


def resume_step(repo: Path) -> int:
    from training.train.state import CheckpointError, read_meta

    for path in (repo / ".dkdm" / "work").glob("student-dynamic-*/resume.safetensors"):
        try:
            return int(read_meta(path)["step"])
        except (CheckpointError, ValueError, KeyError):
            return 0  # between the write and the rename of an atomic save
    return 0


def worker_of_rank(parent: psutil.Process, rank: int) -> psutil.Process:
    for child in parent.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "dkdm" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no worker of rank {rank} under pid {parent.pid}")


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_the_rerun_resumes_bit_identically(ci_repo, tmp_path):
    repo, _ = ci_repo
    shutil.rmtree(repo / STUDENT.parent, ignore_errors=True)
    dkdm(repo, "distill", "dynamic", extra=TWO)  # uninterrupted, self-launched through torch's elastic launcher
    straight = load_file(str(repo / STUDENT))
    shutil.rmtree(repo / STUDENT.parent)

    job = subprocess.Popen([str(BIN / "dkdm"), "distill", "dynamic"], cwd=repo, env=_env(repo, TWO),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while resume_step(repo) < 16:
        assert job.poll() is None, f"ended before its checkpoint: {job.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.02)
    worker_of_rank(psutil.Process(job.pid), 1).send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = job.communicate(timeout=120)
    took = time.monotonic() - killed_at
    assert took < 30, f"the job took {took:.1f} s to stop after a rank died"
    assert job.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("dkdm: error: distributed job stopped: rank 1 of 2 was killed by SIGKILL"), last
    step = resume_step(repo)
    assert 16 <= step < ITERATIONS, "the kill must land mid-run: raise ITERATIONS"
    print(f"\nrank 1 killed after step {step}; the job stopped in {took:.1f} s: {last}")

    alone = dkdm(repo, "distill", "dynamic", extra=LONG, ok=False)  # one process cannot take a 2-process pool
    assert alone.returncode == 2
    assert "prepared by 2 process(es) but this job has 1" in alone.stderr.strip().splitlines()[-1], alone.stderr

    dkdm(repo, "distill", "dynamic", extra=TWO)  # the same command again: resumes
    resumed = load_file(str(repo / STUDENT))
    again = [r for r in mlflow_runs(repo, "dynamic-ci-student") if r.data.tags.get("dkdm.resumed") == "1"]
    assert [r.info.status for r in again] == ["FINISHED"], "the rerun continued the killed job's MLflow run"
    assert straight.keys() == resumed.keys()
    assert not [k for k in straight if not torch.equal(straight[k], resumed[k])], "the resumed student differs"


def test_a_resume_state_of_another_world_size_is_refused_naming_both(tmp_path):
    from training.train import DistContext, TrainConfig, Trainer
    from training.train.state import CheckpointError, atomic_save_tensors, load_tensors

    class Source:
        def next_batch(self):
            return torch.zeros(2, 1)

        def state_tensors(self):
            return {}

        def load_state_tensors(self, state):
            pass

        def stats(self):
            return {}

    def make() -> Trainer:
        return Trainer(torch.nn.Linear(1, 1), TrainConfig(iterations=2, batch_size=2), Source(), lambda m, b: {},
                       device="cpu", out_dir=tmp_path, ctx=DistContext())

    path = make().save_checkpoint()
    tensors, meta = load_tensors(path)
    atomic_save_tensors(path, tensors, {**meta, "world_size": 2})  # as a 2-process job would have written it
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1"):
        make().load_checkpoint(path)


# --------------------------------------------------------------------------- dvc repro (slow)


@pytest.mark.slow
def test_dvc_repro_with_two_processes_per_node_completes(tmp_path):
    repo = tmp_path / "repo"
    prepare_copy(repo, "ci")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["nproc_per_node"] = 2
    # Toy sizes and one DKDM run plus one baseline: every kind of stage launches itself, in a few minutes.
    params["teacher"]["train"]["iterations"] = 8
    params["features"]["classifier_epochs"] = 1
    params["reference"]["num_samples"] = params["evaluate"]["num_samples"] = 32
    params["distill"]["runs"] = {k: params["distill"]["runs"][k] for k in ("dynamic", "data_free")}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(repo, [str(BIN / "dvc"), "repro"], timeout=1500)
    runs = mlflow_runs(repo, "dynamic-ci-student")
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"
    assert (repo / "outputs" / "report" / "report.md").is_file()
