"""Rendering of ``spatialspec compare`` results: Markdown, standalone HTML, printed lines."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spatialspec.evaluation.render import format_ci
from spatialspec.metrics.seeds import METRIC_NAMES
from spatialspec.runinfo import write_json_atomic, write_text_atomic

__all__ = [
    "METRIC_LABELS",
    "MINUS",
    "compare_html",
    "compare_markdown",
    "format_diff",
    "pair_line",
    "write_compare",
]

METRIC_LABELS = METRIC_NAMES
PAIR_ORDER = tuple(METRIC_NAMES)  # the order of the columns and printed lines
MINUS = "−"


def format_diff(entry: dict[str, Any] | None) -> str:
    """``+0.300 [0.250, 0.360]``; ``*`` appended when the CI excludes 0; ``–`` if undefined."""
    if not entry or entry.get("diff") is None:
        return "–"
    lo, hi = entry["ci"]
    star = " *" if entry["excludes_zero"] else ""
    return f"{_round(entry['diff']):+.3f} [{_round(lo):.3f}, {_round(hi):.3f}]{star}"


def _wins(entry: dict[str, Any] | None) -> str:
    """``3/3``: seed pairs in which A beat B; ``–`` with one run each or undefined."""
    if not entry or entry.get("a_wins") is None or not entry.get("seed_level"):
        return "–"
    return f"{entry['a_wins']}/{entry['n_seed_pairs']}"


def _round(value: float) -> float:
    """Round to 3 decimals without printing ``-0.000``."""
    return round(float(value), 3) + 0.0


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


REPORT_HEADER = ("report", "split", "n", "runs", "robust AUROC [95 % CI]", "AUROC [95 % CI]",
                 "n robust", "worst-group acc.", "dataset", "pooling")  # fmt: skip


def _report_cells(r: dict[str, Any]) -> list[str]:
    return [
        r["name"],
        r["split"],
        str(r["n"]),
        str(r.get("n_runs", 1)),
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


def _shown(result: dict[str, Any]) -> list[str]:
    return [m for m in PAIR_ORDER if m in result["bootstrap"]["metrics"]]


def _pair_cells(p: dict[str, Any], shown: Sequence[str], seeds: bool) -> list[str]:
    cells = [f"{p['a']} {MINUS} {p['b']}", *[format_diff(p[m]) for m in shown]]
    if seeds:
        cells += [_wins(p[shown[0]])]
    return [*cells, str(p["n_shared"]), f"{p['n_only_a']} / {p['n_only_b']}"]


def _pairs_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    shown = _shown(result)
    seeds = bool(result["bootstrap"].get("seed_level"))
    level = _level(result)
    header = [f"A {MINUS} B", *[f"{METRIC_LABELS[m]} difference [{level} CI]" for m in shown]]
    if seeds:
        header += [f"A > B in seed pairs ({METRIC_LABELS[shown[0]]})"]
    header += ["n shared", "not shared (A / B)"]
    return header, [_pair_cells(p, shown, seeds) for p in result["pairs"]]


def _explanation(result: dict[str, Any]) -> str:
    b = result["bootstrap"]
    split = result["reports"][0]["split"]
    common = (
        f"Differences read A {MINUS} B, A being the later input in the order given, on the "
        f"{split} images all runs of both scored (n shared). "
    )
    if b.get("seed_level"):
        return common + (
            f"{_level(result)} CIs: two-level bootstrap, {b['n_resamples']} resamples (seed "
            f"{b['seed']}): each method's training runs are resampled (deviations from the "
            "method's mean scaled by sqrt(n/(n−1)) for small n), and the images within each "
            "class, the same image resample for both methods; the difference is of the means "
            'over runs. * marks a CI that excludes 0. "A > B in seed pairs" counts runs '
            "matched by seed (every pair when the seeds differ). A method with one run adds "
            "no seed variance: give every method several seeds before calling a difference "
            "significant."
        )
    return common + (
        f"{_level(result)} CIs: paired bootstrap, {b['n_resamples']} resamples (seed "
        f"{b['seed']}) drawn within each class, both models scored on the same resamples; * "
        "marks a CI that excludes 0. One run per method: the CI ignores training-seed "
        "variance (compare NAME='runs/NAME/seed-*/report.json' groups for seed-aware CIs). The "
        "CIs in the reports table are each report's own, over all of its images."
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if k == 0 or "[" in h or h in ("split", "dataset", "pooling") else "---:"
             for k, h in enumerate(header)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _per_seed_lines(result: dict[str, Any]) -> list[str]:
    if not result["bootstrap"].get("seed_level"):
        return []
    lines = ["", "## Per-seed differences", ""]
    for p in result["pairs"]:
        for m in _shown(result):
            diffs = p[m].get("per_seed_diffs") or []
            shown = ", ".join(f"{d:+.3f}" for d in diffs) or "–"
            lines.append(f"- {p['a']} {MINUS} {p['b']}, {METRIC_LABELS[m]} "
                         f"({p[m].get('seed_pairing', '–')}): {shown}")  # fmt: skip
    return lines


def compare_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: the reports table, then the pairwise differences."""
    lines = [f"# Comparison of {len(result['reports'])} reports", "", "## Reports", ""]
    lines += _md_table(*_reports_table(result))
    lines += ["", f"## Pairwise differences (A {MINUS} B)", ""]
    lines += _md_table(*_pairs_table(result))
    lines += ["", _explanation(result)]
    lines += _per_seed_lines(result)
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


def pair_line(pair: dict[str, Any]) -> str:
    """One line per pair: ``seg − binary: robust AUROC +0.300 [...]  AUROC ...  (n shared)``."""
    parts = [f"{METRIC_LABELS[m]} {format_diff(pair[m])}" for m in PAIR_ORDER if m in pair]
    first = next((pair[m] for m in PAIR_ORDER if m in pair), None)
    wins = _wins(first)
    seeds = f"  A>B in {wins} seed pairs" if wins != "–" else ""
    return (
        f"{pair['a']} {MINUS} {pair['b']}: " + "  ".join(parts) + seeds
        + f"  (n shared {pair['n_shared']})"
    )  # fmt: skip
