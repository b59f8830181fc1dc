"""Box supervision: one filled bounding box per 8-connected mask component.

Boxes are ``(row0, col0, row1, col1)`` with the end pixel INCLUSIVE, so a single pixel at
``(r, c)`` is the box ``(r, c, r, c)`` with area 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

__all__ = ["Box", "box_mask", "box_masks_torch", "boxes_to_mask", "mask_to_boxes"]

Box = tuple[int, int, int, int]
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def mask_to_boxes(mask: np.ndarray) -> list[Box]:
    """Return one inclusive bounding box per 8-connected component of ``mask``.

    Args:
        mask: 2-D array; non-zero pixels are foreground.

    Returns:
        ``(row0, col0, row1, col1)`` boxes (inclusive ends), ordered by each component's
        first pixel in raster order. Empty list for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_boxes expects a 2-D mask, got shape {mask.shape}")
    labels, count = ndimage.label(mask != 0, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    return [
        (int(rows.start), int(cols.start), int(rows.stop) - 1, int(cols.stop) - 1)
        for rows, cols in ndimage.find_objects(labels)
    ]


def boxes_to_mask(boxes: Iterable[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise inclusive ``(row0, col0, row1, col1)`` boxes into a filled bool mask.

    Args:
        boxes: Boxes with inclusive ends; each must lie inside ``shape``.
        shape: Output ``(H, W)``.

    Returns:
        ``bool`` array of shape ``shape``.

    Raises:
        ValueError: If a box is inverted or extends outside ``shape``.
    """
    height, width = (int(s) for s in shape)
    out = np.zeros((height, width), dtype=bool)
    for box in boxes:
        r0, c0, r1, c1 = (int(v) for v in box)
        if not (0 <= r0 <= r1 < height and 0 <= c0 <= c1 < width):
            raise ValueError(f"box {tuple(box)} is inverted or outside shape {(height, width)}")
        out[r0 : r1 + 1, c0 : c1 + 1] = True
    return out


def box_mask(mask: np.ndarray) -> np.ndarray:
    """Replace each 8-connected component of ``mask`` by its filled bounding box.

    Args:
        mask: 2-D array; non-zero pixels are foreground.

    Returns:
        ``bool`` array of the same shape.
    """
    mask = np.asarray(mask)
    return boxes_to_mask(mask_to_boxes(mask), mask.shape)


def box_masks_torch(masks: torch.Tensor) -> torch.Tensor:
    """Batched :func:`box_mask` for a ``(B, C, H, W)`` tensor (normally ``C == 1``).

    The work is done on the CPU with NumPy/SciPy, so a CUDA input is copied to the host and
    back: this synchronises the device. Call it in the data pipeline where possible.

    Args:
        masks: ``(B, C, H, W)`` tensor of any dtype; non-zero values are foreground.

    Returns:
        Tensor with the same shape, dtype and device holding 1 inside boxes and 0 elsewhere.
    """
    import torch

    if masks.ndim != 4:
        raise ValueError(f"box_masks_torch expects (B, C, H, W), got shape {tuple(masks.shape)}")
    planes = (masks.detach() != 0).cpu().numpy()
    boxed = np.zeros_like(planes)
    for b, c in np.ndindex(*planes.shape[:2]):
        boxed[b, c] = box_mask(planes[b, c])
    result = torch.from_numpy(boxed)
    return result.to(device=masks.device, dtype=masks.dtype)
