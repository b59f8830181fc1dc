"""Manifest rows -> dict samples with fixed keys.

Keys: ``image`` (C, H, W) float, ``mask`` (1, H, W) float (the dense target: the pathology mask,
or its filled boxes), ``label`` float, ``mask_available`` float, ``spurious`` float (-1 where
unknown), ``image_id`` str.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spatialspec.data.boxes import box_mask
from spatialspec.data.io import read_image, read_mask

ANNOTATIONS = ("label", "box", "mask")
#: Fixed intensity normalisation: images in [0, 1] -> roughly zero mean, unit spread.
MEAN, STD = 0.5, 0.25


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) float image -> (H, W, channels)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == channels:
        return image
    if channels == 1:  # RGB -> luminance (ITU-R BT.601)
        return (image @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.repeat(image, channels, axis=-1)


class ManifestDataset(Dataset):
    """Reads images and masks of manifest rows and applies a joint transform.

    Args:
        frame: Validated manifest rows (see :func:`spatialspec.data.load_manifest`).
        transform: Albumentations pipeline (image float32 in [0, 1], mask uint8).
        annotation: Dense target to supply: ``mask``, ``box`` (filled boxes per component) or
            ``label`` (the mask is still supplied, for audits; label-only methods ignore it).
        channels: 1 or 3; images are converted as needed.
    """

    def __init__(
        self, frame: pd.DataFrame, transform: A.Compose, annotation: str = "mask", channels: int = 1
    ) -> None:
        if annotation not in ANNOTATIONS:
            raise ValueError(f"unknown annotation {annotation!r}; valid: {', '.join(ANNOTATIONS)}")
        cols = ["image_id", "image_path", "label", "spurious", "mask_path", "mask_available"]
        self.records = frame[cols].to_dict("records")
        self.transform = transform
        self.annotation = annotation
        self.channels = channels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = to_channels(read_image(rec["image_path"]), self.channels)  # (H, W, C)
        if rec["mask_path"]:
            mask = read_mask(rec["mask_path"], shape=image.shape[:2]).astype(np.uint8)
        else:
            mask = np.zeros(image.shape[:2], np.uint8)
        out = self.transform(image=image, mask=mask)
        target = out["mask"] > 0
        if self.annotation == "box":
            target = box_mask(target)
        spurious = rec["spurious"]
        return {
            "image": torch.from_numpy((out["image"].transpose(2, 0, 1) - MEAN) / STD).float(),
            "mask": torch.from_numpy(target[None].astype(np.float32)),
            "label": torch.tensor(float(rec["label"])),
            "mask_available": torch.tensor(float(rec["mask_available"])),
            "spurious": torch.tensor(-1.0 if np.isnan(spurious) else float(spurious)),
            "image_id": rec["image_id"],
        }
