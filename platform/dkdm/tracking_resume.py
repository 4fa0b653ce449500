"""One MLflow run per training run, however often its process dies.

A run is tagged with the host and process that own it. A resumed training finds its run id in its resume state
and reattaches to that run (status back to RUNNING; metric steps it already holds are not sent twice); a RUNNING
run whose process is gone is marked KILLED by the next command that opens a run on the same host.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
HOST_TAG, PID_TAG, STARTED_TAG = "dkdm.host", "dkdm.pid", "dkdm.pid_started"
RESUMED_TAG = "dkdm.resumed"  # how many times the run was reattached after its process died
RUN_ID_KEY = "tracker_run_id"  # the key in the trainer's run_meta (the resume state) holding the MLflow run id


def _started(pid: int) -> str:
    """The process's start time: with the pid it names a process, so a reused pid is not taken for the owner."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), STARTED_TAG: _started(pid)}


def _owner_alive(tags: dict[str, str]) -> bool:
    try:
        pid = int(tags[PID_TAG])
    except (KeyError, ValueError):
        return True  # not ours to judge (a run from before these tags, or from another tool)
    return _started(pid) == tags.get(STARTED_TAG, "")


def run_id_in_state(resume_state: Path | None) -> str | None:
    """The MLflow run id kept in a trainer's resume checkpoint (None when there is no state or no id)."""
    if resume_state is None or not Path(resume_state).is_file():
        return None
    from training.train.state import CheckpointError, read_meta

    try:
        run_id = read_meta(resume_state).get("run", {}).get(RUN_ID_KEY)
    except (CheckpointError, ValueError):
        return None  # the trainer itself reports a bad state, with its own message
    return str(run_id) if run_id else None


def reattach(client: Any, run_id: str | None, experiment_id: str) -> Any | None:
    """The run to continue (set RUNNING again, owned by this process), or None to open a new one."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # another store, or the run was deleted: a new run it is
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        return None
    if run.info.status == "FINISHED" or (run.info.status == "RUNNING" and _owner_alive(run.data.tags)):
        return None
    client.update_run(run_id, status="RUNNING")
    count = int(run.data.tags.get(RESUMED_TAG, "0")) + 1
    for key, value in {**owner_tags(), RESUMED_TAG: str(count)}.items():
        client.set_tag(run_id, key, value)
    log.info("tracking: resumed MLflow run %s (resume %d)", run_id, count)
    return run


def logged_steps(client: Any, run: Any) -> dict[str, set[int]]:
    """Per metric key, the steps the run already holds (a resumed trainer re-logs them; they are skipped)."""
    return {key: {m.step for m in client.get_metric_history(run.info.run_id, key)} for key in run.data.metrics}


def mark_dead_runs(client: Any, experiment_id: str, *, spool_dir: Path, keep: str | None = None) -> list[str]:
    """Set KILLED on RUNNING runs of this host whose process is gone; returns their ids.

    Runs with records still in the spool are left alone: replaying the spool ends them with their real status.
    """
    host = socket.gethostname()
    spooled = {p.stem for p in spool_dir.glob("*.jsonl")} if spool_dir.is_dir() else set()
    runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = "
                              f"'{host}'", max_results=1000)
    dead = [r.info.run_id for r in runs
            if r.info.run_id not in spooled and r.info.run_id != keep and not _owner_alive(r.data.tags)]
    for run_id in dead:
        client.set_terminated(run_id, status="KILLED")
        log.warning("tracking: MLflow run %s was left RUNNING by a process that died; marked KILLED", run_id)
    return dead
