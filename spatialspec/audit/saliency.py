"""Saliency trustworthiness audit (Arun et al.): where do a model's attributions fall?

Attribution maps explain the model's **image-level score** (:class:`ScoreModel`): the probability
``method.score`` ranks images by — for ``binary`` the sigmoid of the image logit, for the dense
methods the pooled pixel probability. Every map is non-negative, (N, S, S) at the input size:

- ``gradcam``: captum ``LayerGradCam`` on the deepest encoder feature map, ReLU (as the original
  Grad-CAM), bilinearly upsampled to the input with ``LayerAttribution.interpolate``.
- ``integrated_gradients``: captum ``IntegratedGradients`` from a constant baseline image of raw
  intensity ``baseline`` (default 0.5, mid-grey: exactly 0 after the dataset's fixed
  normalisation, so the baseline is "no signal" in the network's input space), ``n_steps``
  (default 32) Gauss-Legendre steps; ``|attribution|`` summed over channels.
- ``saliency``: captum ``Saliency`` (plain input gradients), ``|gradient|`` summed over channels.

Metrics, each a pure function of numpy maps and masks:

- :func:`localization_auprc`: AUPRC of the per-pixel map values against the pathology mask, on
  positives with a non-empty mask (chance: the mask's area fraction).
- :func:`spurious_attribution_share`: the share of attribution mass on the spurious region
  (its mask dilated by ``dilate`` pixels: the tube is thin and resizing frays it; the audit
  leaves out pixels within ``dilate`` pixels of the pathology, which a tube may run beside),
  with the share a uniform map would get (the region's area fraction) and their ratio.
- :func:`cascading_randomization`: Adebayo et al.'s sanity check — re-initialise the network from
  the output side inwards and report the SSIM of each randomised model's maps to the trained
  model's maps; a map that explains the model should change (SSIM falls).
- :func:`repeatability`: SSIM between the maps of two models (e.g. two training seeds).

SSIM (torchmetrics, 11-pixel Gaussian window) compares maps min-max normalised per image to
[0, 1]; a constant map becomes all zeros.
"""

from __future__ import annotations

import argparse
import copy
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from sklearn.metrics import average_precision_score
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from spatialspec.audit.base import Audit, AuditResult, fmt, register_audit, write_result
from spatialspec.audit.common import AuditSet, load_audit_set, load_model
from spatialspec.audit.randomization import cascading_randomization, randomization_layers
from spatialspec.data.dataset import MEAN, STD
from spatialspec.data.roi import DEFAULT_DILATE, dilate_mask
from spatialspec.evaluation.predict import load_checkpoint
from spatialspec.runinfo import run_metadata

__all__ = [
    "ATTRIBUTIONS",
    "SaliencyExamples",
    "ScoreModel",
    "add_saliency_parser",
    "attribution_maps",
    "audit_saliency",
    "cascading_randomization",
    "figure_rows",
    "localization_auprc",
    "randomization_layers",
    "repeatability",
    "run_saliency",
    "saliency_markdown",
    "spurious_attribution_share",
    "ssim_maps",
    "write_saliency",
]

# --------------------------------------------------------------------------- attribution maps


class ScoreModel(nn.Module):
    """(B, C, H, W) images -> (B,) image-level scores of a copy of a trained method, for captum.

    The copy is in eval mode with frozen weights. A pass-through forward hook on its encoder
    routes the deepest feature map through :attr:`deepest` (an ``nn.Identity``), so a layer
    attribution (Grad-CAM) can target the last encoder stage of any smp encoder.

    Args:
        method: A trained method (anything with ``net.encoder`` and ``score(images)``).
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = copy.deepcopy(method).eval().requires_grad_(False)
        self.deepest = nn.Identity()
        self.method.net.encoder.register_forward_hook(self._tap)

    def _tap(
        self, module: nn.Module, inputs: Any, features: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [*features[:-1], self.deepest(features[-1])]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.score(images)  # (B,)


def _gradcam(model: ScoreModel, x: torch.Tensor, n_steps: int, baseline: float) -> torch.Tensor:
    cam = LayerGradCam(model, model.deepest).attribute(x, relu_attributions=True)  # (B, 1, h, w)
    up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up.clamp_min(0).sum(dim=1)  # (B, H, W)


def _integrated_gradients(
    model: ScoreModel, x: torch.Tensor, n_steps: int, baseline: float
) -> torch.Tensor:
    ig = IntegratedGradients(model)
    attr = ig.attribute(
        x, baselines=(baseline - MEAN) / STD, n_steps=n_steps, internal_batch_size=x.shape[0]
    )  # (B, C, H, W)
    return attr.abs().sum(dim=1)  # (B, H, W)


def _saliency(model: ScoreModel, x: torch.Tensor, n_steps: int, baseline: float) -> torch.Tensor:
    grads = Saliency(model).attribute(x.detach().requires_grad_(), abs=True)  # (B, C, H, W)
    return grads.sum(dim=1)  # (B, H, W)


#: Attribution methods by name: (model, images, n_steps, baseline) -> (B, H, W) maps.
ATTRIBUTIONS: dict[str, Callable[[ScoreModel, torch.Tensor, int, float], torch.Tensor]] = {
    "gradcam": _gradcam,
    "integrated_gradients": _integrated_gradients,
    "saliency": _saliency,
}


def _check_attribution(name: str) -> None:
    if name not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {name!r}; valid: {', '.join(ATTRIBUTIONS)}")


def attribution_maps(
    method: nn.Module,
    images: torch.Tensor,
    name: str,
    *,
    batch_size: int = 32,
    n_steps: int = 32,
    baseline: float = MEAN,
) -> np.ndarray:
    """Non-negative attribution maps of a method's image-level score (CPU, batched).

    Args:
        method: A trained method (it is copied, never changed).
        images: (N, C, S, S) normalised images.
        name: One of :data:`ATTRIBUTIONS`.
        batch_size: Images per attribution call (integrated gradients evaluates
            ``batch_size`` path points at a time).
        n_steps: Integrated-gradients steps.
        baseline: Raw intensity in [0, 1] of the integrated-gradients baseline image.

    Returns:
        (N, S, S) float32 maps.
    """
    _check_attribution(name)
    return _maps(ScoreModel(method), images, name, batch_size, n_steps, baseline)


def _maps(
    model: ScoreModel, images: torch.Tensor, name: str, batch_size: int, n_steps: int,
    baseline: float,
) -> np.ndarray:  # fmt: skip
    attribute = ATTRIBUTIONS[name]
    parts = [attribute(model, x, n_steps, baseline).detach() for x in images.split(batch_size)]
    return torch.cat(parts).float().numpy()  # (N, S, S)


# --------------------------------------------------------------------------- metrics


def _summary(values: np.ndarray) -> tuple[float | None, int]:
    """Mean of the finite values (None if none) and their count."""
    finite = values[np.isfinite(values)]
    return (float(finite.mean()) if finite.size else None), int(finite.size)


def localization_auprc(
    maps: np.ndarray, roi_masks: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """How well map values rank the pathology's pixels above the rest (Arun et al.).

    Args:
        maps: (N, S, S) attribution maps.
        roi_masks: (N, S, S) bool pathology masks.
        labels: (N,) image labels; only positives with a non-empty mask count.

    Returns:
        ``mean`` (None without a counted image), ``n``, ``chance`` (mean mask area fraction:
        the AUPRC of an uninformative map) and ``per_image`` ((N,) AUPRC, NaN where not counted).
    """
    roi = np.asarray(roi_masks, dtype=bool)
    counted = (np.asarray(labels) == 1) & roi.reshape(len(roi), -1).any(axis=1)  # (N,)
    per_image = np.full(len(roi), np.nan)
    for i in np.flatnonzero(counted):
        per_image[i] = average_precision_score(roi[i].ravel(), np.asarray(maps[i]).ravel())
    mean, n = _summary(per_image)
    chance = float(roi[counted].mean()) if n else None
    return {"mean": mean, "n": n, "chance": chance, "per_image": per_image}


def spurious_attribution_share(
    maps: np.ndarray,
    spurious_masks: np.ndarray,
    has_spurious_mask: np.ndarray,
    dilate: int = DEFAULT_DILATE,
    roi_masks: np.ndarray | None = None,
) -> dict[str, Any]:
    """Share of the attribution mass on the spurious region, vs. a uniform map's share.

    The region is the spurious mask grown by ``dilate`` pixels (square neighbourhood, as the
    masking audit's ``spurious_removed``): a thin tube loses pixels when resized. With
    ``roi_masks``, pixels within ``dilate`` pixels of the ROI are taken out of the region: a
    tube may run right beside the pathology, and the grown tube would otherwise claim the
    pathology's border, where a well-localised map concentrates. Negative map values are clipped
    to 0; an image whose map is all zero has no share (NaN, not counted).

    Args:
        maps: (N, S, S) attribution maps.
        spurious_masks: (N, S, S) bool spurious masks.
        has_spurious_mask: (N,) whether an image has one; only those count.
        dilate: Pixels by which the region is grown.
        roi_masks: (N, S, S) bool pathology masks to keep out of the region, or None.

    Returns:
        ``mean`` share, ``uniform`` (mean area fraction of the regions: the share of a uniform
        map), ``ratio`` (mean / uniform; 1 = no preference for the region), ``n``,
        ``per_image`` and ``per_image_uniform`` ((N,), NaN where not counted).
    """
    mass = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)  # (N, S, S)
    share = np.full(len(mass), np.nan)
    uniform = np.full(len(mass), np.nan)
    for i in np.flatnonzero(np.asarray(has_spurious_mask, dtype=bool)):
        region = dilate_mask(spurious_masks[i], dilate)  # (S, S)
        if roi_masks is not None:
            region &= ~dilate_mask(roi_masks[i], dilate)
        total = mass[i].sum()
        uniform[i] = region.mean()
        share[i] = mass[i][region].sum() / total if total > 0 else np.nan
    mean, n = _summary(share)
    expected = float(np.mean(uniform[np.isfinite(share)])) if n else None
    ratio = mean / expected if n and expected else None
    return {"mean": mean, "uniform": expected, "ratio": ratio, "n": n, "per_image": share,
            "per_image_uniform": uniform}  # fmt: skip


def _unit_range(maps: np.ndarray) -> torch.Tensor:
    """(N, S, S) maps -> (N, 1, S, S) float tensor min-max scaled per image (constant -> 0)."""
    t = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    low = t.amin(dim=(1, 2), keepdim=True)
    span = t.amax(dim=(1, 2), keepdim=True) - low
    return ((t - low) / torch.where(span > 0, span, 1.0)).unsqueeze(1)


def ssim_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of two stacks of maps, each min-max normalised per image to [0, 1].

    Args:
        a: (N, S, S) maps.
        b: (N, S, S) maps.

    Returns:
        (N,) SSIM values (1 for identical maps).
    """
    if np.shape(a) != np.shape(b):
        raise ValueError(f"map stacks differ in shape: {np.shape(a)} vs {np.shape(b)}")
    ssim = structural_similarity_index_measure(
        _unit_range(a), _unit_range(b), data_range=1.0, reduction="none"
    )  # (N,)
    return ssim.double().numpy()


def repeatability(maps_a: np.ndarray, maps_b: np.ndarray) -> float:
    """Mean SSIM between two models' maps of the same images (Arun et al.'s repeatability)."""
    return float(ssim_maps(maps_a, maps_b).mean())


# --------------------------------------------------------------------------- the audit


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


def audit_saliency(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    methods: Sequence[str] = ("gradcam", "integrated_gradients"),
    limit: int | None = 200,
    second_checkpoint: str | Path | None = None,
    randomization: bool = True,
    seed: int = 0,
    batch_size: int = 32,
    *,
    n_steps: int = 32,
    baseline: float = MEAN,
    dilate: int = DEFAULT_DILATE,
    exclude_roi: bool = True,
    randomization_images: int = 32,
) -> dict[str, Any]:
    """Localization, spurious share, randomization and repeatability of a model's saliency maps.

    Args:
        checkpoint: A spatialspec checkpoint.
        manifest: Manifest to audit on (default: the run's).
        split: Split to audit.
        methods: Attribution methods (:data:`ATTRIBUTIONS`).
        limit: Audit a seeded random subset of this many images (None: all).
        second_checkpoint: Another model (e.g. another training seed) for repeatability.
        randomization: Run cascading randomization.
        seed: Subset and randomization seed.
        batch_size: Images per attribution call.
        n_steps: Integrated-gradients steps.
        baseline: Raw intensity in [0, 1] of the integrated-gradients baseline image.
        dilate: Pixels by which spurious masks are grown.
        exclude_roi: Keep pixels within ``dilate`` pixels of the pathology mask out of the
            spurious region (see :func:`spurious_attribution_share`).
        randomization_images: Images (a seeded random subset) for cascading randomization.

    Returns:
        JSON-ready results (``attributions``: per method ``localization_auprc``,
        ``spurious_attribution_share``, ``randomization``, ``repeatability``), ``metadata``, and
        ``figure``: :class:`SaliencyExamples` for :func:`write_saliency` (not JSON).
    """
    for name in methods:
        _check_attribution(name)
    method, config, data = load_model(checkpoint, manifest)
    audit = load_audit_set(data, split, limit, seed)
    second = _second_model(second_checkpoint, config)
    settings = {"batch_size": batch_size, "n_steps": n_steps, "baseline": baseline}
    rows = figure_rows(audit.labels, audit.has_spurious_mask)
    results, figure_maps = {}, {}
    for name in methods:
        maps = attribution_maps(method, audit.images, name, **settings)
        figure_maps[name] = maps[rows]
        results[name] = _attribution_result(maps, audit, dilate, exclude_roi)
        if randomization:
            pick = _subset(len(audit), randomization_images, seed)
            layers = cascading_randomization(
                method, audit.images[pick], name, reference=maps[pick], seed=seed, **settings
            )
            results[name]["randomization"] = [{"layer": n, "ssim": s} for n, s in layers]
        if second is not None:
            other = attribution_maps(second, audit.images, name, **settings)
            results[name]["repeatability"] = {"ssim": repeatability(maps, other), "n": len(audit)}
    return {
        "split": split,
        "n_images": len(audit),
        "n_positive": int(audit.labels.sum()),
        "n_with_spurious_mask": int(audit.has_spurious_mask.sum()),
        "settings": {
            "methods": list(methods),
            "limit": limit,
            "seed": seed,
            "n_steps": n_steps,
            "baseline": baseline,
            "dilate": dilate,
            "exclude_roi": exclude_roi,
            "randomization": randomization,
            "randomization_images": randomization_images,
        },
        "attributions": results,
        "figure_image_ids": [audit.image_ids[i] for i in rows],
        "metadata": _metadata(checkpoint, second_checkpoint, data, method, config),
        "figure": _examples(audit, rows, figure_maps),
    }


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``k`` of ``n`` items (all if k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _second_model(checkpoint: str | Path | None, config: dict[str, Any]) -> nn.Module | None:
    """The repeatability model; its input size must match the audited model's."""
    if checkpoint is None:
        return None
    second, second_config = load_checkpoint(checkpoint)
    size, other = config.get("data", {}).get("image_size"), second_config.get("data", {})
    if other.get("image_size", size) != size:
        raise ValueError(f"{checkpoint} expects {other['image_size']} px images, not {size}")
    return second


def _attribution_result(
    maps: np.ndarray, audit: AuditSet, dilate: int, exclude_roi: bool
) -> dict[str, Any]:
    loc = localization_auprc(maps, audit.roi_masks, audit.labels)
    roi = audit.roi_masks if exclude_roi else None
    share = spurious_attribution_share(
        maps, audit.spurious_masks, audit.has_spurious_mask, dilate, roi_masks=roi
    )
    return {
        "localization_auprc": _json_metric(loc, audit),
        "spurious_attribution_share": _json_metric(share, audit),
        "randomization": None,
        "repeatability": None,
    }


def _json_metric(metric: dict[str, Any], audit: AuditSet) -> dict[str, Any]:
    """A metric without its (N,) arrays, plus ``per_image``: image id -> value where counted."""
    out = {k: v for k, v in metric.items() if not isinstance(v, np.ndarray)}
    values = zip(audit.image_ids, metric["per_image"], strict=True)
    return {**out, "per_image": {i: float(v) for i, v in values if np.isfinite(v)}}


def _metadata(
    checkpoint: str | Path, second: str | Path | None, data: Any, method: nn.Module,
    config: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    hp = dict(method.hparams)
    return run_metadata(
        checkpoint=str(Path(checkpoint).resolve()),
        second_checkpoint=None if second is None else str(Path(second).resolve()),
        manifest=str(Path(data.manifest_path).resolve()),
        method=config.get("method"),
        pooling=hp.get("pooling"),
        attribution_target="image-level score (method.score: probability)",
    )


def _examples(audit: AuditSet, rows: np.ndarray, maps: dict[str, np.ndarray]) -> SaliencyExamples:
    images = audit.images[rows].numpy() * STD + MEAN  # (R, C, S, S)
    images = np.clip(images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1), 0, 1)
    return SaliencyExamples(
        image_ids=[audit.image_ids[i] for i in rows],
        images=images,
        roi_masks=audit.roi_masks[rows],
        spurious_masks=audit.spurious_masks[rows],
        labels=audit.labels[rows],
        has_spurious_mask=audit.has_spurious_mask[rows],
        maps=maps,
    )


# --------------------------------------------------------------------------- outputs


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def saliency_markdown(result: dict[str, Any]) -> str:
    """The audit as Markdown: one row per attribution method, then the randomization curve."""
    meta = result.get("metadata", {})
    lines = [
        "# Saliency audit",
        "",
        f"- checkpoint `{meta.get('checkpoint')}` (method `{meta.get('method')}`"
        + (f", pooling `{meta['pooling']}`" if meta.get("pooling") else "") + ")",
        f"- split `{result['split']}`: {result['n_images']} images, {result['n_positive']} "
        f"positive, {result['n_with_spurious_mask']} with a spurious mask",
        "- maps explain the image-level score; localization AUPRC on positives with a mask "
        "(chance: mask area); spurious share = attribution mass on the spurious mask dilated by "
        f"{result['settings']['dilate']} px"
        + (" less the pathology dilated as much" if result["settings"]["exclude_roi"] else "")
        + " (uniform: its area; ratio = share / uniform)",
        "",
        "| attribution | localization AUPRC | chance | n | spurious share | uniform | ratio | n "
        "| repeatability SSIM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, r in result["attributions"].items():
        loc, share = r["localization_auprc"], r["spurious_attribution_share"]
        rep = r["repeatability"]
        lines.append(
            f"| {name} | {_fmt(loc['mean'])} | {_fmt(loc['chance'])} | {loc['n']} | "
            f"{_fmt(share['mean'])} | {_fmt(share['uniform'])} | {_fmt(share['ratio'], 2)} | "
            f"{share['n']} | {_fmt(rep and rep['ssim'])} |"
        )
    lines += _randomization_lines(result["attributions"])
    if meta:
        lines += ["", f"git commit `{meta.get('git_commit')}`, created {meta.get('created')}."]
    return "\n".join(lines) + "\n"


def _randomization_lines(attributions: dict[str, dict[str, Any]]) -> list[str]:
    """Mean SSIM to the trained maps after each cumulative randomization, one row per layer."""
    curves = {n: r["randomization"] for n, r in attributions.items() if r["randomization"]}
    if not curves:
        return []
    layers = [step["layer"] for step in next(iter(curves.values()))]
    lines = [
        "",
        "Cascading randomization (output side first, cumulative): mean SSIM of the maps to the "
        "trained model's. A map that explains the model drops well below 1.",
        "",
        "| randomized up to | " + " | ".join(curves) + " |",
        "|---|" + "---:|" * len(curves),
    ]
    for i, layer in enumerate(layers):
        values = " | ".join(_fmt(curve[i]["ssim"]) for curve in curves.values())
        lines.append(f"| {layer} | {values} |")
    return lines


def plot_examples(examples: SaliencyExamples) -> bytes:
    """PNG grid: image, pathology mask, spurious mask, then one heatmap per attribution method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(examples.maps)
    n_rows, n_cols = max(len(examples.image_ids), 1), 3 + len(names)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.7 * n_cols, 1.8 * n_rows), dpi=110,
                             squeeze=False)  # fmt: skip
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
    axes[0].set_ylabel(f"{ex.image_ids[r]}\ny={ex.labels[r]} tube={int(ex.has_spurious_mask[r])}",
                       fontsize=6)  # fmt: skip
    axes[1].imshow(ex.roi_masks[r], **grey)
    axes[2].imshow(ex.spurious_masks[r], **grey)
    for ax, name in zip(axes[3:], names, strict=True):
        ax.imshow(ex.images[r], **grey)
        heat = ex.maps[name][r]
        top = float(np.percentile(heat, 99.5)) or None  # sparse maps stay visible
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=top)
        for mask, colour in ((ex.roi_masks[r], "lime"), (ex.spurious_masks[r], "cyan")):
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.6)


def write_saliency(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``saliency.json``, ``saliency.md`` and ``saliency_grid.png`` into ``out_dir``.

    Every file is written atomically; the JSON holds everything but ``figure``.

    Returns:
        ``{"json": path, "markdown": path, "figure": path}``.
    """
    paths = write_result(SaliencyAudit(), AuditResult("saliency", result), out_dir)
    return dict(zip(("json", "markdown", "figure"), paths, strict=True))


# --------------------------------------------------------------------------- command line


def add_saliency_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``saliency`` to the ``audit`` subcommands."""
    p = sub.add_parser("saliency", help="saliency trustworthiness: localization, spurious share, "
                       "cascading randomization, repeatability")  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a spatialspec checkpoint (.ckpt)")
    p.add_argument("--second-checkpoint", help="another model (e.g. seed) for repeatability")
    p.add_argument("--manifest", help="manifest.csv (default: the run's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--methods", default="gradcam,integrated_gradients",
                   help=f"comma-separated: {', '.join(ATTRIBUTIONS)}")  # fmt: skip
    p.add_argument("--limit", type=int, default=200, help="images audited (seeded subset)")
    p.add_argument("--no-randomization", dest="randomization", action="store_false",
                   help="skip cascading randomization")  # fmt: skip
    p.add_argument("--randomization-images", type=int, default=32,
                   help="images used by cascading randomization")  # fmt: skip
    p.add_argument("--n-steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument("--dilate", type=int, default=DEFAULT_DILATE,
                   help="pixels by which spurious masks are grown")  # fmt: skip
    p.add_argument("--no-exclude-roi", dest="exclude_roi", action="store_false",
                   help="count spurious-region pixels next to the pathology too")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="subset and randomization seed")
    p.add_argument("--out", required=True, help="folder for saliency.json, .md, _grid.png")
    return p


def run_saliency(args: argparse.Namespace) -> dict[str, Any]:
    """Run the audit from parsed ``audit saliency`` arguments, write it, print a summary."""
    result = audit_saliency(
        args.checkpoint, manifest=args.manifest, split=args.split,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], limit=args.limit,
        second_checkpoint=args.second_checkpoint, randomization=args.randomization,
        seed=args.seed, batch_size=args.batch_size, n_steps=args.n_steps,
        dilate=args.dilate, exclude_roi=args.exclude_roi,
        randomization_images=args.randomization_images,
    )  # fmt: skip
    paths = write_saliency(result, args.out)
    for name, r in result["attributions"].items():
        loc, share = r["localization_auprc"], r["spurious_attribution_share"]
        print(
            f"{name}: localization AUPRC {_fmt(loc['mean'])} (chance {_fmt(loc['chance'])}, "
            f"n={loc['n']}); spurious share {_fmt(share['mean'])} (uniform "
            f"{_fmt(share['uniform'])}, ratio {_fmt(share['ratio'], 2)}, n={share['n']})"
        )
    print(f"-> {paths['json']}, {paths['markdown']}, {paths['figure']}")
    return result


# --------------------------------------------------------------------------- the audit

#: Attribution method whose numbers ``audit all``'s summary reports (Grad-CAM on a U-Net's
#: bottleneck says little about dense models; see the notes of :func:`saliency_markdown`).
HEADLINE_ATTRIBUTION = "integrated_gradients"


@register_audit
class SaliencyAudit(Audit):
    """``saliency``: localization, spurious share, cascading randomization, repeatability."""

    name = "saliency"
    table_order = 0

    compute = staticmethod(audit_saliency)
    uses_second_checkpoint = True

    def headline(self, result: AuditResult) -> dict[str, Any]:
        attribution = result.data["attributions"][HEADLINE_ATTRIBUTION]
        repeat = attribution.get("repeatability") or {}
        return {
            "localization_auprc": attribution["localization_auprc"]["mean"],
            "spurious_attribution_share": attribution["spurious_attribution_share"]["mean"],
            "spurious_share_uniform": attribution["spurious_attribution_share"]["uniform"],
            "saliency_repeatability_ssim": repeat.get("ssim"),
            "randomization_ssim": {
                r["layer"]: r["ssim"] for r in attribution.get("randomization", [])
            },
            "attribution_method": HEADLINE_ATTRIBUTION,
        }

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        share = f"{fmt(headline['spurious_attribution_share'])} "
        return {
            "localization AUPRC": fmt(headline["localization_auprc"]),
            "spurious share (uniform)": share + f"({fmt(headline['spurious_share_uniform'])})",
        }

    def summary_note(self) -> str:
        return f"Attribution method: {HEADLINE_ATTRIBUTION}."

    def json_ready(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != "figure"}

    def markdown(self, data: Mapping[str, Any]) -> str:
        return saliency_markdown(dict(data))

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        return {"saliency_grid.png": plot_examples(data["figure"])}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        return add_saliency_parser(sub)

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return run_saliency(args)

    def add_suite_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--saliency-limit", type=int, default=200,
                            help="images for saliency maps")  # fmt: skip

    def suite_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"limit": args.saliency_limit}
