"""Annotation budgets: which training images keep their masks (or boxes).

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
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Budget", "apply_mask_budget", "parse_budget", "resolve_budget"]

#: A parsed budget: None (all), an int count, or a float fraction in [0, 1].
Budget = int | float | None

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_budget(value: Any) -> Budget:
    """``"all"``/None -> None; ``"25"``/25 -> 25; ``"0.1"``/``"10%"``/0.1 -> 0.1.

    Raises:
        ValueError: For negative numbers, fractions above 1, non-integer counts above 1, or text
            that is none of the above.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "none", "")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"mask budget must be a count, a fraction or 'all', got {value!r}")
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            return _fraction(float(match.group(1)) / 100, value)
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ValueError(
                f"mask budget must be a count (300), a fraction (0.1 or 10%) or 'all', "
                f"got {value!r}"
            ) from None
    if isinstance(value, float) and value.is_integer() and value > 1:
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"mask budget must be >= 0, got {value}")
        return value
    return _fraction(float(value), value)


def _fraction(value: float, shown: Any) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"a fractional mask budget must be in [0, 1], got {shown!r}")
    return value


def resolve_budget(budget: Budget, n_positives: int) -> int:
    """Number of positives that keep their masks.

    Raises:
        ValueError: If a count exceeds ``n_positives``.
    """
    if budget is None:
        return n_positives
    if isinstance(budget, float):
        return round(budget * n_positives)
    if budget > n_positives:
        raise ValueError(
            f"mask budget {budget} exceeds the {n_positives} annotated training positives; "
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


def _first(index: pd.Index, frame: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.Index:
    """The first ``k`` of a seeded permutation, ordered by image id so row order is irrelevant."""
    ordered = index[np.argsort(frame.loc[index, "image_id"].to_numpy(str), kind="stable")]
    return ordered[rng.permutation(len(ordered))[:k]]
