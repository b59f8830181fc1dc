"""``analyze specificity``'s chart: each measure against the specificity level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialspec.data.io import atomic_open

__all__ = ["PLOTTED", "plot_measures"]

#: Measures plotted, with their axis labels.
PLOTTED = {
    "variance": "variance of annotated-positive pixels",
    "mutual_information": "I(S; Y | Ỹ = 1) [bits]",
    "spurious_share": "spurious share of annotated pixels",
}


def plot_measures(result: dict[str, Any], path: str | Path) -> Path:
    """One panel per measure against the level (in the order given); a line joins the levels
    with a radius (``mask``, ``dilate:R``, ``image``), ``box`` and ``grid:K`` stand alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["levels"]
    names = [row["specificity"] for row in rows]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.0 * len(PLOTTED), 3.4), dpi=120)
    for ax, (measure, label) in zip(axes, PLOTTED.items(), strict=True):
        values = [float("nan") if row[measure] is None else row[measure] for row in rows]
        ax.plot(range(len(names)), values, marker="o", ls="none", color="C0")
        # A line only through the levels with a radius (mask, dilate:R, image): box and grid
        # cells are not on the dilation chain.
        chain = [i for i, row in enumerate(rows) if row["radius"] is not None]
        if len(chain) > 1:
            ax.plot(chain, [values[i] for i in chain], color="C0", alpha=0.6,
                    label="levels with a radius r")  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{Path(result['manifest']).parent.name or 'manifest'} / {result['split']}: "
                 "measures vs. spatial specificity", fontsize=10)  # fmt: skip
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)
