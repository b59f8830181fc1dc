"""Annotation budgets: which training images keep their masks (or boxes), and which rows keep
their spurious-attribute label.

A budget is the number of training **positives** whose pixel annotation is kept — the masks a
user pays for. It is given as a count (``300``), a fraction of the annotated training positives
(``0.1`` or ``"10%"``) or ``"all"``. Selection is seeded, and nested: for one seed, the images
kept at budget 10 are among those kept at budget 25.

Negatives: a negative's known-empty mask is also pixel supervision, so negatives keep theirs in
the same proportion as positives (a budget of 10 % of positives keeps 10 % of the negatives'
empty masks, drawn the same way). Budget 0 therefore leaves no pixel supervision at all: a dense
method then learns only from the image-level loss on its pooled score — image-label training on
the same network. Images that lose their annotation keep their image label
(``mask_available = 0``). Val and test rows are never changed.

**Attribute budgets** (:func:`apply_attribute_budget`) are the same idea for the methods that
train on the spurious attribute instead of masks (``groupdro`` on train, ``dfr`` on val): the
budget counts the rows of that one split whose ``spurious`` label is kept, any label, as a count,
a fraction of the split's rows with a known attribute, or ``"all"``. The other rows of the split
become unknown (``spurious`` = NaN, as if never annotated). Seeded and nested in the same way,
from a random stream of its own (a mask and an attribute budget with one seed draw
independently). Other splits are never changed.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "Budget",
    "apply_attribute_budget",
    "apply_mask_budget",
    "parse_budget",
    "resolve_budget",
]

#: A parsed budget: None (all), an int count, or a float fraction in [0, 1].
Budget = int | float | None

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
#: Second entropy word of the attribute budget's random stream (the mask budget's is the seed).
_ATTRIBUTE_STREAM = 1


def parse_budget(value: Any, what: str = "mask budget") -> Budget:
    """``"all"``/None -> None; ``"25"``/25 -> 25; ``"0.1"``/``"10%"``/0.1 -> 0.1.

    Args:
        value: The budget as given.
        what: Its name in error messages (``"mask budget"``, ``"attribute budget"``).

    Raises:
        ValueError: For negative numbers, fractions above 1, non-integer counts above 1, or text
            that is none of the above.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "none", "")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a count, a fraction or 'all', got {value!r}")
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            return _fraction(float(match.group(1)) / 100, value, what)
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ValueError(
                f"{what} must be a count (300), a fraction (0.1 or 10%) or 'all', got {value!r}"
            ) from None
    if isinstance(value, float) and value.is_integer() and value > 1:
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must be >= 0, got {value}")
        return value
    return _fraction(float(value), value, what)


def _fraction(value: float, shown: Any, what: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"a fractional {what} must be in [0, 1], got {shown!r}")
    return value


def resolve_budget(
    budget: Budget,
    n_positives: int,
    what: str = "mask budget",
    pool: str = "annotated training positives",
) -> int:
    """Number of positives that keep their masks (of ``pool`` items that keep theirs).

    Args:
        budget: A parsed budget.
        n_positives: Size of the pool the budget draws from.
        what: The budget's name in error messages.
        pool: What the pool holds, in error messages.

    Raises:
        ValueError: If a count exceeds ``n_positives``.
    """
    if budget is None:
        return n_positives
    if isinstance(budget, float):
        return round(budget * n_positives)
    if budget > n_positives:
        raise ValueError(
            f"{what} {budget} exceeds the {n_positives} {pool}; "
            "use a smaller count, a fraction, or 'all'"
        )
    return budget


def apply_mask_budget(
    frame: pd.DataFrame, budget: Any, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep the pixel annotation of ``budget`` training positives (and as many negatives pro rata).

    Args:
        frame: Manifest rows (``split``, ``label``, ``mask_available``, ``image_id``).
        budget: Anything :func:`parse_budget` accepts.
        seed: Selection seed (the same seed gives nested selections across budgets).

    Returns:
        ``(frame copy with mask_available updated, info)``; info has ``budget`` (as given),
        ``n_masks`` (positives that keep masks), ``n_positives`` (annotated train positives),
        ``n_negative_masks`` and ``n_negatives``.
    """
    parsed = parse_budget(budget)
    out = frame.copy()
    train = out["split"] == "train"
    annotated = train & (out["mask_available"] == 1)
    pos = out.index[annotated & (out["label"] == 1)]
    neg = out.index[annotated & (out["label"] == 0)]
    k = resolve_budget(parsed, len(pos))
    k_neg = len(neg) if parsed is None else round(len(neg) * k / len(pos)) if len(pos) else 0
    rng = np.random.default_rng(seed)
    keep = set(_first(pos, out, k, rng)) | set(_first(neg, out, k_neg, rng))
    dropped = annotated & ~out.index.isin(list(keep))
    out.loc[dropped, "mask_available"] = 0
    info = {
        "budget": "all" if parsed is None else budget,
        "n_masks": k,
        "n_positives": len(pos),
        "n_negative_masks": k_neg,
        "n_negatives": len(neg),
    }
    return out, info


def apply_attribute_budget(
    frame: pd.DataFrame, budget: Any, split: str, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep the spurious attribute of ``budget`` rows of ``split``; the others become unknown.

    Args:
        frame: Manifest rows (``split``, ``spurious`` (NaN where unknown), ``image_id``).
        budget: Anything :func:`parse_budget` accepts: a count of rows, a fraction of the
            split's rows with a known attribute, or ``"all"``.
        split: The split whose attributes a method trains on (``train`` or ``val``).
        seed: Selection seed (the same seed gives nested selections across budgets).

    Returns:
        ``(frame copy with spurious set to NaN on the dropped rows, info)``; info has
        ``budget`` (as given), ``split``, ``n_attributes`` (rows that keep theirs),
        ``n_known`` (rows of the split with a known attribute before the budget) and ``n_rows``
        (rows of the split).

    Raises:
        ValueError: A bad budget, or a count above the split's known attributes.
    """
    what = "attribute budget"
    parsed = parse_budget(budget, what)
    out = frame.copy()
    rows = out["split"] == split
    known = out.index[rows & out["spurious"].notna()]
    k = resolve_budget(parsed, len(known), what, f"{split} rows with a known spurious attribute")
    rng = np.random.default_rng([seed, _ATTRIBUTE_STREAM])
    kept = _first(known, out, k, rng)
    out.loc[known.difference(kept), "spurious"] = np.nan
    info = {
        "budget": "all" if parsed is None else budget,
        "split": split,
        "n_attributes": k,
        "n_known": len(known),
        "n_rows": int(rows.sum()),
    }
    return out, info


def _first(index: pd.Index, frame: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.Index:
    """The first ``k`` of a seeded permutation, ordered by image id so row order is irrelevant."""
    ordered = index[np.argsort(frame.loc[index, "image_id"].to_numpy(str), kind="stable")]
    return ordered[rng.permutation(len(ordered))[:k]]
