"""Paper vs ours: turn MLflow runs into one record per trained model and line them up with the paper's tables.

Paper-scale runs (`dkdm.scale=paper`) are compared number for number. Every other run (the CPU digits profiles)
is compared only relatively — ratios to a baseline and orderings of methods — because an FD in a digits-classifier
feature space is not a CIFAR-10 FID.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

# Runs that summarise or search rather than produce one model.
NON_RESULT_STAGES = {"tune", "trial", "reproduce", "report"}
METHOD_LABELS = {
    "teacher": "Teacher",
    "data_based": "Data-Based Training",
    "data_limited": "Data-Limited Training",
    "data_free": "Data-Free Training",
    "dynamic": "DKDM (Dynamic Iterative Distillation)",
    "shuffled": "Shuffled iterative distillation (ablation)",
    "iterative": "Iterative distillation (ablation)",
}
METHOD_ORDER = ["teacher", "data_based", "data_limited", "dynamic", "shuffled", "iterative", "data_free"]
# dataset tag (lower-case, alphanumerics only) -> the paper's dataset name
PAPER_DATASETS = {
    "cifar10": "CIFAR10-32", "cifar1032": "CIFAR10-32",
    "celeba": "CelebA-64", "celeba64": "CelebA-64",
    "imagenet32": "ImageNet-32", "imagenet": "ImageNet-32",
    "celebahq": "CelebA-HQ-256", "celebahq256": "CelebA-HQ-256",
    "ffhq": "FFHQ-256", "ffhq256": "FFHQ-256",
}
# Param names (last dotted component) that the distillation config uses.
PARAM_FIELDS = {"rho": "rho", "discard_prob": "discard_prob", "data_fraction": "data_fraction"}
RESULT_METRICS = ("fid", "fid_teacher", "sfid", "sfid_teacher", "is", "precision", "recall",
                  "fd_digits", "fd_digits_teacher", "fd_digits_noise_floor", "precision_digits", "recall_digits",
                  "gen_seconds_256", "images_per_second_50steps", "train_seconds_per_100_iters", "peak_memory_mb")
CPU_NOTE = ("CPU scale: FD in a digits-classifier feature space on scikit-learn digits. Compare ratios and "
            "orderings only; these numbers are not CIFAR-10 FIDs.")


def quality_metrics(scale: str) -> tuple[str, str]:
    """(against the data, against the teacher's samples) for a scale."""
    return ("fid", "fid_teacher") if scale == "paper" else ("fd_digits", "fd_digits_teacher")


def _norm(text: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def _param_column(runs: pd.DataFrame, field: str) -> pd.Series:
    """A run's own value of a distillation field, as floats (NaN where absent).

    The platform logs every resolved setting, so a run carries `distill.runs.<name>.<field>` for *every* run of
    its profile; its own is the one named by its `dkdm.run` tag. Otherwise the first profile-wide param whose
    last dotted component is `field` (e.g. `distill.rho`) is used.
    """
    out = pd.Series(np.nan, index=runs.index, dtype=float)
    if "tags.dkdm.run" in runs:
        for index, name in runs["tags.dkdm.run"].items():
            column = f"params.distill.runs.{name}.{field}"
            if isinstance(name, str) and column in runs:
                out[index] = pd.to_numeric(runs.at[index, column], errors="coerce")
    for column in runs.columns:
        if column.startswith("params.") and column.split(".")[-1] == field and ".runs." not in column:
            out = out.fillna(pd.to_numeric(runs[column], errors="coerce"))
    return out


def result_records(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model: distill/train and evaluate runs of the same student are merged on the student's
    dvc.lock hash (`dkdm.dvc.student_md5`); runs without that tag stay on their own.

    Columns: scale, profile, dataset, paper_dataset, method, method_label, teacher, student, seed, rho,
    discard_prob, data_fraction, n_runs, run_ids, and one column per metric of RESULT_METRICS present.
    """
    columns = ["scale", "profile", "dataset", "paper_dataset", "method", "method_label", "teacher", "student",
               "seed", *PARAM_FIELDS, "n_runs", "run_ids"]
    if runs.empty or "stage" not in runs:
        return pd.DataFrame(columns=columns)
    metric_cols = [f"metrics.{m}" for m in RESULT_METRICS if f"metrics.{m}" in runs]
    frame = runs.loc[~runs["stage"].isin(NON_RESULT_STAGES) & runs["method"].notna()].copy()
    if frame.empty or not metric_cols:
        return pd.DataFrame(columns=columns)
    for field in PARAM_FIELDS:
        frame[field] = _param_column(frame, field)
    md5 = frame["tags.dkdm.dvc.student_md5"] if "tags.dkdm.dvc.student_md5" in frame else None
    frame["_key"] = (frame["method"].astype(str) + "|" + md5.fillna(frame["run_id"])) if md5 is not None \
        else frame["run_id"]
    keep = ["scale", "profile", "dataset", "method", "teacher", "student", "seed", *PARAM_FIELDS]
    grouped = frame.groupby("_key", sort=False)
    merged = grouped[keep + metric_cols].first()
    merged["n_runs"] = grouped.size()
    merged["run_ids"] = grouped["run_id"].agg(lambda ids: ",".join(ids))
    # A model counts once something measured it; a distill run alone still lends its params to its evaluation.
    merged = merged.loc[merged[metric_cols].notna().any(axis=1)]
    if merged.empty:
        return pd.DataFrame(columns=columns)
    merged = merged.rename(columns={c: c[len("metrics."):] for c in metric_cols}).reset_index(drop=True)
    is_digits = merged["dataset"].map(_norm).eq("digits")
    merged["scale"] = merged["scale"].fillna(is_digits.map({True: "cpu", False: "unknown"}))
    merged["paper_dataset"] = merged["dataset"].map(lambda d: PAPER_DATASETS.get(_norm(d)))
    merged["method_label"] = merged["method"].map(lambda m: METHOD_LABELS.get(m, m))
    return merged[[*columns[:-2], "n_runs", "run_ids", *[c for c in merged.columns if c in RESULT_METRICS]]]


def summarize(records: pd.DataFrame, by: list[str], metrics: Iterable[str]) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds for each metric, per group (`<m>`, `<m> sd`, `<m> n`)."""
    present = [m for m in metrics if m in records]
    if records.empty or not present:
        return pd.DataFrame(columns=by)
    grouped = records.groupby(by, dropna=False, sort=False)[present]
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()
    out = mean.copy()
    for metric in present:
        out[f"{metric} sd"] = std[metric]
        out[f"{metric} n"] = count[metric]
    return out.reset_index()


def _sort_methods(frame: pd.DataFrame, column: str = "method") -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return frame.sort_values(column, key=lambda s: s.map(lambda m: rank.get(m, len(rank))), kind="stable")


def paper_scale(records: pd.DataFrame) -> pd.DataFrame:
    return records.loc[records["scale"] == "paper"] if not records.empty else records


def relative_scale(records: pd.DataFrame) -> pd.DataFrame:
    return records.loc[records["scale"] != "paper"] if not records.empty else records


def side_by_side(paper: pd.DataFrame, records: pd.DataFrame, metrics: dict[str, str]) -> pd.DataFrame:
    """Paper rows (method, dataset, real_data_fraction) beside our paper-scale means of the same cells.

    `metrics` maps the paper's column to ours (e.g. {"FID": "fid"}). Our cells the paper lacks (the ablation
    variants) are kept as extra rows with empty paper columns.
    """
    datasets = set(paper["dataset"])
    ours = paper_scale(records)
    ours = ours.loc[ours["paper_dataset"].isin(datasets)].copy()
    ours["real_data_fraction"] = np.where(ours["method"].isin(["teacher", "data_based"]), 1.0,
                                          ours["data_fraction"].fillna(0.0))
    summary = summarize(ours.rename(columns={"paper_dataset": "dataset_", "method_label": "method_"}),
                        ["dataset_", "method_", "real_data_fraction", "profile"], metrics.values())
    left = paper.rename(columns={k: f"paper {k}" for k in ["params", *metrics]})
    if summary.empty:
        for ours_name in metrics:
            left[f"ours {ours_name}"] = np.nan
        left["ours n"] = 0
        left["ours profile"] = None
        return left
    right = summary.rename(columns={"dataset_": "dataset", "method_": "method", "profile": "ours profile"})
    right = right.rename(columns={v: f"ours {k}" for k, v in metrics.items() if v in right})
    counts = [f"{v} n" for v in metrics.values() if f"{v} n" in right]
    right["ours n"] = right[counts].max(axis=1) if counts else 0
    right = right[["dataset", "method", "real_data_fraction", "ours profile", "ours n",
                   *[f"ours {k}" for k in metrics if f"ours {k}" in right]]]
    left["real_data_fraction"] = left["real_data_fraction"].astype(float)
    right["real_data_fraction"] = right["real_data_fraction"].astype(float).round(4)
    return left.merge(right, on=["dataset", "method", "real_data_fraction"], how="outer", sort=False)


def paper_ratios(paper: pd.DataFrame, value: str, baseline: str = "Data-Free Training",
                 datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """Per paper method, value ÷ the baseline's value on the same dataset (only real_data_fraction 0 or 1 rows)."""
    rows = paper.loc[paper["real_data_fraction"].isin([0.0, 1.0])] if "real_data_fraction" in paper else paper
    out = pd.DataFrame({"method_label": pd.unique(rows["method"])})
    for dataset in datasets or pd.unique(rows["dataset"]):
        block = rows.loc[rows["dataset"] == dataset].set_index("method")[value]
        if baseline in block:
            out[f"paper {dataset} {value} ÷ data-free"] = out["method_label"].map(block / block[baseline])
    return out


def main_setting(records: pd.DataFrame, rho: float = 0.4) -> pd.DataFrame:
    """The records of the paper's main cell: no random discard, and for the pool methods the paper's rho (0.4)
    or, where no run used it, the most common rho; sweeps and ablation variants are left out."""
    if records.empty:
        return records
    keep = records["discard_prob"].fillna(0.0) == 0.0
    logged = records.loc[keep, "rho"].dropna()
    if not logged.empty:
        main = rho if np.isclose(logged, rho).any() else logged.mode().iloc[0]
        keep &= records["rho"].isna() | np.isclose(records["rho"].fillna(-1.0), main)
    return records.loc[keep]


def relative_comparison(records: pd.DataFrame, metrics: Iterable[str], baseline: str = "data_free") -> pd.DataFrame:
    """Non-paper-scale main-setting records per (scale, profile, dataset, student, method): means, and mean ÷ the
    baseline's mean for the same student (the teacher's own row is compared with every student's baseline)."""
    metrics = list(metrics)
    rel = main_setting(relative_scale(records))
    group = ["scale", "profile", "dataset", "student"]
    is_teacher = rel["method"] == "teacher" if not rel.empty else pd.Series(dtype=bool)
    summary = summarize(rel.loc[~is_teacher], [*group, "method"], metrics) if not rel.empty else pd.DataFrame()
    if summary.empty:
        return summary
    # The teacher's own runs (training, reference samples, evaluation) form one row per profile, repeated
    # beside each student's block so every block has its reference.
    teachers = summarize(rel.loc[is_teacher], ["scale", "profile", "dataset", "method"], metrics)
    if not teachers.empty:
        teachers = teachers.merge(summary[group].drop_duplicates(), on=group[:-1])
        summary = pd.concat([teachers[[c for c in summary.columns if c in teachers]], summary], ignore_index=True)
    for metric in [m for m in metrics if m in summary]:
        base = summary.loc[summary["method"] == baseline].set_index(group)[metric]
        keys = pd.MultiIndex.from_frame(summary[group])
        summary[f"{metric} ÷ {baseline}"] = summary[metric].to_numpy() / base.reindex(keys).to_numpy()
    summary["method_label"] = summary["method"].map(lambda m: METHOD_LABELS.get(m, m))
    return _sort_methods(summary).sort_values(group, kind="stable").reset_index(drop=True)


def ordering(summary: pd.DataFrame, metric: str, label: str = "method", lower_is_better: bool = True) -> str:
    """`a (1.2) < b (3.4) < ...` by mean, best first; '' when the metric is absent."""
    if summary.empty or metric not in summary:
        return ""
    rows = summary.dropna(subset=[metric]).sort_values(metric, ascending=lower_is_better)
    sign = " < " if lower_is_better else " > "
    return sign.join(f"{r[label]} ({r[metric]:.3g})" for _, r in rows.iterrows())


def architecture_of(preset: str | None, family_of: Callable[[str], str | None]) -> str | None:
    """'ViT' for DiT-family presets, 'CNN' for UNets; a name heuristic when the registry does not know it."""
    if not preset or (isinstance(preset, float) and np.isnan(preset)):
        return None
    family = family_of(preset)
    if family is None:
        family = "dit" if re.search(r"dit|vit", preset, re.IGNORECASE) else "adm-unet"
    return "ViT" if family == "dit" else "CNN"


def cross_architecture(records: pd.DataFrame, family_of: Callable[[str], str | None]) -> pd.DataFrame:
    """Per (scale, profile, teacher arch, student arch, metric): data-free and DKDM means and DKDM ÷ data-free."""
    columns = ["scale", "profile", "teacher", "student", "metric", "data_free", "dkdm", "dkdm ÷ data_free",
               "presets"]
    subset = records.loc[records["method"].isin(["dynamic", "data_free"])] if not records.empty else records
    subset = main_setting(subset)
    if subset.empty:
        return pd.DataFrame(columns=columns)
    subset = subset.assign(teacher_arch=subset["teacher"].map(lambda p: architecture_of(p, family_of)),
                           student_arch=subset["student"].map(lambda p: architecture_of(p, family_of)))
    rows = []
    for (scale, profile, t_arch, s_arch), block in subset.groupby(
            ["scale", "profile", "teacher_arch", "student_arch"], dropna=False, sort=False):
        for metric in quality_metrics(scale):
            if metric not in block or block[metric].isna().all():
                continue
            means = block.groupby("method")[metric].mean()
            free, dkdm = means.get("data_free", np.nan), means.get("dynamic", np.nan)
            presets = sorted({f"{t}→{s}" for t, s in zip(block["teacher"], block["student"], strict=True)})
            rows.append({"scale": scale, "profile": profile, "teacher": t_arch, "student": s_arch, "metric": metric,
                         "data_free": free, "dkdm": dkdm, "dkdm ÷ data_free": dkdm / free if free else np.nan,
                         "presets": ", ".join(presets)})
    return pd.DataFrame(rows, columns=columns)


def paper_cross_architecture(paper: pd.DataFrame) -> pd.DataFrame:
    out = paper.copy()
    out["paper dkdm ÷ data_free"] = out["dkdm_FID"] / out["data_free_training_FID"]
    return out


def ablation_sweep(records: pd.DataFrame, field: str, methods: Iterable[str]) -> pd.DataFrame:
    """Means per (scale, profile, method, `field` value) of both quality metrics, for records that logged `field`."""
    subset = records.loc[records["method"].isin(list(methods)) & records[field].notna()] if not records.empty \
        else records
    if subset.empty:
        return pd.DataFrame(columns=["scale", "profile", "method", field])
    parts = []
    for scale, block in subset.groupby("scale", sort=False):
        parts.append(summarize(block, ["scale", "profile", "method", field], quality_metrics(scale)))
    return pd.concat(parts, ignore_index=True).sort_values(["scale", "profile", "method", field])


def _mean(block: pd.DataFrame, method: str, metric: str) -> float:
    values = block.loc[block["method"] == method, metric] if metric in block else pd.Series(dtype=float)
    return float(values.mean()) if values.notna().any() else np.nan


def claim_checks(block: pd.DataFrame, metric: str, table2: pd.DataFrame, table11: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims against one relative block (one profile and student), as point estimates of `metric`.

    `agrees` is True/False, or None when our runs lack a method the claim needs. Intervals over seeds belong to
    the reproduction report; this table only says which way our means point.
    """
    def paper_fid(method: str, table: pd.DataFrame, column: str = "FID") -> float:
        rows = table.loc[table["method"] == method]
        if "dataset" in rows:
            rows = rows.loc[rows["dataset"] == "CIFAR10-32"]
        return float(rows[column].iloc[0])

    dkdm, free, based = (METHOD_LABELS[m] for m in ("dynamic", "data_free", "data_based"))
    ours = {m: _mean(block, m, metric) for m in ("dynamic", "shuffled", "iterative", "data_free", "data_based",
                                                  "teacher")}

    def show(*methods: str) -> str:
        return " vs ".join("–" if np.isnan(ours[m]) else f"{ours[m]:.3g}" for m in methods)

    def verdict(*pairs: tuple[float, float]) -> bool | None:
        if any(np.isnan(a) or np.isnan(b) for a, b in pairs):
            return None
        return all(a < b for a, b in pairs)

    rows = [
        {"claim": "DKDM beats data-free training at an equal budget",
         "paper": f"CIFAR-10 FID {paper_fid(dkdm, table2)} vs {paper_fid(free, table2)} (Table 2)",
         "ours": f"{metric} {show('dynamic', 'data_free')}",
         "agrees": verdict((ours["dynamic"], ours["data_free"]))},
        {"claim": "dynamic < shuffled < iterative",
         "paper": "Fig. 4a (plot only)",
         "ours": f"{metric} {show('dynamic', 'shuffled', 'iterative')}",
         "agrees": verdict((ours["dynamic"], ours["shuffled"]), (ours["shuffled"], ours["iterative"]))},
        {"claim": "data-based training is the upper reference",
         "paper": f"CIFAR-10 FID {paper_fid(based, table2)} vs DKDM {paper_fid(dkdm, table2)} (Table 2)",
         "ours": f"{metric} {show('data_based', 'dynamic')}",
         "agrees": verdict((ours["data_based"], ours["dynamic"]))},
        {"claim": "the DKDM student is closer to the teacher's distribution than data-free training",
         "paper": f"FID' {paper_fid(dkdm, table11, 'FIDp')} vs {paper_fid(free, table11, 'FIDp')}, teacher "
                  f"{paper_fid('Teacher', table11, 'FIDp')} (Table 11, 57M students)",
         "ours": f"{metric} {show('dynamic', 'data_free')}, teacher {show('teacher')}",
         "agrees": verdict((ours["dynamic"], ours["data_free"])) if metric.endswith("teacher") else None},
    ]
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "agrees"])
