"""Tests for box supervision helpers (inclusive-end boxes, 8-connectivity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from spatialspec.data import box_mask, boxes_to_mask, mask_to_boxes
from spatialspec.data.boxes import box_masks_torch


def _three_component_mask() -> np.ndarray:
    mask = np.zeros((10, 12), dtype=bool)
    # L-shaped component: box rows 1-2, cols 1-3 (area 6, 4 pixels set).
    mask[1, 1] = mask[2, 1] = mask[2, 2] = mask[2, 3] = True
    # Diagonal-touching pair: one 8-connected component, box rows 5-6, cols 6-7.
    mask[5, 6] = mask[6, 7] = True
    # Single pixel.
    mask[8, 10] = True
    return mask


EXPECTED_BOXES = [(1, 1, 2, 3), (5, 6, 6, 7), (8, 10, 8, 10)]


def test_mask_to_boxes_inclusive_eight_connected() -> None:
    mask = _three_component_mask()
    assert mask_to_boxes(mask) == EXPECTED_BOXES
    # The diagonal pair would be two components under 4-connectivity.
    assert ndimage.label(mask)[1] == 4
    assert all(isinstance(v, int) for box in mask_to_boxes(mask) for v in box)


def test_mask_to_boxes_accepts_non_bool() -> None:
    assert mask_to_boxes(_three_component_mask().astype(np.uint8) * 255) == EXPECTED_BOXES


def test_box_mask_area_matches_inclusive_boxes() -> None:
    mask = _three_component_mask()
    boxed = box_mask(mask)
    expected_area = sum((r1 - r0 + 1) * (c1 - c0 + 1) for r0, c0, r1, c1 in EXPECTED_BOXES)
    assert expected_area == 6 + 4 + 1
    assert boxed.dtype == np.bool_
    assert boxed.shape == mask.shape
    assert int(boxed.sum()) == expected_area
    assert boxed[mask].all()
    assert boxed[1, 3] and boxed[5, 7] and boxed[6, 6]
    assert not boxed[0, 0] and not boxed[3, 1]


def test_boxes_to_mask_round_trip_and_edges() -> None:
    boxes = [(0, 0, 0, 0), (2, 3, 4, 5), (9, 11, 9, 11)]
    mask = boxes_to_mask(boxes, (10, 12))
    assert int(mask.sum()) == 1 + 9 + 1
    assert mask_to_boxes(mask) == boxes


def test_boxes_to_mask_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="outside"):
        boxes_to_mask([(0, 0, 10, 3)], (10, 12))
    with pytest.raises(ValueError, match="inverted"):
        boxes_to_mask([(3, 3, 2, 4)], (10, 12))


def test_empty_mask() -> None:
    empty = np.zeros((5, 7), dtype=bool)
    assert mask_to_boxes(empty) == []
    assert not box_mask(empty).any()
    assert boxes_to_mask([], (5, 7)).shape == (5, 7)


def test_mask_to_boxes_rejects_3d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        mask_to_boxes(np.zeros((2, 3, 4), dtype=bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool])
def test_box_masks_torch_matches_numpy(dtype: torch.dtype) -> None:
    first = _three_component_mask()
    second = np.zeros_like(first)
    second[3:5, 2] = True
    second[0, 11] = True
    batch = torch.from_numpy(np.stack([first, second])[:, None]).to(dtype)
    out = box_masks_torch(batch)
    assert out.dtype == dtype
    assert out.device == batch.device
    assert out.shape == (2, 1, 10, 12)
    np.testing.assert_array_equal(out[0, 0].numpy() != 0, box_mask(first))
    np.testing.assert_array_equal(out[1, 0].numpy() != 0, box_mask(second))
    assert int((out != 0).sum()) == 11 + 3


def test_box_masks_torch_empty_batch_and_bad_rank() -> None:
    assert box_masks_torch(torch.zeros(0, 1, 4, 4)).shape == (0, 1, 4, 4)
    with pytest.raises(ValueError, match="B, C, H, W"):
        box_masks_torch(torch.zeros(4, 4))
