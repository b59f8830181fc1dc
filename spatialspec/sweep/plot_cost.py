"""The sweep's cost chart: test robust AUROC against the annotation hours each run consumed.

One point per method × budget (× specificity): the mean over seeds with its seed-aware 95 %
interval as an error bar (:func:`~spatialspec.sweep.aggregate.aggregate`), at the median
annotation hours of its runs (:mod:`spatialspec.sweep.costs`); a method's budgets are joined in
order of hours and each point is tagged with its budget. The x axis is logarithmic (symlog when
some group consumed no priced annotation at all), so a label-only method and a fully masked one
fit on one chart. Read it as: the higher a point at the same hours, the more robustness that
annotation bought per hour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.data.io import atomic_open
from spatialspec.sweep.plan import NO_BUDGET
from spatialspec.sweep.plot import distinct_colours

COST_CHART = "robust_auroc_vs_annotation_hours.png"


def _lines(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(legend label, its groups sorted by hours) per method (and specificity when swept)."""
    keys = ["method", "specificity"] if "specificity" in table else ["method"]
    out = []
    for key, group in table.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        level = key[1] if len(key) > 1 and isinstance(key[1], str) else None
        label = str(key[0]) if level is None else f"{key[0]} @ {level}"
        out.append((label, group.sort_values("hours", kind="stable")))
    return out


#: Markers cycled over the lines, so that lines of similar colours stay apart.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _draw(ax: Any, label: str, group: pd.DataFrame, colour: Any, marker: str) -> None:
    x = group["hours"].to_numpy(float)
    y = group["robust_auroc_mean"].to_numpy(float)
    lo, hi = group["robust_auroc_lo"].to_numpy(float), group["robust_auroc_hi"].to_numpy(float)
    err = np.vstack([np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)])
    ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker=marker, color=colour, capsize=3,
                lw=1.2, label=label)  # fmt: skip
    for xi, yi, budget in zip(x, y, group["budget"], strict=True):
        if budget != NO_BUDGET:
            ax.annotate(str(budget), (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize=6, color=colour)  # fmt: skip


def plot_cost(table: pd.DataFrame, path: str | Path) -> Path:
    """Robust AUROC (mean, seed-aware 95 % CI) against annotation hours; returns ``path``.

    Args:
        table: :func:`~spatialspec.sweep.aggregate.aggregate` of the summary (with
            ``annotation_seconds``); groups whose hours are unknown are left out.
        path: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table.copy()
    table["hours"] = pd.to_numeric(table.get("annotation_seconds"), errors="coerce") / 3600
    known = table.dropna(subset=["hours", "robust_auroc_mean"]) if len(table) else table
    lines = _lines(known) if len(known) else []
    fig, ax = plt.subplots(figsize=(6.4 + (1.4 if len(lines) > 6 else 0), 4.0), dpi=120)
    colours = distinct_colours(len(lines))
    for i, (label, group) in enumerate(lines):
        _draw(ax, label, group, colours[i], MARKERS[i % len(MARKERS)])
    _style_axes(ax, known)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)


def _style_axes(ax: Any, known: pd.DataFrame) -> None:
    hours = known["hours"].to_numpy(float) if len(known) else np.array([])
    if hours.size and (hours > 0).all():
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.3, 1, 20: no 10^x notation
        ax.xaxis.set_major_formatter(plain)  # minor labels only where they do not crowd
        ax.xaxis.set_minor_formatter(plain if hours.max() < 10 * hours.min() else NullFormatter())
        ax.set_xlabel("annotation hours consumed (log)")
    else:
        positive = hours[hours > 0]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
        ax.set_xlabel("annotation hours consumed (symlog)")
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("test robust AUROC (mean, seed-aware 95 % CI)")
    ax.set_title("Robust AUROC per annotation hour", fontsize=10)
    handles = ax.get_legend_handles_labels()[0]
    if len(handles) > 6:  # beside the axes: inside, a dozen entries hide points
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    elif handles:
        ax.legend(loc="best", fontsize=8)
