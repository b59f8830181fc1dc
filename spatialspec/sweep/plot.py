"""The sweep's chart: test robust AUROC against the number of training masks.

One line per dense method (mean and seed-aware 95 % band over seeds, symlog x so that 0 masks
shows) and a horizontal band for each method that ignores masks (``binary``), drawn from
:func:`~spatialspec.sweep.summary.aggregate` of the finished runs. Methods whose budget is one
of spurious-attribute labels (``groupdro``, ``dfr``) have no mask axis: they are drawn in the
annotation-hour chart (:mod:`spatialspec.sweep.plot_cost`) only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.data.io import atomic_open
from spatialspec.sweep.aggregate import aggregate
from spatialspec.sweep.plan import NO_BUDGET, budget_key

CHART = "robust_auroc_vs_masks.png"


def distinct_colours(n: int) -> list[Any]:
    """``n`` colours that stay apart: matplotlib's 10-colour cycle, then ``tab20`` for more."""
    import matplotlib.pyplot as plt

    if n <= 10:
        return plt.rcParams["axes.prop_cycle"].by_key()["color"][:n]
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def plot_sweep(frame: pd.DataFrame, path: str | Path, table: pd.DataFrame | None = None) -> Path:
    """Robust AUROC vs. number of masks (symlog x, so 0 shows): one line per dense method
    (mean and seed-aware 95 % band); methods without masks as horizontal bands.

    Args:
        frame: ``summary.csv``'s table.
        path: The PNG to write.
        table: :func:`~spatialspec.sweep.aggregate.aggregate` of ``frame`` if already computed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = aggregate(frame) if table is None else table
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    colours = distinct_colours(table["method"].nunique() if len(table) else 0)
    for i, (method, group) in enumerate(table.groupby("method", sort=False) if len(table) else []):
        colour = colours[i]
        if (group["budget"] == NO_BUDGET).all():
            _reference_band(ax, method, group.iloc[0], colour)
        elif budget_key(method) == "data.mask_budget":
            _curve(ax, method, group.dropna(subset=["n_masks"]), colour)
    _style_axes(ax, table)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)


def _reference_band(ax: Any, method: str, row: pd.Series, colour: str) -> None:
    mean, lo, hi = row["robust_auroc_mean"], row["robust_auroc_lo"], row["robust_auroc_hi"]
    if not np.isfinite(mean):
        return
    ax.axhline(mean, color=colour, lw=1.5, ls="-.", label=f"{method} (no masks)")
    if np.isfinite(lo):
        ax.axhspan(lo, hi, color=colour, alpha=0.12, lw=0)


def _curve(ax: Any, method: str, group: pd.DataFrame, colour: str) -> None:
    x = group["n_masks"].to_numpy(float)
    ax.plot(x, group["robust_auroc_mean"], marker="o", color=colour, label=method)
    lo, hi = group["robust_auroc_lo"].to_numpy(float), group["robust_auroc_hi"].to_numpy(float)
    ok = np.isfinite(lo)
    if ok.any():
        ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.18, lw=0)


def _style_axes(ax: Any, table: pd.DataFrame) -> None:
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=1)
    masks = sorted({int(v) for v in table.get("n_masks", pd.Series(dtype=float)).dropna()})
    if masks:
        ax.set_xticks(masks, [str(m) for m in masks])
        ax.set_xlim(-0.3, max(masks) * 1.4 + 1)
    ax.set_ylim(-0.03, 1.05)  # a curve at 0 stays visible
    ax.set_xlabel("training positives with a mask (symlog)")
    ax.set_ylabel("test robust AUROC (mean, seed-aware 95 % CI)")
    ax.set_title("Robust AUROC vs. pixel annotations", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
