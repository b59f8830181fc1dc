"""Spatial specificity of the dense training target: how far the annotation spreads from the mask.

Saab et al. model an annotation at specificity ``r`` as the pathology mask dilated by ``r``:
``r = 0`` is the mask itself, ``r`` = the image size is an image label. The levels here
(``data.specificity``; parsed by :func:`parse_specificity`) run from fine to coarse:

===============  =================================================================  ==========
level            target (the annotation Ỹ of a mask Y)                              radius r
===============  =================================================================  ==========
``mask``         Y itself                                                           0
``dilate:R``     every pixel within Euclidean distance R of Y (a dilation by the    R
                 digital disk ``{(dr, dc): dr² + dc² <= R²}``; ``dilate:0`` = mask)
``box``          one filled box per 8-connected component of Y, end pixel           NaN
                 inclusive (:func:`spatialspec.data.boxes.box_mask`)
``grid:K``       every cell of a K x K grid that holds a pixel of Y (a coarse,      NaN
                 click-style annotation); row ``i`` of an image of height H lies
                 in grid row ``floor(i K / H)`` (columns alike), so cell sides
                 differ by at most one pixel
``image``        every pixel of the image                                           image size
===============  =================================================================  ==========

Every level maps an empty mask to an empty target (the dilation of nothing is nothing), so a
negative image stays all background at every level, and every target contains its mask
(``dilate:R``, ``box``, ``grid:K`` and ``image`` are supersets of ``mask``; ``image`` of all).
``box`` and ``grid:K`` have no single radius (NaN; they are plotted as categories).

Targets are computed on the training image after augmentation (see
:class:`spatialspec.data.dataset.ManifestDataset`), so ``R`` and the grid are in pixels of the
training resolution (``data.image_size``). The ``bbox`` method is ``seg`` at ``box``; a dense
method's annotation (``mask`` or ``box``) is its default level (:func:`resolve_specificity`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spatialspec.data.boxes import box_mask
from spatialspec.registry import Registry

__all__ = [
    "FORMS",
    "Specificity",
    "SpecificityError",
    "is_nested",
    "parse_specificities",
    "parse_specificity",
    "resolve_specificity",
]

#: The accepted forms, for error messages and help texts.
FORMS = "mask, dilate:R (R >= 0 pixels), box, grid:K (K >= 1 cells a side), image"


class SpecificityError(ValueError):
    """A specificity level that cannot be parsed, or one a method cannot train with."""


@dataclass(frozen=True)
class Specificity:
    """One spatial specificity level: a map from a mask to its (coarser) training target.

    Attributes:
        kind: ``mask``, ``dilate``, ``box``, ``grid`` or ``image``.
        size: ``R`` of ``dilate:R``, ``K`` of ``grid:K``; None for the other kinds.
    """

    kind: str
    size: int | None = None

    @property
    def name(self) -> str:
        """Canonical name, as :func:`parse_specificity` accepts it (``dilate:4``, ``box``)."""
        return self.kind if self.size is None else f"{self.kind}:{self.size}"

    def radius(self, image_size: int | None = None) -> float:
        """The radius r of the paper, for plotting: ``mask`` 0, ``dilate:R`` R, ``image`` the
        image side (``image_size``; ``inf`` when None), ``box`` and ``grid:K`` NaN."""
        if self.kind == "mask":
            return 0.0
        if self.kind == "dilate":
            return float(self.size)
        if self.kind == "image":
            return math.inf if image_size is None else float(image_size)
        return math.nan

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """The target of ``mask``: a ``bool`` array of its shape (``mask``'s non-zero pixels
        are the pathology). An empty mask gives an empty target."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"a specificity target needs a 2-D mask, got shape {mask.shape}")
        mask = mask != 0
        if not mask.any():
            return mask
        return KINDS.get(self.kind).target(mask, self.size)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _Kind:
    """A registered level kind: its target function and its ``:N`` argument, if any."""

    target: Callable[[np.ndarray, int | None], np.ndarray]
    takes_size: bool
    smallest: int = 0


#: Level kinds, registered below (``kind`` of :class:`Specificity`).
KINDS: Registry[_Kind] = Registry("specificity")


def _register(name: str, takes_size: bool = False, smallest: int = 0) -> Callable:
    def wrap(target: Callable[[np.ndarray, int | None], np.ndarray]) -> Callable:
        KINDS.register(name)(_Kind(target, takes_size, smallest))
        return target

    return wrap


@_register("mask")
def _mask(mask: np.ndarray, _: int | None) -> np.ndarray:
    return mask


@_register("dilate", takes_size=True, smallest=0)
def _dilate(mask: np.ndarray, radius: int | None) -> np.ndarray:
    if not radius:
        return mask
    # Distance of every pixel to the nearest mask pixel (0 on the mask): exact Euclidean.
    return ndimage.distance_transform_edt(~mask) <= radius


@_register("box")
def _box(mask: np.ndarray, _: int | None) -> np.ndarray:
    return box_mask(mask)


@_register("grid", takes_size=True, smallest=1)
def _grid(mask: np.ndarray, cells: int | None) -> np.ndarray:
    height, width = mask.shape
    rows = np.arange(height) * cells // height  # grid row of every image row
    cols = np.arange(width) * cells // width
    touched = np.zeros((cells, cells), dtype=bool)
    r, c = np.nonzero(mask)
    touched[rows[r], cols[c]] = True
    return touched[rows[:, None], cols[None, :]]


@_register("image")
def _image(mask: np.ndarray, _: int | None) -> np.ndarray:
    return np.ones_like(mask)


def parse_specificity(value: str | Specificity) -> Specificity:
    """Parse a level name: ``mask``, ``dilate:R``, ``box``, ``grid:K`` or ``image``.

    Case and surrounding spaces are ignored (``" Dilate:4 "`` is ``dilate:4``).

    Raises:
        SpecificityError: The value is no valid level; the message names it and the forms.
    """
    if isinstance(value, Specificity):
        return value
    text = str(value).strip().lower()
    kind, sep, arg = text.partition(":")
    if kind not in KINDS:
        raise SpecificityError(_bad(value, f"unknown level {kind!r}"))
    spec = KINDS.get(kind)
    if not spec.takes_size:
        if sep:
            raise SpecificityError(_bad(value, f"{kind!r} takes no ':' argument"))
        return Specificity(kind)
    if not sep or not arg.strip():
        raise SpecificityError(_bad(value, f"{kind!r} needs an integer, as in {kind}:4"))
    try:
        size = int(arg.strip())
    except ValueError:
        raise SpecificityError(_bad(value, f"{arg.strip()!r} is not an integer")) from None
    if size < spec.smallest:
        raise SpecificityError(_bad(value, f"{kind} needs an integer >= {spec.smallest}"))
    return Specificity(kind, size)


def _bad(value: object, why: str) -> str:
    return f"invalid spatial specificity {value!r} ({why}); valid forms: {FORMS}"


def parse_specificities(values: str | list[str]) -> list[Specificity]:
    """A comma-separated list (or a list) of levels, in the order given, without repeats."""
    items = values.split(",") if isinstance(values, str) else list(values)
    levels: list[Specificity] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        level = parse_specificity(item)
        if level in levels:
            raise SpecificityError(f"spatial specificity {level.name!r} is listed twice")
        levels.append(level)
    if not levels:
        raise SpecificityError(f"no spatial specificity given; valid forms: {FORMS}")
    return levels


#: A method's annotation -> its default level (None: image labels only, no dense target).
DEFAULTS = {"label": None, "box": "box", "mask": "mask"}


def resolve_specificity(
    annotation: str, specificity: str | Specificity | None, method: str | None = None
) -> Specificity | None:
    """The level a method trains with.

    Args:
        annotation: The method's annotation: ``mask`` (``seg``, ``seg_ssl``, ``seg_spl``),
            ``box`` (``bbox``) or ``label`` (``binary``).
        specificity: ``data.specificity`` as configured (None: the annotation's default).
        method: The method's name, for error messages.

    Returns:
        ``mask`` methods: ``specificity`` (default ``mask``). ``box`` methods: ``box`` (``bbox``
        is ``seg`` at ``box``). ``label`` methods: None (no dense target; the mask is still
        supplied unchanged, for audits).

    Raises:
        SpecificityError: An unknown annotation or level; a ``label`` method given any level; a
            ``box`` method given a level other than ``box``.
    """
    if annotation not in DEFAULTS:
        raise SpecificityError(f"unknown annotation {annotation!r}; valid: {', '.join(DEFAULTS)}")
    who = f"method {method!r}" if method else f"a {annotation!r}-annotated method"
    if specificity is None:
        default = DEFAULTS[annotation]
        return None if default is None else parse_specificity(default)
    level = parse_specificity(specificity)
    if annotation == "label":
        raise SpecificityError(
            f"{who} trains on image labels and has no dense target, so data.specificity "
            f"{level.name!r} cannot apply; unset it (null), or train a dense method (seg) with "
            "--data.specificity image for image-level dense supervision"
        )
    if annotation == "box" and level.kind != "box":
        raise SpecificityError(
            f"{who} is seg with data.specificity box; got {level.name!r}: use --method seg "
            f"--data.specificity {level.name} instead"
        )
    return level


def is_nested(outer: Specificity, inner: Specificity) -> bool:
    """Whether ``outer``'s target contains ``inner``'s for every mask (``outer ⊇ inner``).

    ``image`` contains every level and every level contains ``mask``; ``dilate:R`` contains
    ``dilate:R'`` for ``R >= R'``; ``grid:K`` contains ``grid:K'`` when ``K`` divides ``K'``
    (each finer cell lies in one coarser cell). Other pairs (e.g. ``box`` and ``dilate:R``)
    are not nested in general.
    """
    if outer == inner or outer.kind == "image" or inner.kind == "mask":
        return True
    if inner == Specificity("dilate", 0):
        return True  # dilate:0 is the mask
    if outer.kind == inner.kind == "dilate":
        return outer.size >= inner.size
    if outer.kind == inner.kind == "grid":
        return inner.size % outer.size == 0
    return False
