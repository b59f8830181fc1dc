"""Masking conditions of the "Mask of truth" audit (Sourget et al.), shared by data and audit.

A condition says which pixels of an image are replaced (*filled*) before the network sees it.
Each is about one *area* (:data:`AREAS`) and either removes it or keeps only it:

- ``original``: none.
- ``roi_removed``: the region of interest (the pathology mask; ISIC: the lesion), as its mask
  (``region="mask"``) or as its filled bounding boxes, one per 8-connected component
  (``region="box"``).
- ``roi_only``: every pixel outside that region, so only the ROI is kept. An image without a
  ROI (a negative with no mask file, as every negative of SIIM or the synthetic benchmark) keeps
  *nothing*: the whole image is filled, and its score can only come from the fill.
- ``spurious_removed``: the spurious region (``spurious_mask_path``) dilated by ``dilate``
  pixels (square neighbourhood), where a spurious mask exists; other images are unchanged.
- ``anatomy_removed`` / ``anatomy_only``: the anatomy region (the manifest's ``roi_mask_path``;
  the lung fields of the synthetic benchmark), as Mask of truth masks the lungs; and
  ``anatomy_box_removed`` / ``anatomy_box_only``: its filled bounding boxes (one per
  8-connected component: a box around each lung). Unlike the ROI, the anatomy is present in
  every image, so an image without an anatomy mask has an *unknown* region: the audit leaves it
  out of these conditions and counts it, and training under them refuses it (never an empty
  region).

``grow`` (the audit's dose-response) dilates (> 0) or erodes (< 0) a condition's area by that
many pixels (square neighbourhood; erosion treats the image border as inside the area) before
filling.

The fill (``fill``) works on intensities in [0, 1] and takes its statistics, per channel, from
the pixels *outside the condition's area* (outside the ROI, the anatomy, or the dilated
spurious mask): for the ``*_removed`` conditions the kept pixels, for the ``*_only`` ones the
background it replaces (so positives and negatives get a background of the same kind, and only
the area differs); the whole image when that selects no pixel.

- ``mean``: their mean (a neutral value);
- ``noise``: Gaussian noise with their mean and standard deviation, clipped to [0, 1];
- ``zero``: 0 (black);
- ``blur``: a Gaussian blur (sigma :data:`BLUR_SIGMA` px) of those pixels alone, by normalised
  convolution: a filled pixel gets the Gaussian-weighted mean of the reference pixels around
  it, blended into their plain mean where none is near (weight below :data:`BLUR_FLOOR`). For
  ``*_removed`` this inpaints the area from its surroundings without any of its own content;
  for ``*_only`` the reference *is* the replaced background, so the background is kept
  blurred (its coarse content, e.g. a blurred tube, stays visible).
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from spatialspec.data.boxes import box_mask

__all__ = [
    "AREAS",
    "BLUR_FLOOR",
    "BLUR_SIGMA",
    "CONDITIONS",
    "DEFAULT_DILATE",
    "FILLS",
    "MASKING_CONDITIONS",
    "REGIONS",
    "check_masking",
    "condition_area",
    "condition_region",
    "dilate_mask",
    "fill_region",
    "fill_values",
    "grow_mask",
    "image_rng",
]

#: Condition -> (area, action): the mask it is about and whether it removes it or keeps only it.
_PARTS: dict[str, tuple[str | None, str | None]] = {
    "original": (None, None),
    "roi_removed": ("roi", "removed"),
    "roi_only": ("roi", "only"),
    "spurious_removed": ("spurious", "removed"),
    "anatomy_removed": ("anatomy", "removed"),
    "anatomy_only": ("anatomy", "only"),
    "anatomy_box_removed": ("anatomy", "removed"),
    "anatomy_box_only": ("anatomy", "only"),
}
#: Every test condition of the audit, ``original`` first.
CONDITIONS = tuple(_PARTS)
#: The conditions that change images (the values of ``data.roi_masking``).
MASKING_CONDITIONS = CONDITIONS[1:]
#: The masks a condition can be about (``anatomy``: the manifest's ``roi_mask_path``).
AREAS = ("roi", "spurious", "anatomy")
#: How the ROI is drawn: its mask, or its filled bounding boxes.
REGIONS = ("mask", "box")
#: What replaces the filled pixels.
FILLS = ("mean", "noise", "zero", "blur")
#: Pixels by which the spurious mask is grown before it is filled (resizing frays its edges).
DEFAULT_DILATE = 2
#: Standard deviation (pixels at the network input) of the ``blur`` fill's Gaussian.
BLUR_SIGMA = 4.0
#: Gaussian weight of reference pixels below which the ``blur`` fill fades to their mean.
BLUR_FLOOR = 1e-3
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


def condition_area(condition: str | None) -> str | None:
    """The area (:data:`AREAS`) a condition is about; None for ``original`` / no masking."""
    if condition is None:
        return None
    check_masking(condition)
    return _PARTS[condition][0]


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a 2-D bool mask by ``pixels`` (square neighbourhood); 0 returns a copy."""
    mask = np.asarray(mask, dtype=bool)
    if pixels <= 0 or not mask.any():
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_SQUARE, iterations=int(pixels))


def grow_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate (``pixels`` > 0) or erode (< 0) a 2-D bool mask (square neighbourhood).

    Erosion treats pixels beyond the image border as inside the mask, so a region touching the
    border shrinks only from its inner edges. 0 returns a copy.
    """
    mask = np.asarray(mask, dtype=bool)
    if pixels >= 0:
        return dilate_mask(mask, pixels)
    if not mask.any():
        return mask.copy()
    return ndimage.binary_erosion(mask, structure=_SQUARE, iterations=-int(pixels),
                                  border_value=1)  # fmt: skip


def condition_region(
    condition: str,
    roi: np.ndarray | None,
    spurious: np.ndarray | None,
    shape: tuple[int, int],
    region: str = "mask",
    dilate: int = DEFAULT_DILATE,
    anatomy: np.ndarray | None = None,
    grow: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The (H, W) bool pixels a condition fills, and those whose statistics set the fill.

    Args:
        condition: One of :data:`CONDITIONS`.
        roi: (H, W) ROI mask, or None when the image has none.
        spurious: (H, W) spurious mask, or None when the image has none.
        shape: (H, W) of the image.
        region: ``mask`` or ``box`` (the ROI's filled boxes); the spurious region is always
            its (dilated) mask, the anatomy's shape is set by the condition's name.
        dilate: Pixels by which the spurious mask is grown.
        anatomy: (H, W) anatomy mask (``roi_mask_path``); needed by the ``anatomy*``
            conditions.
        grow: Pixels by which the condition's area is dilated (> 0) or eroded (< 0) last.

    Returns:
        ``(filled, reference)``: True where the image is filled; True where the fill's
        statistics come from: the pixels outside the condition's area (so ``*_only`` fills the
        background with its own statistics).

    Raises:
        ValueError: An unknown condition or region, or an ``anatomy*`` condition without
            an anatomy mask (an unknown region is never taken as empty).
    """
    check_masking(condition, region)
    area = _condition_area(condition, roi, spurious, anatomy, shape, region, dilate)
    if grow:
        area = grow_mask(area, grow)
    only = _PARTS[condition][1] == "only"
    return (~area if only else area), ~area


def _condition_area(
    condition: str,
    roi: np.ndarray | None,
    spurious: np.ndarray | None,
    anatomy: np.ndarray | None,
    shape: tuple[int, int],
    region: str,
    dilate: int,
) -> np.ndarray:
    """The (H, W) area a condition is about (before ``grow``)."""
    kind = _PARTS[condition][0]
    if kind is None:
        return np.zeros(shape, dtype=bool)
    if kind == "spurious":
        return np.zeros(shape, dtype=bool) if spurious is None else dilate_mask(spurious, dilate)
    if kind == "anatomy":
        if anatomy is None:
            raise ValueError(f"condition {condition!r} needs an anatomy mask (roi_mask_path)")
        boxed = "_box_" in condition
    else:
        boxed = region == "box"
    source = anatomy if kind == "anatomy" else roi
    area = np.zeros(shape, dtype=bool) if source is None else np.array(source, dtype=bool)
    return box_mask(area) if boxed and area.any() else area


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
        fill: One of :data:`FILLS`.
        rng: Generator of the noise (needed for ``noise``).
        reference: (H, W) bool pixels whose per-channel statistics (mean / std; ``blur``: their
            blurred values) set the fill (default: the pixels not filled); the whole image when
            it selects no pixel.

    Returns:
        (K, C) float32 values, K = ``region.sum()``, in raster order.
    """
    check_masking(None, fill=fill)
    count, channels = int(region.sum()), image.shape[-1]
    if fill == "zero":
        return np.zeros((count, channels), dtype=np.float32)
    reference = ~region if reference is None else reference
    if not reference.any():
        reference = np.ones(region.shape, dtype=bool)
    pixels = image[reference]  # (M, C)
    mean = pixels.mean(axis=0, dtype=np.float64)
    if fill == "mean":
        return np.broadcast_to(mean.astype(np.float32), (count, channels)).copy()
    if fill == "blur":
        return _blurred(image, reference, mean)[region].astype(np.float32)
    if rng is None:
        raise ValueError("fill='noise' needs a random generator")
    std = pixels.std(axis=0, dtype=np.float64)
    noise = rng.normal(mean, std, size=(count, channels))
    return np.clip(noise, 0.0, 1.0).astype(np.float32)


def _blurred(image: np.ndarray, reference: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(H, W, C) normalised convolution of the reference pixels, faded to ``mean`` far away.

    ``(G * (x r) + f mean) / (G * r + f)`` with G a Gaussian of sigma :data:`BLUR_SIGMA`, r the
    reference indicator and f = :data:`BLUR_FLOOR`: a weighted local mean of reference pixels.
    """
    weight = ndimage.gaussian_filter(reference.astype(np.float64), BLUR_SIGMA, mode="constant")
    out = np.empty(image.shape, dtype=np.float64)
    for c in range(image.shape[-1]):
        kept = np.where(reference, image[..., c], 0.0).astype(np.float64)
        total = ndimage.gaussian_filter(kept, BLUR_SIGMA, mode="constant")
        out[..., c] = (total + BLUR_FLOOR * mean[c]) / (weight + BLUR_FLOOR)
    return out


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
