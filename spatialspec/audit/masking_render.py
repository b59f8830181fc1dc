"""The masking audit as Markdown and figures: conditions, dose-response, fill control, matrix.

Pure rendering of the JSON-ready results of :mod:`spatialspec.audit.masking` and
:mod:`spatialspec.audit.masking_matrix`; nothing here scores a model.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spatialspec.evaluation.render import format_ci

__all__ = [
    "dose_response_figure",
    "dose_response_lines",
    "fill_control_lines",
    "masking_figure",
    "masking_markdown",
    "matrix_markdown",
]

#: A score standard deviation below this marks a fill that makes every score (nearly) equal.
CONSTANT_STD = 1e-4


# ------------------------------------------------------------------------------ Markdown


def masking_markdown(result: Mapping[str, Any]) -> str:
    """One audit as Markdown: settings, conditions, dose-response, fill control, references."""
    cfg, train = result["config"], result["train_condition"]
    lines = [
        "# ROI-masking audit (Mask of truth)",
        "",
        f"- checkpoint `{result['checkpoint']}` (method `{result['method']}`, trained on "
        f"`{train['condition']}`), manifest `{result['manifest']}`",
        f"- split `{result['split']}`, n = {result['n']}"
        + (f" (random subset, limit {cfg['limit']})" if cfg["limit"] else ""),
        f"- ROI region `{cfg['region']}`, fill `{cfg['fill']}`, spurious masks dilated by "
        f"{cfg['dilate']} px",
        "",
        *_condition_table(result["conditions"]),
        "",
        "Δ = original − condition, on the images the condition scores (positive: it hurts). "
        "Visible: mean fraction of unfilled pixels.",
        "",
    ]
    lines += [f"- `{c}`: {d}" for c, d in cfg["descriptions"].items()]
    lines += _anatomy_lines(result.get("anatomy"), result.get("skipped_conditions", {}))
    lines += dose_response_lines(result.get("dose_response", {}))
    lines += fill_control_lines(result.get("fill_control"))
    lines += _reference_lines(result.get("metadata_references") or [])
    lines += ["", f"95 % CIs: {cfg['n_resamples']} bootstrap resamples (seed {cfg['seed']})."]
    if result.get("cost"):
        cost = result["cost"]
        lines.append(
            f"Network passes: {cost['images_forward']} images ({cost['maskings']} "
            f"maskings), {cost['seconds']} s ({cost.get('network_seconds')} s in the network)."
        )
    meta = result.get("metadata", {})
    lines.append(f"git commit `{meta.get('git_commit')}`, created {meta.get('created')}.")
    return "\n".join(lines) + "\n"


def _condition_table(conditions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| condition | images altered | area unknown | visible | robust AUROC [95 % CI] "
        "| Δ robust | AUROC [95 % CI] | Δ AUROC | mean score pos. | mean score neg. |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for name, c in conditions.items():
        lines.append(
            f"| {name} | {c['n_altered']} | {c.get('n_unknown', 0)} | "
            f"{_fmt(c.get('visible_fraction'))} | "
            f"{format_ci(c['robust_auroc'], c['robust_auroc_ci'])} | "
            f"{_signed(c['robust_auroc_drop'])} | {format_ci(c['auroc'], c['auroc_ci'])} | "
            f"{_signed(c['auroc_drop'])} | {_fmt(c['mean_score_positive'])} | "
            f"{_fmt(c['mean_score_negative'])} |"
        )
    return lines


def _anatomy_lines(anatomy: Mapping[str, Any] | None, skipped: Mapping[str, str]) -> list[str]:
    """Images without an anatomy mask (counted, left out) and conditions not run."""
    lines = []
    if anatomy and anatomy["n_missing"]:
        lines += [
            "",
            f"**{anatomy['n_missing']} of {anatomy['n']} images have no anatomy mask "
            f"(`{anatomy['column']}`)**: they are left out of the anatomy conditions and "
            f"curves (first: {', '.join(anatomy['missing_ids'])}).",
        ]
    lines += [f"- `{c}` not run: {why}" for c, why in skipped.items()]
    return lines


def dose_response_lines(curves: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One table per area: dose (px), visible fraction, robust AUROC and AUROC with CIs."""
    lines = []
    for curve in curves.values():
        lines += [
            "",
            f"## Dose-response: `{curve['condition']}` eroded / dilated (fill `{curve['fill']}`)",
            "",
            "| dilation (px) | visible | images altered | robust AUROC [95 % CI] "
            "| AUROC [95 % CI] |",
            "|---:|---:|---:|---|---|",
        ]
        ref = curve["original"]
        lines.append(
            f"| (original) | 1.000 | 0 | "
            f"{format_ci(ref['robust_auroc'], ref['robust_auroc_ci'])} | "
            f"{format_ci(ref['auroc'], ref['auroc_ci'])} |"
        )
        for p in curve["points"]:
            lines.append(
                f"| {p['dilation_px']:+d} | {_fmt(p['visible_fraction'])} | "
                f"{p['n_altered']} | "
                f"{format_ci(p['robust_auroc'], p['robust_auroc_ci'])} | "
                f"{format_ci(p['auroc'], p['auroc_ci'])} |"
            )
    if curves:
        lines += [
            "",
            "Negative: the area eroded; positive: dilated (square neighbourhood, "
            "pixels at the network input). Figure: `masking_dose_response.png`.",
        ]
    return lines


def fill_control_lines(control: Mapping[str, Any] | None) -> list[str]:
    """The fill-control table: each condition under each fill, flags where conclusions differ."""
    if not control:
        return []
    fills = control["fills"]
    head = "| condition | " + " | ".join(f"{f}: robust / AUROC" for f in fills)
    lines = [
        "",
        "## Fill control",
        "",
        head + " | conclusions that change with the fill |",
        "|---|" + "---|" * len(fills) + "---|",
    ]
    for condition in control["conditions"]:
        cells = [_pair(control["table"][condition][f]) for f in fills]
        flag = _changes(control["changes"][condition])
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {flag} |")
    orig = control["original"]
    lines += [
        "",
        f"Original: robust AUROC {format_ci(orig['robust_auroc'], orig['robust_auroc_ci'])},"
        f" AUROC {format_ci(orig['auroc'], orig['auroc_ci'])}.",
        "",
        control["definition"],
    ]
    if any(_constant(c) for row in control["table"].values() for c in row.values()):
        lines.append(
            f"`(constant scores)`: the fill makes every score (nearly) equal (std < "
            f"{CONSTANT_STD:g}; e.g. a model saturated by an out-of-distribution fill): its "
            "AUROC of 0.5 says nothing about what was removed."
        )
    flagged = control["flagged"]
    lines.append(
        f"Flagged: {', '.join(f'`{c}`' for c in flagged)}."
        if flagged
        else "No conclusion changes with the fill."
    )
    return lines


def _constant(cell: Mapping[str, Any]) -> bool:
    """Whether a fill-control cell's scores are (nearly) all equal."""
    return cell.get("score_std", 1.0) < CONSTANT_STD


def _pair(cell: Mapping[str, Any]) -> str:
    constant = " (constant scores)" if _constant(cell) else ""
    return f"{_fmt(cell['robust_auroc'])} / {_fmt(cell['auroc'])}{constant}"


def _changes(changes: Mapping[str, Mapping[str, str]]) -> str:
    if not changes:
        return "–"
    parts = [
        f"{name.replace('_vs_', ' vs ')} ({', '.join(f'{f}: {v}' for f, v in by.items())})"
        for name, by in changes.items()
    ]
    return "⚑ " + "; ".join(parts)


def _reference_lines(refs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metadata-only references: what the chosen manifest columns alone achieve."""
    lines = []
    for ref in refs:
        robust = ref["robust_auroc"]
        lines += [
            "",
            f"Metadata-only reference (logistic regression on `{', '.join(ref['columns'])}`, "
            f"fit on {ref['fit_split']}, {ref['n_scored']} {ref['split']} images scored, "
            f"{ref['n_skipped']} rows without the columns left out): robust AUROC "
            f"{'–' if robust is None else format_ci(robust, ref['robust_auroc_ci'])}, AUROC "
            f"{format_ci(ref['auroc'], ref['auroc_ci'])}. An image model close to it is reading "
            "what these columns encode.",
        ]
    return lines


def matrix_markdown(matrix: Mapping[str, Any]) -> str:
    """The train-condition x test-condition matrix as two Markdown tables."""
    lines = ["# ROI-masking matrix: train condition x test condition", ""]
    if len(set(matrix["manifests"].values())) > 1:
        lines += ["**Warning**: the checkpoints were audited on different manifests.", ""]
    for key, title in (("robust_auroc", "Robust AUROC"), ("auroc", "AUROC")):
        lines += [f"## {title} [95 % CI]", "", _matrix_header(matrix["columns"])]
        for row in matrix["rows"]:
            cells = [
                format_ci(matrix[key][row][c], matrix[f"{key}_ci"][row][c])
                for c in matrix["columns"]
            ]
            train = matrix["train_conditions"][row]["condition"]
            lines.append(f"| {row} | {train} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Rows: trained under `data.roi_masking` (train condition); columns: test condition."]
    return "\n".join(lines) + "\n"


def _matrix_header(columns: Sequence[str]) -> str:
    head = "| model | train condition | " + " | ".join(f"test: {c}" for c in columns) + " |"
    return head + "\n|---|---|" + "---|" * len(columns)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def masking_figure(result: Mapping[str, Any]) -> bytes:
    """PNG: example images per condition (with their scores) above a bar chart of the AUROCs."""
    plt = _pyplot()
    conditions = list(result["conditions"])
    examples = result.get("examples", [])
    images = result.get("_example_images", {})
    n_rows, n_cols = len(examples) if images else 0, len(conditions)
    fig = plt.figure(figsize=(1.2 + 1.9 * n_cols, 2.0 * n_rows + 3.2), dpi=110)
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1.0] * n_rows + [1.6])
    for r, example in enumerate(examples if images else []):
        for c, condition in enumerate(conditions):
            ax = fig.add_subplot(grid[r, c])
            _show(ax, images[condition][r], example, condition, r == 0, c == 0)
    _bars(fig.add_subplot(grid[n_rows, :]), result["conditions"])
    fig.suptitle(f"ROI masking: {result['method']} ({result['split']})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _show(
    ax: Any, image: np.ndarray, example: dict[str, Any], condition: str, top: bool, left: bool
) -> None:
    """One example panel: the image, its score below, the condition above the top row."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    score = example["scores"].get(condition)
    ax.set_xlabel("no area" if score is None else f"score {score:.3f}", fontsize=7)
    if top:
        ax.set_title(condition.replace("_", " "), fontsize=7)
    if left:
        ax.set_ylabel(example["name"], fontsize=7)


def _bars(ax: Any, conditions: Mapping[str, dict[str, Any]]) -> None:
    """Grouped bars of AUROC and robust AUROC (95 % CI) per condition."""
    names = list(conditions)
    x = np.arange(len(names))
    for offset, key, colour in ((-0.18, "auroc", "#9aa5b1"), (0.18, "robust_auroc", "#d1495b")):
        vals = np.array([_nan(conditions[n][key]) for n in names])
        ci = np.array([[_nan(v) for v in conditions[n][f"{key}_ci"]] for n in names])
        err = np.nan_to_num(np.stack([vals - ci[:, 0], ci[:, 1] - vals]))
        label = "AUROC" if key == "auroc" else "robust AUROC"
        ax.bar(
            x + offset, np.nan_to_num(vals), 0.36, yerr=err, capsize=3, color=colour, label=label
        )
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUROC (95 % CI)", fontsize=8)
    ax.legend(loc="lower right", fontsize=7)


def dose_response_figure(result: Mapping[str, Any]) -> bytes:
    """PNG: per area, AUROC and robust AUROC (95 % CI) against the visible fraction."""
    plt = _pyplot()
    curves = result.get("dose_response", {})
    fig, axes = plt.subplots(
        1, max(1, len(curves)), figsize=(4.6 * max(1, len(curves)), 3.8), dpi=110, squeeze=False
    )
    for ax, curve in zip(axes[0], curves.values(), strict=False):
        _curve(ax, curve)
    fig.suptitle(f"Masking dose-response: {result['method']} ({result['split']})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _curve(ax: Any, curve: Mapping[str, Any]) -> None:
    """One area's curve: points labelled by their dose, the original as dashed lines."""
    points = curve["points"]
    x = np.array([_nan(p["visible_fraction"]) for p in points])
    for key, colour, label in (
        ("auroc", "#5c6b7a", "AUROC"),
        ("robust_auroc", "#d1495b", "robust AUROC"),
    ):
        y = np.array([_nan(p[key]) for p in points])
        ci = np.array([[_nan(v) for v in p[f"{key}_ci"]] for p in points]).reshape(-1, 2)
        err = np.nan_to_num(np.stack([y - ci[:, 0], ci[:, 1] - y]))
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=colour, label=label)
        ref = curve["original"][key]
        if ref is not None:
            ax.axhline(ref, color=colour, lw=0.8, ls=":")
    for p, xi in zip(points, x, strict=True):
        ax.annotate(
            f"{p['dilation_px']:+d}",
            (xi, _nan(p["auroc"])),
            fontsize=6,
            ha="center",
            textcoords="offset points",
            xytext=(0, 7),
        )
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xlabel("visible fraction of the image (labels: dilation px)", fontsize=8)
    ax.set_ylabel("AUROC (95 % CI)", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{curve['condition']} (fill {curve['fill']}); dotted: original", fontsize=8)
    ax.legend(loc="best", fontsize=7)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
