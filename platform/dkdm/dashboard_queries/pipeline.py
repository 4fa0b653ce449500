"""The DVC pipeline as the dashboard shows it: every stage (foreach/matrix expanded by DVC itself), whether it is
up to date (`dvc status --json`), and its outputs as recorded in dvc.lock. Pipelines that are DVC projects of their
own below the root (e.g. experiments/reproduce, a `dvc init --subdir` subrepo the root's `dvc status` skips) are
found by nested_pipelines() and shown separately.

DVC runs as a subprocess with a timeout so a slow or broken repository never hangs the dashboard.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

STAGE_COLUMNS = ["stage", "status", "changes", "cmd", "outputs"]
OUT_COLUMNS = ["stage", "path", "md5", "size_bytes", "files", "exists"]


@dataclass(frozen=True)
class PipelineState:
    """What the Pipeline page shows; `error` is one line when DVC could not answer."""

    has_dvc_yaml: bool
    stages: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=STAGE_COLUMNS))
    outs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=OUT_COLUMNS))
    dag: str = ""
    error: str | None = None


def _dvc_command() -> list[str]:
    beside = Path(sys.executable).with_name("dvc")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dvc")
    return [found] if found else [sys.executable, "-m", "dvc"]


def _run_dvc(root: Path, args: list[str], timeout: float) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        done = subprocess.run([*_dvc_command(), *args], cwd=root, capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`dvc {' '.join(args)}` did not answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        reason = " ".join(lines[:3]) or f"exit code {done.returncode}"
        raise RuntimeError(f"`dvc {' '.join(args)}` failed: {reason}")
    return done.stdout


def _describe_changes(entries: list) -> str:
    parts = []
    for entry in entries:
        if isinstance(entry, str):
            parts.append(entry)
            continue
        for kind, detail in entry.items():
            if isinstance(detail, dict):
                parts.append(f"{kind}: " + ", ".join(f"{p} ({what})" for p, what in detail.items()))
            else:
                parts.append(f"{kind}: {detail}")
    return "; ".join(parts)


def _lock_outs(lock: dict) -> pd.DataFrame:
    rows = []
    for stage, record in (lock.get("stages") or {}).items():
        for out in record.get("outs") or []:
            rows.append({"stage": stage, "path": out.get("path"), "md5": out.get("md5"),
                         "size_bytes": out.get("size"), "files": out.get("nfiles", 1)})
    return pd.DataFrame(rows, columns=OUT_COLUMNS[:-1])


# Folders never searched for nested pipelines: tool state, outputs and data can be large.
_NOT_SEARCHED = {"outputs", "datasets", "teachers", "mlruns", "mlartifacts", "node_modules", "__pycache__"}


def nested_pipelines(root: Path, max_depth: int = 3) -> list[str]:
    """Folders below `root` (relative, sorted) that hold a dvc.yaml in a DVC project of their own (a `.dvc/`)."""
    root = Path(root)
    found = []
    for folder, dirs, _files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = [] if depth >= max_depth else sorted(
            d for d in dirs if not d.startswith(".") and d not in _NOT_SEARCHED and not d.endswith(".egg-info"))
        if depth and (Path(folder) / ".dvc").is_dir() and (Path(folder) / "dvc.yaml").is_file():
            found.append(Path(folder).relative_to(root).as_posix())
    return sorted(found)


def pipeline_state(root: Path, timeout: float = 60.0) -> PipelineState:
    """Read dvc.yaml/dvc.lock under `root` and ask DVC which stages are out of date (read-only)."""
    root = Path(root)
    if not (root / "dvc.yaml").is_file():
        return PipelineState(has_dvc_yaml=False)
    lock_path = root / "dvc.lock"
    lock = (yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}) if lock_path.is_file() else {}
    outs = _lock_outs(lock)
    outs["exists"] = [(root / str(p)).exists() for p in outs["path"]]
    try:
        listing = _run_dvc(root, ["stage", "list", "--all"], timeout)
        status = json.loads(_run_dvc(root, ["status", "--json"], timeout) or "{}")
    except (RuntimeError, json.JSONDecodeError) as exc:
        return PipelineState(has_dvc_yaml=True, outs=outs, error=str(exc).splitlines()[0])
    locked = lock.get("stages") or {}
    rows = []
    for line in listing.splitlines():
        if not line.strip():
            continue
        name, _, description = line.strip().partition(" ")
        name = name.split(":")[-1]  # `dvc.yaml:name` when listed from subfolders
        if name not in locked:
            state, changes = "never run", ""
        elif name in status:
            state, changes = "changed", _describe_changes(status[name])
        else:
            state, changes = "up to date", ""
        record = locked.get(name, {})
        declared = description.strip().removeprefix("Outputs").strip()
        recorded = ", ".join(str(o.get("path")) for o in record.get("outs") or [])
        rows.append({"stage": name, "status": state, "changes": changes, "cmd": record.get("cmd", ""),
                     "outputs": recorded or declared})
    try:
        dag = _run_dvc(root, ["dag"], timeout)
    except RuntimeError:
        dag = ""  # the ASCII DAG is a convenience; the stage table is what matters
    return PipelineState(has_dvc_yaml=True, stages=pd.DataFrame(rows, columns=STAGE_COLUMNS), outs=outs, dag=dag)
