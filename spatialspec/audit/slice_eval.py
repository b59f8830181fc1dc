"""Domino's evaluation of discovered slices against known attribute subgroups.

For each known subgroup G (:func:`known_subgroups`: the anti-correlated subgroup A, its two
cells ``label == 1 & spurious == 0`` and ``label == 0 & spurious == 1``, ``spurious == 1`` and
``spurious == 0``), every slice k and its complement are candidates. A slice's *membership* of
an image is its responsibility ``p_k``; the complement's is ``1 - p_k``. The candidate kept for
G is the one whose membership has the highest average precision (sklearn's
``average_precision_score``) against G; for it we report

- ``average_precision``;
- ``precision_at_10`` / ``precision_at_25``: the share of the 10 / 25 images with the highest
  membership (stable order on ties; all images when fewer) that are in G;
- ``precision`` / ``recall`` / ``f1`` of the hard assignment (argmax responsibility == k; for
  the complement, != k);
- ``n_subgroup`` and ``prevalence`` (the AP of a random ranking), over images where G is known.

A spans both labels while the error-aware mixture (γ = 10) makes every slice hold one label,
so one slice can cover at most one cell of A: a slice that is exactly one cell (half of A)
scores AP = 0.5 + 0.5 × prevalence (0.55 at 10 % prevalence), the ceiling for A. Each cell is
a coherent subgroup, as Domino's planted slices are, with a ceiling of 1.

Protocol (Domino's): the block reduction and the mixture are fitted on the val split and
applied to the evaluated split (:func:`fit_on_val_apply`, :func:`fit_blocks_on_val_apply`), so
the slices are not tuned to the images they are scored on.

:func:`evaluate_modality_sets` runs the evaluation once per modality set (``image``, ``text``,
``metadata`` alone and ``combined``; :mod:`spatialspec.audit.modalities`), ranks each set's
slices by error gap on the evaluated split and describes them
(:mod:`spatialspec.audit.describe`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from spatialspec.audit.mixture import DEFAULT_WEIGHT, ErrorAwareMixture
from spatialspec.audit.modalities import Block, Combined, combine_blocks
from spatialspec.audit.slices_discover import anti_correlated, rank_slices

__all__ = [
    "KS",
    "SplitData",
    "evaluate_modality_sets",
    "evaluate_subgroups",
    "fit_blocks_on_val_apply",
    "fit_on_val_apply",
    "known_subgroups",
    "precision_at_k",
]

#: The k of precision-at-k.
KS = (10, 25)


def precision_at_k(membership: np.ndarray, subgroup: np.ndarray, k: int) -> float | None:
    """Share of the ``k`` highest-membership images (stable on ties) that are in the subgroup."""
    membership, subgroup = np.asarray(membership, float), np.asarray(subgroup, bool)
    if not len(membership):
        return None
    top = np.argsort(-membership, kind="stable")[: min(k, len(membership))]
    return float(subgroup[top].mean())


def known_subgroups(
    labels: np.ndarray, spurious: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Subgroup name → ((N,) membership, (N,) where known), from the spurious attribute."""
    spurious = np.asarray(spurious, float)
    known = np.isfinite(spurious) & (spurious >= 0)
    s = np.where(known, spurious, 0) > 0.5
    y = np.asarray(labels, int) == 1
    return {
        "anti_correlated": anti_correlated(labels, spurious),
        "label == 1 & spurious == 0": (known & y & ~s, known),
        "label == 0 & spurious == 1": (known & ~y & s, known),
        "spurious == 1": (known & s, known),
        "spurious == 0": (known & ~s, known),
    }


def _candidate(
    membership: np.ndarray, hard: np.ndarray, target: np.ndarray
) -> dict[str, float | None]:
    ap = float(average_precision_score(target, membership)) if target.any() else None
    n_hard, n_sub, n_both = int(hard.sum()), int(target.sum()), int((hard & target).sum())
    return {
        "average_precision": ap,
        **{f"precision_at_{k}": precision_at_k(membership, target, k) for k in KS},
        "precision": n_both / n_hard if n_hard else None,
        "recall": n_both / n_sub if n_sub else None,
        "f1": 2 * n_both / (n_hard + n_sub) if n_hard + n_sub else None,
    }


def evaluate_subgroups(
    resp: np.ndarray,
    subgroups: dict[str, tuple[np.ndarray, np.ndarray | None]],
    slice_names: list[Any] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """The best slice or complement (by average precision) per subgroup.

    Args:
        resp: (N, K) slice membership probabilities (responsibilities).
        subgroups: name → ((N,) bool membership, (N,) bool where known, or None: all).
        slice_names: What to call slice k in the output (default: k).

    Returns:
        name → ``{slice, complement, average_precision, precision_at_10, precision_at_25,
        precision, recall, f1, n_subgroup, n_known, prevalence}``; None where the subgroup is
        empty or has no known image. Ties in AP keep the earlier slice, the slice before its
        complement.
    """
    resp = np.asarray(resp, float)
    names = list(range(resp.shape[1])) if slice_names is None else list(slice_names)
    assign = resp.argmax(axis=1)
    out: dict[str, dict[str, Any] | None] = {}
    for name, (member, known) in subgroups.items():
        keep = np.ones(len(resp), bool) if known is None else np.asarray(known, bool)
        target = np.asarray(member, bool)[keep]
        if not target.any():
            out[name] = None
            continue
        best: dict[str, Any] | None = None
        for k in range(resp.shape[1]):
            for complement in (False, True):
                p = resp[keep, k]
                hard = assign[keep] == k
                row = _candidate(1 - p if complement else p, ~hard if complement else hard, target)
                if best is None or row["average_precision"] > best["average_precision"]:
                    best = {"slice": names[k], "complement": complement, **row}
        out[name] = {
            **best,
            "n_subgroup": int(target.sum()),
            "n_known": int(keep.sum()),
            "prevalence": float(target.mean()),
        }
    return out


@dataclass
class SplitData:
    """One split's modality features, labels, predictions and spurious attribute.

    Attributes:
        blocks: Modality -> (N, D) features or a
            :class:`~spatialspec.audit.modalities.MixedBlock`.
        labels: (N,) 0/1 labels.
        scores: (N,) predicted probabilities.
        spurious: (N,) spurious attribute, NaN where unknown (None: unknown everywhere).
    """

    blocks: dict[str, Block]
    labels: np.ndarray
    scores: np.ndarray
    spurious: np.ndarray | None = None

    def select(self, modalities: tuple[str, ...]) -> SplitData:
        """The same split with only ``modalities``' blocks."""
        blocks = {m: self.blocks[m] for m in modalities}
        return SplitData(blocks, self.labels, self.scores, self.spurious)


def fit_blocks_on_val_apply(
    val: SplitData,
    test: SplitData,
    weights: Mapping[str, float] | None = None,
    *,
    n_slices: int = 8,
    n_components: int = 16,
    y_weight: float = DEFAULT_WEIGHT,
    y_hat_weight: float = DEFAULT_WEIGHT,
    seed: int = 0,
) -> tuple[np.ndarray, Combined, ErrorAwareMixture]:
    """Fit the block reduction and the mixture on val; (N_test, K) responsibilities on test.

    Every block of ``val.blocks`` is used, weighted by
    :func:`~spatialspec.audit.modalities.combine_blocks`.

    Raises:
        ValueError: If val cannot fit the mixture (e.g. fewer images than slices).
    """
    test_blocks = {name: test.blocks[name] for name in val.blocks}
    combined = combine_blocks(val.blocks, test_blocks, weights, n_components, seed)
    model = ErrorAwareMixture(
        n_slices,
        y_weight=y_weight,
        y_hat_weight=y_hat_weight,
        seed=seed,
        dim_weights=combined.dim_weights,
        categorical_weights=combined.onehot_weights,
    )
    val_y, val_s = np.asarray(val.labels, int), np.asarray(val.scores, float)
    model.fit(combined.z_fit, val_y, val_s, combined.onehot_fit)
    labels, scores = np.asarray(test.labels, int), np.asarray(test.scores, float)
    resp = model.predict_proba(combined.z_apply, labels, scores, combined.onehot_apply)
    return resp, combined, model


def fit_on_val_apply(
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    n_slices: int = 8,
    n_components: int = 16,
    y_weight: float = DEFAULT_WEIGHT,
    y_hat_weight: float = DEFAULT_WEIGHT,
    seed: int = 0,
) -> np.ndarray:
    """(N_test, K) responsibilities of a mixture fitted on val (embeddings, labels, scores).

    The standardise + PCA + whiten reduction is fitted on val too and only applied to test.

    Raises:
        ValueError: If val cannot fit the mixture (e.g. fewer images than slices).
    """
    resp, _, _ = fit_blocks_on_val_apply(
        SplitData({"image": val[0]}, val[1], val[2]),
        SplitData({"image": test[0]}, test[1], test[2]),
        n_slices=n_slices,
        n_components=n_components,
        y_weight=y_weight,
        y_hat_weight=y_hat_weight,
        seed=seed,
    )
    return resp


#: ``describe(assign, names) -> {str(name): description}`` of the evaluated images.
Describer = Callable[[np.ndarray, list[Any]], dict[str, Any]]


def evaluate_modality_sets(
    val: SplitData | None,
    test: SplitData,
    sets: Mapping[str, tuple[str, ...]],
    *,
    weights: Mapping[str, float] | None = None,
    threshold: float = 0.5,
    mixture: Mapping[str, Any] | None = None,
    describe: Describer | None = None,
    why_not_val: str = "",
) -> dict[str, dict[str, Any]]:
    """Domino's evaluation of each modality set's slices on ``test``.

    Args:
        val: The fit split; None: fit on ``test`` itself (``why_not_val`` says why).
        test: The evaluated split (its ``spurious`` defines the subgroups).
        sets: Set name -> its modalities (keys of the blocks), e.g. ``{"combined": ("image",
            "text", "metadata")}``.
        weights: Modality -> weight (see :func:`~spatialspec.audit.modalities.combine_blocks`).
        threshold: Decision threshold of the error rates that rank the slices.
        mixture: :func:`fit_blocks_on_val_apply` keyword arguments.
        describe: Describes the slices of the test images (None: not described).
        why_not_val: Why ``val`` is None (for the protocol).

    Returns:
        Set name -> ``{modalities, protocol, fit_split, blocks, em, slices, subgroups}``:
        ``slices`` ranked by error gap on ``test`` (each with its ``description``),
        ``subgroups`` as :func:`evaluate_subgroups` with slices named by rank, and a private
        (N, K) ``_resp``. A set whose val fit fails is fitted on ``test``, saying so.
    """
    known = test.spurious is not None and np.isfinite(np.asarray(test.spurious, float)).any()
    groups = known_subgroups(test.labels, test.spurious) if known else {}
    options = dict(mixture or {})
    out = {}
    for name, mods in sets.items():
        out[name] = _evaluate_set(val, test, mods, weights, threshold, options, why_not_val)
        _name_and_describe(out[name], test, groups, describe)
    return out


def _evaluate_set(
    val: SplitData | None,
    test: SplitData,
    modalities: tuple[str, ...],
    weights: Mapping[str, float] | None,
    threshold: float,
    mixture: dict[str, Any],
    why_not_val: str,
) -> dict[str, Any]:
    """Fit one modality set on val (else on test, saying why) and apply it to test."""
    fit, applied = (None if val is None else val.select(modalities)), test.select(modalities)
    fit_split, protocol = "val", "mixture fitted on val and applied to the evaluated split"
    try:
        if fit is None:
            raise ValueError(why_not_val or "no val split")
        resp, combined, model = fit_blocks_on_val_apply(fit, applied, weights, **mixture)
    except ValueError as err:
        fit_split, protocol = "eval", f"fitted on the evaluated split itself: {err}"
        resp, combined, model = fit_blocks_on_val_apply(applied, applied, weights, **mixture)
    return {
        "modalities": list(modalities),
        "protocol": protocol,
        "fit_split": fit_split,
        "blocks": combined.blocks,
        "em": {
            "iterations": model.n_iter_,
            "converged": model.converged_,
            "objective": model.objective_,
        },
        "slices": rank_slices(resp, test.labels, test.scores, threshold),
        "_resp": resp,
    }


def _name_and_describe(
    result: dict[str, Any],
    test: SplitData,
    groups: dict[str, tuple[np.ndarray, np.ndarray]],
    describe: Describer | None,
) -> None:
    """Add the subgroup evaluation (slices named by rank) and the descriptions, in place."""
    resp, rows = result["_resp"], result["slices"]
    rank_of = {r["component"]: r["rank"] for r in rows}
    names = [rank_of[k] for k in range(resp.shape[1])]
    result["subgroups"] = evaluate_subgroups(resp, groups, names) if groups else {}
    if describe is not None:
        texts = describe(resp.argmax(axis=1), names)
        for row in rows:
            row["description"] = texts.get(str(row["rank"]))
