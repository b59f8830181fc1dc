"""Domino's evaluation of discovered slices against known attribute subgroups.

For each known subgroup G (here: the anti-correlated subgroup, ``spurious == 1`` and
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

Protocol (Domino's): the embedding reduction and the mixture are fitted on the val split and
applied to the evaluated split (:func:`fit_on_val_apply`), so the slices are not tuned to the
images they are scored on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from spatialspec.audit.mixture import DEFAULT_WEIGHT, ErrorAwareMixture

__all__ = [
    "KS",
    "evaluate_subgroups",
    "fit_on_val_apply",
    "known_subgroups",
    "precision_at_k",
    "subgroup_evaluation_markdown",
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
    from spatialspec.audit.slices import anti_correlated

    spurious = np.asarray(spurious, float)
    known = np.isfinite(spurious) & (spurious >= 0)
    s = np.where(known, spurious, 0) > 0.5
    return {
        "anti_correlated": anti_correlated(labels, spurious),
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
    from spatialspec.audit.slices import reduce_embeddings

    z_val, pipe = reduce_embeddings(val[0], n_components, seed)
    model = ErrorAwareMixture(
        n_slices, y_weight=y_weight, y_hat_weight=y_hat_weight, seed=seed
    ).fit(z_val, np.asarray(val[1], int), np.asarray(val[2], float))
    z_test = pipe.transform(np.asarray(test[0], float))
    return model.predict_proba(z_test, np.asarray(test[1], int), np.asarray(test[2], float))


_TABLE_KEYS = ("average_precision", "prevalence", "precision_at_10", "precision_at_25",
               "precision", "recall", "f1")  # fmt: skip


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def subgroup_evaluation_markdown(evaluation: dict[str, Any] | None) -> list[str]:
    """Markdown lines: protocol and one table row per subgroup."""
    if not evaluation:
        return []
    lines = [
        "## Against known subgroups (Domino's evaluation)",
        "",
        f"Protocol: {evaluation['protocol']}; slices numbered by their error-gap rank on "
        f"{evaluation['eval_split']} (of the {evaluation['fit_split']}-fitted mixture, so not "
        "necessarily the table above's when the two differ). Per subgroup, the slice or its "
        "complement whose "
        "membership probability has the highest average precision (AP); P@k: share of the k "
        "most-member images in the subgroup; precision / recall / F1 of the hard assignment; "
        "prevalence = AP of a random ranking.",
        "",
        "| subgroup | slice | AP | prevalence | P@10 | P@25 | precision | recall | F1 | n |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in evaluation["subgroups"].items():
        if r is None:
            lines.append(f"| {name} | – (empty) | – | – | – | – | – | – | – | 0 |")
            continue
        which = f"{'not ' if r['complement'] else ''}slice {r['slice']}"
        cells = [name, which] + [_fmt(r[k]) for k in _TABLE_KEYS]
        lines.append("| " + " | ".join(cells) + f" | {r['n_subgroup']} |")
    return lines
