"""Summaries of a sweep from its run folders: ``summary.csv``, ``summary.md``, the chart.

* ``summary.csv``: one row per planned run (:data:`SUMMARY_COLUMNS`), whatever its state;
* ``summary.md``: mean ± sd and the mean with a seed-aware 95 % interval over the finished seeds
  per method × budget, the differences from binary and from seg at the same budget, the chart,
  the unfinished runs and the sweep's wall time;
* ``robust_auroc_vs_masks.png`` (:mod:`spatialspec.sweep.plot`);
* ``robust_auroc_vs_annotation_hours.png`` (:mod:`spatialspec.sweep.plot_cost`): robust AUROC
  against the annotation time each run consumed, priced by the sweep's costs
  (:mod:`spatialspec.sweep.costs`), with its table in ``summary.md``.

Everything is read from the folders (:func:`~spatialspec.sweep.status.run_state`), so
``spatialspec sweep --out DIR --collect`` summarises the finished runs of a sweep still in
flight on any launcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from spatialspec.data.budget import apply_mask_budget
from spatialspec.data.io import atomic_open
from spatialspec.data.manifest import load_manifest
from spatialspec.runinfo import write_json_atomic, write_text_atomic
from spatialspec.sweep.aggregate import aggregate
from spatialspec.sweep.costs import (
    ANNOTATION_COLUMNS,
    COST_SOURCES,
    COUNT_COLUMNS,
    DEFAULT_COSTS,
    annotation_row,
    resolve_costs,
)
from spatialspec.sweep.folder import SWEEP_JSON
from spatialspec.sweep.plan import REPORT, RUN_INFO, SweepRun, run_dir_of
from spatialspec.sweep.plot import CHART, plot_sweep
from spatialspec.sweep.plot_cost import COST_CHART, plot_cost
from spatialspec.sweep.plot_specificity import SPECIFICITY_CHART, plot_specificity
from spatialspec.sweep.status import read_json, run_state

#: Columns of ``summary.csv``, in order (``<kind>_images``: images per annotation kind the run
#: consumed; ``annotation_seconds``: their price; ``annotation_source``: ``run.json``,
#: ``reconstructed`` or ``unknown: <why>``; see :mod:`spatialspec.sweep.costs`).
SUMMARY_COLUMNS = (
    "method", "budget", "specificity", "n_masks", "seed", "robust_auroc", "robust_auroc_lo",
    "robust_auroc_hi", "auroc", "auroc_lo", "auroc_hi", "n_robust", "run_dir", "status", "seconds",
    *ANNOTATION_COLUMNS, "error",
)  # fmt: skip
_NAN = float("nan")
_NO_ANNOTATIONS = {**dict.fromkeys(ANNOTATION_COLUMNS, _NAN), "annotation_source": ""}


# ---------------------------------------------------------------------------------------------
# One row per run
# ---------------------------------------------------------------------------------------------


def _n_masks(run: SweepRun, run_dir: Path, manifests: dict[str, pd.DataFrame]) -> float:
    """Training positives that kept their masks in this run: the data module's own record in
    ``run.json``, else the budget of the run's resolved config applied to its manifest (0 for a
    method trained without masks, whose budget, if any, is of attributes)."""
    if not run.uses_masks:
        return 0
    recorded = (read_json(run_dir / "run.json") or {}).get("mask_budget") or {}
    if "n_masks" in recorded:
        return int(recorded["n_masks"])
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
        if data.get("mask_budget") is None and data.get("attribute_budget") is not None:
            return 0  # the sweep's budget of this run is one of attributes (groupdro, dfr)
        path = str(data["manifest"])
        if path not in manifests:
            manifests[path] = load_manifest(path, check_files=False)
        budget = data.get("mask_budget")
        _, info = apply_mask_budget(
            manifests[path],
            "all" if budget is None else budget,
            seed=int(data.get("budget_seed") or 0),
        )
    except (OSError, KeyError, TypeError, ValueError):
        return _NAN
    return int(info["n_masks"])


def _seconds(run_dir: Path) -> float:
    recorded = read_json(run_dir / RUN_INFO) or {}
    if recorded.get("status") == "finished" and recorded.get("seconds") is not None:
        return float(recorded["seconds"])
    fit = (read_json(run_dir / "run.json") or {}).get("fit_seconds")
    return _NAN if fit is None else float(fit)


def _metrics(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("robust_auroc", "auroc"):
        lo, hi = report.get(f"{key}_ci") or (None, None)
        for name, value in ((key, report.get(key)), (f"{key}_lo", lo), (f"{key}_hi", hi)):
            out[name] = _NAN if value is None else float(value)
    out["n_robust"] = report.get("n_robust", _NAN)
    return out


def collect_summary(
    out: str | Path, runs: Sequence[SweepRun], costs: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """One row per run of ``runs`` from the run folders below ``out`` (:data:`SUMMARY_COLUMNS`).

    ``status`` is the run's :func:`~spatialspec.sweep.status.run_state` (finished, running,
    pending or failed, with the failure's last line in ``error``); the metrics and annotation
    counts of unfinished runs are NaN. ``costs``: seconds per annotated image of each kind
    (default :data:`~spatialspec.sweep.costs.DEFAULT_COSTS`).
    """
    costs = resolve_costs(costs)
    manifests: dict[str, pd.DataFrame] = {}
    counted: dict[str, dict[str, Any]] = {}
    rows = []
    for run in runs:
        run_dir = run_dir_of(out, run)
        state = run_state(run_dir)
        finished = state.status == "finished"
        report = read_json(run_dir / REPORT) if finished else None
        row = {
            "method": run.method,
            "budget": run.budget,
            "specificity": run.specificity,
            "n_masks": _n_masks(run, run_dir, manifests),
            "seed": run.seed,
            **_metrics(report or {}),
            "run_dir": str(run_dir),
            "status": state.status,
            "seconds": _seconds(run_dir) if finished else _NAN,
            **(annotation_row(run_dir, costs, counted) if finished else _NO_ANNOTATIONS),
            "error": state.detail if state.status == "failed" else "",
        }
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    frame["n_masks"] = frame["n_masks"].astype("Int64")
    frame["n_robust"] = frame["n_robust"].astype("Int64")
    for column in COUNT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    return frame


def _fmt(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.3f}"


def _mean_sd(row: pd.Series, key: str) -> str:
    mean, sd = row[f"{key}_mean"], row[f"{key}_sd"]
    return _fmt(mean) if not np.isfinite(sd) else f"{mean:.3f} ± {sd:.3f}"


def _mean_ci(row: pd.Series, key: str) -> str:
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    return _fmt(row[f"{key}_mean"]) + ("" if not np.isfinite(lo) else f" [{lo:.3f}, {hi:.3f}]")


# ---------------------------------------------------------------------------------------------
# summary.md and the files
# ---------------------------------------------------------------------------------------------


def _diff_cell(row: pd.Series, prefix: str) -> str:
    """``+0.412 [0.301, 0.520] * (3/3)``: a difference, its seed-aware CI, seed-pair wins."""
    key = f"{prefix}_robust_auroc"
    if f"{key}_diff" not in row or not np.isfinite(row[f"{key}_diff"]):
        return "–"
    star = " *" if row[f"{key}_excludes_zero"] is True else ""
    wins = row.get(f"{key}_wins")
    pairs = row.get(f"{key}_seed_pairs")
    seeds = "" if pd.isna(wins) or pd.isna(pairs) or pairs <= 1 else f" ({int(wins)}/{int(pairs)})"
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    return f"{row[f'{key}_diff']:+.3f} [{lo:.3f}, {hi:.3f}]{star}{seeds}"


def _table(frame: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    return aggregate(frame, n_resamples=int(info.get("settings", {}).get("n_resamples", 1000)))


def summary_markdown(
    frame: pd.DataFrame, info: dict[str, Any], table: pd.DataFrame | None = None
) -> str:
    """``summary.md``: the method × budget table, the chart, and the unfinished runs."""
    table = _table(frame, info) if table is None else table
    spec = "specificity" in table
    lines = [
        "# spatialspec sweep: robust AUROC vs. pixel annotations",
        "",
        f"Config `{info.get('config')}`; overrides `{' '.join(info['settings']['overrides'])}`; "
        f"seeds {', '.join(map(str, info.get('seeds', [])))}.",
        "",
        "Test robust AUROC (images where the spurious feature disagrees with the label; 0.5 is "
        "chance) over training seeds: mean ± sd, and the mean with a seed-aware 95 % CI "
        "(two-level bootstrap: seeds resampled per group, then test images within each class). "
        "`vs binary` / `vs seg`: the difference of the means from binary and from seg at the "
        "same budget, with the same two-level CI (paired on the images); * marks a CI that "
        "excludes 0, (w/n) the seed pairs in which the row beat the reference. `masks`: "
        "training positives that kept their pixel annotation; `binary` uses none (budget `-`); "
        "the budget of `groupdro` / `dfr` is one of spurious-attribute labels.",
        "",
        "| method | budget |" + (" specificity |" if spec else "") + " masks | seeds | robust "
        "AUROC mean ± sd | robust AUROC [95 % CI] | vs binary | vs seg | AUROC mean ± sd | "
        "AUROC [95 % CI] |",
        "|---|---|" + ("---|" if spec else "") + "---:|---:|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        masks = "–" if pd.isna(row["n_masks"]) else f"{int(row['n_masks'])}"
        level = row["specificity"] if spec and isinstance(row["specificity"], str) else "–"
        specificity = f" {level} |" if spec else ""
        lines.append(
            f"| {row['method']} | {row['budget']} |{specificity} {masks} | {row['n_seeds']} | "
            f"{_mean_sd(row, 'robust_auroc')} | {_mean_ci(row, 'robust_auroc')} | "
            f"{_diff_cell(row, 'vs_binary')} | {_diff_cell(row, 'vs_seg')} | "
            f"{_mean_sd(row, 'auroc')} | {_mean_ci(row, 'auroc')} |"
        )
    if not table.empty and (table["ci_method"] != "two-level bootstrap (seeds x images)").any():
        lines += ["", "CIs fell back to a t-interval over seeds: the runs' predictions could "
                  "not be compared image by image (see the runs' report.json)."]  # fmt: skip
    lines += ["", f"![robust AUROC vs. masks]({CHART})", ""]
    if spec:
        lines += [f"![robust AUROC vs. spatial specificity]({SPECIFICITY_CHART})", ""]
    lines += _cost_lines(frame, table, info)
    lines += _unfinished_lines(frame)
    lines.append(_wall_line(len(frame), info))
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return "–" if not np.isfinite(seconds) else f"{seconds / 3600:.3g}"


def _count(value: Any) -> str:
    return "–" if pd.isna(value) else f"{int(value)}"


def _per_hour(row: pd.Series, base_seconds: float) -> str:
    """The difference from binary (and its seed-aware CI) per extra annotation hour."""
    diff = row.get("vs_binary_robust_auroc_diff", _NAN)
    extra = (row["annotation_seconds"] - base_seconds) / 3600
    if not (np.isfinite(diff) and np.isfinite(extra) and extra > 0):
        return "–"
    lo, hi = row["vs_binary_robust_auroc_lo"], row["vs_binary_robust_auroc_hi"]
    ci = f" [{lo / extra:+.3g}, {hi / extra:+.3g}]" if np.isfinite(lo) else ""
    return f"{diff / extra:+.3g}{ci}"


def _cost_text(costs: dict[str, float]) -> list[str]:
    priced = ", ".join(f"{kind} {seconds:g} s" for kind, seconds in costs.items())
    sources = [
        f"- `{kind}`: "
        + (COST_SOURCES[kind] if seconds == DEFAULT_COSTS[kind] else "set for this sweep")
        + "."
        for kind, seconds in costs.items()
    ]
    return [
        f"Annotation time each run consumed, at {priced} per annotated image (`--costs`): "
        "`labels` = training and validation images whose label the run used (model selection "
        "reads val labels); `masks` / `boxes` = training positives whose pixel annotation the "
        "method trained on (and val ones under monitor `val/loss`; a negative's known-empty "
        "mask follows from its label and costs nothing more); `attributes` = "
        "spurious-attribute labels trained on (`groupdro`: train, `dfr`: val) or selected on "
        "(monitor `val/robust_auroc`). The default costs are published times on natural "
        "images, per object, **not measured on medical images**:",
        "",
        *sources,
        "",
    ]


def _cost_lines(frame: pd.DataFrame, table: pd.DataFrame, info: dict[str, Any]) -> list[str]:
    """``summary.md``'s robust AUROC per annotation hour: the table and the chart."""
    if table.empty or "annotation_seconds" not in table:
        return []
    spec = "specificity" in table
    binary = table[table["method"] == "binary"]["annotation_seconds"]
    base = float(binary.iloc[0]) if len(binary) else _NAN
    lines = [
        "## Robust AUROC per annotation hour",
        "",
        *_cost_text(resolve_costs(info.get("costs"))),
    ]
    lines += [
        "| method | budget |" + (" specificity |" if spec else "") + " labels | masks | boxes | "
        "attributes | hours | robust AUROC [95 % CI] | vs binary per extra hour [95 % CI] |",
        "|---|---|" + ("---|" if spec else "") + "---:|---:|---:|---:|---:|---|---|",
    ]
    for _, row in table.iterrows():
        level = row["specificity"] if spec and isinstance(row["specificity"], str) else "–"
        counts = " | ".join(_count(row.get(c)) for c in COUNT_COLUMNS)
        lines.append(
            f"| {row['method']} | {row['budget']} |" + (f" {level} |" if spec else "")
            + f" {counts} | {_hours(row['annotation_seconds'])} | "
            f"{_mean_ci(row, 'robust_auroc')} | {_per_hour(row, base)} |"
        )  # fmt: skip
    lines += ["", f"![robust AUROC vs. annotation hours]({COST_CHART})", ""]
    return lines + _source_notes(frame)


def _source_notes(frame: pd.DataFrame) -> list[str]:
    """Finished runs whose counts were rebuilt from their config, or are unknown."""
    done = frame[frame["status"] == "finished"]
    source = done["annotation_source"].astype(str)
    lines = []
    rebuilt = int((source == "reconstructed").sum())
    if rebuilt:
        lines.append(
            f"{rebuilt} run(s) predate `run.json`'s `annotations`: their counts were rebuilt "
            "from their saved config and manifest as a fit counts them."
        )
    unknown = done[source.str.startswith("unknown")]
    if len(unknown):
        lines.append(
            f"**{len(unknown)} run(s) with unknown annotation counts** (left out of the hours, "
            "never counted as 0):"
        )
        lines += [f"- `{r.run_dir}`: {r.annotation_source}" for r in unknown.itertuples()]
    return [*lines, ""] if lines else []


def _wall_line(n_runs: int, info: dict[str, Any]) -> str:
    """Wall time of the sweep: every invocation's that waited for its runs (not a submission
    that returned at once), so a no-op resume does not hide the work."""
    history = [h for h in info.get("invocations") or [] if h.get("waited", True)]
    if not history:
        return f"{n_runs} runs."
    line = f"{n_runs} runs; wall time {sum(h['wall_seconds'] for h in history):.0f} s"
    if len(history) == 1:
        return line + "."
    last = history[-1]
    return line + (
        f" over {len(history)} invocations (the last trained {last['runs_run']} run(s) in "
        f"{last['wall_seconds']:.0f} s)."
    )


def _unfinished_lines(frame: pd.DataFrame) -> list[str]:
    lines = []
    for status in ("failed", "running", "pending"):
        rows = frame[frame["status"] == status]
        if rows.empty:
            continue
        hint = "still in flight" if status == "running" else "re-run the command to retry"
        lines.append(f"**{status} runs** ({len(rows)}; {hint}):")
        lines += [f"- `{r.run_dir}` {r.error}".rstrip() for r in rows.itertuples()]
        lines.append("")
    return lines


def write_summaries(out: str | Path, frame: pd.DataFrame, info: dict[str, Any]) -> None:
    """Write ``summary.csv``, ``summary.md``, the chart and ``sweep.json`` (all atomically)."""
    out = Path(out)
    with atomic_open(out / "summary.csv", "w", newline="") as fh:
        frame.to_csv(fh, index=False)
    table = _table(frame, info)
    plot_sweep(frame, out / CHART, table)
    plot_cost(table, out / COST_CHART)
    if "specificity" in table:
        plot_specificity(table, out / SPECIFICITY_CHART)
    write_text_atomic(out / "summary.md", summary_markdown(frame, info, table))
    counts = frame["status"].value_counts().to_dict()
    status = "complete" if counts.get("finished", 0) == len(frame) else "incomplete"
    write_json_atomic(out / SWEEP_JSON, {**info, "status": status, "counts": counts})
