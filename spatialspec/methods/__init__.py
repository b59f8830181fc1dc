"""Training methods, one file each, registered by name in :data:`METHODS`."""

from spatialspec.methods import bbox, binary, seg  # noqa: F401  (registers the methods)
from spatialspec.methods.base import METHODS, SpatialMethod, get_method

__all__ = ["METHODS", "SpatialMethod", "get_method"]
