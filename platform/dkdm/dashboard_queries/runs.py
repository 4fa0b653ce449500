"""Read-only access to the MLflow store for the dashboard: where the data lives, runs as a DataFrame, metric
histories, artifacts and config diffs.

Nothing here writes to MLflow. A SQLite store that does not exist yet is reported as missing instead of being
opened, because opening it would create an empty database (MLflow initialises its schema on connect).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import yaml

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "dkdm"
TRACKING_URI_ENV = "DKDM_TRACKING__URI"
EXPERIMENT_ENV = "DKDM_TRACKING__EXPERIMENT"
STORAGE_ENV = "DKDM_TUNE__STORAGE"
PROJECT_ROOT_ENV = "DKDM_PROJECT_ROOT"

# Short column names for the run tags of docs/CONTRACTS.md (`tags.dkdm.<name>` -> `<name>`).
TAG_COLUMNS = ("stage", "method", "profile", "dataset", "scale", "teacher", "student", "seed", "study", "trial",
               "trial_state", "git_commit", "dvc_stage")
MAX_RUNS = 5000


class StoreMissingError(RuntimeError):
    """The tracking store named by the settings does not exist (yet)."""


@dataclass(frozen=True)
class DashboardSources:
    """Where the dashboard reads from; every field is already resolved (absolute SQLite paths)."""

    tracking_uri: str
    experiment: str
    storage: str | None
    project_root: Path


def absolute_sqlite_uri(uri: str, root: Path) -> str:
    """`sqlite:///rel.db` resolved against `root` (MLflow would resolve it against the working directory)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if path.startswith("/") or path == ":memory:":
        return uri
    return prefix + str((root / path).resolve())


def _absolute_storage(storage: str, root: Path) -> str:
    """Optuna storage: a URL (sqlite made absolute) or a journal file path resolved against `root`."""
    if "://" in storage:
        return absolute_sqlite_uri(storage, root)
    return str((root / storage).resolve())


def resolve_sources(tracking_uri: str | None = None, storage: str | None = None, experiment: str | None = None,
                    project_root: Path | None = None, env: Mapping[str, str] | None = None) -> DashboardSources:
    """Explicit arguments win, then the `DKDM_*` environment the settings read, then the embedded defaults."""
    environ = os.environ if env is None else env
    root = Path(project_root or environ.get(PROJECT_ROOT_ENV) or Path.cwd()).resolve()
    uri = tracking_uri or environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI
    store = storage or environ.get(STORAGE_ENV) or None
    return DashboardSources(
        tracking_uri=absolute_sqlite_uri(uri, root),
        experiment=experiment or environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
        storage=_absolute_storage(store, root) if store else None,
        project_root=root,
    )


def local_store_path(uri: str) -> Path | None:
    """The file or folder behind a local tracking URI (sqlite, file:, bare path); None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a bare path (or a Windows drive letter)
        return Path(uri)
    return None


def store_exists(uri: str) -> bool:
    path = local_store_path(uri)
    return True if path is None else path.exists()


def _client(uri: str):
    if not store_exists(uri):
        raise StoreMissingError(f"no MLflow store at {uri} yet")
    from mlflow import MlflowClient  # deferred: importing mlflow takes seconds

    return MlflowClient(tracking_uri=uri)


def list_experiments(uri: str) -> list[str]:
    """Names of the active experiments, sorted; [] when the store does not exist."""
    if not store_exists(uri):
        return []
    return sorted(e.name for e in _client(uri).search_experiments())


def _run_row(run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name or info.run_id[:8],
        "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms") if info.start_time else pd.NaT,
        "end_time": pd.to_datetime(info.end_time, unit="ms") if info.end_time else pd.NaT,
        "parent_run_id": data.tags.get("mlflow.parentRunId"),
    }
    for name in TAG_COLUMNS:
        row[name] = data.tags.get(f"dkdm.{name}") or None  # an empty tag means "not applicable"
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    return row


def load_runs(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> pd.DataFrame:
    """Every run of one experiment, newest first: id/name/status/times, short tag columns (stage, method, ...),
    then `tags.*`, `params.*` and `metrics.*` (the last logged value). Empty frame when there is nothing."""
    columns = ["run_id", "run_name", "status", "start_time", "end_time", "parent_run_id", *TAG_COLUMNS]
    if not store_exists(uri):
        return pd.DataFrame(columns=columns)
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame(columns=columns)
    rows: list[dict[str, Any]] = []
    token = None
    while len(rows) < MAX_RUNS:
        page = client.search_runs([found.experiment_id], max_results=min(1000, MAX_RUNS - len(rows)),
                                  order_by=["attributes.start_time DESC"], page_token=token)
        rows.extend(_run_row(r) for r in page)
        token = page.token
        if not token:
            break
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=columns)
    if not frame.empty:
        frame["duration_s"] = (frame["end_time"] - frame["start_time"]).dt.total_seconds()
    return frame


def metric_keys(runs: pd.DataFrame, prefix: str = "") -> list[str]:
    """Metric names (without `metrics.`) present in `runs`, optionally only those starting with `prefix`."""
    names = [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.")]
    return sorted(n for n in names if n.startswith(prefix) and runs[f"metrics.{n}"].notna().any())


def metric_history(uri: str, run_id: str, key: str) -> pd.DataFrame:
    """All logged values of one metric of one run, by step: columns step, value, timestamp."""
    history = _client(uri).get_metric_history(run_id, key)
    frame = pd.DataFrame({
        "step": [m.step for m in history],
        "value": [m.value for m in history],
        "timestamp": pd.to_datetime([m.timestamp for m in history], unit="ms"),
    })
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def artifact_paths(uri: str, run_id: str, path: str = "", max_depth: int = 3) -> list[str]:
    """Artifact file paths of a run (recursively, a few levels deep)."""
    client = _client(uri)
    found: list[str] = []
    pending = [(path or None, 0)]
    while pending:
        folder, depth = pending.pop()
        for info in client.list_artifacts(run_id, folder):
            if info.is_dir:
                if depth < max_depth:
                    pending.append((info.path, depth + 1))
            else:
                found.append(info.path)
    return sorted(found)


def read_artifact(uri: str, run_id: str, path: str) -> bytes | None:
    """The bytes of one artifact file, or None when the run has no such artifact."""
    folder = str(Path(path).parent) if "/" in path else None
    if path not in {info.path for info in _client(uri).list_artifacts(run_id, folder)}:
        return None
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="dkdm-dash-") as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                    tracking_uri=uri)
        return Path(local).read_bytes()


def flatten_config(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> `{"a.b.c": "value"}` with values as compact strings (lists stay one value)."""
    if isinstance(value, Mapping):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten_config(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return {prefix or "value": text}


def run_config(uri: str, run_id: str, params: Mapping[str, Any] | None = None) -> tuple[dict[str, str], str]:
    """A run's configuration flattened, and where it came from: `config/resolved.yaml` if logged, else params."""
    raw = read_artifact(uri, run_id, "config/resolved.yaml")
    if raw is not None:
        return flatten_config(yaml.safe_load(raw) or {}), "config/resolved.yaml"
    return {str(k): str(v) for k, v in (params or {}).items()}, "params"


def config_diff(left: Mapping[str, str], right: Mapping[str, str], only_changed: bool = True) -> pd.DataFrame:
    """Key-by-key comparison: columns key, left, right, change (`changed`, `only left`, `only right`, `same`)."""
    rows = []
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        if a is None:
            change = "only right"
        elif b is None:
            change = "only left"
        else:
            change = "same" if a == b else "changed"
        if change != "same" or not only_changed:
            rows.append({"key": key, "left": a, "right": b, "change": change})
    return pd.DataFrame(rows, columns=["key", "left", "right", "change"])


def run_params(runs: pd.DataFrame, run_id: str) -> dict[str, str]:
    """The `params.*` of one run of a `load_runs` frame, without the prefix and without missing values."""
    row = runs.loc[runs["run_id"] == run_id]
    if row.empty:
        return {}
    series = row.iloc[0]
    return {c[len("params."):]: str(series[c]) for c in runs.columns
            if c.startswith("params.") and pd.notna(series[c])}


def latest_run(runs: pd.DataFrame, **tags: str) -> pd.Series | None:
    """The newest run whose short tag columns equal the given values (e.g. `stage="reproduce"`)."""
    if runs.empty:
        return None
    mask = pd.Series(True, index=runs.index)
    for name, value in tags.items():
        mask &= runs[name] == value
    chosen = runs.loc[mask].sort_values("start_time", ascending=False)
    return None if chosen.empty else chosen.iloc[0]
