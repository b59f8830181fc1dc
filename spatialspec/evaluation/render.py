"""Human-readable views of reports: Markdown tables and a comparison chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialspec.data.io import atomic_open
from spatialspec.runinfo import write_text_atomic


def format_ci(value: float | None, ci: list[float | None]) -> str:
    """``0.931 [0.895, 0.961]``; ``–`` when the metric is undefined (e.g. an empty subgroup)."""
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def report_markdown(report: dict[str, Any], title: str = "Evaluation report") -> str:
    """One report as Markdown: headline metrics, then the four subgroups."""
    meta = report.get("metadata", {})
    lines = [
        f"# {title}",
        "",
        f"- split: `{report['split']}`, n = {report['n']} "
        f"({report['n_positive']} positive, {report['n_negative']} negative)",
        f"- robust AUROC: **{format_ci(report['robust_auroc'], report['robust_auroc_ci'])}** "
        f"over {report['n_robust']} images (positives without + negatives with the spurious "
        "feature)",
        f"- {_auroc_name(report)}: {format_ci(report['auroc'], report['auroc_ci'])}",
        f"- threshold {report['threshold']:.3f} ({report['threshold_source']}): accuracy "
        f"{report['accuracy']:.3f}, worst-group accuracy {_fmt(report['worst_group_accuracy'])}",
    ]
    if meta.get("method"):
        pool = meta.get("pooling")
        lines.append(f"- method `{meta['method']}`" + (f", pooling `{pool}`" if pool else ""))
    lines += ["", "| subgroup | n | mean score | accuracy |", "|---|---:|---:|---:|"]
    for name, g in report["subgroups"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {g['n']} | {_fmt(g['mean_score'])} | "
            f"{_fmt(g['accuracy'])} |"
        )
    lines += _attribute_lines(report.get("attributes", {}))
    lines += _pooling_lines(report.get("poolings", {}), report.get("trained_pooling"))
    lines += _method_metric_lines(report.get("method_metrics", {}))
    b = report["bootstrap"]
    lines += [
        "",
        f"95 % CIs: {b['n_resamples']} bootstrap resamples (seed {b['seed']}, {b['method']}).",
    ]
    if meta:
        lines.append(f"git commit `{meta.get('git_commit')}`, created {meta.get('created')}.")
    return "\n".join(lines) + "\n"


def _auroc_name(report: dict[str, Any]) -> str:
    if report.get("dataset") == "isic" and report.get("split") == "test":
        return "trap-test AUROC (the paper's ISIC figure: correlations reversed vs train)"
    return "AUROC"


def _attribute_lines(attributes: dict[str, dict[str, Any]]) -> list[str]:
    """Robust AUROC with each annotated attribute as the spurious feature."""
    if not attributes:
        return []
    lines = [
        "",
        "Robust AUROC per attribute (positives without it + negatives with it):",
        "",
        "| attribute | n with | positives without | negatives with | robust AUROC [95 % CI] |",
        "|---|---:|---:|---:|---|",
    ]
    for name, a in attributes.items():
        lines.append(
            f"| {name} | {a['n_with']} | {a['positives_without']} | {a['negatives_with']} | "
            f"{format_ci(a['robust_auroc'], a['robust_auroc_ci'])} |"
        )
    return lines


def _pooling_lines(poolings: dict[str, dict[str, Any]], trained: str | None) -> list[str]:
    """Robust AUROC and AUROC under each pooling of the same pixel logits (``--pooling``)."""
    if not poolings:
        return []
    lines = [
        "",
        "Per pooling of the same pixel logits (the numbers above are the trained pooling's):",
        "",
        "| pooling | robust AUROC [95 % CI] | AUROC [95 % CI] |",
        "|---|---|---|",
    ]
    for name, m in poolings.items():
        label = f"`{name}` (trained)" if name == trained else f"`{name}`"
        lines.append(
            f"| {label} | {format_ci(m['robust_auroc'], m['robust_auroc_ci'])} | "
            f"{format_ci(m['auroc'], m['auroc_ci'])} |"
        )
    return lines


def _method_metric_lines(metrics: dict[str, Any]) -> list[str]:
    """The method's own metrics (``report["method_metrics"]``, e.g. ``detect``'s box mAP)."""
    if not metrics:
        return []
    lines = ["", "Method-specific metrics:", "", "| metric | value |", "|---|---|"]
    for name, value in metrics.items():
        if isinstance(value, float) or value is None:
            shown = _fmt(value)
        else:
            shown = f"`{value}`" if isinstance(value, str) else str(value)
        lines.append(f"| {name} | {shown} |")
    return lines


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`report_markdown` atomically; returns the path."""
    return write_text_atomic(path, report_markdown(report))


def methods_table(reports: dict[str, dict[str, Any]]) -> str:
    """Markdown table of several methods' reports."""
    lines = [
        "| method | robust AUROC [95 % CI] | AUROC [95 % CI] | worst-group acc. | n robust |",
        "|---|---|---|---:|---:|",
    ]
    for name, r in reports.items():
        lines.append(
            f"| {name} | {format_ci(r['robust_auroc'], r['robust_auroc_ci'])} | "
            f"{format_ci(r['auroc'], r['auroc_ci'])} | {_fmt(r['worst_group_accuracy'])} | "
            f"{r['n_robust']} |"
        )
    return "\n".join(lines) + "\n"


def plot_methods(reports: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Grouped bar chart of AUROC and robust AUROC (95 % CI error bars) per method, as PNG.

    An entry with ``per_seed`` (``{"auroc": [...], "robust_auroc": [...]}``, as the demo's
    summary) is drawn as the mean over seeds with each seed as a dot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(reports)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(names), 3.6), dpi=120)
    for offset, key, colour in ((-0.18, "auroc", "#9aa5b1"), (0.18, "robust_auroc", "#d1495b")):
        vals = np.array([reports[n][key] for n in names])
        ci = np.array([reports[n][f"{key}_ci"] for n in names], dtype=float)
        err = np.stack([vals - ci[:, 0], ci[:, 1] - vals])
        label = "AUROC" if key == "auroc" else "robust AUROC"
        ax.bar(x + offset, vals, 0.36, yerr=err, capsize=3, color=colour, label=label)
        for k, name in enumerate(names):
            seeds = reports[name].get("per_seed", {}).get(key, [])
            ax.scatter([x[k] + offset] * len(seeds), seeds, s=10, color="black", zorder=3)
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test AUROC (95 % CI)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Spatial specificity vs. the shortcut", fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)
