"""Networks: one shared smp encoder with an image head and/or a U-Net decoder + pixel head."""

from spatialspec.models.backbone import BackboneConfig, SpatialNet
from spatialspec.models.pooling import POOLINGS, pool_scores

__all__ = ["POOLINGS", "BackboneConfig", "SpatialNet", "pool_scores"]
