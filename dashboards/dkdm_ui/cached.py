"""Cached, read-only data for the pages. Every MLflow/Optuna/DVC query goes through here, under st.cache_data with
a short TTL so a running pipeline shows up within a minute without hammering the stores."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dkdm.dashboard_queries import pipeline as pipeline_queries
from dkdm.dashboard_queries import runs as mlf
from dkdm.dashboard_queries import studies as study_queries
from dkdm.dashboard_queries.compare import result_records
from dkdm.paper import load_paper_tables

TTL_S = 30


@st.cache_data(ttl=TTL_S, show_spinner=False)
def experiments(uri: str) -> list[str]:
    return mlf.list_experiments(uri)


@st.cache_data(ttl=TTL_S, show_spinner="Reading MLflow runs…")
def runs(uri: str, experiment: str) -> pd.DataFrame:
    return mlf.load_runs(uri, experiment)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def records(uri: str, experiment: str) -> pd.DataFrame:
    return result_records(runs(uri, experiment))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def history(uri: str, run_ids: tuple[str, ...], key: str) -> pd.DataFrame:
    """Step history of one metric for several runs: columns run_id, step, value."""
    frames = [mlf.metric_history(uri, run_id, key).assign(run_id=run_id) for run_id in run_ids]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "step", "value"])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def artifact(uri: str, run_id: str, path: str) -> bytes | None:
    return mlf.read_artifact(uri, run_id, path)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def artifact_paths(uri: str, run_id: str, folder: str = "") -> list[str]:
    return mlf.artifact_paths(uri, run_id, folder)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def run_config(uri: str, run_id: str, params: tuple[tuple[str, str], ...]) -> tuple[dict[str, str], str]:
    return mlf.run_config(uri, run_id, dict(params))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def studies(storage: str | None) -> pd.DataFrame:
    return study_queries.study_summaries(storage)


@st.cache_data(ttl=TTL_S, show_spinner="Loading the study…")
def study(storage: str | None, name: str) -> dict:
    return study_queries.study_details(storage, name)


@st.cache_data(ttl=TTL_S, show_spinner="Asking DVC for the pipeline status…")
def pipeline(root: str) -> pipeline_queries.PipelineState:
    return pipeline_queries.pipeline_state(Path(root))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def nested_pipelines(root: str) -> list[str]:
    return pipeline_queries.nested_pipelines(Path(root))


@st.cache_data(show_spinner=False)
def paper_tables() -> dict:
    return load_paper_tables()


@st.cache_data(show_spinner=False)
def preset_facts(names: tuple[str, ...]) -> dict[str, tuple[str | None, int | None]]:
    """(family, parameter count) per preset name from the model registry; (None, None) for unknown names."""
    try:
        from training.models.presets import get_preset_info
    except Exception:  # the registry imports torch; without it the pages fall back to name heuristics
        return {name: (None, None) for name in names}
    facts: dict[str, tuple[str | None, int | None]] = {}
    for name in names:
        try:
            info = get_preset_info(name)
            facts[name] = (info.family, info.num_parameters)
        except ValueError:
            facts[name] = (None, None)
    return facts
