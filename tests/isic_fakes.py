"""A tiny fake ISIC 2018 tree with trap-set CSVs, in the exact on-disk formats of the real files.

Layout written by :func:`make_isic_tree`::

    root/ISIC2018_Task1-2_Training_Input/   ISIC_xxxxxxx.jpg (RGB), LICENSE.txt, ATTRIBUTION.txt
    root/ISIC2018_Task1_Training_GroundTruth/   ISIC_xxxxxxx_segmentation.png (0/255)
    trap_sets/   isic_annotated_{train,val,test}{K}.csv for K = 1..5

Image ``i`` (id ``ISIC_{7 * i:07d}``, see :func:`image_ids`) is malignant when ``i`` is even.
A fifth of the images (``i % 5 == 1``) are *conflicting*: their shortcut artifacts disagree
with the label. The :data:`SHORTCUTS` (dark_corner, gel_border, ruler, ink) are present on
malignant aligned and benign conflicting images (except where ``i % 7 == 0``), plus a few benign
aligned ones; hair and gel_bubble mark the opposite; patches marks a few malignant images;
vasc marks some benign ones. Every test set holds all conflicting images plus two aligned
ones, so the associations hold in train and reverse in test, and the spurious artifacts are
exactly :data:`EXPECTED_SPURIOUS` for every K and both split modes (at least 10 train images
carry each shortcut). Each val set is a fifth of its train set (val ⊂ train, as in the real
trap sets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from spatialspec.data.isic import ARTIFACTS, IMAGE_DIR, MASK_DIR

#: Artifacts that follow the shortcut (present on malignant aligned / benign conflicting images).
SHORTCUTS = ("dark_corner", "gel_border", "ruler", "ink")
#: The spurious artifacts selected on a default tree (any seed K, either split mode).
EXPECTED_SPURIOUS = SHORTCUTS
#: Image sizes (width, height) used in rotation: non-square, and some portrait.
SIZES = ((40, 30), (40, 30), (36, 48), (50, 28))
#: Index of the image whose mask is named ``_Segmentation.png`` (capital S).
CAPITAL_MASK_INDEX = 1


def image_ids(n: int) -> list[str]:
    """The ISIC ids of a tree with ``n`` images (gaps between ids, as in the real set)."""
    return [f"ISIC_{7 * i:07d}" for i in range(n)]


def image_size(i: int) -> tuple[int, int]:
    """(width, height) of image ``i``."""
    return SIZES[i % len(SIZES)]


def annotations(n: int) -> pd.DataFrame:
    """Per image: ``image`` (``.png`` name), the artifacts, label, label_string, conflicting."""
    rows = []
    for i, image_id in enumerate(image_ids(n)):
        label = int(i % 2 == 0)
        conflicting = i % 5 == 1
        shortcut = (1 - label if conflicting else label) and i % 7 != 0
        row = {"image": f"{image_id}.png"}
        for j, name in enumerate(SHORTCUTS):  # a few benign aligned images carry them too
            noise = not label and not conflicting and i % 7 in (3, 5 + j % 2)
            row[name] = int(shortcut or noise)
        row |= {"hair": int(not shortcut), "gel_bubble": int(not shortcut)}
        row["patches"] = int(label == 1 and i % 8 == 0)
        row["vasc"] = int(label == 0 and i % 3 == 0)
        row |= {"label": label, "label_string": ("benign", "malignant")[label]}
        rows.append(row | {"conflicting": conflicting})
    return pd.DataFrame(rows)[["image", *ARTIFACTS, "label", "label_string", "conflicting"]]


def write_trap_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write like the real trap sets: unnamed index column first, no ``conflicting`` column."""
    out = frame.drop(columns=["conflicting"], errors="ignore")
    out.to_csv(path, index=True, index_label="")


def write_trap_sets(frame: pd.DataFrame, trap_dir: Path, seeds: tuple[int, ...]) -> None:
    """Write train/val/test CSVs per seed K: test = conflicting + 2 aligned, val ⊂ train.

    Val takes every fifth train row (offset K), listed in shuffled order as in the real files.
    """
    trap_dir.mkdir(parents=True, exist_ok=True)
    aligned = np.flatnonzero(~frame["conflicting"].to_numpy())
    for k in seeds:
        in_test = frame["conflicting"].to_numpy().copy()
        in_test[aligned[[k, -k]]] = True
        train, test = frame[~in_test], frame[in_test]
        val = train.iloc[k % 5 :: 5]
        val = val.iloc[np.random.default_rng(k).permutation(len(val))]
        for split, part in (("train", train), ("val", val), ("test", test)):
            write_trap_csv(part, trap_dir / f"isic_annotated_{split}{k}.csv")


def write_image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A small RGB JPEG with a brown blob on skin tones."""
    width, height = size
    pixels = rng.integers(150, 230, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    ImageDraw.Draw(img).ellipse(_lesion_box(size), fill=(110, 70, 40))
    img.save(path, format="JPEG", quality=90)


def write_mask(path: Path, size: tuple[int, int]) -> None:
    """A 0/255 grayscale PNG lesion mask of the given (width, height)."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(_lesion_box(size), fill=255)
    mask.save(path, format="PNG")


def _lesion_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    return (width // 4, height // 4, 3 * width // 4, 3 * height // 4)


def make_isic_tree(
    tmp_path: Path, n: int = 40, seed: int = 0, seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
) -> tuple[Path, Path]:
    """Write a fake ISIC 2018 tree and its trap-set CSVs under ``tmp_path``.

    Args:
        tmp_path: Parent folder; ``isic/`` and ``trap_sets/`` are created in it.
        n: Number of images (>= 12 so every split is non-empty and 10+ train images carry
            the shortcut artifacts).
        seed: Seed of the pixel noise (annotations and splits do not depend on it).
        seeds: Trap-set split seeds K to write CSVs for.

    Returns:
        ``(root, trap_dir)`` to pass to :func:`spatialspec.data.isic.prepare_isic`.
    """
    root, trap_dir = tmp_path / "isic", tmp_path / "trap_sets"
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, image_id in enumerate(image_ids(n)):
        write_image(image_dir / f"{image_id}.jpg", image_size(i), rng)
        suffix = "_Segmentation.png" if i == CAPITAL_MASK_INDEX else "_segmentation.png"
        write_mask(mask_dir / f"{image_id}{suffix}", image_size(i))
    (image_dir / "LICENSE.txt").write_text("CC-BY-NC 4.0 (fake)\n")
    (image_dir / "ATTRIBUTION.txt").write_text("fake attribution\n")
    (mask_dir / "LICENSE.txt").write_text("CC-BY-NC 4.0 (fake)\n")
    write_trap_sets(annotations(n), trap_dir, seeds)
    return root, trap_dir
