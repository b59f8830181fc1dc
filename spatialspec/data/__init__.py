"""Data contracts: the manifest CSV, image/mask I/O and box supervision."""

from spatialspec.data.boxes import box_mask, boxes_to_mask, mask_to_boxes
from spatialspec.data.io import ImageReadError, read_image, read_mask, write_png
from spatialspec.data.manifest import ManifestError, load_manifest, write_manifest

__all__ = [
    "ImageReadError",
    "ManifestError",
    "box_mask",
    "boxes_to_mask",
    "load_manifest",
    "mask_to_boxes",
    "read_image",
    "read_mask",
    "write_manifest",
    "write_png",
]
