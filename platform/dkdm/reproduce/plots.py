"""The report's figures (matplotlib, Agg backend, PNG): curves over iterations, scores per method, the rho sweep."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dkdm.reproduce.aggregate import Results

PANELS = (("fd", 1, "metric_fd"), ("fd_teacher", 2, "metric_fd_teacher"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _floor(results: Results, name_attr: str) -> list[float]:
    """The panel's own noise floor: FD's against the data, FD''s against the held-out teacher reference."""
    name = results.metric_noise_floor if name_attr == "metric_fd" else results.metric_noise_floor_teacher
    return results.teacher.get(name, [])


def _teacher_lines(ax, results: Results, name_attr: str, *, vertical: bool = False) -> None:
    """The teacher's mean score and the panel's noise floor as reference lines (vertical where scores are on x)."""
    line = ax.axvline if vertical else ax.axhline
    teacher = results.teacher.get(getattr(results, name_attr), [])
    if teacher:
        line(sum(teacher) / len(teacher), color="black", ls="--", lw=1, label="teacher")
    floor = _floor(results, name_attr)
    if floor:
        line(sum(floor) / len(floor), color="grey", ls=":", lw=1, label="noise floor")


def curves(results: Results, path: Path, variants: list[str]) -> Path | None:
    """FD and FD' of the EMA student over iterations: seed mean, min-max band."""
    if not any(results.variants[v].curves for v in variants):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (_metric, column, name_attr) in zip(axes, PANELS, strict=False):
        for variant in variants:
            curve = results.variants[variant].mean_curve(column)
            if not curve:
                continue
            steps = [c[0] for c in curve]
            line, = ax.plot(steps, [c[1] for c in curve], marker="o", ms=3, label=results.variants[variant].label)
            ax.fill_between(steps, [c[2] for c in curve], [c[3] for c in curve], color=line.get_color(), alpha=0.15)
        _teacher_lines(ax, results, name_attr)
        ax.set_yscale("log")
        ax.set_xlabel("student iteration")
        ax.set_ylabel(f"{getattr(results, name_attr)} (periodic, small sample)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("FD over iterations (mean over seeds, band = min-max)")
    path = _save(fig, path)
    plt.close(fig)
    return path


def scores(results: Results, path: Path, variants: list[str], confidence: float) -> Path:
    """Final FD and FD' per variant: mean with its t-interval, the individual seeds as dots.

    The x axis is logarithmic: the scores span two decades (plain iterative distillation can end near 50 where the
    others sit at 2-6), and on a linear axis one outlier squeezes every other method into the first tenth. An
    interval reaching below the axis (at or below 0 with few seeds) is cut at the edge and marked with a '<'.
    Both panels share one set of variant labels; the legend sits below them, outside the data."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(variants) + 2.2), sharey=True)
    any_cut = False
    for ax, (metric, _, name_attr) in zip(axes, PANELS, strict=False):
        intervals = {v: results.variants[v].interval(metric, confidence) for v in variants}
        shown = [x for v in variants for x in getattr(results.variants[v], metric) if x > 0]
        shown += [iv.high for iv in intervals.values() if iv.n > 1]
        references = (results.teacher.get(getattr(results, name_attr), []),
                      _floor(results, name_attr))
        shown += [sum(r) / len(r) for r in references if r]
        left, right = min(shown, default=1.0) / 1.5, max(shown, default=10.0) * 1.3
        for row, variant in enumerate(variants):
            iv, result = intervals[variant], results.variants[variant]
            if iv.n == 0:
                continue
            low, high = (max(iv.low, left), iv.high) if iv.n > 1 else (iv.mean, iv.mean)
            ax.errorbar([iv.mean], [row], xerr=[[iv.mean - low], [high - iv.mean]], fmt="s", color="C0", capsize=4)
            if iv.n > 1 and iv.low < left:
                any_cut = True
                ax.plot([left], [row], marker="<", color="C0", ms=7, clip_on=False)
            ax.scatter(getattr(result, metric), [row] * len(getattr(result, metric)), color="C1", s=12, zorder=3)
        _teacher_lines(ax, results, name_attr, vertical=True)
        ax.set_xscale("log")
        ax.set_xlim(left, right)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{getattr(results, name_attr)} ({results.num_samples} samples; log scale, lower is better)")
        ax.grid(alpha=0.3, axis="x", which="major")
    axes[0].set_yticks(range(len(variants)), [results.variants[v].label for v in variants])
    axes[0].invert_yaxis()  # shared: the first variant on top in both panels
    handles = [Line2D([], [], color="C0", marker="s", label=f"mean ± {confidence:.0%} t-interval"),
               Line2D([], [], color="C1", marker="o", ls="", ms=4, label="seeds"),
               *[h for h in axes[0].get_lines() if h.get_label() in ("teacher", "noise floor")]]
    if any_cut:
        handles.append(Line2D([], [], color="C0", marker="<", ls="", label="interval continues below the axis"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle(f"Final scores: mean ± {confidence:.0%} t-interval over seeds (dots: seeds)")
    fig.tight_layout()
    path = _save(fig, path)
    plt.close(fig)
    return path


def rho_sweep(results: Results, path: Path, variants: list[str], confidence: float) -> Path | None:
    points = sorted((results.variants[v].rho, v) for v in variants if results.variants[v].rho is not None)
    if len(points) < 2:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (metric, _, name_attr) in zip(axes, PANELS, strict=False):
        xs, means, lows, highs = [], [], [], []
        for rho, variant in points:
            iv = results.variants[variant].interval(metric, confidence)
            if iv.n == 0:
                continue
            xs.append(rho)
            means.append(iv.mean)
            lows.append(iv.mean - iv.low if iv.n > 1 else 0.0)
            highs.append(iv.high - iv.mean if iv.n > 1 else 0.0)
        ax.errorbar(xs, means, yerr=[lows, highs], fmt="o-", capsize=4)
        _teacher_lines(ax, results, name_attr)
        ax.set_xscale("log")
        ax.set_xlabel("rho (pool = round(rho·T)·b states)")
        ax.set_ylabel(getattr(results, name_attr))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Dynamic iterative distillation: rho sweep (mean ± {confidence:.0%} t-interval)")
    path = _save(fig, path)
    plt.close(fig)
    return path
