"""Statistics over seeds: per method × budget, the mean, sd and seed-aware 95 % interval of the
test robust AUROC and AUROC of the finished runs, and each group's difference from ``binary``
and from ``seg`` at the same budget (the numbers of ``summary.md`` and the chart).

The intervals are the two-level bootstrap of :mod:`spatialspec.metrics.seeds` (training runs,
then test images within each class, paired across the groups compared), computed by
:func:`spatialspec.evaluation.compare.compare_reports` from each run's ``report.json`` and its
predictions. Where those cannot be compared (e.g. a group whose images hold one class), the
group falls back to a t-interval over its seeds' values and ``ci_method`` says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.sweep.costs import COUNT_COLUMNS
from spatialspec.sweep.plan import REPORT

_NAN = float("nan")
METRICS = ("robust_auroc", "auroc")
#: The references every group is compared against (when the sweep holds them).
REFERENCES = ("binary", "seg")
#: Per-run quantities a group reports as the median over its finished seeds (NaN runs left out).
MEDIANS = ("n_masks", *COUNT_COLUMNS, "annotation_seconds")


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


def group_keys(frame: pd.DataFrame) -> list[str]:
    """The columns that define a group of seeds: method, budget (and specificity if swept)."""
    keys = ["method", "budget"]
    if "specificity" in frame and frame["specificity"].nunique(dropna=True) > 1:
        keys.append("specificity")
    return keys


def _label(key: tuple[Any, ...]) -> str:
    return " @ ".join(str(k) for k in key)


def _reference(keys: list[str], key: tuple[Any, ...], index: dict, method: str) -> int | None:
    """Index of the reference group for ``key``: binary (any budget), seg at the same budget
    (and specificity ``mask`` when specificity is swept)."""
    mine = dict(zip(keys, key, strict=True))
    level = mine.get("specificity")
    if key[0] == method and (level == "mask" or not isinstance(level, str)):
        return None  # the reference itself (seg at another level is compared with seg at mask)
    for other, i in index.items():
        if other[0] != method:
            continue
        if method == "binary":
            return i
        same = dict(zip(keys, other, strict=True))
        spec_ok = "specificity" not in keys or same["specificity"] == "mask"
        if same["budget"] == mine["budget"] and spec_ok:
            return i
    return None


def _fallback_row(group: pd.DataFrame) -> dict[str, Any]:
    row: dict[str, Any] = {"ci_method": "t-interval over seeds"}
    for key in METRICS:
        stats = t_interval(group[key].to_numpy(float))
        row.update(zip([f"{key}_{s}" for s in ("mean", "sd", "lo", "hi")], stats, strict=True))
    return row


def _seed_rows(
    groups: list[tuple[tuple[Any, ...], pd.DataFrame]], keys: list[str], n_resamples: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Seed-aware rows and reference pairs via compare_reports; None if they cannot be had."""
    from spatialspec.evaluation.compare import CompareError, compare_reports

    index = {key: i for i, (key, _) in enumerate(groups)}
    pairs = []
    for key, i in index.items():
        for ref in REFERENCES:
            j = _reference(keys, key, index, ref)
            if j is not None:
                pairs.append((i, j))
    paths = [[Path(d) / REPORT for d in g["run_dir"]] for _, g in groups]
    try:
        result = compare_reports(
            paths, names=[_label(k) for k, _ in groups], n_resamples=n_resamples, pairs=pairs
        )
    except (CompareError, ValueError):
        return None
    return result["reports"], result["pairs"]


def _pair_columns(pair: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for key in METRICS:
        entry = pair[key]
        lo, hi = entry["ci"]
        out.update({
            f"{prefix}_{key}_diff": _num(entry["diff"]),
            f"{prefix}_{key}_lo": _num(lo),
            f"{prefix}_{key}_hi": _num(hi),
            f"{prefix}_{key}_excludes_zero": entry["excludes_zero"],
            f"{prefix}_{key}_wins": entry.get("a_wins"),
            f"{prefix}_{key}_seed_pairs": entry.get("n_seed_pairs"),
        })  # fmt: skip
    return out


def _median(values: pd.Series) -> float:
    known = pd.to_numeric(values, errors="coerce").dropna()
    return float(known.median()) if len(known) else _NAN


def _num(value: Any) -> float:
    return _NAN if value is None else float(value)


def aggregate(frame: pd.DataFrame, n_resamples: int = 1000) -> pd.DataFrame:
    """Per method × budget (× specificity) over the finished seeds: ``n_seeds``; the median
    of :data:`MEDIANS` (masks, annotation counts and seconds); for ``robust_auroc`` and
    ``auroc`` the ``_mean``, ``_sd`` and seed-aware 95 % interval ``_lo`` / ``_hi``; and
    ``vs_binary_*`` / ``vs_seg_*`` differences (``_diff``, ``_lo``, ``_hi``,
    ``_excludes_zero``, ``_wins`` of ``_seed_pairs``) where those references ran."""
    done = frame[frame["status"] == "finished"]
    keys = group_keys(frame)
    groups = list(done.groupby(keys, sort=False, dropna=False))
    if not groups:
        return pd.DataFrame()
    seeded = _seed_rows(groups, keys, n_resamples)
    rows = []
    for i, (key, group) in enumerate(groups):
        row = dict(zip(keys, key, strict=True))
        row.update({c: _median(group[c]) for c in MEDIANS if c in group})
        row["n_seeds"] = len(group)
        if seeded is None:
            row.update(_fallback_row(group))
        else:
            rep = seeded[0][i]
            row["ci_method"] = "two-level bootstrap (seeds x images)"
            for m in METRICS:
                sd = rep.get(f"{m}_sd")
                row.update({f"{m}_mean": _num(rep[m]), f"{m}_sd": _num(sd),
                            f"{m}_lo": _num(rep[f"{m}_ci"][0]),
                            f"{m}_hi": _num(rep[f"{m}_ci"][1])})  # fmt: skip
            for pair in seeded[1]:
                if pair["a_index"] == i:
                    ref = groups[pair["b_index"]][0][0]
                    row.update(_pair_columns(pair, f"vs_{ref}"))
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}
    table["_order"] = table["method"].map(order)
    order = [
        "_order",
        "n_masks",
        *(["annotation_seconds"] if "annotation_seconds" in table else []),
    ]
    return table.sort_values(order, kind="stable").drop(columns="_order")
