"""Optuna studies for the dashboard: open the storage read-only-minded, summarise studies, draw Optuna's own
plots (plotly), and find the MLflow run of a trial.

A storage that does not exist yet is reported as missing instead of opened: Optuna would create an empty
database or journal file on first open.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from dkdm.dashboard_queries.runs import local_store_path

if TYPE_CHECKING:
    from optuna import Study
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

# Where `dkdm tune` may keep its embedded storage when no URL is configured (checked in this order).
DEFAULT_STORAGE_FILES = ("optuna.db", "optuna.sqlite3", "optuna.journal", "optuna_journal.log",
                         ".dkdm/optuna.db", ".dkdm/optuna.journal")


class StorageMissingError(RuntimeError):
    """No Optuna storage configured, or the configured one does not exist yet."""


def find_default_storage(project_root: Path) -> str | None:
    """The first embedded storage file that exists beside the project, as a URL or journal path."""
    for name in DEFAULT_STORAGE_FILES:
        path = project_root / name
        if path.is_file():
            return f"sqlite:///{path.resolve()}" if path.suffix in {".db", ".sqlite3"} else str(path.resolve())
    return None


def _is_url(storage: str) -> bool:
    return "://" in storage


def storage_exists(storage: str | None) -> bool:
    if not storage:
        return False
    if not _is_url(storage):
        return Path(storage).is_file()
    path = local_store_path(storage) if storage.startswith("sqlite:") else None
    return True if path is None else path.is_file()


def open_storage(storage: str | None) -> BaseStorage:
    """A URL (sqlite/postgresql) is handed to Optuna as is; a plain path is a JournalStorage log file."""
    if not storage_exists(storage):
        raise StorageMissingError(f"no Optuna storage at {storage}" if storage else "no Optuna storage configured")
    import optuna

    if _is_url(storage):
        # skip_table_creation: never add Optuna tables to a database that is not a study store
        return optuna.storages.RDBStorage(storage, skip_table_creation=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(storage))


def study_summaries(storage: str | None) -> pd.DataFrame:
    """One row per study: name, direction, trials by state, best value and its trial number."""
    import optuna

    handle = open_storage(storage)
    rows = []
    for name in optuna.study.get_all_study_names(storage=handle):
        study = optuna.load_study(study_name=name, storage=handle)
        states = pd.Series([t.state.name for t in study.trials], dtype=object).value_counts()
        best = _best_trial(study)
        rows.append({
            "study": name,
            "direction": ",".join(d.name.lower() for d in study.directions),
            "trials": len(study.trials),
            "complete": int(states.get("COMPLETE", 0)),
            "pruned": int(states.get("PRUNED", 0)),
            "failed": int(states.get("FAIL", 0)),
            "running": int(states.get("RUNNING", 0)),
            "best value": best.value if best else math.nan,
            "best trial": best.number if best else None,
        })
    return pd.DataFrame(rows, columns=["study", "direction", "trials", "complete", "pruned", "failed", "running",
                                       "best value", "best trial"])


def _best_trial(study: Study) -> FrozenTrial | None:
    if len(study.directions) != 1:
        return None
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def study_details(storage: str | None, name: str) -> dict[str, Any]:
    """For one study: `trials` (Optuna's trials_dataframe), `best` (number, value, params, user_attrs, or None),
    `history` (plotly Figure), `importances` (plotly Figure or None) and `importance_note` (why not)."""
    import optuna
    from optuna.visualization import plot_optimization_history, plot_param_importances

    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    best = _best_trial(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    importances, note = None, ""
    if len(complete) < 2:
        note = f"parameter importances need at least 2 completed trials; this study has {len(complete)}"
    else:
        try:
            importances = plot_param_importances(study)
        except (RuntimeError, ValueError) as exc:  # e.g. every trial sampled the same value
            note = f"parameter importances unavailable: {exc}"
    return {
        "trials": study.trials_dataframe(),
        "best": None if best is None else {"number": best.number, "value": best.value, "params": dict(best.params),
                                           "user_attrs": dict(best.user_attrs)},
        "history": plot_optimization_history(study) if study.trials else None,
        "importances": importances,
        "importance_note": note,
    }


def trial_run(runs: pd.DataFrame, study: str, number: int,
              user_attrs: dict[str, Any] | None = None) -> pd.Series | None:
    """The MLflow run of one trial: the run id the trial recorded (user attr `mlflow_run_id`) if any, else the
    nested run tagged `dkdm.trial=<number>` under the parent run tagged `dkdm.study=<study>`."""
    if runs.empty:
        return None
    recorded = (user_attrs or {}).get("mlflow_run_id")
    if recorded:
        match = runs.loc[runs["run_id"] == recorded]
        if not match.empty:
            return match.iloc[0]
    parents = set(runs.loc[(runs["stage"] == "tune") & (runs["study"] == study), "run_id"])
    trials = runs.loc[(runs["trial"].astype(str) == str(number)) & runs["parent_run_id"].isin(parents)]
    if trials.empty:  # trial runs may carry the study tag themselves
        trials = runs.loc[(runs["trial"].astype(str) == str(number)) & (runs["study"] == study)]
    return None if trials.empty else trials.sort_values("start_time").iloc[-1]


def tune_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The study parent runs of MLflow (stage tune) with their number of nested trial runs."""
    if runs.empty:
        return runs
    parents = runs.loc[runs["stage"] == "tune", ["run_id", "run_name", "study", "status", "start_time"]].copy()
    counts = runs.loc[runs["parent_run_id"].notna()].groupby("parent_run_id").size()
    parents["trial runs"] = parents["run_id"].map(counts).fillna(0).astype(int)
    return parents
