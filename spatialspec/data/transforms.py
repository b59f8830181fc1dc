"""Albumentations pipelines, applied jointly to image and mask (geometry moves both)."""

from __future__ import annotations

import albumentations as A
import cv2


def build_transform(image_size: int, augment: bool, seed: int | None = None) -> A.Compose:
    """Resize to ``image_size`` squared; with ``augment``, add mild flips, affine and intensity.

    Args:
        image_size: Output side in pixels.
        augment: Training-time augmentation on (True) or off (evaluation).
        seed: Seed of the pipeline's own random state (albumentations ignores global seeds).

    Returns:
        A pipeline called as ``t(image=float32 HxW[xC] in [0,1], mask=uint8 HxW)``.
    """
    ops: list[A.BasicTransform] = [
        A.Resize(
            image_size,
            image_size,
            interpolation=cv2.INTER_AREA,
            mask_interpolation=cv2.INTER_NEAREST,
        )
    ]
    if augment:
        ops += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-8, 8),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    return A.Compose(ops, seed=seed)
