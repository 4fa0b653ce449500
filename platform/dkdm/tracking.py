"""MLflow tracking of every stage that trains, distils or evaluates (names per docs/CONTRACTS.md).

`start_run(...)` opens one MLflow run and yields a `RunTracker`, the MLflow-backed implementation of
`training.train.tracker.Tracker`. Every record goes through a `DeliveryQueue`: the training thread only
appends, a worker thread talks to MLflow, an outage is survived by buffering, and whatever is still
undelivered at the end is spooled to disk and replayed by the next command. A server that cannot be reached
when a command starts is one clear error before any work.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dkdm import tracking_resume
from dkdm.errors import DkdmError
from dkdm.lineage import dvc_stage, git_commit
from dkdm.settings import Settings, TrackingSettings
from dkdm.tracking_queue import DeliveryQueue, Record, read_spool, write_spool
from dkdm.tracking_system import start_sampler

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_reachable(tracking: TrackingSettings) -> None:
    """Fail fast, before any work, if the tracking store cannot be used."""
    uri = tracking.uri
    if is_remote(uri):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=tracking.connect_timeout_s) as response:  # noqa: S310
                if response.status >= 400:
                    raise DkdmError(f"tracking.uri: server {uri} answered HTTP {response.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DkdmError(
                f"tracking.uri: MLflow server {uri} is unreachable ({reason}); start it, or set "
                "DKDM_TRACKING__URI=sqlite:///mlflow.db, or DKDM_TRACKING__ENABLED=false"
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise DkdmError(f"tracking.uri: folder {parent} of the SQLite store is missing or not writable")


def _quiet_mlflow() -> None:
    # Alembic's table-creation chatter on a fresh mlflow.db is not the user's business.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _client(tracking: TrackingSettings):
    from mlflow import MlflowClient

    if is_remote(tracking.uri):
        # The queue retries on its own; MLflow's built-in retries would only stall it for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(5, int(tracking.connect_timeout_s))))
    _quiet_mlflow()
    if not tracking.uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
    # Processes creating a fresh SQLite store at once race in MLflow's schema migration ("table ... already
    # exists", "duplicate column name"): the client creates the store, so it is made under a lock file.
    from filelock import FileLock

    with FileLock(f"{tracking.uri.removeprefix('sqlite:///')}.lock", timeout=300):
        client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
        client.search_registered_models(max_results=1)  # the registry store is created lazily, on first use
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by a concurrent command
        return client.get_experiment_by_name(name).experiment_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params `section.key = value`."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = str(value)
            out[name] = text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."
    return out


def _deliver_to(client: MlflowClient, run_id: str, artifact_uri: str):
    from mlflow.entities import Metric, Param, RunTag

    def deliver(record: Record) -> None:
        kind, payload = record.kind, record.payload
        if kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in payload])
        elif kind == "params":
            items = list(payload.items())
            for start in range(0, len(items), 100):
                client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in payload.items()])
        elif kind == "artifact":
            local, artifact_path = payload
            if Path(local).is_dir():
                client.log_artifacts(run_id, local, artifact_path)
            else:
                client.log_artifact(run_id, local, artifact_path)
        elif kind == "register":
            _register(client, run_id, artifact_uri, **payload)
        elif kind == "terminate":
            client.set_terminated(run_id, status=payload)
        else:
            raise ValueError(f"unknown tracking record kind {kind!r}")

    return deliver


def _register(client: MlflowClient, run_id: str, artifact_uri: str, *, name: str, artifact_path: str,
              tags: dict[str, str], description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="dkdm students (safetensors + JSON sidecar)")
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(err, "error_code", "")) and "already exists" not in str(err):
            raise
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not existing:
        client.create_model_version(name, f"{artifact_uri.rstrip('/')}/{artifact_path}", run_id=run_id,
                                    tags=tags, description=description)


class RunTracker:
    """One MLflow run; implements the trainer's Tracker protocol without blocking the caller."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str, tracking: TrackingSettings,
                 logged: Mapping[str, set[int]] | None = None) -> None:
        self.client = client
        # Steps a reattached run already holds per metric: a resumed trainer logs them again, bit-identical.
        self._logged = {k: set(v) for k, v in (logged or {}).items()}
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self._tracking = tracking
        self._queue = DeliveryQueue(_deliver_to(client, run_id, artifact_uri),
                                    retry_interval_s=tracking.retry_interval_s,
                                    batch_interval_s=tracking.batch_interval_s)
        self._tmp = tempfile.TemporaryDirectory(prefix="dkdm-artifacts-")

    # -- the Tracker protocol
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue.put(Record("params", flatten(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = [(k, float(v), now, int(step)) for k, v in metrics.items() if int(step) not in self._logged.get(k, ())]
        if fresh:
            self._queue.put(Record("metrics", fresh))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._queue.put(Record("artifact", (str(path), artifact_path)))

    # -- beyond the protocol
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._queue.put(Record("tags", {k: str(v) for k, v in tags.items() if v is not None}))

    def log_yaml(self, data: Any, artifact_file: str) -> None:
        """Write `data` as YAML to a private temp file and log it as `artifact_file` (e.g. config/resolved.yaml)."""
        local = Path(self._tmp.name) / artifact_file
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(yaml.safe_dump(data, sort_keys=False))
        self.log_artifact(local, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def register_model(self, name: str, files: list[Path], *, artifact_path: str = "student",
                       tags: Mapping[str, Any] | None = None, description: str = "") -> None:
        """Log `files` (safetensors + JSON sidecar) under `artifact_path` and register them as a version of `name`.

        The files are copied now, so the upload (which may happen later) sends exactly this state.
        """
        import shutil

        staged = Path(self._tmp.name) / "register" / artifact_path
        staged.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file, staged / Path(file).name)
        self.log_artifact(staged, artifact_path)
        self._queue.put(Record("register", {"name": name, "artifact_path": artifact_path,
                                            "tags": {k: str(v) for k, v in (tags or {}).items()},
                                            "description": description}))

    @property
    def pending(self) -> int:
        return self._queue.pending()

    @property
    def outages(self) -> int:
        return self._queue.outages

    def close(self, status: str = "FINISHED") -> Path | None:
        """Deliver the rest (waiting up to flush_timeout_s for a lost server); spool what is left."""
        self._queue.put(Record("terminate", status))
        left = self._queue.close(self._tracking.flush_timeout_s)
        spool = None
        if left:
            spool = write_spool(self._tracking.spool_dir, self.run_id, self._tracking.uri, left)
            log.warning("tracking: %d records could not be delivered; kept in %s and sent by the next dkdm "
                        "command once %s is reachable", len(left), spool, self._tracking.uri)
        self._tmp.cleanup()
        return spool


class NullRunTracker:
    """Tracking switched off (tracking.enabled: false): same interface, nothing recorded."""

    run_id = ""
    artifact_uri = ""
    pending = 0
    outages = 0

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_yaml(self, data: Any, artifact_file: str) -> None: ...
    def register_model(self, name: str, files: list[Path], **kwargs: Any) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


def run_tags(settings: Settings, *, stage: str, method: str | None, student: str | None,
             extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags of docs/CONTRACTS.md for one run."""
    commit, dirty = git_commit()
    tags = {
        "dkdm.stage": stage,
        "dkdm.profile": settings.profile,
        "dkdm.dataset": settings.data.dataset,
        "dkdm.scale": settings.scale,
        "dkdm.method": method or "",
        "dkdm.teacher": settings.teacher.preset,
        "dkdm.student": student or "",
        "dkdm.seed": str(settings.seed),
        "dkdm.git_commit": commit,
        "dkdm.git_dirty": str(dirty).lower(),
        "dkdm.dvc_stage": dvc_stage(),
    }
    tags.update({k: str(v) for k, v in (extra or {}).items() if v is not None})
    return {k: v for k, v in tags.items() if v != ""}


def replay_spool(tracking: TrackingSettings) -> int:
    """Send records spooled by earlier runs to this tracking store; returns how many files were delivered."""
    if not tracking.spool_dir.is_dir():
        return 0
    files = sorted(tracking.spool_dir.glob("*.jsonl"))
    if not files:
        return 0
    client = _client(tracking)
    sent = 0
    for path in files:
        uri, run_id, records = read_spool(path)
        if uri != tracking.uri:
            continue
        artifact_uri = client.get_run(run_id).info.artifact_uri
        deliver = _deliver_to(client, run_id, artifact_uri)
        try:
            for record in records:
                deliver(record)
        except Exception as err:  # noqa: BLE001 - still unreachable: keep the file for next time
            log.warning("tracking: spool %s not yet delivered (%s)", path, str(err).splitlines()[0][:200])
            continue
        path.unlink()
        files_dir = path.with_suffix(".files")
        if files_dir.is_dir():
            import shutil

            shutil.rmtree(files_dir)
        sent += 1
    return sent


@contextlib.contextmanager
def start_run(settings: Settings, *, stage: str, run_name: str, method: str | None = None,
              student: str | None = None, tags: Mapping[str, Any] | None = None,
              log_config: bool = True, resume_state: Path | None = None) -> Iterator[RunTracker | NullRunTracker]:
    """Open an MLflow run tagged per CONTRACTS.md, with all resolved settings as params and
    config/resolved.yaml as an artifact; FAILED if the body raises, FINISHED otherwise.

    `resume_state`: the trainer's resume checkpoint; when it names a run whose process died, that run is
    continued instead of opening a new one. RUNNING runs of dead processes on this host are marked KILLED.
    """
    tracking = settings.tracking
    if not tracking.enabled:
        yield NullRunTracker()
        return
    check_reachable(tracking)
    client = _client(tracking)
    try:
        replay_spool(tracking)
    except Exception as err:  # noqa: BLE001 - an old spool must never block new work
        log.warning("tracking: could not replay spooled records (%s)", err)
    exp = experiment_id(client, tracking.experiment)
    previous = tracking_resume.reattach(client, tracking_resume.run_id_in_state(resume_state), exp)
    _mark_dead_runs(client, exp, tracking, keep=previous.info.run_id if previous else None)
    if previous is None:
        run = client.create_run(exp, run_name=run_name, tags={
            **run_tags(settings, stage=stage, method=method, student=student, extra=tags),
            **tracking_resume.owner_tags()})
        logged: dict[str, set[int]] = {}
    else:
        run, logged = previous, tracking_resume.logged_steps(client, previous)
    tracker = RunTracker(client, run.info.run_id, run.info.artifact_uri, tracking, logged)
    sampler = start_sampler(tracker, tracking.system_metrics_interval_s, logged) if tracking.system_metrics else None
    if log_config:
        if previous is None:  # MLflow params are immutable: a reattached run keeps those it was opened with
            tracker.log_params(settings.for_log())
        tracker.log_yaml(settings.for_log(), "config/resolved.yaml")
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        if sampler is not None:
            sampler.stop()
        tracker.close(status)


def _mark_dead_runs(client: MlflowClient, exp: str, tracking: TrackingSettings, *, keep: str | None) -> None:
    try:
        tracking_resume.mark_dead_runs(client, exp, spool_dir=tracking.spool_dir, keep=keep)
    except Exception as err:  # noqa: BLE001 - housekeeping of old runs must never block new work
        log.warning("tracking: could not check for runs left RUNNING (%s)", err)


def student_model_name(profile: str, method: str) -> str:
    return f"dkdm-student-{profile}-{method}"
