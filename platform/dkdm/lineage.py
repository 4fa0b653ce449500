"""Where a result came from: the git commit, the DVC stage running it, and the dvc.lock hashes of its inputs."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

LOCK_FILE = Path("dvc.lock")


def git_commit(cwd: Path | None = None) -> tuple[str, bool]:
    """(HEAD commit, whether the work tree has uncommitted changes); ("unknown", False) outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        # Images carry no .git; their build records the commit (docker/Dockerfile: --build-arg GIT_COMMIT).
        return os.environ.get("DKDM_GIT_COMMIT") or "unknown", False
    return sha, dirty


def dvc_stage() -> str:
    """The stage DVC is running (DVC sets DVC_STAGE for every stage command); '' when run by hand."""
    return os.environ.get("DVC_STAGE", "")


def locked_md5(stage: str, out_prefix: str, lock_file: Path = LOCK_FILE) -> str:
    """The md5 dvc.lock records for the out of `stage` whose path starts with `out_prefix` ('' if unknown)."""
    if not lock_file.is_file():
        return ""
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
    except yaml.YAMLError:
        return ""
    entry = (lock.get("stages") or {}).get(stage) or {}
    for out in entry.get("outs") or []:
        if str(out.get("path", "")).startswith(out_prefix):
            return str(out.get("md5", ""))
    return ""
