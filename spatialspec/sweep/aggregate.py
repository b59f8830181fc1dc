"""Statistics over seeds: per method × budget, the mean, sd and 95 % t-interval of the test
robust AUROC and AUROC of the finished runs (the numbers of ``summary.md`` and the chart)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

_NAN = float("nan")


def t_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, sd (n-1) and the 95 % t-interval of the mean; NaN where undefined (n < 2).

    The interval is clipped to [0, 1], the range of an AUROC (with 2 seeds, t(1) = 12.7
    makes the raw interval far wider than that).
    """
    from scipy import stats

    values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return _NAN, _NAN, _NAN, _NAN
    mean = float(values.mean())
    if n < 2:
        return mean, _NAN, _NAN, _NAN
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, sd, max(0.0, mean - half), min(1.0, mean + half)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method × budget over the finished seeds: ``n_seeds``, and for ``robust_auroc`` and
    ``auroc`` the ``_mean``, ``_sd`` and 95 % t-interval ``_lo`` / ``_hi`` of the mean."""
    done = frame[frame["status"] == "finished"]
    rows = []
    for (method, budget), group in done.groupby(["method", "budget"], sort=False):
        row = {
            "method": method,
            "budget": budget,
            "n_masks": group["n_masks"].dropna().median(),
            "n_seeds": len(group),
        }
        for key in ("robust_auroc", "auroc"):
            stats = t_interval(group[key].to_numpy(float))
            row.update(zip([f"{key}_{s}" for s in ("mean", "sd", "lo", "hi")], stats, strict=True))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    table["_order"] = table["method"].map(order)
    return table.sort_values(["_order", "n_masks"], kind="stable").drop(columns="_order")
