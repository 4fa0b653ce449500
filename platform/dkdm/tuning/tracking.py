"""A study in MLflow: one parent run (stage `tune`, tag `dkdm.study`), one nested run per trial.

Trial runs carry `mlflow.parentRunId`, `dkdm.trial` (the number) and `dkdm.trial_state`, the suggested
parameters, the trainer's step metrics, the intermediate FD' as `eval/<metric>` over steps and the final FD'
as `<metric>`. Optuna's own MLflowCallback logs a trial only once it has finished and outside any parent, so
the runs are written here with the platform's tracker (asynchronous, survives a tracking-server outage).
The best trial's student is registered as `dkdm-student-<profile>-tuned` (safetensors + JSON, no pickle).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkdm.tuning.storage import wait_for

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from optuna import Study
    from optuna.trial import FrozenTrial

    from dkdm.settings import Settings
    from dkdm.tracking import RunTracker
    from training.train.tracker import Tracker

log = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"
# Terminal MLflow status per Optuna state.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
PARENT_WAIT_S = 20.0


def registered_name(profile: str) -> str:
    from dkdm.tracking import student_model_name

    return student_model_name(profile, "tuned")


class NullStudyTracking:
    """Tracking switched off: the same calls, nothing recorded."""

    parent_run_id = ""

    def start_trial(self, number: int, params: dict[str, Any], method: str) -> Tracker:
        from training.train.tracker import NullTracker

        return NullTracker()

    def end_trial(self, tracker: Tracker, state: str, *, value: float | None = None, reason: str = "") -> None: ...
    def reconcile(self, study: Study) -> None: ...
    def finish(self, study: Study, metric: str) -> None: ...
    def register_best(self, study: Study, out_dir: Path) -> str | None:
        return None


class StudyTracking:
    def __init__(self, settings: Settings, study_name: str, *, client: MlflowClient, experiment_id: str,
                 parent_run_id: str,
                 student: str) -> None:
        self.settings = settings
        self.study_name = study_name
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.student = student

    # ------------------------------------------------------------------ parent

    @classmethod
    def open(cls, settings: Settings, study_name: str, *, created: bool, student: str, method: str,
             params: dict[str, Any]) -> StudyTracking | NullStudyTracking:
        """Find the study's parent run or create it. The worker that created the Optuna study creates it; the
        others wait briefly for it, so parallel workers share one parent."""
        from mlflow import MlflowClient

        from dkdm.tracking import check_reachable, experiment_id, run_tags

        tracking = settings.tracking
        if not tracking.enabled:
            return NullStudyTracking()
        check_reachable(tracking)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        with _store_creation_lock(tracking.uri):
            client = MlflowClient(tracking_uri=tracking.uri, registry_uri=tracking.uri)
            exp = experiment_id(client, tracking.experiment)

        def find() -> str | None:
            runs = client.search_runs(
                [exp], filter_string=f"tags.`dkdm.study` = '{study_name}' and tags.`dkdm.stage` = 'tune'",
                order_by=["attributes.start_time ASC"], max_results=1,
            )
            return runs[0].info.run_id if runs else None

        parent = find() if created else wait_for(find, PARENT_WAIT_S)
        if parent is None:
            tags = run_tags(settings, stage="tune", method=method, student=student, extra={"dkdm.study": study_name})
            run = client.create_run(exp, run_name=f"tune-{study_name}", tags=tags)
            parent = run.info.run_id
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for start in range(0, len(items), 100):
                client.log_batch(parent, params=items[start : start + 100])
        else:
            client.update_run(parent, status="RUNNING")
        return cls(settings, study_name, client=client, experiment_id=exp, parent_run_id=parent, student=student)

    # ------------------------------------------------------------------ trials

    def start_trial(self, number: int, params: dict[str, Any], method: str) -> RunTracker:
        from dkdm.tracking import RunTracker, run_tags

        tags = run_tags(self.settings, stage="trial", method=method, student=self.student, extra={
            "mlflow.parentRunId": self.parent_run_id, "dkdm.study": self.study_name, "dkdm.trial": number,
            "dkdm.trial_state": "RUNNING",
        })
        run = self.client.create_run(self.experiment_id, run_name=f"{self.study_name}-trial-{number}", tags=tags)
        tracker = RunTracker(self.client, run.info.run_id, run.info.artifact_uri, self.settings.tracking)
        tracker.log_params(params)
        return tracker

    def end_trial(self, tracker: Tracker, state: str, *, value: float | None = None, reason: str = "") -> None:
        tags: dict[str, Any] = {"dkdm.trial_state": state}
        if reason:
            tags["dkdm.fail_reason"] = reason[:5000]
        tracker.set_tags(tags)
        tracker.close(RUN_STATUS[state])

    def reconcile(self, study: Study) -> None:
        """Close the runs of trials another worker can no longer close (it died; the storage failed its trial)."""
        for trial in study.get_trials(deepcopy=False):
            run_id = trial.user_attrs.get(RUN_ID_ATTR)
            if not run_id or not trial.state.is_finished():
                continue
            try:
                run = self.client.get_run(run_id)
            except Exception:  # noqa: BLE001 - a run of another tracking store: not ours to fix
                continue
            if run.info.status == "RUNNING":
                self.client.set_tag(run_id, "dkdm.trial_state", trial.state.name)
                reason = trial.user_attrs.get("fail_reason") or "its worker stopped reporting (no heartbeat)"
                if trial.state.name == "FAIL":
                    self.client.set_tag(run_id, "dkdm.fail_reason", str(reason)[:5000])
                self.client.set_terminated(run_id, RUN_STATUS.get(trial.state.name, "FAILED"))

    # ------------------------------------------------------------------ study end

    def finish(self, study: Study, metric: str) -> None:
        from mlflow.entities import Metric

        counts = {state: 0 for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        metrics = {f"trials_{k.lower()}": float(v) for k, v in counts.items()}
        best = best_trial(study)
        if best is not None:
            metrics[f"best_{metric}"] = float(best.value)
            self.client.set_tag(self.parent_run_id, "dkdm.best_trial", str(best.number))
            for key, value in best.params.items():
                self.client.set_tag(self.parent_run_id, f"dkdm.best.{key}", str(value))
        now = _now_ms()
        self.client.log_batch(self.parent_run_id,
                              metrics=[Metric(k, v, now, len(study.trials)) for k, v in metrics.items()])
        self.client.set_terminated(self.parent_run_id, "RUNNING" if counts["RUNNING"] else "FINISHED")

    def register_best(self, study: Study, out_dir: Path) -> str | None:
        """Register the best trial's student unless that trial is registered already; returns the version."""
        from dkdm.tracking import RunTracker

        best = best_trial(study)
        if best is None or not best.user_attrs.get(RUN_ID_ATTR):
            return None
        folder = trial_dir(out_dir, self.study_name, best.number)
        if not (folder / "student.safetensors").is_file():
            log.warning("tune: best trial %d's student is not in %s (another host ran it?); not registered",
                        best.number, folder)
            return None
        name = registered_name(self.settings.profile)
        for version in self._versions(name):
            if version.tags.get("dkdm.study") == self.study_name and version.tags.get("dkdm.trial") == str(best.number):
                return str(version.version)
        run_id = best.user_attrs[RUN_ID_ATTR]
        run = self.client.get_run(run_id)
        tracker = RunTracker(self.client, run_id, run.info.artifact_uri, self.settings.tracking)
        tags = {"dkdm.study": self.study_name, "dkdm.trial": best.number, "dkdm.profile": self.settings.profile,
                "dkdm.student": self.student, "value": best.value,
                **{f"param.{k}": v for k, v in best.params.items()}}
        files = [folder / "student.safetensors", folder / "student.json"]
        tracker.register_model(name, files, artifact_path="student", tags=tags,
                               description=f"best trial {best.number} of study {self.study_name}")
        tracker.close(run.info.status)
        versions = [v for v in self._versions(name) if v.run_id == run_id]
        return str(versions[-1].version) if versions else None

    def _versions(self, name: str) -> list[ModelVersion]:
        try:
            return list(self.client.search_model_versions(f"name='{name}'"))
        except Exception:  # noqa: BLE001 - no such registered model yet
            return []


@contextmanager
def _store_creation_lock(uri: str) -> Iterator[None]:
    """Parallel workers opening a not-yet-existing SQLite store would both run MLflow's schema migrations,
    and one fails; a file lock beside the database lets the first create it and the others find it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import hashlib
    import tempfile

    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///")).resolve()
    key = hashlib.sha1(str(db).encode()).hexdigest()[:16]
    # In the temp folder, so the project tree gets no lock file.
    with FileLock(str(Path(tempfile.gettempdir()) / f"dkdm-mlflow-{key}.lock"), timeout=300):
        yield


def best_trial(study: Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def trial_dir(out_dir: Path, study: str, number: int) -> Path:
    return Path(out_dir) / study / f"trial-{number}"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
