"""The four criteria of the saliency audit for one attribution method, on prepared models.

:class:`CriteriaContext` holds what every method shares — the audited images, the audited model
and its replicates / other architectures (as :class:`~spatialspec.audit.attributions.ScoreModel`),
the localization baselines — and :func:`audit_method` computes one method's maps and scores them
(:mod:`spatialspec.audit.saliency_metrics`), each criterion with its verdict.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from spatialspec.audit.attributions import AttributionSettings, ScoreModel, compute_maps
from spatialspec.audit.common import AuditSet
from spatialspec.audit.randomization import cascading_randomization
from spatialspec.audit.saliency_metrics import (
    localization_auprc,
    paired_difference,
    pairwise_ssim,
    similarity_floor,
    spurious_attribution_share,
    verdict,
)
from spatialspec.data.io import read_mask
from spatialspec.data.roi import DEFAULT_DILATE
from spatialspec.data.transforms import resize_mask
from spatialspec.evaluation.predict import load_checkpoint

__all__ = [
    "CriteriaContext",
    "activations",
    "audit_method",
    "load_other_model",
    "pixel_probabilities",
    "training_mask_paths",
    "training_masks",
]


# --------------------------------------------------------------------------- models and data


def load_other_model(
    checkpoint: str | Path, config: Mapping[str, Any], method: nn.Module, same_encoder: bool
) -> nn.Module:
    """A replicate (``same_encoder``) or another architecture of the audited model.

    Raises:
        ValueError: Another input size or method, or (``same_encoder``) another encoder /
            (not ``same_encoder``) the same encoder; the message names the checkpoint.
    """
    other, other_config = load_checkpoint(checkpoint)
    size, got = config.get("data", {}).get("image_size"), other_config.get("data", {})
    if got.get("image_size", size) != size:
        raise ValueError(f"{checkpoint} expects {got['image_size']} px images, not {size}")
    if other_config.get("method", config.get("method")) != config.get("method"):
        raise ValueError(
            f"{checkpoint} is a {other_config.get('method')!r} model; the audited "
            f"one is {config.get('method')!r}"
        )
    ours, theirs = method.backbone.encoder_name, other.backbone.encoder_name
    if (ours == theirs) != same_encoder:
        role = "a replicate must have" if same_encoder else "another architecture must not have"
        raise ValueError(
            f"{checkpoint}: {role} the audited model's encoder {ours!r} (it has {theirs!r})"
        )
    return other


def training_mask_paths(data: Any) -> list[str]:
    """Mask files of the training rows that have one (possibly none)."""
    paths = data.split_frame("train").get("mask_path", pd.Series([], dtype=object))
    return [p for p in paths.fillna("").astype(str) if p]


def training_masks(data: Any, size: int) -> Iterator[np.ndarray]:
    """(S, S) bool masks of :func:`training_mask_paths`, read one at a time (thousands of them
    at 512 px would take gigabytes held together)."""
    for path in training_mask_paths(data):
        yield resize_mask(read_mask(path).view(np.uint8), size) > 0


def pixel_probabilities(method: nn.Module, images: torch.Tensor) -> np.ndarray | None:
    """(N, S, S) pixel probabilities of a dense method; None for an image-level one."""
    parts = []
    with torch.no_grad():
        for x in images.split(32):
            logits = method(x)  # detect's raw outputs are a dict of head outputs
            if not torch.is_tensor(logits) or logits.ndim != 4:
                return None
            parts.append(torch.sigmoid(logits)[:, 0])  # (b, S, S)
    return torch.cat(parts).float().numpy()


#: Activation module types :func:`activations` counts.
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
)


def activations(method: nn.Module) -> dict[str, int]:
    """Activation modules of the network by type (guided backprop rectifies ``ReLU`` only)."""
    counts: dict[str, int] = {}
    for module in method.modules():
        if isinstance(module, _ACTIVATIONS):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


# --------------------------------------------------------------------------- one method


@dataclass
class CriteriaContext:
    """What every attribution method of one audit shares.

    Attributes:
        audit: The audited images and masks.
        method: The audited (trained) method, for cascading randomization.
        model: Its :class:`ScoreModel`.
        replicates: Score models of its other training seeds.
        others: Score models of other architectures trained on the same data.
        baselines: Localization baseline name -> (S, S) map for every image or (N, S, S) maps
            of the audited images (None: not available).
        settings: How the attribution methods run.
        seed: Pairing, bootstrap and randomization seed.
        randomization: Whether to run cascading randomization.
        dilate: Pixels by which spurious masks are grown.
        exclude_roi: Keep the grown pathology out of the spurious region.
    """

    audit: AuditSet
    method: nn.Module
    model: ScoreModel
    replicates: list[ScoreModel] = field(default_factory=list)
    others: list[ScoreModel] = field(default_factory=list)
    baselines: dict[str, np.ndarray | None] = field(default_factory=dict)
    settings: AttributionSettings = field(default_factory=AttributionSettings)
    seed: int = 0
    randomization: bool = True
    dilate: int = DEFAULT_DILATE
    exclude_roi: bool = True


def _comparison(values: np.ndarray, baseline: np.ndarray, criterion: str, seed: int) -> dict:
    comparison = paired_difference(values, baseline, seed=seed)
    return {**comparison, "passed": verdict(criterion, comparison)}


def _json_metric(metric: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
    """A metric without its (N,) arrays, plus ``per_image``: image id -> value where counted."""
    out = {k: v for k, v in metric.items() if not isinstance(v, np.ndarray)}
    if "per_image" in metric:
        values = zip(ids, metric["per_image"], strict=True)
        out["per_image"] = {i: float(v) for i, v in values if np.isfinite(v)}
    return out


def _localization(
    maps: np.ndarray, ctx: CriteriaContext, idx: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The method's localization AUPRC, and each baseline's with the paired comparison."""
    roi, labels = ctx.audit.roi_masks[idx], ctx.audit.labels[idx]
    loc = localization_auprc(maps, roi, labels)
    out: dict[str, Any] = {}
    for name, base_map in ctx.baselines.items():
        if base_map is None:
            out[name] = None
            continue
        base = localization_auprc(base_map if base_map.ndim == 2 else base_map[idx], roi, labels)
        comparison = _comparison(loc["per_image"], base["per_image"], "localization", ctx.seed)
        out[name] = {"mean": base["mean"], "n": base["n"], **comparison}
    return _json_metric(loc, [ctx.audit.image_ids[i] for i in idx]), out


def _similarity(
    pairs: dict[str, Any] | None, floor: np.ndarray, criterion: str, seed: int
) -> dict[str, Any] | None:
    """Repeatability or reproducibility from its :func:`pairwise_ssim` (None: no pair), with its
    comparison to the similarity floor."""
    if pairs is None:
        return None
    summary = {k: pairs[k] for k in ("sd", "pairs", "n_pairs")}
    comparison = _comparison(pairs["per_image"], floor, criterion, seed)
    return {"ssim": pairs["mean"], **summary, **comparison}


def _randomization(
    name: str,
    ctx: CriteriaContext,
    maps: np.ndarray,
    idx: np.ndarray,
    ridx: np.ndarray,
    floor: np.ndarray,
) -> dict[str, Any]:
    """The cascading-randomization curve and its last step against the similarity floor."""
    pos = np.searchsorted(idx, ridx)  # positions of the randomization images among idx
    steps = cascading_randomization(
        ctx.method,
        ctx.audit.images[ridx],
        name,
        reference=maps[pos],
        settings=ctx.settings,
        seed=ctx.seed,
        per_image=True,
    )
    final = steps[-1][1]  # (R,) SSIM with every layer group randomised
    comparison = _comparison(final, floor[pos], "randomization", ctx.seed)
    test = {"layer": steps[-1][0], "ssim": float(final.mean()), **comparison}
    curve = [{"layer": layer, "ssim": float(s.mean())} for layer, s in steps]
    return {"randomization": curve, "randomization_test": test}


def audit_method(
    name: str, ctx: CriteriaContext, idx: np.ndarray, ridx: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """Every criterion of one attribution method.

    Args:
        name: The attribution method.
        ctx: The shared context.
        idx: Sorted indices (into ``ctx.audit``) of the images this method is audited on.
        ridx: Sorted subset of ``idx``: the cascading-randomization images.

    Returns:
        The JSON-ready result (``localization_auprc``, ``localization_baselines``,
        ``spurious_attribution_share``, ``similarity_floor``, ``randomization`` (the curve),
        ``randomization_test``, ``repeatability``, ``reproducibility``, ``n_images``,
        ``seconds`` (wall) and ``cpu_seconds`` (the process's CPU time, all threads)) and the
        (len(idx), S, S) maps of the audited model.
    """
    start, cpu = time.perf_counter(), time.process_time()
    audit, images = ctx.audit, ctx.audit.images[idx]
    maps = compute_maps(ctx.model, images, name, ctx.settings)
    loc, baselines = _localization(maps, ctx, idx)
    roi = audit.roi_masks[idx] if ctx.exclude_roi else None
    share = spurious_attribution_share(
        maps, audit.spurious_masks[idx], audit.has_spurious_mask[idx], ctx.dilate, roi
    )
    floor = similarity_floor(maps, seed=ctx.seed)
    result: dict[str, Any] = {
        "n_images": len(idx),
        "localization_auprc": loc,
        "localization_baselines": baselines,
        "spurious_attribution_share": _json_metric(share, [audit.image_ids[i] for i in idx]),
        "similarity_floor": {k: v for k, v in floor.items() if k != "per_image"},
        "randomization": None,
        "randomization_test": None,
    }
    if ctx.randomization:
        result.update(_randomization(name, ctx, maps, idx, ridx, floor["per_image"]))
    seeds = [maps, *(compute_maps(m, images, name, ctx.settings) for m in ctx.replicates)]
    others = [compute_maps(m, images, name, ctx.settings) for m in ctx.others]
    pairs = {
        "repeatability": pairwise_ssim(seeds) if len(seeds) > 1 else None,  # seed pairs
        "reproducibility": pairwise_ssim(seeds, others) if others else None,  # seeds x others
    }
    for criterion, p in pairs.items():
        result[criterion] = _similarity(p, floor["per_image"], criterion, ctx.seed)
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["cpu_seconds"] = round(time.process_time() - cpu, 2)
    return result, maps
