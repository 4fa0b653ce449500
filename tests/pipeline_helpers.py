"""Run a profile through `dvc repro` in a temporary copy of the repository (shared by the end-to-end tests)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "outputs", "mlflow.db", "mlruns", "mlartifacts", ".dkdm", ".pytest_cache", "dvc.lock",
        "__pycache__", "build", "dist", "optuna", "experiments"}


def copy_tree(dst: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in SKIP or n.endswith(".egg-info")}
        if Path(folder).name == ".dvc":
            skipped |= {"cache", "tmp", "remote"}
        return skipped

    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)


def active_env(cwd: Path) -> dict[str, str]:
    """The environment of a user who activated this interpreter's venv: stages call `dkdm` from PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKDM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{cwd}{os.pathsep}{cwd / 'platform'}"  # the copy's own code, not the checkout's
    return env


def run(cmd: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=active_env(cwd), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def prepare_copy(repo: Path, profile: str, prepare: Callable[[Path], None] | None = None) -> None:
    """Copy the repo to `repo` as a fresh clone would be (its own git, no outputs), with `profile` active.
    `prepare(repo)` adds what a user would bring (their data, their profile) before the commit."""
    copy_tree(repo)
    if prepare is not None:
        prepare(repo)
    git = ["git", "-c", "user.email=ci@dkdm", "-c", "user.name=ci"]
    run(["git", "init", "-q"], repo, 60)
    run(git + ["add", "-A"], repo, 60)
    run(git + ["commit", "-qm", f"e2e {profile}"], repo, 60)
    run([sys.executable, "-m", "dkdm", "profile", "use", profile], repo, 120)


def repro_profile(repo: Path, profile: str, timeout: int = 840, prepare: Callable[[Path], None] | None = None,
                  ) -> tuple[Path, str, subprocess.CompletedProcess]:
    """prepare_copy(repo, profile, prepare), then `dvc repro` there; (repo, dvc, result)."""
    prepare_copy(repo, profile, prepare)
    dvc = str(Path(sys.executable).parent / "dvc")
    return repo, dvc, run([dvc, "repro"], repo, timeout)
