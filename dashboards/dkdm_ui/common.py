"""What every page shares: where the data comes from (sidebar), empty states, run labels and formatting."""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import streamlit as st

from dkdm.dashboard_queries.runs import DashboardSources, resolve_sources, store_exists
from dkdm.dashboard_queries.studies import find_default_storage

from . import cached

SOURCES_KEY = "dkdm_sources"


def _script_args() -> argparse.Namespace:
    """`streamlit run dashboards/app.py -- --tracking-uri URI --storage URL --experiment NAME --project-root DIR`."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--tracking-uri", "--storage", "--experiment", "--project-root"):
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known


def sources() -> DashboardSources:
    """The sources chosen in the sidebar this run (resolved from script args and DKDM_* env when absent)."""
    if SOURCES_KEY in st.session_state:
        return st.session_state[SOURCES_KEY]
    args = _script_args()
    resolved = resolve_sources(args.tracking_uri, args.storage, args.experiment, args.project_root)
    if resolved.storage is None:
        default = find_default_storage(resolved.project_root)
        resolved = DashboardSources(resolved.tracking_uri, resolved.experiment, default, resolved.project_root)
    return resolved


def sidebar() -> DashboardSources:
    """Show the sources, let the user pick the experiment, offer a refresh; remembers the choice for the pages."""
    st.session_state.pop(SOURCES_KEY, None)
    base = sources()
    with st.sidebar:
        st.caption("MLflow tracking store")
        st.code(base.tracking_uri, language=None)
        experiment = base.experiment
        names = cached.experiments(base.tracking_uri) if store_exists(base.tracking_uri) else []
        if names:
            options = names if experiment in names else [experiment, *names]
            experiment = st.selectbox("Experiment", options, index=options.index(experiment), key="experiment")
        st.caption("Optuna storage")
        st.code(base.storage or "not configured (DKDM_TUNE__STORAGE)", language=None)
        st.caption("Project (dvc.yaml)")
        st.code(str(base.project_root), language=None)
        if st.button("Refresh data", key="refresh",
                     help="clear the cached queries (they refresh by themselves every 30 s)"):
            st.cache_data.clear()
    chosen = DashboardSources(base.tracking_uri, experiment, base.storage, base.project_root)
    st.session_state[SOURCES_KEY] = chosen
    return chosen


def runs_or_stop(src: DashboardSources) -> pd.DataFrame:
    """The experiment's runs; renders the empty state and stops the page when there are none."""
    if not store_exists(src.tracking_uri):
        st.info(f"No MLflow store at `{src.tracking_uri}` yet. Run the pipeline (`dvc repro`) or point the "
                "dashboard at a store with `DKDM_TRACKING__URI` / `dkdm dashboard --profile NAME`.",
                icon=":material/inbox:")
        st.stop()
    try:
        frame = cached.runs(src.tracking_uri, src.experiment)
    except Exception as exc:  # an unreachable server or a foreign database: say so instead of a traceback
        st.error(f"Could not read MLflow runs from `{src.tracking_uri}`: {str(exc).splitlines()[0]}")
        st.stop()
    if frame.empty:
        st.info(f"No runs in experiment `{src.experiment}` yet. `dvc repro` logs one MLflow run per stage.",
                icon=":material/inbox:")
        st.stop()
    return frame


def run_label(row: pd.Series) -> str:
    """`name · stage/method · seed N` — readable and unique enough for pickers (the id prefix disambiguates)."""
    parts = [str(row.get("run_name") or row["run_id"][:8])]
    kind = "/".join(str(row[c]) for c in ("stage", "method") if pd.notna(row.get(c)))
    if kind:
        parts.append(kind)
    if pd.notna(row.get("seed")):
        parts.append(f"seed {row['seed']}")
    parts.append(row["run_id"][:6])
    return " · ".join(parts)


def labels(frame: pd.DataFrame) -> dict[str, str]:
    """run_id -> label, in the frame's order."""
    return {row["run_id"]: run_label(row) for _, row in frame.iterrows()}


def scale_note(scale: str, profile: str, dataset: str) -> str:
    return f"profile `{profile}` · dataset `{dataset}` · scale `{scale}`"


def number_format(frame: pd.DataFrame, digits: int = 3) -> dict:
    """st.dataframe column_config that shows floats with a few significant figures."""
    return {c: st.column_config.NumberColumn(format=f"%.{digits}g") for c in frame.columns
            if pd.api.types.is_float_dtype(frame[c])}


def runs_or_empty(src: DashboardSources) -> tuple[pd.DataFrame, str | None]:
    """The experiment's runs, or an empty frame and why (for pages that still have something to show)."""
    if not store_exists(src.tracking_uri):
        return pd.DataFrame(), f"No MLflow store at `{src.tracking_uri}` yet: run the pipeline (`dvc repro`)."
    try:
        frame = cached.runs(src.tracking_uri, src.experiment)
    except Exception as exc:  # an unreachable server or a foreign database
        return pd.DataFrame(), f"Could not read MLflow runs from `{src.tracking_uri}`: {str(exc).splitlines()[0]}"
    if frame.empty:
        return frame, f"No runs in experiment `{src.experiment}` yet."
    return frame, None
