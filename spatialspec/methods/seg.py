"""``seg``: segmentation masks — U-Net on the pathology masks, image score pooled from pixels."""

from __future__ import annotations

from spatialspec.methods.base import METHODS
from spatialspec.methods.dense import DenseMethod


@METHODS.register("seg")
class SegMethod(DenseMethod):
    """Mask supervision: the finest spatial specificity."""

    annotation = "mask"
