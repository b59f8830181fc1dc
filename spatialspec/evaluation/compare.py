"""``spatialspec compare``: several reports side by side, with paired bootstrap differences.

Each pair of reports is compared on the images both of them scored in the evaluated split (the
*shared* images). Differences read ``A − B`` where, for reports given in the order
``R1 R2 ...``, A is the *later* report and B the earlier one: ``compare binary.json seg.json``
gives ``seg − binary``, so the first report acts as the baseline. The interval is the percentile
interval of :func:`spatialspec.metrics.paired_bootstrap_diff`: both models are scored on the
same class-stratified resamples of the shared images.

:func:`paired_bootstrap_diff` returns the interval, not the resampled differences, so no
bootstrap p-value is given; ``excludes_zero`` says whether the interval excludes 0.
"""

from __future__ import annotations

import argparse
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec._text import first_few
from spatialspec.data.manifest import ManifestError, load_manifest
from spatialspec.evaluation.render import format_ci
from spatialspec.evaluation.report import PredictionsError, read_predictions
from spatialspec.evaluation.runner import predictions_path
from spatialspec.metrics import paired_bootstrap_diff, robust_subgroup_mask
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = [
    "CompareError",
    "add_compare_parser",
    "compare_html",
    "compare_markdown",
    "compare_reports",
    "format_diff",
    "load_report",
    "pair_line",
    "run_compare",
    "write_compare",
]

METRICS = ("auroc", "robust_auroc")
PAIR_ORDER = ("robust_auroc", "auroc")  # the order of the columns and printed lines
METRIC_LABELS = {"auroc": "AUROC", "robust_auroc": "robust AUROC"}
REPORT_FIELDS = ("split", "n", "auroc", "auroc_ci", "robust_auroc", "robust_auroc_ci", "n_robust")
MINUS = "−"


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


# --------------------------------------------------------------------------- names and rows


def _default_names(loaded: list[dict[str, Any]]) -> list[str]:
    """Method, else method + seed, else the file stem; the first that makes names unique."""
    metas = [item["report"]["metadata"] for item in loaded]
    candidates: list[list[str]] = []
    if all(m.get("method") for m in metas):
        candidates.append([str(m["method"]) for m in metas])
        if all(m.get("seed") is not None for m in metas):
            candidates.append([f"{m['method']} (seed {m['seed']})" for m in metas])
    candidates.append([item["path"].stem for item in loaded])
    candidates.append([f"{item['path'].parent.name}/{item['path'].stem}" for item in loaded])
    for names in candidates:
        if len(set(names)) == len(names):
            return names
    return [f"{item['path'].stem} #{k + 1}" for k, item in enumerate(loaded)]


def _check_names(names: Sequence[str], n_reports: int) -> list[str]:
    names = [str(n).strip() for n in names]
    if len(names) != n_reports:
        raise CompareError(f"got {len(names)} name(s) for {n_reports} reports: {names}")
    if len(set(names)) != len(names) or not all(names):
        raise CompareError(f"names must be unique and non-empty, got {names}")
    return names


def _report_row(name: str, loaded: dict[str, Any]) -> dict[str, Any]:
    r, meta = loaded["report"], loaded["report"]["metadata"]
    return {
        "name": name,
        "path": str(loaded["path"]),
        "split": r["split"],
        "n": r["n"],
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


def _diff(joined: pd.DataFrame, metric: str, boot: dict[str, Any]) -> dict[str, Any]:
    """Paired bootstrap of ``metric(A) − metric(B)``; ``diff`` is None where undefined."""
    labels = joined["label_a"].to_numpy(int)
    spurious = joined["spurious_a"].to_numpy(float)
    evaluated = labels
    if metric == "robust_auroc":
        evaluated = labels[robust_subgroup_mask(labels, spurious)]
    n_pos, n_neg = int(evaluated.sum()), int((evaluated == 0).sum())
    out: dict[str, Any] = {"n": int(evaluated.size), "n_positive": n_pos, "n_negative": n_neg}
    if not (n_pos and n_neg):
        return {**out, "metric_a": None, "metric_b": None, "diff": None, "ci": [None, None],
                "excludes_zero": None}  # fmt: skip
    res = paired_bootstrap_diff(
        joined["score_a"].to_numpy(float), joined["score_b"].to_numpy(float), labels,
        spurious if metric == "robust_auroc" else None, metric=metric, **boot,
    )  # fmt: skip
    lo, hi = res["ci"]
    return {
        **out,
        "metric_a": res["metric_a"],
        "metric_b": res["metric_b"],
        "diff": res["diff"],
        "ci": [lo, hi],
        "excludes_zero": bool(lo > 0 or hi < 0),
    }


def _pair(
    frames: list[pd.DataFrame],
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
    return {
        "a": names[ia],
        "b": names[ib],
        "a_index": ia,
        "b_index": ib,
        "n_shared": n_shared,
        "n_only_a": len(a) - n_shared,
        "n_only_b": len(b) - n_shared,
        **{m: _diff(joined, m, boot) for m in metrics},
    }


def _metrics(metric: str) -> tuple[str, ...]:
    if metric == "both":
        return METRICS
    if metric in METRICS:
        return (metric,)
    raise CompareError(f"metric must be 'both', 'auroc' or 'robust_auroc', got {metric!r}")


def compare_reports(
    paths: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    metric: str = "both",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Compare reports: one row each, and a paired bootstrap difference for every pair.

    For reports ``i < j`` (in the order given) the pair reads ``A − B`` with A = report ``j``
    and B = report ``i``, computed on the images of the evaluated split that both scored.

    Args:
        paths: Two or more report JSONs, all on the same split.
        names: Display names (default: the method, else method + seed, else the file stem).
        metric: ``"both"``, ``"auroc"`` or ``"robust_auroc"``: the differences to compute.
        n_resamples: Bootstrap resamples per difference.
        seed: Bootstrap seed (the same resamples for every metric of a pair).
        alpha: The intervals have coverage ``1 − alpha``.

    Returns:
        ``{"reports": [...], "pairs": [...], "bootstrap": {...}, "metadata": {...}}``. Each pair
        holds the names ``a`` and ``b``, ``n_shared``, ``n_only_a``, ``n_only_b`` and per metric
        ``metric_a``, ``metric_b`` (on the shared images), ``diff``, ``ci``, ``excludes_zero``
        and the counts evaluated (``diff`` is None where they hold one class only).

    Raises:
        CompareError: Fewer than two reports, unreadable files, different splits, no shared
            images, or labels that disagree between the reports' manifests.
    """
    if len(paths) < 2:
        raise CompareError(f"compare needs at least 2 reports, got {len(paths)}")
    metrics = _metrics(metric)
    loaded = [load_report(p) for p in paths]
    names = _check_names(names, len(loaded)) if names is not None else _default_names(loaded)
    _check_splits(loaded, names)
    cache: dict[Path, pd.DataFrame] = {}
    frames = [_load_split(item, cache) for item in loaded]
    boot = {"n_resamples": n_resamples, "alpha": alpha, "seed": seed}
    pairs = [
        _pair(frames, names, j, i, metrics, boot)
        for i in range(len(loaded))
        for j in range(i + 1, len(loaded))
    ]
    return {
        "reports": [_report_row(n, item) for n, item in zip(names, loaded, strict=True)],
        "pairs": pairs,
        "bootstrap": {
            **boot,
            "metrics": list(metrics),
            "difference": "A − B; A is the later report in the order given, B the earlier",
            "method": "paired percentile bootstrap on the shared images; resampled within "
            "each class; both models scored on the same resamples",
        },
        "metadata": run_metadata(reports=[str(Path(p).resolve()) for p in paths], names=names),
    }


def _check_splits(loaded: list[dict[str, Any]], names: list[str]) -> None:
    splits = {item["report"]["split"] for item in loaded}
    if len(splits) > 1:
        shown = ", ".join(
            f"{n}: {i['report']['split']}" for n, i in zip(names, loaded, strict=True)
        )
        raise CompareError(f"reports are on different splits ({shown})")


# --------------------------------------------------------------------------- rendering


def format_diff(entry: dict[str, Any] | None) -> str:
    """``+0.300 [0.250, 0.360]``; ``*`` appended when the CI excludes 0; ``–`` if undefined."""
    if not entry or entry.get("diff") is None:
        return "–"
    lo, hi = entry["ci"]
    star = " *" if entry["excludes_zero"] else ""
    return f"{_round(entry['diff']):+.3f} [{_round(lo):.3f}, {_round(hi):.3f}]{star}"


def _round(value: float) -> float:
    """Round to 3 decimals without printing ``-0.000``."""
    return round(float(value), 3) + 0.0


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


REPORT_HEADER = ("report", "split", "n", "robust AUROC [95 % CI]", "AUROC [95 % CI]",
                 "n robust", "worst-group acc.", "dataset", "pooling")  # fmt: skip


def _report_cells(r: dict[str, Any]) -> list[str]:
    return [
        r["name"],
        r["split"],
        str(r["n"]),
        format_ci(r["robust_auroc"], r["robust_auroc_ci"]),
        format_ci(r["auroc"], r["auroc_ci"]),
        str(r["n_robust"]),
        _fmt(r["worst_group_accuracy"]),
        _fmt(r["dataset"]),
        _fmt(r["pooling"]),
    ]


def _reports_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    return list(REPORT_HEADER), [_report_cells(r) for r in result["reports"]]


def _level(result: dict[str, Any]) -> str:
    return f"{round(100 * (1 - result['bootstrap']['alpha']), 1):g} %"


def _pair_cells(p: dict[str, Any], shown: Sequence[str]) -> list[str]:
    return [
        f"{p['a']} {MINUS} {p['b']}",
        *[format_diff(p[m]) for m in shown],
        str(p["n_shared"]),
        f"{p['n_only_a']} / {p['n_only_b']}",
    ]


def _pairs_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    shown = [m for m in PAIR_ORDER if m in result["bootstrap"]["metrics"]]
    level = _level(result)
    header = [
        f"A {MINUS} B",
        *[f"{METRIC_LABELS[m]} difference [{level} CI]" for m in shown],
        "n shared",
        "not shared (A / B)",
    ]
    return header, [_pair_cells(p, shown) for p in result["pairs"]]


def _explanation(result: dict[str, Any]) -> str:
    b = result["bootstrap"]
    split = result["reports"][0]["split"]
    return (
        f"Differences read A {MINUS} B, A being the later report in the order given, on the "
        f"{split} images both reports scored (n shared). {_level(result)} CIs: paired bootstrap, "
        f"{b['n_resamples']} resamples (seed {b['seed']}) drawn within each class, both models "
        "scored on the same resamples; * marks a CI that excludes 0. The CIs in the reports "
        "table are each report's own, over all of its images."
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if k == 0 or "[" in h or h in ("split", "dataset", "pooling") else "---:"
             for k, h in enumerate(header)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def compare_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: the reports table, then the pairwise differences."""
    lines = [f"# Comparison of {len(result['reports'])} reports", "", "## Reports", ""]
    lines += _md_table(*_reports_table(result))
    lines += ["", f"## Pairwise differences (A {MINUS} B)", ""]
    lines += _md_table(*_pairs_table(result))
    lines += ["", _explanation(result)]
    meta = result.get("metadata", {})
    if meta:
        lines += ["", f"git commit `{meta.get('git_commit')}`, created {meta.get('created')}."]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 72em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f2f4f7; }
td:first-child, th:first-child { text-align: left; }
p.note { color: #555; max-width: 60em; }
"""


def _html_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = html.escape
    lines = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    return [*lines, "</table>"]


def compare_html(result: dict[str, Any]) -> str:
    """The comparison as a standalone HTML page (inline CSS, no external assets)."""
    title = f"Comparison of {len(result['reports'])} reports"
    meta = result.get("metadata", {})
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Reports</h2>",
        *_html_table(*_reports_table(result)),
        f"<h2>Pairwise differences (A {MINUS} B)</h2>",
        *_html_table(*_pairs_table(result)),
        f'<p class="note">{html.escape(_explanation(result))}</p>',
    ]
    if meta:
        stamp = f"git commit {meta.get('git_commit')}, created {meta.get('created')}."
        lines.append(f'<p class="note">{html.escape(stamp)}</p>')
    return "\n".join([*lines, "</body></html>"]) + "\n"


def write_compare(result: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the Markdown (``out``), HTML and JSON (same stem) atomically; returns the paths."""
    out = Path(out)
    if out.suffix.lower() in (".md", ".html", ".json"):
        out = out.with_suffix("")
    return [
        write_text_atomic(out.with_name(out.name + ".md"), compare_markdown(result)),
        write_text_atomic(out.with_name(out.name + ".html"), compare_html(result)),
        write_json_atomic(out.with_name(out.name + ".json"), result),
    ]


# --------------------------------------------------------------------------- CLI


class _AtLeastTwo(argparse.Action):
    """``nargs="+"`` that also rejects a single value."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if len(values) < 2:
            parser.error(f"compare needs at least 2 reports, got {len(values)}")
        setattr(namespace, self.dest, values)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to the top-level subparsers."""
    p = sub.add_parser("compare", help="compare reports: paired bootstrap differences")
    p.add_argument("reports", nargs="+", action=_AtLeastTwo, metavar="REPORT",
                   help="two or more report JSONs (the first is the baseline: A − B = later − "
                   "earlier)")  # fmt: skip
    p.add_argument("--out", required=True, help="compare.md (.html and .json written beside it)")
    p.add_argument("--names", help="comma-separated display names, one per report")
    p.add_argument("--metric", default="both", choices=("both", *METRICS),
                   help="differences to compute")  # fmt: skip
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def pair_line(pair: dict[str, Any]) -> str:
    """One line per pair: ``seg − binary: robust AUROC +0.300 [...]  AUROC ...  (n shared)``."""
    parts = [f"{METRIC_LABELS[m]} {format_diff(pair[m])}" for m in PAIR_ORDER if m in pair]
    return (
        f"{pair['a']} {MINUS} {pair['b']}: " + "  ".join(parts) + f"  (n shared {pair['n_shared']})"
    )


def run_compare(args: argparse.Namespace) -> None:
    """Run ``spatialspec compare``: print the pairwise lines and the written paths."""
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    result = compare_reports(
        args.reports, names=names, metric=getattr(args, "metric", "both"),
        n_resamples=args.n_resamples, seed=args.seed,
    )  # fmt: skip
    for pair in result["pairs"]:
        print(pair_line(pair))
    paths = write_compare(result, args.out)
    print("-> " + ", ".join(str(p) for p in paths))
