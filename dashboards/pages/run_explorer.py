"""Run explorer: filter runs by method, profile, teacher and student; loss curves, metrics over training, sample
grids, and the config diff of two runs."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from dkdm.dashboard_queries.runs import config_diff, metric_keys, run_params
from dkdm_ui import cached
from dkdm_ui.common import labels, number_format, runs_or_stop, sidebar

FILTERS = {"method": "Method", "profile": "Profile", "teacher": "Teacher", "student": "Student", "stage": "Stage"}
# The platform logs grids with evaluations (and reference samples): the grid picker offers those first.
GRID_STAGES = ("evaluate", "reference", "distill", "train", "teacher")
SUMMARY_METRICS = ("fid", "fid_teacher", "fd_digits", "fd_digits_teacher", "train/loss",
                   "train_seconds_per_100_iters")

st.title("Run explorer")
src = sidebar()
runs = runs_or_stop(src)

columns = st.columns(len(FILTERS))
filtered = runs
for column, (field, title) in zip(columns, FILTERS.items(), strict=True):
    options = sorted(runs[field].dropna().astype(str).unique())
    chosen = column.multiselect(title, options, key=f"filter_{field}", placeholder="all")
    if chosen:
        filtered = filtered.loc[filtered[field].astype(str).isin(chosen)]
st.caption(f"{len(filtered)} of {len(runs)} runs in experiment `{src.experiment}`")
if filtered.empty:
    st.info("No run matches these filters.")
    st.stop()

shown = ["run_name", "stage", "method", "profile", "dataset", "scale", "teacher", "student", "seed", "status",
         "start_time", "duration_s"]
metric_columns = [f"metrics.{m}" for m in SUMMARY_METRICS if f"metrics.{m}" in filtered]
table = filtered[shown + metric_columns].rename(columns=lambda c: c.removeprefix("metrics."))
st.dataframe(table, hide_index=True, width="stretch", column_config=number_format(table))

names = labels(filtered)
# Pickers offer the runs that train a model first: they carry the loss curves, grids and configs.
MODEL_STAGES = ("distill", "train", "teacher")
model_first = list(filtered.loc[filtered["stage"].isin(MODEL_STAGES), "run_id"]) + \
    list(filtered.loc[~filtered["stage"].isin(MODEL_STAGES), "run_id"])
curves, over_training, grids, diff = st.tabs(["Loss curves", "Metric over training", "Sample grids",
                                              "Config diff"])


def line_chart(run_ids: list[str], key: str, log_y: bool = False) -> None:
    history = cached.history(src.tracking_uri, tuple(run_ids), key)
    if history.empty:
        st.info(f"The chosen runs logged no `{key}` history.")
        return
    history = history.assign(run=history["run_id"].map(names))
    figure = px.line(history, x="step", y="value", color="run", log_y=log_y, labels={"value": key},
                     title=f"{key} over training steps")
    figure.update_layout(legend={"orientation": "h", "y": -0.25}, margin={"t": 50})
    st.plotly_chart(figure, width="stretch")


with curves:
    with_loss = filtered.loc[filtered.get("metrics.train/loss", pd.Series(index=filtered.index)).notna()]
    if with_loss.empty:
        st.info("None of these runs logged `train/loss`.")
    else:
        ids = [i for i in model_first if i in set(with_loss["run_id"])]
        picked = st.multiselect("Runs", ids, default=ids[:6], format_func=names.get, key="loss_runs")
        log_y = st.checkbox("Log scale", value=True, key="loss_log")
        if picked:
            line_chart(picked, "train/loss", log_y)

with over_training:
    keys = [k for k in metric_keys(filtered) if "/" in k]  # step metrics are namespaced: train/…, eval/…
    if not keys:
        st.info("None of these runs logged step metrics (`train/…`, `eval/…`).")
    else:
        keys.sort(key=lambda k: (not k.startswith("eval/"), not k.startswith("train/"), k))  # eval/, train/ first
        key = st.selectbox("Metric", keys, index=0, key="step_metric")
        having = [i for i in model_first if i in set(filtered.loc[filtered[f"metrics.{key}"].notna(), "run_id"])]
        picked = st.multiselect("Runs", having, default=having[:8], format_func=names.get, key="metric_runs")
        if picked:
            line_chart(picked, key)

with grids:
    rank = {stage: i for i, stage in enumerate(GRID_STAGES)}
    grid_first = list(filtered.assign(_rank=filtered["stage"].map(rank).fillna(len(rank)))
                      .sort_values("_rank", kind="stable")["run_id"])
    picked = st.multiselect("Runs", grid_first, default=grid_first[:3], format_func=names.get, key="grid_runs",
                            max_selections=6)
    cells = st.columns(3)
    for index, run_id in enumerate(picked):
        with cells[index % 3]:
            image = cached.artifact(src.tracking_uri, run_id, "samples/grid.png")
            if image is None:
                st.info(f"{names[run_id]}: no `samples/grid.png`.")
            else:
                st.image(image, caption=names[run_id], width="stretch")

with diff:
    ids = model_first
    if len(ids) < 2:
        st.info("Pick filters that leave at least two runs to compare their configs.")
    else:
        left_col, right_col = st.columns(2)
        left = left_col.selectbox("Left run", ids, index=0, format_func=names.get, key="diff_left")
        right = right_col.selectbox("Right run", ids, index=1, format_func=names.get, key="diff_right")
        everything = st.checkbox("Show unchanged keys too", value=False, key="diff_all")
        left_cfg, left_src = cached.run_config(src.tracking_uri, left, tuple(run_params(runs, left).items()))
        right_cfg, right_src = cached.run_config(src.tracking_uri, right, tuple(run_params(runs, right).items()))
        st.caption(f"left from {left_src}, right from {right_src}")
        changes = config_diff(left_cfg, right_cfg, only_changed=not everything)
        if changes.empty:
            st.success("The two configs are identical.")
        else:
            st.dataframe(changes, hide_index=True, width="stretch")
