"""What every audit needs: a trained model, its data module, and a split loaded with its masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.data.dataset import ManifestDataset
from spatialspec.data.io import read_mask
from spatialspec.data.transforms import resize_mask
from spatialspec.evaluation.predict import datamodule_for, load_checkpoint
from spatialspec.methods import SpatialMethod

__all__ = ["AuditSet", "load_audit_set", "load_model"]


@dataclass
class AuditSet:
    """One split at the network's input size, with every mask an audit may need.

    Attributes:
        image_ids: Ids, in row order.
        images: (N, C, S, S) normalised network inputs (no augmentation).
        roi_masks: (N, S, S) bool region of interest: the manifest's mask for every image that
            has a mask file (ISIC: the lesion, benign ones too), else all False.
        has_roi_mask: (N,) whether a mask file exists.
        spurious_masks: (N, S, S) bool spurious region (``spurious_mask_path``), else all False.
        has_spurious_mask: (N,) whether a spurious mask file exists.
        labels: (N,) int labels.
        spurious: (N,) float spurious attribute, NaN where unknown.
        frame: The manifest rows.
    """

    image_ids: list[str]
    images: torch.Tensor
    roi_masks: np.ndarray
    has_roi_mask: np.ndarray
    spurious_masks: np.ndarray
    has_spurious_mask: np.ndarray
    labels: np.ndarray
    spurious: np.ndarray
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.image_ids)


def load_model(
    checkpoint: str | Path, manifest: str | Path | None = None, **data_overrides: Any
) -> tuple[SpatialMethod, dict[str, Any], SpatialDataModule]:
    """The trained method (eval mode, CPU), its resolved run config and a matching data module."""
    method, config = load_checkpoint(checkpoint)
    data = datamodule_for(method, config, None if manifest is None else str(manifest),
                          **data_overrides)  # fmt: skip
    return method, config, data


def load_audit_set(
    data: SpatialDataModule, split: str = "test", limit: int | None = None, seed: int = 0
) -> AuditSet:
    """Load ``split`` (or a seeded random subset of ``limit`` rows) with its masks.

    Raises:
        ValueError: If the split is empty (names the manifest).
    """
    frame = data.split_frame(split)
    if limit is not None and limit < len(frame):
        rows = np.sort(np.random.default_rng(seed).choice(len(frame), limit, replace=False))
        frame = frame.iloc[rows]
    size = data.image_size
    dataset = ManifestDataset(frame, None, "mask", data.channels, image_size=size)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # (N, C, S, S)
    roi, has_roi = _masks(frame.get("mask_path"), size, len(frame))
    spur, has_spur = _masks(frame.get("spurious_mask_path"), size, len(frame))
    return AuditSet(
        image_ids=frame["image_id"].tolist(),
        images=images,
        roi_masks=roi,
        has_roi_mask=has_roi,
        spurious_masks=spur,
        has_spurious_mask=has_spur,
        labels=frame["label"].to_numpy(int),
        spurious=frame["spurious"].to_numpy(float),
        frame=frame,
    )


def _masks(paths: pd.Series | None, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) bool masks resized to the input size, and (N,) which rows have a file."""
    out = np.zeros((n, size, size), dtype=bool)
    present = np.zeros(n, dtype=bool)
    if paths is None:
        return out, present
    for i, path in enumerate(paths.fillna("").astype(str)):
        if path:
            out[i] = resize_mask(read_mask(path).view(np.uint8), size) > 0
            present[i] = True
    return out, present
