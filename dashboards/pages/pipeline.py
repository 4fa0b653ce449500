"""Pipeline: the DVC stages, whether each is up to date, and the outputs dvc.lock records. The root's pipeline
first; pipelines that are DVC projects of their own below it (the reproduction) separately, each labelled."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from dkdm_ui import cached
from dkdm_ui.common import sidebar

STATUSES = ("up to date", "changed", "never run")


def show_stages(state, key: str) -> None:
    if state.error:
        st.error(f"DVC could not report the pipeline status: {state.error}")
        return
    stages = state.stages
    counts = stages["status"].value_counts()
    for col, status in zip(st.columns(len(STATUSES)), STATUSES, strict=True):
        col.metric(f"stages {status}", int(counts.get(status, 0)))
    st.dataframe(stages, hide_index=True, width="stretch", key=f"stages-{key}",
                 column_config={"changes": st.column_config.TextColumn(width="large")})
    if state.dag:
        with st.expander("Stage graph (`dvc dag`)"):
            st.code(state.dag, language=None)


def show_outs(state, key: str) -> None:
    if state.outs.empty:
        st.info("`dvc.lock` records no outputs yet: run `dvc repro`.")
        return
    outs = state.outs.assign(size_mb=state.outs["size_bytes"] / 2**20).drop(columns="size_bytes")
    st.dataframe(outs, hide_index=True, width="stretch", key=f"outs-{key}",
                 column_config={"size_mb": st.column_config.NumberColumn("size (MiB)", format="%.2f"),
                                "exists": st.column_config.CheckboxColumn("in workspace")})


st.title("DVC pipeline")
src = sidebar()
state = cached.pipeline(str(src.project_root))
if not state.has_dvc_yaml:
    st.info(f"No `dvc.yaml` in `{src.project_root}`. Start the dashboard from the project root (or set "
            "`DKDM_PROJECT_ROOT`) to see the pipeline.", icon=":material/inbox:")
    st.stop()

st.subheader("Stages of `dvc.yaml` (what `dvc repro` and `dvc status` run at the root)")
show_stages(state, "root")
st.subheader("Outputs recorded in dvc.lock")
show_outs(state, "root")

for folder in cached.nested_pipelines(str(src.project_root)):
    st.subheader(f"Other pipeline: `{folder}/dvc.yaml`")
    st.caption(f"A DVC project of its own: `dvc --cd {folder} repro` runs it and `dvc --cd {folder} status` "
               "checks it; the root's `dvc status` does not include it.")
    with st.expander(f"Stages and outputs of `{folder}`"):
        nested = cached.pipeline(str(Path(src.project_root) / folder))
        show_stages(nested, folder)
        show_outs(nested, folder)
