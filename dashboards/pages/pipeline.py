"""Pipeline: the DVC stages, whether each is up to date, and the outputs dvc.lock records."""
from __future__ import annotations

import streamlit as st

from dkdm_ui import cached
from dkdm_ui.common import sidebar

STATUSES = ("up to date", "changed", "never run")

st.title("DVC pipeline")
src = sidebar()
state = cached.pipeline(str(src.project_root))
if not state.has_dvc_yaml:
    st.info(f"No `dvc.yaml` in `{src.project_root}`. Start the dashboard from the project root (or set "
            "`DKDM_PROJECT_ROOT`) to see the pipeline.", icon=":material/inbox:")
    st.stop()

if state.error:
    st.error(f"DVC could not report the pipeline status: {state.error}")
else:
    stages = state.stages
    counts = stages["status"].value_counts()
    for col, status in zip(st.columns(len(STATUSES)), STATUSES, strict=True):
        col.metric(f"stages {status}", int(counts.get(status, 0)))
    st.subheader("Stages")
    st.dataframe(stages, hide_index=True, width="stretch",
                 column_config={"changes": st.column_config.TextColumn(width="large")})
    if state.dag:
        with st.expander("Stage graph (`dvc dag`)"):
            st.code(state.dag, language=None)

st.subheader("Outputs recorded in dvc.lock")
if state.outs.empty:
    st.info("`dvc.lock` records no outputs yet: run `dvc repro`.")
else:
    outs = state.outs.assign(size_mb=state.outs["size_bytes"] / 2**20).drop(columns="size_bytes")
    st.dataframe(outs, hide_index=True, width="stretch",
                 column_config={"size_mb": st.column_config.NumberColumn("size (MiB)", format="%.2f"),
                                "exists": st.column_config.CheckboxColumn("in workspace")})
