"""The sweep's specificity chart: test robust AUROC against the spatial specificity level.

Drawn when a sweep has a specificity axis (``--specificities``): one line per dense method and
budget over the levels in the order swept (fine to coarse as the user listed them; each tick
names the level and its radius r where it has one), the mean over seeds with its seed-aware
95 % band (:func:`~spatialspec.sweep.aggregate.aggregate`); methods without masks (``binary``)
as horizontal bands.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from spatialspec.data.io import atomic_open
from spatialspec.sweep.plan import NO_BUDGET

SPECIFICITY_CHART = "robust_auroc_vs_specificity.png"


def _tick(level: str) -> str:
    from spatialspec.data.specificity import parse_specificity

    radius = parse_specificity(level).radius()
    if math.isnan(radius) or level == "mask":
        return level
    return f"{level}\n(r = {'image' if math.isinf(radius) else f'{radius:g}'})"


def plot_specificity(table: pd.DataFrame, path: str | Path) -> Path:
    """Robust AUROC (mean, seed-aware 95 % band) per specificity level; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = table[table["budget"] != NO_BUDGET].dropna(subset=["specificity"])
    levels = list(dict.fromkeys(dense["specificity"]))
    x_of = {level: k for k, level in enumerate(levels)}
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lines = list(dense.groupby(["method", "budget"], sort=False))
    for i, ((method, budget), group) in enumerate(lines):
        colour = colours[i % len(colours)]
        x = group["specificity"].map(x_of).to_numpy(float)
        ax.plot(x, group["robust_auroc_mean"], marker="o", color=colour,
                label=f"{method} (budget {budget})")  # fmt: skip
        lo, hi = group["robust_auroc_lo"].to_numpy(float), group["robust_auroc_hi"].to_numpy(float)
        ok = np.isfinite(lo)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.18, lw=0)
    for k, (_, row) in enumerate(table[table["budget"] == NO_BUDGET].iterrows()):
        colour = colours[(len(lines) + k) % len(colours)]
        ax.axhline(row["robust_auroc_mean"], color=colour, ls="-.", label=f"{row['method']}")
        if np.isfinite(row["robust_auroc_lo"]):
            ax.axhspan(row["robust_auroc_lo"], row["robust_auroc_hi"], color=colour, alpha=0.12)
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(levels)), [_tick(level) for level in levels], fontsize=7)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("spatial specificity of the training annotation (fine → coarse)")
    ax.set_ylabel("test robust AUROC (mean, seed-aware 95 % CI)")
    ax.set_title("Robust AUROC vs. spatial specificity", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)
