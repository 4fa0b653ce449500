"""Studies: Optuna's optimisation history and parameter importances, the best trial, and its MLflow run."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dkdm.dashboard_queries.runs import store_exists
from dkdm.dashboard_queries.studies import storage_exists, trial_run, tune_runs
from dkdm_ui import cached
from dkdm_ui.common import number_format, run_label, sidebar

st.title("Hyperparameter studies")
src = sidebar()
runs = pd.DataFrame()
if store_exists(src.tracking_uri):
    try:
        runs = cached.runs(src.tracking_uri, src.experiment)
    except Exception as exc:  # the study page still works from Optuna alone
        st.warning(f"MLflow runs unavailable ({str(exc).splitlines()[0]}); showing Optuna only.")

if not storage_exists(src.storage):
    where = f"at `{src.storage}`" if src.storage else "configured"
    st.info(f"No Optuna storage {where} yet. Start a study with `dkdm tune --study NAME --n-trials N`, then open "
            "the dashboard with `--storage URL` (or set `DKDM_TUNE__STORAGE`).", icon=":material/inbox:")
    parents = tune_runs(runs)
    if not parents.empty:
        st.subheader("Study runs in MLflow")
        st.dataframe(parents, hide_index=True, width="stretch")
    st.stop()

try:
    summaries = cached.studies(src.storage)
except Exception as exc:  # a foreign or corrupt storage must not crash the page
    st.error(f"Could not read the Optuna storage `{src.storage}`: {str(exc).splitlines()[0]}")
    st.stop()
if summaries.empty:
    st.info("The Optuna storage holds no study yet. `dkdm tune --study NAME --n-trials N` creates one.",
            icon=":material/inbox:")
    st.stop()

st.dataframe(summaries, hide_index=True, width="stretch", column_config=number_format(summaries))
name = st.selectbox("Study", list(summaries["study"]), key="study")
details = cached.study(src.storage, name)

best = details["best"]
left, right = st.columns(2)
with left:
    st.subheader("Best trial")
    if best is None:
        st.info("No completed trial yet.")
    else:
        st.metric(f"Trial {best['number']} · objective", f"{best['value']:.4g}")
        st.dataframe(pd.DataFrame({"parameter": list(best["params"]), "value": [str(v) for v in
                                                                                best["params"].values()]}),
                     hide_index=True, width="stretch")
with right:
    st.subheader("Its MLflow run")
    run = trial_run(runs, name, best["number"], best["user_attrs"]) if best else None
    if run is None:
        st.info("No MLflow run found for this trial (tag `dkdm.trial` under the study's parent run).")
    else:
        st.markdown(f"**{run_label(run)}**  \nrun id `{run['run_id']}` · status {run['status']}")
        metrics = {c.removeprefix("metrics."): run[c] for c in runs.columns
                   if c.startswith("metrics.") and pd.notna(run[c])}
        st.dataframe(pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())}), hide_index=True,
                     width="stretch")

st.subheader("Optimisation history")
if details["history"] is None:
    st.info("The study has no trials yet.")
else:
    st.plotly_chart(details["history"], width="stretch", key="history_chart")

st.subheader("Parameter importances")
if details["importances"] is None:
    st.info(details["importance_note"])
else:
    st.plotly_chart(details["importances"], width="stretch", key="importance_chart")

with st.expander("All trials"):
    trials = details["trials"]
    st.dataframe(trials, hide_index=True, width="stretch", column_config=number_format(trials))
