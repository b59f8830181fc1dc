"""Training methods, one file each, registered by name in :data:`METHODS`."""

from spatialspec.methods import bbox, binary, seg, seg_spl, seg_ssl  # noqa: F401  (registers)
from spatialspec.methods.base import METHODS, SpatialMethod, get_method

__all__ = ["METHODS", "SpatialMethod", "get_method"]
