"""The two data measures of Saab et al. per spatial specificity level, from masks.

For an annotation Ỹ at a level (:mod:`spatialspec.data.specificity`) of the pathology mask Y,
over the pixels Ỹ labels positive, pooled over the positive images of a split:

- ``variance``: the variance of their intensities (grey, in [0, 1]: the image as read, before
  the training normalisation; population variance, ``ddof = 0``);
- ``mutual_information``: I(S; Y | Ỹ = 1) in **bits**, the plug-in estimate from the pooled
  2 x 2 table of pixel counts of the spurious-pixel indicator S (``spurious_mask_path``) and the
  pathology-pixel indicator Y;
- ``spurious_share``: the share of them that are spurious (S = 1), and ``pathology_share`` the
  share that are pathology (Y = 1);
- ``n_pixels``: how many there are.

The paper's theory says both measures fall as the level gets finer, under two assumptions:
spurious and pathology regions never overlap, and S is independent of Ỹ given Y.

Images are read as for training (:mod:`spatialspec.data.dataset`): RGB becomes luminance, and
with ``image_size`` images are resized by pixel-area averaging and masks by nearest neighbour
before the level is applied, so ``dilate:R`` and ``grid:K`` are in pixels of that resolution.
No augmentation is applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.data.dataset import to_channels
from spatialspec.data.io import read_image, read_mask
from spatialspec.data.manifest import load_manifest
from spatialspec.data.specificity import Specificity, is_nested, parse_specificities
from spatialspec.data.transforms import resize_image, resize_mask

__all__ = [
    "LevelCounts",
    "analyze_frame",
    "analyze_manifest",
    "load_pixels",
    "mutual_information_bits",
    "nested_pairs",
]

#: The manifest column holding the spurious-region masks.
SPURIOUS_COLUMN = "spurious_mask_path"
#: The measures that the theory says fall as the level gets finer.
MEASURES = ("variance", "mutual_information")


@dataclass
class LevelCounts:
    """Pooled pixel statistics of one level (added to image by image).

    Attributes:
        n: Annotated-positive pixels (Ỹ = 1).
        mean, m2: Running mean and sum of squared deviations of their intensities.
        table: ``table[s, y]``: annotated-positive pixels of images whose spurious pixels are
            known, by spurious (s) and pathology (y) indicator.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    table: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))

    def add(
        self, image: np.ndarray, target: np.ndarray, pathology: np.ndarray,
        spurious: np.ndarray | None,
    ) -> None:  # fmt: skip
        """Add one image: its intensities, level target Ỹ, mask Y and spurious mask S (None:
        unknown, left out of the table)."""
        values = image[target].astype(np.float64)
        k = values.size
        if k:  # Chan et al.'s pairwise update: exact pooled mean and variance
            mean_k = float(values.mean())
            m2_k = float(((values - mean_k) ** 2).sum())
            total = self.n + k
            delta = mean_k - self.mean
            self.m2 += m2_k + delta * delta * self.n * k / total
            self.mean += delta * k / total
            self.n = total
        if spurious is not None and k:
            s, y = spurious[target], pathology[target]
            self.table += np.array(
                [[np.sum(~s & ~y), np.sum(~s & y)], [np.sum(s & ~y), np.sum(s & y)]], np.int64
            )

    def measures(self, known: bool) -> dict[str, Any]:
        """The level's measures (``mutual_information`` and the shares None unless ``known``:
        the manifest has spurious masks)."""
        total = int(self.table.sum())
        shares = known and total > 0
        return {
            "variance": self.m2 / self.n if self.n else None,
            "mean": self.mean if self.n else None,
            "mutual_information": mutual_information_bits(self.table) if shares else None,
            "spurious_share": float(self.table[1].sum() / total) if shares else None,
            "pathology_share": float(self.table[:, 1].sum() / total) if shares else None,
            "n_pixels": self.n,
            "n_pixels_spurious_known": total,
            "counts": {f"s{s}_y{y}": int(self.table[s, y]) for s in (0, 1) for y in (0, 1)},
        }


def mutual_information_bits(table: np.ndarray) -> float:
    """Plug-in mutual information (bits) of a 2-D contingency table of counts.

    ``I = sum p(s, y) log2(p(s, y) / (p(s) p(y)))`` over the non-empty cells (0 log 0 = 0).
    """
    counts = np.asarray(table, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("mutual information of an empty table")
    joint = counts / total
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    cells = joint > 0
    value = float(np.sum(joint[cells] * np.log2(joint[cells] / outer[cells])))
    return max(value, 0.0)  # rounding can leave -1e-17


def _row_label(frame: pd.DataFrame, index: Any) -> str:
    """``manifest.csv (line N, image_id 'x')``; the line assumes the manifest's row order."""
    manifest = frame.attrs.get("manifest_path", "manifest")
    line = f"line {int(index) + 2}, " if isinstance(index, (int, np.integer)) else ""
    return f"{manifest} ({line}image_id {frame.at[index, 'image_id']!r})"


def load_pixels(
    row: pd.Series, image_size: int | None, has_spurious_column: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(image, Y, S)`` of one manifest row at the analysis resolution.

    ``image`` (H, W) float grey in [0, 1]; ``Y`` and ``S`` (H, W) bool. ``S`` is the spurious
    mask file's, empty for an image without the spurious feature (``spurious == 0``) and no
    file, and None where the spurious pixels are unknown: no ``spurious_mask_path`` column, or
    a row with the feature (or an unknown ``spurious``) and no file.

    Raises:
        ImageReadError: A file is unreadable or has the wrong shape.
    """
    image = to_channels(read_image(row["image_path"]), 1)[..., 0]  # (H, W)
    pathology = read_mask(row["mask_path"], shape=image.shape)
    path = row.get(SPURIOUS_COLUMN) if has_spurious_column else None
    if isinstance(path, str) and path:
        spurious: np.ndarray | None = read_mask(path, shape=image.shape)
    elif has_spurious_column and row["spurious"] == 0:
        spurious = np.zeros_like(pathology)  # no spurious feature: no spurious pixel
    else:
        spurious = None
    if image_size is not None:
        image = resize_image(image[..., None], image_size)[..., 0]
        pathology = resize_mask(pathology.view(np.uint8), image_size) > 0
        if spurious is not None:
            spurious = resize_mask(spurious.view(np.uint8), image_size) > 0
    return image, pathology, spurious


def analyze_frame(
    frame: pd.DataFrame,
    levels: Sequence[Specificity],
    image_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The measures of every level over the positive images (with a mask file) of ``frame``.

    Args:
        frame: Manifest rows (already restricted to one split), as
            :func:`~spatialspec.data.manifest.load_manifest` returns them.
        levels: The specificity levels, in display order.
        image_size: Side the images and masks are resized to (None: as stored).
        progress: Show a progress bar over the images.

    Returns:
        ``levels``: per level ``{specificity, radius, variance, mean, mutual_information,
        spurious_share, pathology_share, n_pixels, n_pixels_spurious_known, counts}``;
        ``nested``: :func:`nested_pairs`; image counts and what was left out.

    Raises:
        ValueError: A file of a row is unreadable (the message names the manifest line and
            image id, and the file).
    """
    from tqdm.auto import tqdm

    has_spurious = SPURIOUS_COLUMN in frame.columns
    positives = frame[(frame["label"] == 1) & (frame["mask_path"] != "")]
    counts = {level: LevelCounts() for level in levels}
    unknown: list[str] = []
    sizes: set[tuple[int, int]] = set()
    for index, row in tqdm(
        positives.iterrows(), total=len(positives), desc="specificity", disable=not progress
    ):
        try:
            image, pathology, spurious = load_pixels(row, image_size, has_spurious)
        except ValueError as err:  # ImageReadError: names the file
            raise ValueError(f"{_row_label(frame, index)}: {err}") from None
        if has_spurious and spurious is None:
            unknown.append(str(row["image_id"]))
        sizes.add(image.shape)
        for level, acc in counts.items():
            acc.add(image, level.apply(pathology), pathology, spurious)
    side = image_size if image_size is not None else _common_side(sizes)
    rows = [
        {"specificity": level.name, "radius": _finite(level.radius(side)),
         **acc.measures(has_spurious)}
        for level, acc in counts.items()
    ]  # fmt: skip
    return {
        "levels": rows,
        "nested": nested_pairs(levels, rows),
        "n_images": len(positives),
        "n_positives_without_mask": int(((frame["label"] == 1) & (frame["mask_path"] == "")).sum()),
        "spurious_masks": has_spurious,
        "n_images_spurious_unknown": len(unknown),
        "images_spurious_unknown": unknown[:20],
        "image_sizes": sorted(f"{h}x{w}" for h, w in sizes),
    }


def _common_side(sizes: set[tuple[int, int]]) -> int | None:
    """The side of square images all of one size (the ``image`` level's radius), else None."""
    if len(sizes) == 1:
        (h, w), *_ = sizes
        if h == w:
            return h
    return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def nested_pairs(levels: Sequence[Specificity], rows: Sequence[dict]) -> list[dict[str, Any]]:
    """For every pair of levels where ``outer ⊇ inner`` for any mask (and the two differ),
    whether each measure falls from outer to inner (``outer > inner``; None if either is
    missing). Only pairs of distinct targets are listed (``mask`` and ``dilate:0`` are one)."""
    by_name = {row["specificity"]: row for row in rows}
    out = []
    for outer in levels:
        for inner in levels:
            if outer == inner or not is_nested(outer, inner) or is_nested(inner, outer):
                continue
            a, b = by_name[outer.name], by_name[inner.name]
            entry: dict[str, Any] = {"outer": outer.name, "inner": inner.name}
            for measure in MEASURES:
                va, vb = a[measure], b[measure]
                entry[f"{measure}_falls"] = None if va is None or vb is None else bool(va > vb)
            out.append(entry)
    return out


def analyze_manifest(
    manifest: str | Path,
    levels: str | Sequence[str | Specificity],
    split: str = "train",
    image_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`analyze_frame` over one split of a manifest file.

    Raises:
        FileNotFoundError: No manifest.
        ValueError: An invalid manifest (missing columns or files, listed), an empty split, an
            invalid level, an unreadable file (named with its row).
    """
    parsed = parse_specificities(levels if isinstance(levels, str) else list(levels))
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    frame = load_manifest(manifest)
    part = frame[frame["split"] == split]
    if part.empty:
        raise ValueError(f"{manifest}: split {split!r} has no rows")
    part.attrs.update(frame.attrs)
    result = analyze_frame(part, parsed, image_size=image_size, progress=progress)
    if result["n_images"] == 0:
        raise ValueError(f"{manifest}: split {split!r} has no positive image with a mask file")
    return {
        "manifest": str(Path(manifest).resolve()),
        "split": split,
        "image_size": image_size,
        **result,
    }
