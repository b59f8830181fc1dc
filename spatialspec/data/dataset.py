"""Manifest rows -> dict samples with fixed keys.

Keys: ``image`` (C, H, W) float, ``mask`` (1, H, W) float (the dense target: the pathology mask
at the dataset's spatial specificity -- the mask, its dilation, boxes, grid cells or the whole
image, see :mod:`spatialspec.data.specificity`; empty for negative images, so a lesion mask of a
benign ISIC lesion is a negative target, as in the paper's malignant-vs-benign-lesion
segmentation), ``label`` float,
``mask_available`` float, ``spurious`` float (-1 where unknown), ``image_id`` str.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spatialspec.data.cache import ImageCache
from spatialspec.data.io import read_image, read_mask
from spatialspec.data.roi import (
    DEFAULT_DILATE,
    check_masking,
    condition_area,
    condition_region,
    fill_region,
    image_rng,
)
from spatialspec.data.samplers import SampleKey
from spatialspec.data.specificity import Specificity, resolve_specificity
from spatialspec.data.transforms import RESIZE_SPEC, reseed, resize_image, resize_mask

ANNOTATIONS = ("label", "box", "mask")
#: Fixed intensity normalisation: images in [0, 1] -> roughly zero mean, unit spread.
MEAN, STD = 0.5, 0.25

#: ``(image, mask)``: image (H, W, C) float32 in [0, 1]; mask (H, W) uint8, or None if unused.
Pair = tuple[np.ndarray, np.ndarray | None]


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

    Only positive rows read their mask: the target of a negative image is empty whatever its
    mask file holds.

    Args:
        frame: Validated manifest rows (see :func:`spatialspec.data.load_manifest`).
        transform: Albumentations pipeline (image float32 in [0, 1], mask uint8). With
            ``image_size`` it only augments (:func:`~spatialspec.data.transforms.
            build_augmentation`; None: no augmentation); without, it must also resize
            (:func:`~spatialspec.data.transforms.build_transform`).
        annotation: The method's annotation, which sets the default ``specificity``: ``mask``
            (the mask), ``box`` (filled boxes per component) or ``label`` (no target
            transform: the mask is still supplied, for audits; label-only methods ignore it).
        specificity: Spatial specificity of the dense target (``mask``, ``dilate:R``, ``box``,
            ``grid:K``, ``image``; see :func:`~spatialspec.data.specificity.
            resolve_specificity`), applied to the mask after ``transform`` (so a box always
            bounds its augmented region). None: the annotation's default.
        channels: 1 or 3; images are converted as needed.
        image_size: Side of the network input: the dataset resizes images (pixel-area
            averaging) and masks (nearest) itself, before ``transform``.
        cache: Optional on-disk cache of the decoded, resized, un-augmented images and masks
            (needs ``image_size``): later epochs skip decoding and resizing, while the
            augmentation still differs every epoch.
        roi_masking: Masking condition applied to every image (None: off): ``roi_removed``,
            ``roi_only``, ``spurious_removed``, ``anatomy_removed``, ``anatomy_only``,
            ``anatomy_box_removed`` or ``anatomy_box_only`` (see :mod:`spatialspec.data.roi`).
            It fills the resized, un-augmented image (after the cache, before ``transform``),
            using the ROI mask of every row with a mask file (whatever its label), the spurious
            mask of ``spurious_mask_path`` and the anatomy mask of ``roi_mask_path`` (which
            every row must then have: ValueError otherwise). The dense target is unchanged.
        roi_masking_region: ``mask`` or ``box`` (the ROI's filled boxes).
        roi_masking_fill: ``mean``, ``noise`` (fixed per image id), ``zero`` or ``blur``.
        roi_masking_dilate: Pixels by which the spurious mask is grown.
        seed: Base seed of the augmentation of samples fetched by
            :class:`~spatialspec.data.samplers.SampleKey`: the sample of ``(epoch, index)`` is
            augmented with a random state drawn from ``(seed, epoch, index)``, the same whatever
            the worker, rank or restart. A plain integer index uses the pipeline's own running
            random state.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[..., dict[str, Any]] | None,
        annotation: str = "mask",
        channels: int = 1,
        image_size: int | None = None,
        cache: ImageCache | None = None,
        specificity: str | Specificity | None = None,
        roi_masking: str | None = None,
        roi_masking_region: str = "mask",
        roi_masking_fill: str = "mean",
        roi_masking_dilate: int = DEFAULT_DILATE,
        seed: int = 0,
    ) -> None:
        check_masking(roi_masking, roi_masking_region, roi_masking_fill)
        if roi_masking == "original":
            roi_masking = None
        if annotation not in ANNOTATIONS:
            raise ValueError(f"unknown annotation {annotation!r}; valid: {', '.join(ANNOTATIONS)}")
        #: Level of the dense target (None: the mask as it is, for label-only methods).
        self.specificity = resolve_specificity(annotation, specificity)
        if cache is not None and image_size is None:
            raise ValueError("an image cache needs image_size (the dataset must resize)")
        if transform is None and image_size is None:
            raise ValueError("without image_size, the transform must resize the images")
        cols = ["image_id", "image_path", "label", "spurious", "mask_path", "mask_available"]
        if roi_masking is not None and "spurious_mask_path" in frame.columns:
            cols.append("spurious_mask_path")
        if condition_area(roi_masking) == "anatomy":
            _check_anatomy(frame, roi_masking)
            cols.append("roi_mask_path")
        self.records = frame[cols].to_dict("records")
        self.transform = transform
        self.annotation = annotation
        self.channels = channels
        self.image_size = image_size
        self.cache = cache
        self.roi_masking = roi_masking
        self.roi_masking_region = roi_masking_region
        self.roi_masking_fill = roi_masking_fill
        self.roi_masking_dilate = roi_masking_dilate
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | SampleKey) -> dict[str, Any]:
        if isinstance(index, SampleKey):
            if self.transform is not None:
                reseed(self.transform, (self.seed, index.epoch, index.index))
            index = index.index
        rec = self.records[index]
        # A negative's target is empty: its mask (e.g. a benign ISIC lesion) is never read.
        mask_path = rec["mask_path"] if rec["label"] and rec["mask_path"] else None
        image, mask = self._load(rec["image_path"], mask_path)
        if self.roi_masking is not None:
            image = self._apply_masking(rec, image, mask)
        if self.transform is not None:
            targets = {"image": image} if mask is None else {"image": image, "mask": mask}
            out = self.transform(**targets)
            image, mask = out["image"], out.get("mask")
        spurious = float(rec["spurious"])
        return {
            "image": _normalised_tensor(image),
            "mask": self._target(mask, image.shape[:2]),
            "label": torch.tensor(float(rec["label"])),
            "mask_available": torch.tensor(float(rec["mask_available"])),
            "spurious": torch.tensor(-1.0 if math.isnan(spurious) else spurious),
            "image_id": rec["image_id"],
        }

    def _load(self, image_path: str, mask_path: str | None) -> Pair:
        """The image (and mask) ready for ``transform``: resized if ``image_size`` is set."""
        size = self.image_size
        if size is None:
            return self._decode(image_path, mask_path)
        if self.cache is None:
            return self._decode_resized(image_path, mask_path, size)
        return self.cache.fetch(
            image_path,
            mask_path,
            size,
            self.channels,
            RESIZE_SPEC,
            lambda: self._decode_resized(image_path, mask_path, size),
        )

    def _decode(self, image_path: str, mask_path: str | None) -> Pair:
        """Decode at full size (``transform`` resizes)."""
        image = to_channels(read_image(image_path), self.channels)  # (H, W, C)
        if mask_path is None:
            return image, None
        return image, read_mask(mask_path, shape=image.shape).view(np.uint8)  # (H, W) 0/1

    def _decode_resized(self, image_path: str, mask_path: str | None, size: int) -> Pair:
        """Decode and resize to ``size``.

        RGB -> luminance happens before the resize (as in :func:`to_channels` + ``A.Resize``),
        grey -> RGB after it (3x less work; equal up to 1 ulp of float32).
        """
        image = read_image(image_path)  # (H, W) or (H, W, 3)
        mask = None if mask_path is None else read_mask(mask_path, shape=image.shape)
        if image.ndim == 2:
            image = image[..., None]  # (H, W, 1)
        elif self.channels == 1:
            image = to_channels(image, 1)  # (H, W, 3) -> (H, W, 1)
        image = to_channels(resize_image(image, size), self.channels)  # (S, S, C)
        if mask is not None:
            mask = resize_mask(mask.view(np.uint8), size)  # (S, S) 0/1
        return image, mask

    def _apply_masking(
        self, rec: dict[str, Any], image: np.ndarray, mask: np.ndarray | None
    ) -> np.ndarray:
        """The image with the ``roi_masking`` condition applied (a new array)."""
        shape = image.shape[:2]
        area = condition_area(self.roi_masking)
        roi = spurious = anatomy = None
        if area == "roi":  # a positive's ROI was already read (and resized) for the target
            roi = mask > 0 if mask is not None else self._region_mask(rec["mask_path"], shape)
        elif area == "spurious":
            spurious = self._region_mask(rec.get("spurious_mask_path"), shape)
        else:
            anatomy = self._region_mask(rec["roi_mask_path"], shape)
        filled, reference = condition_region(
            self.roi_masking, roi, spurious, shape, self.roi_masking_region,
            self.roi_masking_dilate, anatomy=anatomy,
        )  # fmt: skip
        rng = image_rng(0, rec["image_id"]) if self.roi_masking_fill == "noise" else None
        return fill_region(image, filled, self.roi_masking_fill, rng, reference)

    def _region_mask(self, path: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        """(H, W) bool mask of ``path`` at the image's size, or None without a file."""
        if not isinstance(path, str) or not path:
            return None
        if self.image_size is None:
            return read_mask(path, shape=shape)
        return resize_mask(read_mask(path).view(np.uint8), self.image_size) > 0

    def _target(self, mask: np.ndarray | None, shape: tuple[int, ...]) -> torch.Tensor:
        """(1, H, W) float target: the mask at ``specificity``; zeros when there is no mask."""
        if mask is None:
            return torch.zeros((1, *shape[:2]), dtype=torch.float32)
        target = mask > 0
        if self.specificity is not None:
            target = self.specificity.apply(target)
        return torch.from_numpy(target.view(np.uint8)[None]).to(torch.float32)  # (1, H, W)


def _check_anatomy(frame: pd.DataFrame, condition: str) -> None:
    """Every row needs an anatomy mask (``roi_mask_path``) under an ``anatomy*`` condition."""
    paths = frame["roi_mask_path"] if "roi_mask_path" in frame.columns else None
    missing = np.ones(len(frame), bool) if paths is None else (
        paths.fillna("").astype(str).str.strip() == "").to_numpy()  # fmt: skip
    if missing.any():
        source = frame.attrs.get("manifest_path", "the manifest")
        ids = ", ".join(frame["image_id"].astype(str)[missing][:5])
        raise ValueError(
            f"roi_masking={condition!r} needs roi_mask_path (the anatomy mask) on every row; "
            f"{int(missing.sum())} of {len(frame)} rows of {source} have none (first: {ids})"
        )


def _normalised_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) float image in [0, 1] -> (C, H, W) float32 tensor, (x - MEAN) / STD.

    Normalises in place when the array is a float32 the pipeline owns (no extra copy).
    """
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # a view if C == 1
    if not chw.flags.writeable:
        chw = chw.copy()
    np.multiply(chw, np.float32(1 / STD), out=chw)
    np.subtract(chw, np.float32(MEAN / STD), out=chw)
    return torch.from_numpy(chw)
