"""The saliency audit's outputs: the method × criterion table, ``saliency.md`` and the figure."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spatialspec.audit.base import fmt
from spatialspec.audit.saliency_metrics import RULES

__all__ = [
    "CRITERIA",
    "POSTPROCESSING",
    "SaliencyExamples",
    "figure_rows",
    "plot_examples",
    "saliency_markdown",
    "verdict_table",
]

#: Columns of the verdict table: criterion -> its label.
CRITERIA = {
    "localization": "localization vs average training mask",
    "localization_pixels": "localization vs own pixel probabilities",
    "randomization": "randomization",
    "repeatability": "repeatability",
    "reproducibility": "reproducibility",
}

#: The post-processing every map gets, in one sentence (``saliency.md``, README).
POSTPROCESSING = (
    "every map is post-processed alike (Arun et al.): sum |·| over channels, clip at the "
    "image's 99th percentile, min-max scale to [0, 1]; SSIM (11-px Gaussian window) on these "
    "maps with data_range = 1"
)


@dataclass
class SaliencyExamples:
    """The rows of the figure (not written to JSON).

    Attributes:
        image_ids: (R,) ids.
        images: (R, S, S) or (R, S, S, 3) images in [0, 1].
        roi_masks: (R, S, S) bool pathology masks.
        spurious_masks: (R, S, S) bool spurious masks.
        labels: (R,) labels.
        has_spurious_mask: (R,) whether the image has a spurious mask.
        maps: Attribution method -> (R, S, S) maps.
    """

    image_ids: list[str]
    images: np.ndarray
    roi_masks: np.ndarray
    spurious_masks: np.ndarray
    labels: np.ndarray
    has_spurious_mask: np.ndarray
    maps: dict[str, np.ndarray]


def figure_rows(labels: np.ndarray, has_spurious: np.ndarray, rows: int = 6) -> np.ndarray:
    """Indices of the figure's images, positives with the spurious feature first.

    Images are taken in turn from four groups — positives with a spurious mask, negatives with
    one, positives without, negatives without — and returned sorted by group.
    """
    category = np.where(np.asarray(has_spurious, bool), 0, 2) + (np.asarray(labels) == 0)
    queues = [list(np.flatnonzero(category == c)) for c in range(4)]
    picked: list[int] = []
    while len(picked) < rows and any(queues):
        for queue in queues:
            if queue and len(picked) < rows:
                picked.append(int(queue.pop(0)))
    return np.array(sorted(picked, key=lambda i: (category[i], i)), dtype=int)


# --------------------------------------------------------------------------- verdicts


def _tests(r: Mapping[str, Any]) -> dict[str, Mapping[str, Any] | None]:
    """Each criterion's comparison (with ``passed``) in one method's result."""
    base = r["localization_baselines"]
    return {
        "localization": base.get("average_training_mask"),
        "localization_pixels": base.get("pixel_probabilities"),
        "randomization": r.get("randomization_test"),
        "repeatability": r.get("repeatability"),
        "reproducibility": r.get("reproducibility"),
    }


def verdict_table(attributions: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Method -> criterion (:data:`CRITERIA`) -> True (pass) / False (fail) / None (not judged).

    A criterion that did not run (no replicate, no dense model, ...) is left out.
    """
    return {
        name: {c: test["passed"] for c, test in _tests(r).items() if test is not None}
        for name, r in attributions.items()
    }


def _mark(passed: bool | None) -> str:
    return {True: "✓", False: "✗", None: "?"}[passed]


def _cell(criterion: str, test: Mapping[str, Any] | None, r: Mapping[str, Any]) -> str:
    """``value vs baseline ✓``; SSIM criteria compare with the similarity floor."""
    if test is None:
        return "–"
    if criterion.startswith("localization"):
        value, baseline = r["localization_auprc"]["mean"], test["mean"]
    else:
        value, baseline = test["ssim"], r["similarity_floor"]["mean"]
    sd = f" ± {fmt(test['sd'])}" if test.get("sd") is not None else ""
    return f"{fmt(value)}{sd} vs {fmt(baseline)} {_mark(test['passed'])}"


def _table(attributions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Arun et al.'s table: one row per method, one column per criterion, plus the share."""
    head = ["method", "images", *CRITERIA.values(), "spurious share (lift)", "s (CPU s)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in attributions.items():
        share = r["spurious_attribution_share"]
        cells = [_cell(c, t, r) for c, t in _tests(r).items()]
        lines.append(
            f"| {name} | {r['n_images']} | "
            + " | ".join(cells)
            + f" | {fmt(share['mean'])} ({fmt(share['lift'], 1)}) | {r['seconds']:.0f} "
            f"({r['cpu_seconds']:.0f}) |"
        )
    return lines


def _detail_lines(attributions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every comparison: the mean per-image difference to its baseline and its interval."""
    lines = [
        "| method | criterion | mean difference | 95 % CI | n | verdict |",
        "|---|---|---:|---|---:|---|",
    ]
    for name, r in attributions.items():
        for criterion, test in _tests(r).items():
            if test is None:
                continue
            ci = "–" if test["ci"] is None else f"[{fmt(test['ci'][0])}, {fmt(test['ci'][1])}]"
            lines.append(
                f"| {name} | {CRITERIA[criterion]} | {fmt(test['diff'])} | {ci} | "
                f"{test['n']} | {_mark(test['passed'])} |"
            )
    return lines


# --------------------------------------------------------------------------- Markdown


def _header(result: Mapping[str, Any]) -> list[str]:
    meta, st = result.get("metadata", {}), result["settings"]
    pooling = f", pooling `{meta['pooling']}`" if meta.get("pooling") else ""
    base = result["baselines"]
    lines = [
        "# Saliency audit (Arun et al. 2021)",
        "",
        f"- checkpoint `{meta.get('checkpoint')}` (method `{meta.get('method')}`, encoder "
        f"`{meta.get('encoder')}`{pooling}); maps explain the log-odds of the image-level score",
        f"- split `{result['split']}`: {result['n_images']} images, {result['n_positive']} "
        f"positive, {result['n_with_spurious_mask']} with a spurious mask; expensive methods "
        f"on {st['expensive_images']} of them, cascading randomization on "
        f"{st['randomization_images']}",
        f"- {POSTPROCESSING}",
        f"- replicates (training seeds) besides this model: {st['n_replicates']}; other "
        f"architectures: {st['n_other_architectures']}",
        f"- localization baselines: the average of {base['average_training_mask']['n_train_masks']}"
        " training masks"
        + (
            "; the model's own pixel probabilities"
            if base["pixel_probabilities"]
            else " (no pixel probabilities: an image-level model)"
        ),
    ]
    lines += [f"- {why}" for why in result.get("skipped", {}).values()]
    return lines


def saliency_markdown(result: Mapping[str, Any]) -> str:
    """The audit as Markdown: the verdict table, the comparisons, the randomization curves."""
    attributions = result["attributions"]
    lines = [
        *_header(result),
        "",
        "## Method × criterion",
        "",
        "Each cell: the method's value vs its baseline (localization: AUPRC vs the "
        "baseline's AUPRC; the SSIM criteria: SSIM vs the similarity floor, the SSIM between "
        "maps of different images); ✓ pass, ✗ fail, ? not judged, – not run. Spurious "
        "share: attribution mass on the spurious region (lift = share / its area).",
        "",
        *_table(attributions),
        "",
        "Rules:",
        "",
    ]
    lines += [f"- {name}: {rule}" for name, rule in RULES.items()]
    lines += _prevalence_lines(attributions)
    lines += ["", "## Differences to the baselines", "", *_detail_lines(attributions)]
    lines += _randomization_lines(attributions)
    lines += _guided_note(result.get("metadata", {}))
    meta = result.get("metadata", {})
    if meta:
        lines += ["", f"git commit `{meta.get('git_commit')}`, created {meta.get('created')}."]
    return "\n".join(lines) + "\n"


def _prevalence_lines(attributions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not attributions:
        return []
    rows = [
        f"{name}: {fmt(r['localization_auprc']['prevalence'])} (n={r['localization_auprc']['n']})"
        for name, r in attributions.items()
    ]
    return [
        "",
        "Prevalence (mask area fraction on the positives scored; an uninformative map's "
        "AUPRC): " + "; ".join(rows) + ".",
    ]


def _randomization_lines(attributions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Mean SSIM to the trained maps after each cumulative randomization, one row per layer."""
    curves = {n: r["randomization"] for n, r in attributions.items() if r["randomization"]}
    if not curves:
        return []
    layers = [step["layer"] for step in next(iter(curves.values()))]
    lines = [
        "",
        "## Cascading randomization",
        "",
        "Output side first, cumulative: mean SSIM of the maps to the trained model's. A map "
        "that explains the model falls to the floor (last row).",
        "",
        "| randomized up to | " + " | ".join(curves) + " |",
        "|---|" + "---:|" * len(curves),
    ]
    for i, layer in enumerate(layers):
        values = " | ".join(fmt(curve[i]["ssim"]) for curve in curves.values())
        lines.append(f"| {layer} | {values} |")
    floors = " | ".join(fmt(attributions[n]["similarity_floor"]["mean"]) for n in curves)
    return [*lines, f"| *floor* | {floors} |"]


def _guided_note(meta: Mapping[str, Any]) -> list[str]:
    acts = meta.get("activations") or {}
    if not acts:
        return []
    others = {k: v for k, v in acts.items() if k != "ReLU"}
    listed = ", ".join(f"{v} {k}" for k, v in acts.items())
    text = (
        "every activation is a ReLU module: guided backprop is the classic one"
        if not others
        else "guided backprop rectifies the gradient at the ReLU modules only; the others "
        "pass their plain gradient"
    )
    return ["", f"Activation modules of this network: {listed} — {text}."]


# --------------------------------------------------------------------------- figure


def plot_examples(examples: SaliencyExamples) -> bytes:
    """PNG grid: image, pathology mask, spurious mask, then one heatmap per attribution method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(examples.maps)
    n_rows, n_cols = max(len(examples.image_ids), 1), 3 + len(names)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.7 * n_cols, 1.8 * n_rows), dpi=110, squeeze=False
    )
    titles = ["image", "pathology mask", "spurious mask", *names]
    for r in range(len(examples.image_ids)):
        _plot_row(axes[r], examples, r, names)
    for c, ax in enumerate(axes[0]):
        ax.set_title(titles[c].replace("_", " "), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _plot_row(axes: Sequence[Any], ex: SaliencyExamples, r: int, names: list[str]) -> None:
    grey = {"cmap": "gray", "vmin": 0, "vmax": 1}
    axes[0].imshow(ex.images[r], **grey)
    axes[0].set_ylabel(
        f"{ex.image_ids[r]}\ny={ex.labels[r]} tube={int(ex.has_spurious_mask[r])}", fontsize=6
    )
    axes[1].imshow(ex.roi_masks[r], **grey)
    axes[2].imshow(ex.spurious_masks[r], **grey)
    for ax, name in zip(axes[3:], names, strict=True):
        ax.imshow(ex.images[r], **grey)
        ax.imshow(ex.maps[name][r], cmap="inferno", alpha=0.6, vmin=0, vmax=1)  # maps on [0, 1]
        for mask, colour in ((ex.roi_masks[r], "lime"), (ex.spurious_masks[r], "cyan")):
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.6)
