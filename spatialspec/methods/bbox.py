"""``bbox``: box supervision — ``seg`` trained at ``data.specificity: box``.

The method differs from ``seg`` only in its annotation, which sets the default spatial
specificity of the dense target (:mod:`spatialspec.data.specificity`): one filled box per
8-connected mask component, end pixel inclusive, derived by the data pipeline after augmentation
(so a box always bounds its augmented region). ``bbox`` accepts no other level; for one, train
``seg`` with ``--data.specificity LEVEL`` (``seg`` at ``box`` is the same fit as ``bbox``).
"""

from __future__ import annotations

from spatialspec.methods.base import METHODS
from spatialspec.methods.dense import DenseMethod


@METHODS.register("bbox")
class BBoxMethod(DenseMethod):
    """Box supervision: every pixel of each component's bounding box counts as positive."""

    annotation = "box"
