"""Fill control of the masking audit: is a conclusion an artifact of the fill?

A filled region is itself a new image feature: a flat grey patch, speckle, a black hole or a
smooth inpainting each look different to a network. The fill control scores the same masking
conditions under several fills (default ``zero``, ``mean``, ``noise``, ``blur``; see
:mod:`spatialspec.data.roi`) and draws, per condition and fill, four *conclusions*:

- ``auroc_vs_original`` / ``robust_auroc_vs_original``: the metric's point estimate under the
  condition lies ``below`` the original (unmasked) images' 95 % CI, ``within`` it, or
  ``above`` it (does removing the region hurt, or help?);
- ``auroc_vs_chance`` / ``robust_auroc_vs_chance``: the metric's own 95 % CI lies ``above``
  0.5 (lower bound > 0.5: the model still separates the classes), ``below`` it (upper bound
  < 0.5: it ranks them the wrong way, e.g. by the shortcut) or covers ``chance``.

A conclusion *changes with the fill* when two fills of one condition reach different verdicts
(undefined metrics, e.g. an empty robust subgroup, take no part); such a condition is flagged,
and its conclusion is then an artifact of the fill rather than of what was removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from spatialspec.audit.masking_conditions import Masking, MaskingScorer, Scored, metrics_of

__all__ = [
    "CONCLUSIONS",
    "DEFAULT_FILLS",
    "conclusions",
    "disagreements",
    "fill_control",
    "verdict_vs_chance",
    "verdict_vs_original",
]

#: Fills compared by default.
DEFAULT_FILLS = ("zero", "mean", "noise", "blur")
#: Conclusion -> (metric, kind); kind ``original`` (vs the unmasked CI) or ``chance`` (vs 0.5).
CONCLUSIONS = {
    "robust_auroc_vs_original": ("robust_auroc", "original"),
    "robust_auroc_vs_chance": ("robust_auroc", "chance"),
    "auroc_vs_original": ("auroc", "original"),
    "auroc_vs_chance": ("auroc", "chance"),
}
_CELL_KEYS = ("auroc", "auroc_ci", "robust_auroc", "robust_auroc_ci", "n", "n_altered", "score_std")


def verdict_vs_original(value: float | None, original_ci: Sequence[float | None]) -> str | None:
    """``below`` / ``within`` / ``above`` the original's CI; None where either is undefined."""
    low, high = original_ci
    if value is None or low is None or high is None:
        return None
    return "below" if value < low else "above" if value > high else "within"


def verdict_vs_chance(ci: Sequence[float | None]) -> str | None:
    """``above`` (lower bound > 0.5), ``below`` (upper < 0.5) or ``chance``; None if undefined."""
    low, high = ci
    if low is None or high is None:
        return None
    return "above" if low > 0.5 else "below" if high < 0.5 else "chance"


def conclusions(original: Mapping[str, Any], cell: Mapping[str, Any]) -> dict[str, str | None]:
    """The verdicts of :data:`CONCLUSIONS` for one condition under one fill.

    Args:
        original: Metrics of the unmasked images (``auroc``, ``auroc_ci``, ``robust_auroc``,
            ``robust_auroc_ci``).
        cell: The same metrics under the condition and fill.
    """
    out = {}
    for name, (metric, kind) in CONCLUSIONS.items():
        if kind == "original":
            out[name] = verdict_vs_original(cell[metric], original[f"{metric}_ci"])
        else:
            out[name] = verdict_vs_chance(cell[f"{metric}_ci"])
    return out


def disagreements(
    per_fill: Mapping[str, Mapping[str, str | None]],
) -> dict[str, dict[str, str]]:
    """Conclusions on which the fills disagree: conclusion -> {fill: verdict}.

    Args:
        per_fill: Fill -> :func:`conclusions` of one condition.

    Returns:
        Only the conclusions with at least two distinct defined verdicts (empty: the fills
        agree on everything).
    """
    out = {}
    for name in CONCLUSIONS:
        verdicts = {f: c.get(name) for f, c in per_fill.items() if c.get(name) is not None}
        if len(set(verdicts.values())) > 1:
            out[name] = verdicts
    return out


def fill_control(
    scorer: MaskingScorer,
    conditions: Sequence[str],
    fills: Sequence[str],
    base: Masking,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Score ``conditions`` under each fill; conclusions per cell and the flagged conditions.

    Args:
        scorer: Scores the audit images under a masking (cached: the audit's own fill is free).
        conditions: Masking conditions (``original`` is the reference, not a row).
        fills: Fills to compare.
        base: ROI shape, spurious dilation and noise seed of the maskings.
        n_resamples: Bootstrap resamples of each cell's CIs.
        seed: Bootstrap seed.

    Returns:
        ``fills``, ``conditions``, ``original`` (the reference metrics), ``table``
        (condition -> fill -> metrics), ``conclusions`` (condition -> fill -> verdicts),
        ``changes`` (condition -> :func:`disagreements`), ``flagged`` (conditions whose
        conclusions change with the fill) and ``definition`` (what a conclusion is).
    """
    audit = scorer.mset.audit
    original = _cell(metrics_of(scorer(base.but(condition="original")), audit, n_resamples, seed))
    rows = [c for c in conditions if c != "original"]
    table: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    for condition in rows:
        scored = {f: scorer(base.but(condition=condition, fill=f)) for f in fills}
        table[condition] = {
            f: _cell(metrics_of(s, audit, n_resamples, seed)) for f, s in scored.items()
        }
        reference = _cell(metrics_of(_on(scorer, scored, fills), audit, n_resamples, seed))
        verdicts[condition] = {f: conclusions(reference, m) for f, m in table[condition].items()}
    changes = {c: disagreements(v) for c, v in verdicts.items()}
    return {
        "fills": list(fills),
        "conditions": rows,
        "original": original,
        "table": table,
        "conclusions": verdicts,
        "changes": changes,
        "flagged": [c for c, d in changes.items() if d],
        "definition": _DEFINITION,
    }


def _on(scorer: MaskingScorer, scored: Mapping[str, Scored], fills: Sequence[str]) -> Scored:
    """The original scores on the images a condition scores (its unknown areas left out)."""
    original = scorer(Masking("original"))
    known = scored[fills[0]].known
    return Scored(original.scores, original.altered, known, original.visible)


def _cell(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in _CELL_KEYS}


_DEFINITION = (
    "Per condition and fill: robust AUROC and AUROC each lie below / within / above the "
    "original images' 95 % CI (vs original), and their own 95 % CI lies above 0.5 / covers "
    "0.5 / lies below 0.5 (vs chance). A condition is flagged when two fills reach different "
    "verdicts on one of these four conclusions."
)
