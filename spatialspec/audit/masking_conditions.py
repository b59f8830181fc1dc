"""Images under a masking condition and fill, and their scores (the masking audit's core).

A :class:`Masking` names one way of filling the audit images: a condition of
:mod:`spatialspec.data.roi`, a fill, the ROI's shape, the spurious mask's dilation and a
signed growth of the condition's area (the dose-response). :class:`MaskingScorer` scores a
model on the images under a masking, once per masking (cached), and reuses the ``original``
scores of every image the masking leaves unchanged (eval mode scores each image on its own, so
this only skips work). Images whose area is *unknown* (an ``anatomy*`` condition on a row
without ``roi_mask_path``) are not scored: their score is NaN, they are counted and left out of
the metrics.

Filling works on intensities in [0, 1] (``x = x_norm * STD + MEAN``); only filled pixels are
written back (re-normalised), so every other pixel is unchanged bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from spatialspec.audit.common import AuditSet
from spatialspec.data.dataset import MEAN, STD
from spatialspec.data.io import read_mask
from spatialspec.data.roi import (
    DEFAULT_DILATE,
    check_masking,
    condition_area,
    condition_region,
    fill_values,
    image_rng,
)
from spatialspec.data.transforms import resize_mask
from spatialspec.evaluation.report import build_report
from spatialspec.methods import SpatialMethod
from spatialspec.metrics import auroc, robust_auroc

__all__ = [
    "ANATOMY_COLUMN",
    "Masking",
    "MaskingScorer",
    "MaskingSet",
    "Scored",
    "condition_masks",
    "load_masking_set",
    "mask_images",
    "metrics_of",
]

#: Manifest column of the anatomy region (the synthetic benchmark's lung fields).
ANATOMY_COLUMN = "roi_mask_path"
_METRICS = ("auroc", "auroc_ci", "robust_auroc", "robust_auroc_ci", "n", "n_robust")


# ------------------------------------------------------------------------------- filling


def mask_images(
    images: torch.Tensor,
    region_masks: torch.Tensor | np.ndarray,
    fill: str = "mean",
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
    reference_masks: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Fill a region of each normalised image (a new tensor; the input is untouched).

    Args:
        images: (N, C, H, W) normalised images, ``(x - MEAN) / STD``.
        region_masks: (N, H, W) bool, True where the image is filled.
        fill: A fill of :data:`spatialspec.data.roi.FILLS` (``mean`` / ``noise`` / ``blur``
            take the reference pixels' statistics, in [0, 1]; ``zero``: intensity 0).
        seed: Seed of the noise.
        image_ids: Seed the noise per image id (as the training-time option does), so an
            image gets the same noise in any batch; without, per position in ``images``.
        reference_masks: (N, H, W) bool pixels whose statistics set the fill (default: those
            not filled); the whole image where a reference selects no pixel.

    Returns:
        (N, C, H, W) normalised images; pixels outside the regions equal the input's exactly.

    Raises:
        ValueError: On an unknown fill or mismatched shapes.
    """
    check_masking(None, fill=fill)
    regions = _bool_masks(region_masks, images)
    references = None if reference_masks is None else _bool_masks(reference_masks, images)
    out = images.detach().cpu().clone()
    raw = out.numpy() * np.float32(STD) + np.float32(MEAN)  # (N, C, H, W) in [0, 1]
    for i, region in enumerate(regions):
        if not region.any():
            continue
        rng = _rng(seed, i, image_ids) if fill == "noise" else None
        reference = None if references is None else references[i]
        values = fill_values(raw[i].transpose(1, 2, 0), region, fill, rng, reference)  # (K, C)
        normalised = values.T * np.float32(1 / STD) - np.float32(MEAN / STD)  # (C, K)
        out[i][:, torch.from_numpy(region)] = torch.from_numpy(np.ascontiguousarray(normalised))
    return out.to(images.device)


def _bool_masks(masks: torch.Tensor | np.ndarray, images: torch.Tensor) -> np.ndarray:
    """(N, H, W) bool NumPy masks matching (N, C, H, W) images (ValueError otherwise)."""
    out = np.asarray(torch.as_tensor(masks).cpu(), dtype=bool)
    if images.ndim != 4 or out.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"expected images (N, C, H, W) and masks (N, H, W), got {tuple(images.shape)} "
            f"and {out.shape}"
        )
    return out


def _rng(seed: int, index: int, image_ids: Sequence[str] | None) -> np.random.Generator:
    if image_ids is None:
        return np.random.default_rng([seed, index])
    return image_rng(seed, image_ids[index])


# ------------------------------------------------------------------------ the audit's masks


@dataclass
class MaskingSet:
    """An :class:`AuditSet` with the anatomy masks of its rows.

    Attributes:
        audit: The images, ROI and spurious masks, labels.
        anatomy_masks: (N, S, S) bool anatomy region (``roi_mask_path``), else all False.
        has_anatomy_mask: (N,) whether the row has an anatomy mask file.
        anatomy_column: Whether the manifest has the column at all.
    """

    audit: AuditSet
    anatomy_masks: np.ndarray
    has_anatomy_mask: np.ndarray
    anatomy_column: bool = True

    def __len__(self) -> int:
        return len(self.audit)

    def known(self, condition: str) -> np.ndarray:
        """(N,) rows whose area is known for ``condition`` (False: left out, counted)."""
        if condition_area(condition) == "anatomy":
            return self.has_anatomy_mask.copy()
        return np.ones(len(self), dtype=bool)

    def missing_ids(self, limit: int = 10) -> list[str]:
        """Ids of (up to ``limit``) rows without an anatomy mask."""
        rows = np.flatnonzero(~self.has_anatomy_mask)[:limit]
        return [self.audit.image_ids[i] for i in rows]


def load_masking_set(audit: AuditSet | MaskingSet, column: str = ANATOMY_COLUMN) -> MaskingSet:
    """Read the anatomy masks of ``column`` (paths as resolved by the manifest) at input size."""
    if isinstance(audit, MaskingSet):
        return audit
    n, size = len(audit), int(audit.images.shape[-1])
    masks = np.zeros((n, size, size), dtype=bool)
    present = np.zeros(n, dtype=bool)
    paths = audit.frame[column] if column in audit.frame.columns else None
    for i, path in enumerate([] if paths is None else _paths(paths)):
        if path:
            masks[i] = resize_mask(read_mask(path).view(np.uint8), size) > 0
            present[i] = True
    return MaskingSet(audit, masks, present, anatomy_column=paths is not None)


def _paths(paths: pd.Series) -> list[str]:
    return [p.strip() for p in paths.fillna("").astype(str)]


def condition_masks(
    audit: AuditSet | MaskingSet,
    condition: str,
    rows: Sequence[int] | np.ndarray,
    region: str = "mask",
    dilate: int = DEFAULT_DILATE,
    grow: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels ``condition`` fills in the audit images ``rows``, and the fill's reference.

    Rows of an ``anatomy*`` condition without an anatomy mask must not be passed (ValueError;
    :meth:`MaskingSet.known` says which).

    Returns:
        ``(filled, reference)``, each (len(rows), S, S) bool (see
        :func:`spatialspec.data.roi.condition_region`).
    """
    mset = load_masking_set(audit) if condition_area(condition) == "anatomy" else audit
    base = mset.audit if isinstance(mset, MaskingSet) else mset
    shape = tuple(base.images.shape[2:])
    pairs = [
        condition_region(
            condition,
            base.roi_masks[i] if base.has_roi_mask[i] else None,
            base.spurious_masks[i] if base.has_spurious_mask[i] else None,
            shape,
            region,
            dilate,
            anatomy=_anatomy(mset, i),
            grow=grow,
        )
        for i in rows
    ]
    if not pairs:
        empty = np.zeros((0, *shape), dtype=bool)
        return empty, empty.copy()
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _anatomy(mset: AuditSet | MaskingSet, i: int) -> np.ndarray | None:
    if isinstance(mset, MaskingSet) and mset.has_anatomy_mask[i]:
        return mset.anatomy_masks[i]
    return None


# ------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Masking:
    """One way of filling the audit images.

    Attributes:
        condition: A condition of :data:`spatialspec.data.roi.CONDITIONS`.
        fill: A fill of :data:`spatialspec.data.roi.FILLS`.
        region: ``mask`` or ``box``: the ROI's shape.
        dilate: Pixels by which spurious masks are grown.
        grow: Pixels by which the condition's area is dilated (> 0) or eroded (< 0).
        seed: Seed of the noise fill.
    """

    condition: str
    fill: str = "mean"
    region: str = "mask"
    dilate: int = DEFAULT_DILATE
    grow: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_masking(self.condition, self.region, self.fill)

    def but(self, **changes: Any) -> Masking:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def canonical(self) -> Masking:
        """The same masking with the fields it does not use reset (one cache key per image set)."""
        if self.condition == "original":
            return Masking("original")
        area = condition_area(self.condition)
        return replace(
            self,
            region=self.region if area == "roi" else "mask",
            dilate=self.dilate if area == "spurious" else 0,
            seed=self.seed if self.fill == "noise" else 0,
        )


@dataclass
class Scored:
    """Scores of the audit images under one masking.

    Attributes:
        scores: (N,) image-level scores; NaN where the area is unknown.
        altered: (N,) whether any pixel of the image was filled.
        known: (N,) whether the image was scored (its area is known).
        visible: (N,) fraction of the image's pixels left unfilled (NaN where not scored).
    """

    scores: np.ndarray
    altered: np.ndarray
    known: np.ndarray
    visible: np.ndarray

    @property
    def visible_fraction(self) -> float | None:
        """Mean fraction of unfilled pixels over the scored images."""
        values = self.visible[self.known]
        return float(values.mean()) if values.size else None


@dataclass
class MaskingScorer:
    """Scores ``method`` on ``mset`` under maskings: each masking once, unaltered images reused.

    Attributes:
        method: The trained model (eval mode).
        mset: The audit images and masks.
        batch_size: Images per forward pass.
        cache: Masking -> :class:`Scored` computed so far.
        n_forward: Images passed through the network so far (the cost).
        forward_seconds: Wall seconds spent in the network so far.
    """

    method: SpatialMethod
    mset: MaskingSet
    batch_size: int = 64
    cache: dict[Masking, Scored] = field(default_factory=dict)
    n_forward: int = 0
    forward_seconds: float = 0.0

    def __call__(self, masking: Masking) -> Scored:
        """The scores under ``masking`` (computed on first use)."""
        key = masking.canonical()
        if key not in self.cache:
            self.cache[key] = self._score(key)
        return self.cache[key]

    def original(self) -> np.ndarray:
        """(N,) scores of the unmasked images."""
        return self(Masking("original")).scores

    def _score(self, masking: Masking) -> Scored:
        n = len(self.mset)
        known = self.mset.known(masking.condition)
        rows = np.flatnonzero(known)
        filled, reference = condition_masks(
            self.mset, masking.condition, rows, masking.region, masking.dilate, masking.grow
        )
        altered = np.zeros(n, dtype=bool)
        altered[rows] = filled.any(axis=(1, 2))
        visible = np.full(n, np.nan)
        visible[rows] = 1.0 - filled.mean(axis=(1, 2))
        scores = np.full(n, np.nan)
        if masking.condition != "original":
            scores[known & ~altered] = self.original()[known & ~altered]
        todo = np.flatnonzero(altered) if masking.condition != "original" else rows
        where = np.searchsorted(rows, todo)  # position of each image among ``rows``
        scores[todo] = self._forward(todo, filled[where], reference[where], masking)
        return Scored(scores, altered, known, visible)

    def _forward(
        self, rows: np.ndarray, filled: np.ndarray, reference: np.ndarray, masking: Masking
    ) -> np.ndarray:
        """(len(rows),) scores of the images ``rows`` with ``filled`` filled."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            part = slice(start, start + self.batch_size)
            index = rows[part]
            ids = [self.mset.audit.image_ids[i] for i in index]
            images = mask_images(
                self.mset.audit.images[index],
                filled[part],
                masking.fill,
                masking.seed,
                ids,
                reference[part],
            )
            start_time = time.perf_counter()
            with torch.inference_mode():
                out.append(self.method.score(images).float().cpu().numpy())
            self.forward_seconds += time.perf_counter() - start_time
            self.n_forward += len(index)
        return np.concatenate(out).astype(float) if out else np.zeros(0)


# ------------------------------------------------------------------------------- metrics


def metrics_of(
    scored: Scored,
    audit: AuditSet,
    n_resamples: int,
    seed: int,
    original: np.ndarray | None = None,
) -> dict[str, Any]:
    """AUROC / robust AUROC with CIs, counts and mean scores of the scored images.

    Args:
        scored: Scores under one masking.
        audit: Labels and spurious attributes.
        n_resamples: Bootstrap resamples of the CIs.
        seed: Bootstrap seed.
        original: (N,) unmasked scores: adds ``auroc_drop`` / ``robust_auroc_drop`` =
            original - this, both on the scored images (None where undefined).

    Returns:
        ``auroc``, ``auroc_ci``, ``robust_auroc``, ``robust_auroc_ci``, ``n``, ``n_robust``,
        ``n_altered``, ``n_unknown`` (images left out: area unknown), ``visible_fraction``,
        ``score_std`` (0: the masking makes every score equal, e.g. a saturated model),
        ``mean_score_positive`` / ``_negative``, ``subgroup_mean_score`` (and the drops).
    """
    keep = scored.known
    scores, labels = scored.scores[keep], audit.labels[keep]
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"{int(keep.sum())} of {len(keep)} audit images have a known area for this "
            "condition; AUROC needs both classes among them"
        )
    report = build_report(scores, labels, audit.spurious[keep], n_resamples=n_resamples, seed=seed)
    out = {
        **{k: report[k] for k in _METRICS},
        "n_altered": int(scored.altered.sum()),
        "n_unknown": int((~keep).sum()),
        "score_std": float(scores.std()),
        "visible_fraction": scored.visible_fraction,
        "mean_score_positive": _mean(scores[labels == 1]),
        "mean_score_negative": _mean(scores[labels == 0]),
        "subgroup_mean_score": {k: g["mean_score"] for k, g in report["subgroups"].items()},
    }
    if original is not None:
        base = _point_metrics(original[keep], labels, audit.spurious[keep])
        for key in ("auroc", "robust_auroc"):
            ok = base[key] is not None and out[key] is not None
            out[f"{key}_drop"] = float(base[key] - out[key]) if ok else None
    return out


def _point_metrics(
    scores: np.ndarray, labels: np.ndarray, spurious: np.ndarray
) -> Mapping[str, float | None]:
    """AUROC and robust AUROC without CIs (None where a class or subgroup is empty)."""
    values = {
        "auroc": auroc(scores, labels, on_single_class="nan"),
        "robust_auroc": robust_auroc(scores, labels, spurious, on_single_class="nan"),
    }
    return {k: None if np.isnan(v) else float(v) for k, v in values.items()}


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None
