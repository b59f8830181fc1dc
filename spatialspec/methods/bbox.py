"""``bbox``: box supervision — U-Net trained on filled boxes, one per mask component.

Boxes are derived from the masks by the data pipeline (after augmentation, so a box always
bounds its augmented region): one box per 8-connected component, end pixel inclusive.
"""

from __future__ import annotations

from spatialspec.methods.base import METHODS
from spatialspec.methods.dense import DenseMethod


@METHODS.register("bbox")
class BBoxMethod(DenseMethod):
    """Box supervision: every pixel of each component's bounding box counts as positive."""

    annotation = "box"
