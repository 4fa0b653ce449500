"""Paper vs ours: each of the paper's result tables beside our matching runs, and the reproduction report."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dkdm.dashboard_queries.compare import result_records
from dkdm.dashboard_queries.runs import latest_run
from dkdm_ui import cached, paper_results, paper_studies
from dkdm_ui.common import run_label, runs_or_empty, sidebar
from dkdm_ui.markdown_view import embedded_markdown

st.title("Paper vs ours")
meta = cached.paper_tables()["meta"]
st.caption(f"{meta['paper']} ({meta['venue']}, arXiv {meta['arxiv']}). Paper-scale runs (`dkdm.scale=paper`) "
           "stand beside the paper's numbers; CPU-scale digits runs are compared only by ratios and orderings.")
src = sidebar()
runs, why_empty = runs_or_empty(src)
records = cached.records(src.tracking_uri, src.experiment) if why_empty is None else result_records(runs)

if why_empty:
    st.info(f"{why_empty} The paper's tables are shown alone.", icon=":material/inbox:")
elif records.empty:
    st.info("No evaluated models in this experiment yet: the paper's tables are shown alone.", icon=":material/inbox:")
else:
    st.markdown("**Our results in this comparison** (one row per profile, dataset and scale)")
    counts = records.groupby(["scale", "profile", "dataset"], dropna=False).agg(
        models=("method", "size"), methods=("method", lambda m: ", ".join(sorted(set(map(str, m)))))).reset_index()
    st.dataframe(counts, hide_index=True, width="stretch")

REPORTS = {"reproduce": "Reproduction report (paper claims at this scale)", "report": "Pipeline report"}
reports = {stage: latest_run(runs, stage=stage) for stage in REPORTS} if not runs.empty else {}
for stage, title in REPORTS.items():
    found = reports.get(stage)
    if found is None:
        continue
    body = cached.artifact(src.tracking_uri, found["run_id"], "report/report.md")
    with st.expander(f"{title} · {run_label(found)}", expanded=stage == "reproduce" or reports["reproduce"] is None):
        if body is None:
            st.info(f"This {stage} run has no `report/report.md` artifact.")
            continue
        embedded_markdown(body.decode("utf-8", errors="replace"), key=stage)
        images = [p for p in cached.artifact_paths(src.tracking_uri, found["run_id"], "report")
                  if p.lower().endswith((".png", ".jpg", ".jpeg", ".svg"))]
        for path in images:
            image = cached.artifact(src.tracking_uri, found["run_id"], path)
            if image is not None:
                st.image(image, caption=path, width="content")
if not runs.empty and reports.get("reproduce") is None:
    st.caption("No reproduction report yet (a run tagged `dkdm.stage=reproduce` with `report/report.md`).")

tabs = st.tabs(["Table 2 · pixel", "Table 3 · latent", "Table 5 · cross-architecture", "Table 9 · training speed",
                "Table 11 · FID vs FID'", "Fig. 6 · student size", "Fig. 4 · variants and rho",
                "Fig. 8 · random discard"])
sections = [
    lambda: paper_results.table2(records), lambda: paper_results.table3(records),
    lambda: paper_results.table5(records), lambda: paper_studies.table9(records),
    lambda: paper_studies.table11(records), lambda: paper_studies.fig6(records),
    lambda: paper_studies.rho(runs if not runs.empty else pd.DataFrame(columns=["run_id"]), records,
                              src.tracking_uri),
    lambda: paper_studies.discard(records),
]
for tab, render in zip(tabs, sections, strict=True):
    with tab:
        render()
