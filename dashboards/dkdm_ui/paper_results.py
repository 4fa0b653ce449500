"""Paper vs ours, result tables: Table 2 (pixel), Table 3 (latent), Table 5 (cross-architecture).

Each section shows the paper's rows first, then our paper-scale runs beside them, then — clearly labelled — the
CPU-scale runs as ratios and orderings only.
"""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from dkdm.dashboard_queries import compare as cmp
from dkdm.paper import paper_entry, paper_table

from . import cached
from .common import number_format, scale_note


def paper_header(entry_id: str) -> pd.DataFrame:
    """Caption, provenance and the paper's rows; returns those rows."""
    entry = paper_entry(entry_id, cached.paper_tables())
    source = entry.get("source", {})
    st.markdown(f"**Paper, {source.get('ref', entry_id)}** ({source.get('part', '')}): {entry.get('caption', '')}")
    for key in ("protocol", "architectures", "notes", "text"):
        if entry.get(key):
            value = entry[key]
            text = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else value
            st.caption(f"{key}: {text}")
    rows = paper_table(entry_id, cached.paper_tables())
    if not rows.empty:
        st.dataframe(rows, hide_index=True, width="stretch")
    return rows


def cpu_banner() -> None:
    st.info(cmp.CPU_NOTE, icon=":material/memory:")


def family_of(records: pd.DataFrame):
    names = tuple(sorted({str(n) for n in pd.concat([records["teacher"], records["student"]]).dropna()}))
    facts = cached.preset_facts(names)
    return lambda name: facts.get(name, (None, None))[0]


def _ours_paper_scale(frame: pd.DataFrame, what: str) -> None:
    filled = frame.loc[frame["ours n"].fillna(0) > 0] if "ours n" in frame else frame.iloc[0:0]
    st.markdown("**Ours at paper scale, beside the paper**")
    if filled.empty:
        st.info(f"No paper-scale runs of ours for {what} yet (those profiles import the paper's teacher and need a "
                "GPU; see the README). The paper's rows are listed above.")
        return
    # Only the datasets we have runs for: the full paper table is right above.
    frame = frame.loc[frame["dataset"].isin(set(filled["dataset"]))]
    st.dataframe(frame, hide_index=True, width="stretch", column_config=number_format(frame))


def mean_sd(block: pd.DataFrame, metric: str) -> pd.Series:
    """`mean ± sd (n=k)` strings for a summarize() column; '–' where there is no value."""
    def one(row: pd.Series) -> str:
        mean, sd, n = row[metric], row.get(f"{metric} sd"), row.get(f"{metric} n", 1)
        if pd.isna(mean):
            return "–"
        spread = f" ± {sd:.2g}" if pd.notna(sd) else ""
        return f"{mean:.3g}{spread} (n={int(n)})"
    return block.apply(one, axis=1)


def readable(block: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Method label first, each metric as one `mean ± sd (n)` column, then the ratio columns."""
    out = pd.DataFrame({"method": block["method_label"]})
    for metric in metrics:
        if metric in block:
            out[metric] = mean_sd(block, metric)
    for column in [c for c in block.columns if "÷" in c]:
        out[column] = block[column]
    return out


def table2(records: pd.DataFrame) -> None:
    paper = paper_header("table2_main_pixel")
    _ours_paper_scale(cmp.side_by_side(paper, records, {"IS": "is", "FID": "fid", "sFID": "sfid"}),
                      "CIFAR-10 / CelebA-64 / ImageNet-32")
    st.markdown("**Ours at CPU scale: relative comparison**")
    relative = cmp.relative_comparison(records, ["fd_digits", "fd_digits_teacher"])
    if relative.empty:
        st.info("No CPU-scale results yet (the default `dvc repro` evaluates the teacher, DKDM and the data-free "
                "baseline on digits).")
        return
    cpu_banner()
    ratios = cmp.paper_ratios(paper, "FID")
    table2_rows, table11_rows = paper, paper_table("table11_fid_prime", cached.paper_tables())
    for (scale, profile, dataset, student), block in relative.groupby(["scale", "profile", "dataset", "student"],
                                                                     sort=False, dropna=False):
        st.markdown(f"{scale_note(scale, profile, dataset)} · student `{student}`")
        shown = readable(block, ["fd_digits", "fd_digits_teacher"]).merge(
            ratios.rename(columns={"method_label": "method"}), on="method", how="left")
        st.dataframe(shown, hide_index=True, width="stretch", column_config=number_format(shown))
        long = _ratio_bars(shown)
        if not long.empty:
            figure = px.bar(long, x="method", y="ratio", color="series", barmode="group",
                            title="Relative to data-free training (1.0 = data-free; lower is better)")
            figure.add_hline(y=1.0, line_dash="dot")
            st.plotly_chart(figure, width="stretch", key=f"bars2_{profile}_{student}")
        st.markdown("Ordering by FD' (ours): " + cmp.ordering(block, "fd_digits_teacher"))
        checks = pd.concat([cmp.claim_checks(block, m, table2_rows, table11_rows)
                            for m in ("fd_digits_teacher", "fd_digits")], ignore_index=True)
        checks["agrees"] = checks["agrees"].map({True: "yes", False: "no", None: "n/a"})
        st.caption("The paper's claims against our means (point estimates; the reproduction report decides with "
                   "intervals over seeds).")
        st.dataframe(checks, hide_index=True, width="stretch")


def _ratio_bars(shown: pd.DataFrame) -> pd.DataFrame:
    """Long form of every `… ÷ …` column (paper and ours) for a grouped bar chart."""
    columns = [c for c in shown.columns if "÷" in c]
    if not columns:
        return pd.DataFrame()
    long = shown.melt(id_vars="method", value_vars=columns, var_name="series", value_name="ratio")
    long = long.dropna(subset=["ratio"])
    long["series"] = long["series"].str.replace("fd_digits_teacher", "ours FD' (digits)", regex=False)
    long["series"] = long["series"].str.replace("fd_digits", "ours FD (digits)", regex=False)
    return long


def table3(records: pd.DataFrame) -> None:
    paper = paper_header("table3_main_latent")
    _ours_paper_scale(cmp.side_by_side(paper, records, {"FID": "fid", "sFID": "sfid"}), "CelebA-HQ / FFHQ 256")
    st.caption("There is no CPU-scale analogue of the latent table: the embedded digits profiles are pixel-space.")


def table5(records: pd.DataFrame) -> None:
    paper = cmp.paper_cross_architecture(paper_header("table5_cross_architecture"))
    ours = cmp.cross_architecture(records, family_of(records)) if not records.empty else pd.DataFrame()
    paper_long = paper.assign(series="paper CIFAR-10 FID", pair=paper["teacher"] + "→" + paper["student"],
                              ratio=paper["paper dkdm ÷ data_free"])[["pair", "series", "ratio"]]
    at_paper = ours.loc[ours["scale"] == "paper"] if not ours.empty else ours
    st.markdown("**Ours at paper scale**")
    if at_paper.empty:
        st.info("No paper-scale cross-architecture runs of ours yet (CIFAR-10 with the 57M UNet and the 19M DiT).")
    else:
        st.dataframe(at_paper, hide_index=True, width="stretch", column_config=number_format(at_paper))
    relative = ours.loc[ours["scale"] != "paper"] if not ours.empty else ours
    st.markdown("**Ours at CPU scale: DKDM ÷ data-free per teacher→student architecture**")
    if relative.empty:
        st.info("No CPU-scale DKDM and data-free pairs yet (a DiT student such as `digits-dit-student` gives the "
                "CNN→ViT cell).")
    else:
        cpu_banner()
        st.dataframe(relative, hide_index=True, width="stretch", column_config=number_format(relative))
    ours_long = ours.assign(pair=ours["teacher"] + "→" + ours["student"],
                            series="ours " + ours["metric"] + " (" + ours["profile"] + ")",
                            ratio=ours["dkdm ÷ data_free"])[["pair", "series", "ratio"]] if not ours.empty else None
    long = pd.concat([paper_long, ours_long], ignore_index=True) if ours_long is not None else paper_long
    figure = px.bar(long, x="pair", y="ratio", color="series", barmode="group",
                    title="DKDM ÷ data-free training by teacher→student architecture (lower is better)")
    figure.add_hline(y=1.0, line_dash="dot")
    st.plotly_chart(figure, width="stretch", key="t5_chart")
