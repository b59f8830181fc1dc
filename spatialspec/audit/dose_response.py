"""Dose-response of the masking audit: AUROC as the removed area is eroded or dilated.

Mask of truth (Sourget et al.) traces how a model's AUROC changes as the masked region grows or
shrinks. Here the area of a ``*_removed`` condition (the pathology ROI, or the anatomy) is
eroded (negative doses) or dilated (positive doses) by a number of pixels at the network's
input size (:func:`spatialspec.data.roi.grow_mask`, square neighbourhood), filled, and the
model scored: one point per dose with its AUROC and robust AUROC (bootstrap CIs) and the
*visible fraction*, the mean fraction of unfilled pixels over the scored images (images the
area leaves untouched, e.g. negatives without a ROI, count with 1).

A curve that falls to chance only once the mask spills well beyond the pathology says the
model reads the pathology's surroundings; one that stays high with the anatomy removed says the
signal lies outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spatialspec.audit.masking_conditions import Masking, MaskingScorer, Scored, metrics_of

__all__ = ["DEFAULT_DOSES", "DOSE_CONDITIONS", "curve_headline", "dose_response", "parse_doses"]

#: Area -> the condition whose area is eroded / dilated.
DOSE_CONDITIONS = {"roi": "roi_removed", "anatomy": "anatomy_removed"}
#: Default doses (pixels; negative: erosion).
DEFAULT_DOSES = (-8, -4, 0, 4, 8, 16)
_POINT_KEYS = (
    "auroc",
    "auroc_ci",
    "robust_auroc",
    "robust_auroc_ci",
    "n",
    "n_robust",
    "n_altered",
    "n_unknown",
)


def parse_doses(text: str) -> list[int]:
    """``START:STOP:STEP`` (STOP included) or a comma list of pixels -> sorted unique doses.

    ``''`` gives no dose (the curve is skipped).

    Raises:
        ValueError: A value that is not an integer, or a step that is not positive.
    """
    text = text.strip()
    if not text:
        return []
    try:
        if ":" in text:
            start, stop, step = (int(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError(f"the step must be positive, got {step}")
            values = range(start, stop + 1, step)
        else:
            values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(
            f"--dose-range expects START:STOP:STEP or a comma list of integers (pixels), "
            f"got {text!r}: {err}"
        ) from None
    return sorted(set(values))


def dose_response(
    scorer: MaskingScorer,
    area: str,
    doses: Sequence[int],
    base: Masking,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The curve of one area: a point per dose.

    Args:
        scorer: Scores the audit images under a masking (cached: dose 0 is the condition).
        area: ``roi`` or ``anatomy`` (:data:`DOSE_CONDITIONS`).
        doses: Pixels of erosion (< 0) or dilation (> 0).
        base: Fill, ROI shape, spurious dilation and noise seed of the maskings.
        n_resamples: Bootstrap resamples of each point's CIs.
        seed: Bootstrap seed.

    Returns:
        ``area``, ``condition``, ``fill``, ``points`` (per dose: ``dilation_px``,
        ``visible_fraction``, ``auroc``/``_ci``, ``robust_auroc``/``_ci``, ``n``,
        ``n_robust``, ``n_altered``, ``n_unknown``), and ``original`` (visible fraction 1 and
        the unmasked AUROCs, on the same images).
    """
    if area not in DOSE_CONDITIONS:
        raise ValueError(
            f"unknown dose-response area {area!r}; valid: {', '.join(DOSE_CONDITIONS)}"
        )
    condition = DOSE_CONDITIONS[area]
    points = []
    for dose in sorted(set(int(d) for d in doses)):
        scored = scorer(base.but(condition=condition, grow=dose))
        metrics = metrics_of(scored, scorer.mset.audit, n_resamples, seed)
        points.append(
            {
                "dilation_px": dose,
                "visible_fraction": scored.visible_fraction,
                **{k: metrics[k] for k in _POINT_KEYS},
            }
        )
    known = scorer(base.but(condition=condition)).known
    original = scorer(base.but(condition="original"))
    on_known = Scored(original.scores, original.altered, known, original.visible)
    reference = metrics_of(on_known, scorer.mset.audit, n_resamples, seed)
    return {
        "area": area,
        "condition": condition,
        "fill": base.fill,
        "points": points,
        "original": {"visible_fraction": 1.0, **{k: reference[k] for k in _POINT_KEYS}},
    }


def curve_headline(curve: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``[{dilation_px, visible_fraction, auroc, robust_auroc}, ...]`` of a curve (summary)."""
    if not curve:
        return []
    keys = ("dilation_px", "visible_fraction", "auroc", "robust_auroc")
    return [{k: p[k] for k in keys} for p in curve["points"]]
