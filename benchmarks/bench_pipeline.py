"""Wall time of `dvc repro` for one profile, from a fresh copy of the repository, stage by stage.

    python benchmarks/bench_pipeline.py                       # the default profile (the README's first command)
    python benchmarks/bench_pipeline.py --profile latent --timeout 7200
    python benchmarks/bench_pipeline.py --keep /tmp/run      # keep the copy (outputs/, dvc.lock, mlflow.db)

The copy is made the way the end-to-end tests make theirs (tests/pipeline_helpers.py): no outputs/, dvc.lock,
mlflow.db or DVC cache, a fresh git repository, `dkdm` and `dvc` from this interpreter's environment, the copy's
own code first on PYTHONPATH. The install is not timed. A stage's time runs from DVC's "Running stage" line to the
next one (the last ends when `dvc repro` exits), so it includes the stage's process start-up and DVC's own
bookkeeping around it. The load average before and after is printed too: wall times from a busy machine are high;
the CPU seconds (user + sys of dvc and of the stage processes it waited for, per stage and in all) change much less
with the load.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # MLflow's system metrics need it too: part of the install

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pipeline_helpers import active_env, prepare_copy  # noqa: E402

STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dvc_cpu(proc: psutil.Process) -> float:
    """CPU seconds of dvc itself and of the stage processes it has waited for (they end before the next stage)."""
    try:
        times = proc.cpu_times()
    except psutil.Error:  # dvc has exited; the caller falls back to getrusage
        return float("nan")
    return times.user + times.system + times.children_user + times.children_system


def timed_repro(repo: Path, timeout: float, log) -> tuple[list[tuple[str, float, float]], float, float, int]:
    """Run `dvc repro`, echoing its output to `log`; ([(stage, wall s, CPU s)], wall s, CPU s, exit code)."""
    env = {**active_env(repo), "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).with_name("dvc"))
    cpu = _children_cpu()
    start = time.monotonic()
    marks: list[tuple[str, float, float]] = []
    with subprocess.Popen([dvc, "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, start_new_session=True) as proc:
        assert proc.stdout is not None
        watched = psutil.Process(proc.pid)
        for line in proc.stdout:
            log.write(line)
            found = STAGE_LINE.match(line)
            if found:
                marks.append((found.group(1), time.monotonic(), _dvc_cpu(watched)))
            if time.monotonic() - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs
                break
        last_cpu = _dvc_cpu(watched)  # before wait(): afterwards the process is gone
        code = proc.wait()
    end = time.monotonic()
    total_cpu = _children_cpu() - cpu
    if last_cpu != last_cpu:  # NaN: dvc had exited already; its children were all counted by getrusage
        last_cpu = total_cpu
    ends = [(at, used) for _, at, used in marks[1:]] + [(end, last_cpu)]
    stages = [(name, t_end - at, c_end - used)
              for (name, at, used), (t_end, c_end) in zip(marks, ends[: len(marks)], strict=True)]
    return stages, end - start, total_cpu, code


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1/5/15 min, {os.cpu_count()} CPUs)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--timeout", type=float, default=3600.0, help="stop dvc repro after this many seconds")
    parser.add_argument("--keep", type=Path, default=None, help="make the copy here (must not exist) and keep it")
    parser.add_argument("--log", type=Path, default=None, help="write dvc repro's output here (default: discard)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        repo = args.keep or Path(tmp) / "repo"
        prepare_copy(repo, args.profile)
        before = load()
        with open(args.log or os.devnull, "w", encoding="utf-8") as log:
            stages, total, cpu, code = timed_repro(repo, args.timeout, log)
        after = load()
        status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status"], cwd=repo,
                                env=active_env(repo), capture_output=True, text=True, check=False).stdout.strip()

    width = max([len(name) for name, _, _ in stages] + [5])
    print(f"profile {args.profile}: dvc repro in a fresh copy; load average before {before}, after {after}")
    print(f"{'stage':<{width}}  wall s   CPU s")
    for name, seconds, used in stages:
        print(f"{name:<{width}}  {seconds:6.1f}  {used:6.1f}")
    print(f"{'total':<{width}}  {total:6.1f}  {cpu:6.1f}  ({total / 60:.1f} min wall, {len(stages)} stages, "
          f"exit code {code})")
    print("dvc status afterwards:", status.replace("\n", "\n  ") or "(nothing)")
    return code


if __name__ == "__main__":
    sys.exit(main())
