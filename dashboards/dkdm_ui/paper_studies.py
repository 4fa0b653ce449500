"""Paper vs ours, the supporting studies: Table 9 (training speed), Table 11 (FID vs FID'), Fig. 6 (student size
vs quality and speed), Fig. 4 (variants over training, rho sweep) and Fig. 8 (random discard)."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from dkdm.dashboard_queries import compare as cmp
from dkdm.paper import paper_entry

from . import cached
from .common import number_format
from .paper_results import cpu_banner, paper_header

SPEED_NOTE = ("CPU scale: seconds on this machine, not an A100. Compare the ratio to data-based training only.")


def _by_scale(frame: pd.DataFrame, key: str, cpu_note: str | None = None) -> None:
    """Our rows split into paper scale (as numbers) and CPU scale (flagged as relative)."""
    for is_paper, block in frame.groupby(frame["scale"] == "paper", sort=False):
        if not is_paper:
            if cpu_note:
                st.info(cpu_note, icon=":material/memory:")
            else:
                cpu_banner()
        st.dataframe(block, hide_index=True, width="stretch", column_config=number_format(block))


def table9(records: pd.DataFrame) -> None:
    paper = paper_header("table9_training_speed")
    ratios = paper.pivot_table(index="dataset", columns="method", values="time_per_100_iters", aggfunc="first")
    st.caption("Paper: DKDM ÷ data-based training time per 100 iterations: " + ", ".join(
        f"{d} {r:.3f}" for d, r in (ratios["DKDM"] / ratios["Data-Based Training"]).items()))
    metric = "train_seconds_per_100_iters"
    if records.empty or metric not in records or records[metric].isna().all():
        st.info("None of our runs logged `train_seconds_per_100_iters` yet.")
        return
    ours = cmp.summarize(cmp.main_setting(records), ["scale", "profile", "method"], [metric])
    base = ours.loc[ours["method"] == "data_based"].set_index(["scale", "profile"])[metric]
    keys = pd.MultiIndex.from_frame(ours[["scale", "profile"]])
    ours["÷ data_based"] = ours[metric].to_numpy() / base.reindex(keys).to_numpy()
    st.markdown("**Ours** (seconds are this machine's; compare the ratio, not the seconds, with the A100 table)")
    _by_scale(ours.dropna(subset=[metric]), "t9", SPEED_NOTE)
    chart = ours.dropna(subset=["÷ data_based"])
    if not chart.empty:
        figure = px.bar(chart, x="method", y="÷ data_based", color="profile", barmode="group",
                        title="Training time per 100 iterations ÷ data-based training")
        figure.add_hline(y=float((ratios["DKDM"] / ratios["Data-Based Training"]).iloc[0]), line_dash="dot",
                         annotation_text="paper CIFAR-10 DKDM ratio")
        st.plotly_chart(figure, width="stretch", key="t9_chart")


def table11(records: pd.DataFrame) -> None:
    paper = paper_header("table11_fid_prime")
    teacher = paper.loc[paper["method"] == "Teacher", "FIDp"].iloc[0]
    free = paper.loc[paper["method"] == "Data-Free Training", "FIDp"].iloc[0]
    st.caption("Paper: FID' ÷ teacher FID' = " + ", ".join(
        f"{m} {v / teacher:.2f}" for m, v in zip(paper["method"], paper["FIDp"], strict=True))
        + f"; DKDM FID' ÷ data-free FID' = {paper['FIDp'].iloc[2] / free:.2f}")
    if records.empty:
        st.info("No results of ours yet.")
        return
    at_paper = cmp.summarize(cmp.paper_scale(records), ["profile", "dataset", "method"],
                             ["fid", "sfid", "fid_teacher", "sfid_teacher"])
    st.markdown("**Ours at paper scale**")
    if at_paper.empty:
        st.info("No paper-scale FID/FID' results of ours yet (Table 11 uses a 57M student on CIFAR-10).")
    else:
        st.dataframe(at_paper, hide_index=True, width="stretch", column_config=number_format(at_paper))
    metrics = ["fd_digits", "fd_digits_teacher", "fd_digits_noise_floor"]
    relative = cmp.relative_comparison(records, metrics)
    st.markdown("**Ours at CPU scale: FD against the data and FD' against the teacher's samples**")
    if relative.empty:
        st.info("No CPU-scale FD/FD' results yet.")
        return
    cpu_banner()
    # The noise floor (FD' between two halves of the teacher's samples) is measured once per profile.
    floor = relative.groupby(["scale", "profile", "dataset"])["fd_digits_noise_floor"].transform("max")
    relative["fd_digits_teacher ÷ noise floor"] = relative["fd_digits_teacher"] / floor
    shown = relative[["profile", "dataset", "student", "method_label", *metrics, "fd_digits_teacher ÷ data_free",
                      "fd_digits_teacher ÷ noise floor"]]
    st.dataframe(shown, hide_index=True, width="stretch", column_config=number_format(shown))
    figure = px.scatter(relative, x="fd_digits", y="fd_digits_teacher", color="method_label", symbol="student",
                        title="FD vs FD' per method (digits; the paper's Fig. 9 relates FID and FID')")
    st.plotly_chart(figure, width="stretch", key="t11_chart")


def fig6(records: pd.DataFrame) -> None:
    entry = paper_entry("fig6_various_architectures", cached.paper_tables())
    paper = paper_header("fig6_various_architectures")
    st.caption(f"Speed metric in the paper: {entry.get('speed_metric')}. Only the points above are known "
               "numerically (inferred from Tables 2 and 11); the rest is a plot.")
    subset = cmp.main_setting(records.loc[records["method"].isin(["dynamic", "data_free"])]) \
        if not records.empty else records
    if subset.empty:
        st.info("No DKDM / data-free results of ours yet.")
        return
    facts = cached.preset_facts(tuple(sorted(subset["student"].dropna().astype(str).unique())))
    subset = subset.assign(student_params=subset["student"].map(lambda s: facts.get(s, (None, None))[1]))
    paper_points = paper.assign(student_params=paper["params"].str.rstrip("M").astype(float) * 1e6)
    st.plotly_chart(px.scatter(paper_points, x="student_params", y="FID", color="method", log_x=True,
                               title="Paper: CIFAR-10 FID vs student parameters"), width="stretch", key="f6_paper")
    for scale, block in subset.groupby("scale", sort=False):
        quality = cmp.quality_metrics(scale)[1 if scale != "paper" else 0]
        speed = next((m for m in ("gen_seconds_256", "images_per_second_50steps") if m in block
                      and block[m].notna().any()), None)
        summary = cmp.summarize(block, ["profile", "student", "student_params", "method"],
                                [quality, *([speed] if speed else [])])
        if scale != "paper":
            cpu_banner()
        st.dataframe(summary, hide_index=True, width="stretch", column_config=number_format(summary))
        plotted = summary.dropna(subset=["student_params"])
        if plotted.empty:
            continue
        columns = st.columns(2 if speed else 1)
        columns[0].plotly_chart(px.scatter(plotted, x="student_params", y=quality, color="method", symbol="profile",
                                           title=f"{quality} vs student parameters ({scale} scale)"),
                                width="stretch", key=f"f6_q_{scale}")
        if speed:
            columns[1].plotly_chart(px.scatter(plotted, x="student_params", y=speed, color="method",
                                               symbol="profile", title=f"{speed} vs student parameters"),
                                    width="stretch", key=f"f6_s_{scale}")


def _variant_curves(runs: pd.DataFrame, records: pd.DataFrame, uri: str) -> None:
    """Fig. 4a: an eval/ metric over training for the distillation variants and the data-free baseline."""
    main = cmp.main_setting(records.loc[records["method"].isin(["dynamic", "shuffled", "iterative", "data_free",
                                                                  "data_based"])])
    ids = [i for joined in main["run_ids"] for i in str(joined).split(",")]
    candidates = runs.loc[runs["run_id"].isin(ids)]
    keys = [c.removeprefix("metrics.") for c in candidates.columns if c.startswith("metrics.eval/")
            and candidates[c].notna().any()]
    if not keys:
        st.info("No periodic evaluation (`eval/…` step metrics) logged by the variant runs yet.")
        return
    key = st.selectbox("Metric over training", keys, key="f4a_metric")
    with_key = candidates.loc[candidates[f"metrics.{key}"].notna()]
    history = cached.history(uri, tuple(with_key["run_id"]), key)
    history = history.merge(with_key[["run_id", "method", "profile", "seed"]], on="run_id")
    history["run"] = history["method"] + " · seed " + history["seed"].astype(str)
    figure = px.line(history, x="step", y="value", color="method", line_group="run", facet_col="profile",
                     labels={"value": key}, title="Fig. 4a counterpart: variants over training")
    st.plotly_chart(figure, width="stretch", key="f4a_chart")


def rho(runs: pd.DataFrame, records: pd.DataFrame, uri: str) -> None:
    entry = paper_entry("fig4b_rho_sweep", cached.paper_tables())
    paper_header("fig4a_ablation_variants")
    st.markdown(f"**Paper, Figure 4b**: {entry['caption']}. rho values run: "
                f"{', '.join(str(v) for v in entry['rho_values_from_code_readme'])}. {entry['text']}")
    if records.empty:
        st.info("No results of ours yet.")
        return
    _variant_curves(runs, records, uri)
    sweep = cmp.ablation_sweep(records, "rho", ["dynamic"])
    st.markdown("**Ours: dynamic iterative distillation by rho**")
    if sweep.empty or sweep["rho"].nunique() < 2:
        st.info("No rho sweep of ours yet (dynamic runs with at least two rho values).")
        return
    _by_scale(sweep, "rho")
    long = sweep.melt(id_vars=["scale", "profile", "rho"], value_vars=[c for c in ("fid", "fid_teacher",
                      "fd_digits", "fd_digits_teacher") if c in sweep], var_name="metric").dropna(subset=["value"])
    figure = px.line(long, x="rho", y="value", color="metric", line_dash="profile", markers=True, log_x=True,
                     title="Quality vs rho (lower is better)")
    st.plotly_chart(figure, width="stretch", key="rho_chart")


def discard(records: pd.DataFrame) -> None:
    paper_header("fig8_random_discard")
    if records.empty:
        st.info("No results of ours yet.")
        return
    sweep = cmp.ablation_sweep(records, "discard_prob", ["dynamic", "shuffled", "iterative"])
    if sweep.empty or not (sweep["discard_prob"] > 0).any():
        st.info("No runs of ours with random discard (`discard_prob` > 0) yet.")
        return
    _by_scale(sweep, "discard")
    metric = next(m for m in ("fd_digits_teacher", "fid") if m in sweep and sweep[m].notna().any())
    figure = px.line(sweep.dropna(subset=[metric]), x="discard_prob", y=metric, color="method", markers=True,
                     line_dash="profile", title=f"{metric} vs random-discard probability p")
    st.plotly_chart(figure, width="stretch", key="discard_chart")
    st.caption("Paper: discard helps iterative and shuffled, not dynamic with rho 0.4 (so p = 0 is used).")
