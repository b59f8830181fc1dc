"""``spatialspec compare``: methods side by side, with seed-aware bootstrap differences.

Each input is one report or a *group*: the reports of one method's training runs (seeds), given
on the command line as ``NAME=GLOB`` (``seg='runs/seg/seed-*/report.json'``). Every pair of
groups is compared on the images of the evaluated split that all of their runs scored (the
*shared* images). Differences read ``A − B`` where, for inputs given in the order ``G1 G2 ...``,
A is the *later* input and B the earlier one: ``compare binary=... seg=...`` gives
``seg − binary``, so the first input acts as the baseline.

The difference of the means over runs gets the two-level bootstrap interval of
:func:`spatialspec.metrics.seeds.seed_bootstrap_diff` (training runs resampled per method, test
images within each class, the same image resample for both methods). With one report per input
it is today's paired image bootstrap. ``excludes_zero`` says whether the interval excludes 0;
``a_wins`` counts the seed pairs in which A beat B.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec._text import first_few
from spatialspec.data.manifest import ManifestError, load_manifest
from spatialspec.evaluation.compare_render import (
    compare_html,
    compare_markdown,
    format_diff,
    pair_line,
    write_compare,
)
from spatialspec.evaluation.report import PredictionsError, read_predictions
from spatialspec.evaluation.runner import predictions_path
from spatialspec.metrics import robust_subgroup_mask
from spatialspec.metrics.seeds import seed_bootstrap_diff, seed_bootstrap_mean
from spatialspec.runinfo import run_metadata

__all__ = [
    "CompareError",
    "add_compare_parser",
    "compare_html",
    "compare_markdown",
    "compare_reports",
    "expand_inputs",
    "format_diff",
    "load_report",
    "pair_line",
    "run_compare",
    "write_compare",
]

METRICS = ("auroc", "robust_auroc")
REPORT_FIELDS = ("split", "n", "auroc", "auroc_ci", "robust_auroc", "robust_auroc_ci", "n_robust")


class CompareError(ValueError):
    """Reports cannot be loaded or compared; the message names the file or the reports."""


# --------------------------------------------------------------------------- loading


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report JSON and the per-image scores behind it.

    The scores are ``metadata["predictions"]`` when that file exists, else
    ``<report stem>.predictions.csv`` beside the report (what ``evaluate --checkpoint`` writes).

    Args:
        path: The report JSON.

    Returns:
        ``{"path", "report", "predictions", "predictions_path"}``: the report path, the report
        dict, the predictions frame (``image_id``, ``score``, ...) and the CSV it came from.

    Raises:
        CompareError: Naming the file when the report or its predictions are missing or
            malformed.
    """
    path = Path(path)
    report = _read_report_json(path)
    pred_path = _find_predictions(path, report)
    try:
        predictions = read_predictions(pred_path)
    except (PredictionsError, ValueError, OSError) as err:
        raise CompareError(f"report {path}: cannot read its predictions: {err}") from err
    return {
        "path": path,
        "report": report,
        "predictions": predictions,
        "predictions_path": pred_path,
    }


def _read_report_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CompareError(f"report not found: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CompareError(f"{path}: not a readable JSON report: {err}") from err
    if not isinstance(report, dict):
        raise CompareError(f"{path}: not a report (expected a JSON object)")
    missing = [f for f in REPORT_FIELDS if f not in report]
    if missing:
        raise CompareError(f"{path}: not a spatialspec report; missing field(s) {missing}")
    if not isinstance(report.get("metadata"), dict) or not report["metadata"].get("manifest"):
        raise CompareError(f"{path}: metadata.manifest is missing (needed for labels and splits)")
    return report


def _locate(value: str, base: Path) -> Path:
    """``value`` as a path; a relative one that does not exist is tried against ``base``."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return base / candidate


def _find_predictions(path: Path, report: dict[str, Any]) -> Path:
    beside = predictions_path(path)
    recorded = report["metadata"].get("predictions")
    if recorded and _locate(recorded, path.parent).is_file():
        return _locate(recorded, path.parent)
    if beside.is_file():
        return beside
    tried = ([str(_locate(recorded, path.parent))] if recorded else []) + [str(beside)]
    raise CompareError(f"report {path}: predictions file not found (tried {', '.join(tried)})")


def _load_split(loaded: dict[str, Any], cache: dict[Path, pd.DataFrame]) -> pd.DataFrame:
    """The evaluated split's manifest rows that the report scored, with a ``score`` column."""
    path, report = loaded["path"], loaded["report"]
    manifest = _locate(report["metadata"]["manifest"], path.parent).resolve()
    if manifest not in cache:
        try:
            cache[manifest] = load_manifest(manifest, check_files=False)
        except (FileNotFoundError, ManifestError) as err:
            raise CompareError(f"report {path}: cannot read its manifest: {err}") from err
    frame = cache[manifest]
    part = frame.loc[frame["split"] == report["split"], ["image_id", "label", "spurious"]]
    scores = loaded["predictions"][["image_id", "score"]]
    merged = part.merge(scores, on="image_id", how="inner")
    merged.attrs["manifest"] = str(manifest)
    return merged


# --------------------------------------------------------------------------- inputs and groups


def expand_inputs(tokens: Sequence[str]) -> tuple[list[list[Path]], list[str | None]]:
    """Command-line inputs -> groups of report paths and their names (None: a default name).

    A token is a report path, or ``NAME=GLOB`` for one method's runs over training seeds (the
    glob is expanded here, so it may be quoted; ``**`` matches folders recursively). A token
    that names an existing file is a path even if it holds ``=``.

    Raises:
        CompareError: A ``NAME=GLOB`` matches no file, or a name is empty.
    """
    groups: list[list[Path]] = []
    names: list[str | None] = []
    for token in tokens:
        name, sep, pattern = token.partition("=")
        if not sep or Path(token).is_file():
            groups.append([Path(token)])
            names.append(None)
            continue
        if not name.strip():
            raise CompareError(f"{token!r}: expected NAME=GLOB with a non-empty NAME")
        found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        found = [p for p in found if Path(p).is_file()]
        if not found:
            raise CompareError(f"{name}={pattern}: no report file matches the pattern")
        groups.append([Path(p) for p in found])
        names.append(name.strip())
    return groups, names


def _as_groups(inputs: Sequence[Any]) -> list[list[Path]]:
    groups = []
    for item in inputs:
        if isinstance(item, (str, Path)):
            groups.append([Path(item)])
        else:
            group = [Path(p) for p in item]
            if not group:
                raise CompareError("an input group holds no reports")
            groups.append(group)
    return groups


def _seed(loaded: dict[str, Any]) -> Any:
    return loaded["report"]["metadata"].get("seed")


def _group_frame(name: str, runs: list[dict[str, Any]], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Labels of the images every run of a group scored, with one ``score<k>`` column per run."""
    joined = frames[0].rename(columns={"score": "score0"})
    for k, frame in enumerate(frames[1:], start=1):
        right = frame.rename(columns={"label": "label_r", "spurious": "spurious_r"})
        joined = joined.merge(right.rename(columns={"score": f"score{k}"}), on="image_id")
        for column in ("label", "spurious"):
            a, b = joined[column].to_numpy(float), joined[f"{column}_r"].to_numpy(float)
            bad = ~((a == b) | (np.isnan(a) & np.isnan(b)))
            if bad.any():
                raise CompareError(
                    f"{name}: runs {runs[0]['path']} and {runs[k]['path']} disagree on {column} "
                    f"for {int(bad.sum())} image(s): "
                    f"{first_few(list(joined['image_id'][bad]), 'images')}"
                )
        joined = joined.drop(columns=["label_r", "spurious_r"])
    if joined.empty:
        raise CompareError(f"{name}: its {len(runs)} runs share no scored images")
    joined.attrs["manifest"] = frames[0].attrs["manifest"]
    return joined


def _scores(frame: pd.DataFrame, n_runs: int, suffix: str = "") -> list[np.ndarray]:
    return [frame[f"score{k}{suffix}"].to_numpy(float) for k in range(n_runs)]


# --------------------------------------------------------------------------- names and rows


def _default_names(groups: list[list[dict[str, Any]]]) -> list[str]:
    """Method, else method + seed, else the file stem; the first that makes names unique."""
    firsts = [g[0] for g in groups]
    metas = [item["report"]["metadata"] for item in firsts]
    candidates: list[list[str]] = []
    if all(m.get("method") for m in metas):
        candidates.append([str(m["method"]) for m in metas])
        if all(m.get("seed") is not None for m in metas) and all(len(g) == 1 for g in groups):
            candidates.append([f"{m['method']} (seed {m['seed']})" for m in metas])
    candidates.append([item["path"].stem for item in firsts])
    candidates.append([f"{item['path'].parent.name}/{item['path'].stem}" for item in firsts])
    for names in candidates:
        if len(set(names)) == len(names):
            return names
    return [f"{item['path'].stem} #{k + 1}" for k, item in enumerate(firsts)]


def _check_names(names: Sequence[str], n_inputs: int) -> list[str]:
    names = [str(n).strip() for n in names]
    if len(names) != n_inputs:
        raise CompareError(f"got {len(names)} name(s) for {n_inputs} inputs: {names}")
    if len(set(names)) != len(names) or not all(names):
        raise CompareError(f"names must be unique and non-empty, got {names}")
    return names


def _resolve_names(
    given: Sequence[str | None] | None, groups: list[list[dict[str, Any]]]
) -> list[str]:
    defaults = _default_names(groups)
    if given is None:
        return defaults
    if len(given) != len(groups):
        return _check_names([n or "" for n in given], len(groups))
    return _check_names([n if n else d for n, d in zip(given, defaults, strict=True)], len(groups))


def _single_row(name: str, loaded: dict[str, Any]) -> dict[str, Any]:
    r, meta = loaded["report"], loaded["report"]["metadata"]
    return {
        "name": name,
        "path": str(loaded["path"]),
        "split": r["split"],
        "n": r["n"],
        "n_runs": 1,
        "seeds": [meta.get("seed")],
        "auroc": r["auroc"],
        "auroc_ci": r["auroc_ci"],
        "robust_auroc": r["robust_auroc"],
        "robust_auroc_ci": r["robust_auroc_ci"],
        "n_robust": r["n_robust"],
        "worst_group_accuracy": r.get("worst_group_accuracy"),
        "dataset": r.get("dataset"),
        "method": meta.get("method"),
        "pooling": meta.get("pooling"),
        "seed": meta.get("seed"),
        "manifest": meta.get("manifest"),
        "predictions": str(loaded["predictions_path"]),
    }


def _common(values: list[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values) else None


def _run_entry(loaded: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(loaded["path"]), "seed": _seed(loaded),
            "predictions": str(loaded["predictions_path"])}  # fmt: skip


def _group_row(
    name: str, runs: list[dict[str, Any]], frame: pd.DataFrame, boot: dict[str, Any]
) -> dict[str, Any]:
    """One method over its runs: mean metrics on the shared images, two-level intervals."""
    if len(runs) == 1:
        return _single_row(name, runs[0])
    labels = frame["label"].to_numpy(int)
    spurious = frame["spurious"].to_numpy(float)
    row: dict[str, Any] = {"name": name, "path": str(runs[0]["path"].parent.parent)}
    reports = [r["report"] for r in runs]
    metas = [r["metadata"] for r in reports]
    row.update(split=reports[0]["split"], n=len(frame), n_runs=len(runs),
               seeds=[m.get("seed") for m in metas])  # fmt: skip
    for metric in METRICS:
        try:
            res = seed_bootstrap_mean(
                _scores(frame, len(runs)), labels,
                spurious if metric == "robust_auroc" else None, metric=metric, **boot,
            )  # fmt: skip
        except ValueError:  # one class only in the evaluated set
            res = {"mean": None, "ci": [None, None], "sd": None, "runs": [None] * len(runs)}
        row.update({metric: res["mean"], f"{metric}_ci": res["ci"], f"{metric}_sd": res["sd"],
                    f"{metric}_runs": res["runs"]})  # fmt: skip
    row["n_robust"] = int(robust_subgroup_mask(labels, spurious).sum())
    wga = [r.get("worst_group_accuracy") for r in reports]
    row["worst_group_accuracy"] = None if None in wga else float(np.mean(wga))
    row.update(
        dataset=_common([r.get("dataset") for r in reports]),
        method=_common([m.get("method") for m in metas]),
        pooling=_common([m.get("pooling") for m in metas]),
        seed=None,
        manifest=frame.attrs["manifest"],
        runs=[_run_entry(r) for r in runs],
    )
    return row


# --------------------------------------------------------------------------- pairs


def _shared(
    a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str], metrics: Sequence[str]
) -> pd.DataFrame:
    """Rows of A's frame on the images B scored too, after checking labels (and spurious)."""
    joined = a.merge(b, on="image_id", how="inner", suffixes=("_a", "_b"))
    if joined.empty:
        raise CompareError(
            f"{names[0]} and {names[1]} share no scored images "
            f"({len(a)} and {len(b)} images; manifests {a.attrs['manifest']}, "
            f"{b.attrs['manifest']})"
        )
    _check_agree(joined, "label", names)
    if "robust_auroc" in metrics:
        _check_agree(joined, "spurious", names, hint="; compare with metric='auroc' only")
    return joined


def _check_agree(joined: pd.DataFrame, column: str, names: tuple[str, str], hint: str = "") -> None:
    va, vb = joined[f"{column}_a"].to_numpy(float), joined[f"{column}_b"].to_numpy(float)
    bad = ~((va == vb) | (np.isnan(va) & np.isnan(vb)))
    if bad.any():
        rows = [
            f"{i} ({va[k]:g} vs {vb[k]:g})"
            for k, i in zip(np.flatnonzero(bad), joined["image_id"][bad], strict=True)
        ]
        raise CompareError(
            f"{names[0]} and {names[1]} disagree on {column} for {int(bad.sum())} shared "
            f"image(s): {first_few(rows, 'images')}{hint}"
        )


def _diff(
    joined: pd.DataFrame,
    metric: str,
    runs: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    boot: dict[str, Any],
) -> dict[str, Any]:
    """Seed-aware bootstrap of ``metric(A) − metric(B)``; ``diff`` is None where undefined."""
    labels = joined["label_a"].to_numpy(int)
    spurious = joined["spurious_a"].to_numpy(float)
    evaluated = labels
    if metric == "robust_auroc":
        evaluated = labels[robust_subgroup_mask(labels, spurious)]
    n_pos, n_neg = int(evaluated.sum()), int((evaluated == 0).sum())
    out: dict[str, Any] = {"n": int(evaluated.size), "n_positive": n_pos, "n_negative": n_neg}
    runs_a, runs_b = runs
    if not (n_pos and n_neg):
        return {**out, "metric_a": None, "metric_b": None, "diff": None, "ci": [None, None],
                "excludes_zero": None, "n_runs_a": len(runs_a), "n_runs_b": len(runs_b),
                "per_seed_diffs": [], "a_wins": None, "n_seed_pairs": 0}  # fmt: skip
    res = seed_bootstrap_diff(
        _scores(joined, len(runs_a), "_a"), _scores(joined, len(runs_b), "_b"), labels,
        spurious if metric == "robust_auroc" else None, metric=metric,
        seeds_a=[_seed(r) for r in runs_a], seeds_b=[_seed(r) for r in runs_b], **boot,
    )  # fmt: skip
    return {**out, **res}


def _pair(
    frames: list[pd.DataFrame],
    groups: list[list[dict[str, Any]]],
    names: list[str],
    ia: int,
    ib: int,
    metrics: Sequence[str],
    boot: dict[str, Any],
) -> dict[str, Any]:
    a, b = frames[ia], frames[ib]
    joined = _shared(a, b, (names[ia], names[ib]), metrics)
    if "auroc" in metrics and joined["label_a"].nunique() < 2:
        raise CompareError(
            f"{names[ia]} and {names[ib]}: the {len(joined)} shared images hold one class only"
        )
    n_shared = len(joined)
    runs = (groups[ia], groups[ib])
    return {
        "a": names[ia],
        "b": names[ib],
        "a_index": ia,
        "b_index": ib,
        "n_shared": n_shared,
        "n_only_a": len(a) - n_shared,
        "n_only_b": len(b) - n_shared,
        **{m: _diff(joined, m, runs, boot) for m in metrics},
    }


def _metrics(metric: str) -> tuple[str, ...]:
    if metric == "both":
        return METRICS
    if metric in METRICS:
        return (metric,)
    raise CompareError(f"metric must be 'both', 'auroc' or 'robust_auroc', got {metric!r}")


def compare_reports(
    inputs: Sequence[str | Path | Sequence[str | Path]],
    *,
    names: Sequence[str | None] | None = None,
    metric: str = "both",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Compare methods: one row each, and a seed-aware bootstrap difference for every pair.

    For inputs ``i < j`` (in the order given) the pair reads ``A − B`` with A = input ``j`` and
    B = input ``i``, computed on the images of the evaluated split that all runs of both scored.

    Args:
        inputs: Two or more inputs, each a report JSON or a sequence of report JSONs (one
            method's training runs), all on the same split.
        names: Display names (None entries, or None: the method, else method + seed, else the
            file stem).
        metric: ``"both"``, ``"auroc"`` or ``"robust_auroc"``: the differences to compute.
        n_resamples: Bootstrap resamples per difference.
        seed: Bootstrap seed (the same resamples for every metric of a pair).
        alpha: The intervals have coverage ``1 − alpha``.
        pairs: The pairs to compute as ``(A index, B index)`` into ``inputs`` (default: every
            later input against every earlier one).

    Returns:
        ``{"reports": [...], "pairs": [...], "bootstrap": {...}, "metadata": {...}}``. Each pair
        holds the names ``a`` and ``b``, ``n_shared``, ``n_only_a``, ``n_only_b`` and per metric
        ``metric_a``, ``metric_b`` (means over runs, on the shared images), ``diff``, ``ci``,
        ``excludes_zero``, ``n_runs_a``, ``n_runs_b``, ``per_seed_diffs``, ``a_wins`` and the
        counts evaluated (``diff`` is None where they hold one class only).

    Raises:
        CompareError: Fewer than two inputs, unreadable files, different splits, no shared
            images, or labels that disagree between the reports' manifests.
    """
    paths = _as_groups(inputs)
    if len(paths) < 2:
        raise CompareError(
            f"compare needs at least 2 reports (or NAME=GLOB groups), got {len(paths)}"
        )
    metrics = _metrics(metric)
    groups = [[load_report(p) for p in group] for group in paths]
    names = _resolve_names(names, groups)
    _check_splits(groups, names)
    cache: dict[Path, pd.DataFrame] = {}
    frames = [
        _group_frame(n, g, [_load_split(item, cache) for item in g])
        for n, g in zip(names, groups, strict=True)
    ]
    boot = {"n_resamples": n_resamples, "alpha": alpha, "seed": seed}
    if pairs is None:
        pairs = [(j, i) for i in range(len(groups)) for j in range(i + 1, len(groups))]
    computed = [_pair(frames, groups, names, ia, ib, metrics, boot) for ia, ib in pairs]
    seed_level = any(len(g) > 1 for g in groups)
    return {
        "reports": [
            _group_row(n, g, f, boot) for n, g, f in zip(names, groups, frames, strict=True)
        ],
        "pairs": computed,
        "bootstrap": {
            **boot,
            "metrics": list(metrics),
            "difference": "A − B; A is the later input in the order given, B the earlier",
            "seed_level": seed_level,
            "method": (
                "two-level percentile bootstrap: training runs resampled within each method "
                "(deviations scaled by sqrt(n/(n-1))), then the shared images within each "
                "class, the same image resample for both methods"
                if seed_level
                else "paired percentile bootstrap on the shared images; resampled within "
                "each class; both models scored on the same resamples"
            ),
        },
        "metadata": run_metadata(
            reports=[[str(p.resolve()) for p in g] for g in paths], names=names
        ),
    }


def _check_splits(groups: list[list[dict[str, Any]]], names: list[str]) -> None:
    splits = {item["report"]["split"] for g in groups for item in g}
    if len(splits) > 1:
        shown = ", ".join(
            f"{n}: {'/'.join(sorted({i['report']['split'] for i in g}))}"
            for n, g in zip(names, groups, strict=True)
        )
        raise CompareError(f"reports are on different splits ({shown})")


# --------------------------------------------------------------------------- CLI


class _AtLeastTwo(argparse.Action):
    """``nargs="+"`` that also rejects a single value."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if len(values) < 2:
            parser.error(f"compare needs at least 2 reports, got {len(values)}")
        setattr(namespace, self.dest, values)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to the top-level subparsers."""
    p = sub.add_parser("compare", help="compare methods: seed-aware bootstrap differences")
    p.add_argument("reports", nargs="+", action=_AtLeastTwo, metavar="REPORT|NAME=GLOB",
                   help="two or more report JSONs, or NAME='runs/NAME/seed-*/report.json' for "
                   "one method's runs over seeds (the first is the baseline: A − B = later − "
                   "earlier)")  # fmt: skip
    p.add_argument("--out", required=True, help="compare.md (.html and .json written beside it)")
    p.add_argument("--names", help="comma-separated display names, one per input")
    p.add_argument("--metric", default="both", choices=("both", *METRICS),
                   help="differences to compute")  # fmt: skip
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run_compare(args: argparse.Namespace) -> None:
    """Run ``spatialspec compare``: print the pairwise lines and the written paths."""
    groups, names = expand_inputs(args.reports)
    if args.names:
        names = [n.strip() for n in args.names.split(",")]
    result = compare_reports(
        groups, names=names, metric=getattr(args, "metric", "both"),
        n_resamples=args.n_resamples, seed=args.seed,
    )  # fmt: skip
    for row in result["reports"]:
        if row["n_runs"] > 1:
            print(f"{row['name']}: {row['n_runs']} runs (seeds {row['seeds']})")
    for pair in result["pairs"]:
        print(pair_line(pair))
    paths = write_compare(result, args.out)
    print("-> " + ", ".join(str(p) for p in paths))
