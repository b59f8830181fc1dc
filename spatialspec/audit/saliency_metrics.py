"""Arun et al.'s criteria on post-processed saliency maps, each against its baseline.

Pure functions of numpy maps ((N, S, S), in [0, 1] after
:func:`spatialspec.audit.attributions.postprocess`) and masks:

- :func:`localization_auprc`: AUPRC of per-pixel map values against the pathology mask on
  positives with a non-empty mask; ``prevalence`` (the mask's area fraction) is the AUPRC of an
  uninformative map. Baselines (:func:`average_mask`): the pixel-wise mean of the training
  split's masks, the same map for every image; for dense models, their own pixel probabilities.
- :func:`spurious_attribution_share`: share of the attribution mass on the spurious region, and
  its ``lift`` over the region's area fraction (a uniform map's share; 1 = no preference).
- :func:`ssim_maps`: per-image SSIM (torchmetrics, 11-pixel Gaussian window, ``data_range=1``).
- :func:`similarity_floor`: SSIM between the maps of random pairs of *different* images — how
  similar two unrelated maps of this method look (Arun et al.'s baseline for the SSIM criteria).
- :func:`pairwise_ssim`: SSIM between the maps of several models of the same images
  (repeatability: training seeds of one architecture; reproducibility: two architectures).
- :func:`paired_difference`: mean per-image difference of a criterion and its baseline with a
  percentile bootstrap interval over images; the pass rules (:data:`RULES`) read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import average_precision_score
from torchmetrics.functional.image import structural_similarity_index_measure

from spatialspec.data.roi import DEFAULT_DILATE, dilate_mask

__all__ = [
    "RULES",
    "average_mask",
    "localization_auprc",
    "paired_difference",
    "pairwise_ssim",
    "repeatability",
    "similarity_floor",
    "spurious_attribution_share",
    "ssim_maps",
    "verdict",
]

#: The pass rules, one sentence each (``d_i``: an image's criterion minus its baseline).
RULES = {
    "localization": "AUPRC above the baseline's: the 95 % interval of mean d_i = AUPRC_i(map) - "
    "AUPRC_i(baseline) over positives with a mask lies above 0",
    "randomization": "after every layer is randomised, the maps are no more similar to the "
    "trained maps than maps of different images are: the 95 % interval of mean d_i = "
    "SSIM_i(trained, randomised) - floor_i reaches 0 or below",
    "repeatability": "maps of training seeds agree more than maps of different images: the "
    "95 % interval of mean d_i = SSIM_i(seed pairs, averaged) - floor_i lies above 0",
    "reproducibility": "maps of two architectures agree more than maps of different images: "
    "the 95 % interval of mean d_i = SSIM_i(architecture pairs, averaged) - floor_i lies above 0",
}


def _summary(values: np.ndarray) -> tuple[float | None, int]:
    """Mean of the finite values (None if none) and their count."""
    finite = values[np.isfinite(values)]
    return (float(finite.mean()) if finite.size else None), int(finite.size)


# --------------------------------------------------------------------------- localization


def localization_auprc(
    maps: np.ndarray, roi_masks: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """How well map values rank the pathology's pixels above the rest (Arun et al.).

    Args:
        maps: (N, S, S) maps, or one (S, S) map used for every image (a baseline).
        roi_masks: (N, S, S) bool pathology masks.
        labels: (N,) image labels; only positives with a non-empty mask count.

    Returns:
        ``mean`` (None without a counted image), ``n``, ``prevalence`` (mean mask area fraction
        over the counted images: the AUPRC of an uninformative map; also as ``chance``) and
        ``per_image`` ((N,) AUPRC, NaN where not counted).
    """
    roi = np.asarray(roi_masks, dtype=bool)
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = np.broadcast_to(maps, roi.shape)
    counted = (np.asarray(labels) == 1) & roi.reshape(len(roi), -1).any(axis=1)  # (N,)
    per_image = np.full(len(roi), np.nan)
    for i in np.flatnonzero(counted):
        per_image[i] = average_precision_score(roi[i].ravel(), np.asarray(maps[i]).ravel())
    mean, n = _summary(per_image)
    prevalence = float(roi[counted].mean()) if n else None
    return {
        "mean": mean,
        "n": n,
        "prevalence": prevalence,
        "chance": prevalence,
        "per_image": per_image,
    }


def average_mask(masks: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel-wise mean of masks: the average-training-mask baseline map, (S, S).

    Args:
        masks: (S, S) masks, one at a time (a generator is read once, never held whole) or
            stacked as (N, S, S).

    Raises:
        ValueError: No masks, or not 2-D ones.
    """
    total, n = None, 0
    for mask in masks:
        mask = np.asarray(mask, dtype=np.float64)
        if mask.ndim != 2:
            raise ValueError(f"average_mask needs (S, S) masks (N >= 1), got {mask.shape}")
        total = mask if total is None else total + mask
        n += 1
    if total is None:
        raise ValueError("average_mask needs (N, S, S) masks with N >= 1, got none")
    return total / n


# --------------------------------------------------------------------------- spurious share


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
        map), ``lift`` (mean / uniform; 1 = no preference for the region; also as ``ratio``),
        ``n``, ``per_image`` and ``per_image_uniform`` ((N,), NaN where not counted).
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
    lift = mean / expected if n and expected else None
    return {
        "mean": mean,
        "uniform": expected,
        "lift": lift,
        "ratio": lift,
        "n": n,
        "per_image": share,
        "per_image_uniform": uniform,
    }


# --------------------------------------------------------------------------- similarity


def _unit_range(maps: np.ndarray) -> torch.Tensor:
    """(N, S, S) maps -> (N, 1, S, S) float tensor min-max scaled per image (constant -> 0)."""
    t = torch.as_tensor(np.ascontiguousarray(maps), dtype=torch.float32)
    low = t.amin(dim=(1, 2), keepdim=True)
    span = t.amax(dim=(1, 2), keepdim=True) - low
    return ((t - low) / torch.where(span > 0, span, 1.0)).unsqueeze(1)


def ssim_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of two stacks of maps on [0, 1] (``data_range=1.0``).

    Each map is min-max scaled per image first — a no-op for post-processed maps, which already
    span [0, 1]; it makes raw maps comparable too (SSIM of ``m`` and ``3 m + 1`` is 1).

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
    """Mean SSIM between two models' maps of the same images."""
    return float(ssim_maps(maps_a, maps_b).mean())


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` (n >= 2) without fixed points."""
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def similarity_floor(maps: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """SSIM between the maps of different images: Arun et al.'s similarity baseline.

    Image ``i`` is paired with image ``π(i)``, ``π`` a seeded random permutation without fixed
    points, so every image is compared with another one.

    Args:
        maps: (N, S, S) maps of one model, N >= 2.
        seed: Seed of the pairing.

    Returns:
        ``mean``, ``sd`` (over pairs), ``n`` and ``per_image`` ((N,) SSIM of map i and map π(i)).
    """
    if len(maps) < 2:
        raise ValueError(f"the similarity floor needs at least 2 images, got {len(maps)}")
    partner = _derangement(len(maps), np.random.default_rng(seed))
    per_image = ssim_maps(maps, np.asarray(maps)[partner])
    return {
        "mean": float(per_image.mean()),
        "sd": float(per_image.std(ddof=1)),
        "n": len(per_image),
        "per_image": per_image,
    }


def pairwise_ssim(
    maps_a: Sequence[np.ndarray], maps_b: Sequence[np.ndarray] | None = None
) -> dict[str, Any]:
    """SSIM between models' maps of the same images, over pairs of models.

    Args:
        maps_a: (N, S, S) map stacks of some models.
        maps_b: Map stacks of other models: the pairs are ``maps_a`` × ``maps_b``
            (reproducibility); None: every pair within ``maps_a`` (repeatability).

    Returns:
        ``mean`` (over pairs of the per-pair mean SSIM), ``sd`` (over pairs; None with one
        pair), ``pairs`` (per-pair means), ``n_pairs`` and ``per_image`` ((N,) mean over pairs).
    """
    pairs = list(
        combinations(maps_a, 2) if maps_b is None else ((a, b) for a in maps_a for b in maps_b)
    )
    if not pairs:
        raise ValueError("pairwise_ssim needs at least one pair of map stacks")
    per_pair = np.stack([ssim_maps(a, b) for a, b in pairs])  # (P, N)
    means = per_pair.mean(axis=1)
    return {
        "mean": float(means.mean()),
        "sd": float(means.std(ddof=1)) if len(means) > 1 else None,
        "pairs": [float(m) for m in means],
        "n_pairs": len(means),
        "per_image": per_pair.mean(axis=0),
    }


# --------------------------------------------------------------------------- verdicts


def paired_difference(
    values: np.ndarray, baseline: np.ndarray, seed: int = 0, n_resamples: int = 2000
) -> dict[str, Any]:
    """Mean per-image difference ``values - baseline`` with a 95 % bootstrap interval.

    Images where either is NaN are left out. The interval is scipy's percentile bootstrap over
    images (``n_resamples``, seeded); with fewer than 2 images it is None.

    Returns:
        ``diff`` (None without images), ``ci`` ([low, high] or None) and ``n``.
    """
    d = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    d = d[np.isfinite(d)]
    if not d.size:
        return {"diff": None, "ci": None, "n": 0}
    ci = None
    if d.size >= 2 and np.ptp(d) > 0:
        res = stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    elif d.size >= 2:
        ci = [float(d[0]), float(d[0])]  # every difference equal: no spread
    return {"diff": float(d.mean()), "ci": ci, "n": int(d.size)}


def verdict(criterion: str, comparison: dict[str, Any] | None) -> bool | None:
    """Pass (True) / fail (False) of ``criterion`` (:data:`RULES`) from its
    :func:`paired_difference`; None when it could not be judged (no interval)."""
    if criterion not in RULES:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(RULES)}")
    if not comparison or comparison.get("ci") is None:
        return None
    low = comparison["ci"][0]
    return bool(low <= 0.0) if criterion == "randomization" else bool(low > 0.0)
