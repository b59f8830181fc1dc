"""Masking conditions of the "Mask of truth" audit (Sourget et al.), shared by data and audit.

A condition says which pixels of an image are replaced (*filled*) before the network sees it:

- ``original``: none.
- ``roi_removed``: the region of interest (the pathology mask; ISIC: the lesion), as its mask
  (``region="mask"``) or as its filled bounding boxes, one per 8-connected component
  (``region="box"``).
- ``roi_only``: every pixel outside that region, so only the ROI is kept. An image without a
  ROI (a negative with no mask file, as every negative of SIIM or the synthetic benchmark) keeps
  *nothing*: the whole image is filled, and its score can only come from the fill.
- ``spurious_removed``: the spurious region (``spurious_mask_path``) dilated by ``dilate``
  pixels (square neighbourhood), where a spurious mask exists; other images are unchanged.

The fill (``fill``) works on intensities in [0, 1] and takes its statistics, per channel, from
the pixels *outside the condition's region* (outside the ROI, or outside the dilated spurious
mask): for ``roi_removed`` and ``spurious_removed`` the kept pixels, for ``roi_only`` the
background it replaces (so positives and negatives get a background of the same kind, and only
the ROI differs); the whole image when that selects no pixel.

- ``mean``: their mean (a neutral value);
- ``noise``: Gaussian noise with their mean and standard deviation, clipped to [0, 1];
- ``zero``: 0 (black).
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from spatialspec.data.boxes import box_mask

__all__ = [
    "CONDITIONS",
    "DEFAULT_DILATE",
    "FILLS",
    "MASKING_CONDITIONS",
    "REGIONS",
    "check_masking",
    "condition_region",
    "dilate_mask",
    "fill_region",
    "fill_values",
    "image_rng",
]

#: Every test condition of the audit, ``original`` first.
CONDITIONS = ("original", "roi_removed", "roi_only", "spurious_removed")
#: The conditions that change images (the values of ``data.roi_masking``).
MASKING_CONDITIONS = CONDITIONS[1:]
#: How the ROI is drawn: its mask, or its filled bounding boxes.
REGIONS = ("mask", "box")
#: What replaces the filled pixels.
FILLS = ("mean", "noise", "zero")
#: Pixels by which the spurious mask is grown before it is filled (resizing frays its edges).
DEFAULT_DILATE = 2
_SQUARE = np.ones((3, 3), dtype=bool)


def check_masking(condition: str | None, region: str = "mask", fill: str = "mean") -> None:
    """Validate a condition (None: no masking), region and fill.

    Raises:
        ValueError: Naming the bad value and the valid ones.
    """
    _check("condition", condition, CONDITIONS, allow_none=True)
    _check("region", region, REGIONS)
    _check("fill", fill, FILLS)


def _check(what: str, value: str | None, valid: tuple[str, ...], allow_none: bool = False) -> None:
    if (value is None and allow_none) or value in valid:
        return
    raise ValueError(f"unknown masking {what} {value!r}; valid: {', '.join(valid)}")


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a 2-D bool mask by ``pixels`` (square neighbourhood); 0 returns a copy."""
    mask = np.asarray(mask, dtype=bool)
    if pixels <= 0 or not mask.any():
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_SQUARE, iterations=int(pixels))


def condition_region(
    condition: str,
    roi: np.ndarray | None,
    spurious: np.ndarray | None,
    shape: tuple[int, int],
    region: str = "mask",
    dilate: int = DEFAULT_DILATE,
) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W) bool pixels a condition fills, and those whose statistics set the fill.

    Args:
        condition: One of :data:`CONDITIONS`.
        roi: (H, W) ROI mask, or None when the image has none.
        spurious: (H, W) spurious mask, or None when the image has none.
        shape: (H, W) of the image.
        region: ``mask`` or ``box`` (the ROI's filled boxes); the spurious region is always
            its (dilated) mask.
        dilate: Pixels by which the spurious mask is grown.

    Returns:
        ``(filled, reference)``: True where the image is filled; True where the fill's
        statistics come from: the pixels outside the condition's region (outside the ROI for
        both ROI conditions, so ``roi_only`` fills the background with its own mean).
    """
    check_masking(condition, region)
    area = _condition_area(condition, roi, spurious, shape, region, dilate)
    return (~area if condition == "roi_only" else area), ~area


def _condition_area(
    condition: str,
    roi: np.ndarray | None,
    spurious: np.ndarray | None,
    shape: tuple[int, int],
    region: str,
    dilate: int,
) -> np.ndarray:
    """The region a condition is about: the ROI (mask or boxes) or the dilated spurious mask."""
    if condition == "original":
        return np.zeros(shape, dtype=bool)
    if condition == "spurious_removed":
        return np.zeros(shape, dtype=bool) if spurious is None else dilate_mask(spurious, dilate)
    area = np.zeros(shape, dtype=bool) if roi is None else np.array(roi, dtype=bool)
    return box_mask(area) if region == "box" and area.any() else area


def fill_values(
    image: np.ndarray,
    region: np.ndarray,
    fill: str,
    rng: np.random.Generator | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """The values that replace ``image[region]``.

    Args:
        image: (H, W, C) intensities in [0, 1].
        region: (H, W) bool, True where the image is filled.
        fill: ``mean``, ``noise`` or ``zero``.
        rng: Generator of the noise (needed for ``noise``).
        reference: (H, W) bool pixels whose per-channel mean / std set the fill (default: the
            pixels not filled); the whole image when it selects no pixel.

    Returns:
        (K, C) float32 values, K = ``region.sum()``, in raster order.
    """
    check_masking(None, fill=fill)
    count, channels = int(region.sum()), image.shape[-1]
    if fill == "zero":
        return np.zeros((count, channels), dtype=np.float32)
    reference = ~region if reference is None else reference
    pixels = image[reference] if reference.any() else image.reshape(-1, channels)  # (M, C)
    mean = pixels.mean(axis=0, dtype=np.float64)
    if fill == "mean":
        return np.broadcast_to(mean.astype(np.float32), (count, channels)).copy()
    if rng is None:
        raise ValueError("fill='noise' needs a random generator")
    std = pixels.std(axis=0, dtype=np.float64)
    noise = rng.normal(mean, std, size=(count, channels))
    return np.clip(noise, 0.0, 1.0).astype(np.float32)


def fill_region(
    image: np.ndarray,
    region: np.ndarray,
    fill: str,
    rng: np.random.Generator | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of an (H, W, C) image in [0, 1] with ``region`` filled (see :func:`fill_values`)."""
    out = np.array(image, dtype=np.float32, copy=True)
    if region.any():
        out[region] = fill_values(image, region, fill, rng, reference)
    return out


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """Noise generator of one image: fixed by ``seed`` and the image id (not its position)."""
    return np.random.default_rng([seed, zlib.crc32(str(image_id).encode())])
