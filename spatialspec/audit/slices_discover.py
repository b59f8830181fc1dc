"""Fit, rank and score slices from arrays (no model needed): the core of the slices audit.

- **Mixture** (:class:`~spatialspec.audit.mixture.ErrorAwareMixture`): ``n_slices``
  components over reduced embeddings (:func:`~spatialspec.audit.embeddings.reduce_embeddings`)
  × label × soft prediction, γ = γ̂ = 10 by default.
- **Ranking**: every image goes to its most responsible component; slices are ranked by their
  *error gap*, error rate in the slice minus the overall error rate (Domino ranks components by
  ``|mean ŷ − mean y|``; that value is reported as ``domino_score``). Errors are hard: a
  prediction is wrong when ``(score >= threshold) != label``.
- **Scoring against the shortcut**: where the spurious attribute is known, the anti-correlated
  subgroup A (positives without the spurious feature ∪ negatives with it) is what a
  shortcut-reliant model gets wrong. Each slice gets precision ``|slice ∩ A| / |slice|``, recall
  ``|slice ∩ A| / |A|`` (over images with a known attribute), the same for the union of the
  top-k slices, and the AUROC of its responsibility as a detector of A.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from spatialspec.audit.embeddings import reduce_embeddings
from spatialspec.audit.mixture import DEFAULT_WEIGHT, ErrorAwareMixture

__all__ = [
    "anti_correlated",
    "discover_slices",
    "fit_slices",
    "rank_slices",
    "subgroup_overlap",
]


def fit_slices(
    embeddings: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_slices: int = 8,
    n_components: int = 16,
    y_weight: float = DEFAULT_WEIGHT,
    y_hat_weight: float = DEFAULT_WEIGHT,
    seed: int = 0,
    **mixture_args: Any,
) -> tuple[ErrorAwareMixture, np.ndarray, np.ndarray]:
    """Reduce embeddings and fit the error-aware mixture.

    Returns:
        The fitted mixture, the (N, d) reduced coordinates and the (N, K) responsibilities.
    """
    z, _ = reduce_embeddings(embeddings, n_components, seed)
    model = ErrorAwareMixture(
        n_slices, y_weight=y_weight, y_hat_weight=y_hat_weight, seed=seed, **mixture_args
    ).fit(z, labels, scores)
    return model, z, model.predict_proba(z, labels, scores)


def subgroup_overlap(
    members: np.ndarray, subgroup: np.ndarray, known: np.ndarray | None = None
) -> dict[str, Any]:
    """Precision and recall of a slice against a subgroup, over images where it is known.

    Args:
        members: (N,) bool, in the slice.
        subgroup: (N,) bool, in the subgroup (e.g. the anti-correlated one).
        known: (N,) bool, subgroup membership known (default: all).

    Returns:
        ``n_slice`` and ``n_subgroup`` (known images), ``n_overlap``, ``precision`` and
        ``recall`` (None when undefined), ``f1``.
    """
    known = np.ones(len(members), bool) if known is None else np.asarray(known, bool)
    m, s = np.asarray(members, bool) & known, np.asarray(subgroup, bool) & known
    n_slice, n_sub, n_both = int(m.sum()), int(s.sum()), int((m & s).sum())
    precision = n_both / n_slice if n_slice else None
    recall = n_both / n_sub if n_sub else None
    f1 = 2 * n_both / (n_slice + n_sub) if n_slice + n_sub else None
    return {
        "n_slice": n_slice,
        "n_subgroup": n_sub,
        "n_overlap": n_both,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _slice_row(
    k: int, members: np.ndarray, labels: np.ndarray, scores: np.ndarray, wrong: np.ndarray
) -> dict[str, Any]:
    """Size, label mix and errors of one slice (statistics None when it is empty)."""
    n = int(members.sum())
    row: dict[str, Any] = {"component": k, "n": n, "fraction": n / len(members)}
    if not n:
        return {
            **row,
            "n_positive": 0,
            "positive_rate": None,
            "mean_score": None,
            "error_rate": None,
            "soft_error": None,
        }
    return {
        **row,
        "n_positive": int(labels[members].sum()),
        "positive_rate": float(labels[members].mean()),
        "mean_score": float(scores[members].mean()),
        "error_rate": float(wrong[members].mean()),
        "soft_error": float(np.abs(labels[members] - scores[members]).mean()),
    }


def rank_slices(
    resp: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float = 0.5,
    subgroup: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Slices (hard assignment: argmax responsibility) ranked by error gap, largest first.

    Args:
        resp: (N, K) responsibilities.
        labels: (N,) 0/1 labels.
        scores: (N,) predicted probabilities.
        threshold: A prediction is positive where ``score >= threshold``.
        subgroup: (N,) bool subgroup to score slices against (e.g. anti-correlated), or None.
        known: (N,) bool, where subgroup membership is known.

    Returns:
        One dict per component, with ``rank`` (1 = largest error gap; empty slices last),
        ``error_gap``, and with a subgroup: precision/recall/F1 of the slice and of the union of
        the slices up to it (``cumulative``), and the ``auroc`` of its responsibility.
    """
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    wrong = (scores >= threshold).astype(int) != labels
    assign = resp.argmax(axis=1)
    overall = float(wrong.mean())
    rows = [_slice_row(k, assign == k, labels, scores, wrong) for k in range(resp.shape[1])]
    for row in rows:
        row["error_gap"] = None if row["n"] == 0 else row["error_rate"] - overall
    rows.sort(key=lambda r: (r["error_gap"] is None, -(r["error_gap"] or 0.0), -r["n"]))
    union = np.zeros(len(labels), bool)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        if subgroup is not None:
            members = assign == row["component"]
            union |= members
            row["subgroup"] = subgroup_overlap(members, subgroup, known)
            row["cumulative"] = subgroup_overlap(union, subgroup, known)
            row["auroc"] = _detector_auroc(resp[:, row["component"]], subgroup, known)
    return rows


def _detector_auroc(
    resp: np.ndarray, subgroup: np.ndarray, known: np.ndarray | None
) -> float | None:
    """AUROC of a responsibility column as a detector of the subgroup (None: one class)."""
    keep = np.ones(len(resp), bool) if known is None else np.asarray(known, bool)
    target = np.asarray(subgroup, bool)[keep]
    if target.all() or not target.any():
        return None
    return float(roc_auc_score(target, resp[keep]))


def anti_correlated(labels: np.ndarray, spurious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) anti-correlated subgroup (positives without ∪ negatives with) and where known."""
    spurious = np.asarray(spurious, float)
    known = np.isfinite(spurious) & (spurious >= 0)
    s = np.where(known, spurious, 0) > 0.5
    y = np.asarray(labels, int) == 1
    return known & ((y & ~s) | (~y & s)), known


def discover_slices(
    embeddings: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    spurious: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    n_slices: int = 8,
    n_components: int = 16,
    y_weight: float = DEFAULT_WEIGHT,
    y_hat_weight: float = DEFAULT_WEIGHT,
    seed: int = 0,
    **mixture_args: Any,
) -> dict[str, Any]:
    """Fit, rank and score slices from arrays (no model needed).

    Args:
        embeddings: (N, D) features.
        labels: (N,) 0/1 labels.
        scores: (N,) predicted probabilities (the soft Ŷ).
        spurious: (N,) spurious attribute, NaN where unknown; None: not scored.
        threshold: Decision threshold for the error rates.
        n_slices, n_components, y_weight, y_hat_weight, seed: See :class:`ErrorAwareMixture`
            and :func:`reduce_embeddings`.
        **mixture_args: More :class:`ErrorAwareMixture` arguments.

    Returns:
        JSON-ready dict: ``settings``, ``overall``, ranked ``slices``, ``top_slice``,
        ``best_slice`` (highest F1 against the anti-correlated subgroup — an oracle view), and
        private ``_assign`` / ``_resp`` / ``_coords`` arrays (dropped from JSON).
    """
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    model, z, resp = fit_slices(
        embeddings,
        labels,
        scores,
        n_slices=n_slices,
        n_components=n_components,
        y_weight=y_weight,
        y_hat_weight=y_hat_weight,
        seed=seed,
        **mixture_args,
    )
    subgroup, known = (None, None) if spurious is None else anti_correlated(labels, spurious)
    rows = rank_slices(resp, labels, scores, threshold, subgroup, known)
    for row in rows:
        k = row["component"]
        row["domino_score"] = float(abs(model.y_hat_probs_[k] - model.y_probs_[k]))
    wrong = (scores >= threshold).astype(int) != labels
    result = {
        "settings": _settings(model, z, threshold, n_components),
        "overall": {
            "n": len(labels),
            "n_positive": int(labels.sum()),
            "error_rate": float(wrong.mean()),
            "soft_error": float(np.abs(labels - scores).mean()),
        },
        "subgroup": _subgroup_info(subgroup, known),
        "slices": rows,
        "top_slice": _slice_brief(rows[0]),
        "best_slice": _best(rows) if subgroup is not None else None,
    }
    rank_of = {r["component"]: r["rank"] for r in rows}
    result["_assign"] = np.array([rank_of[k] for k in resp.argmax(axis=1)])
    result["_resp"], result["_coords"] = resp, z
    return result


def _settings(model: ErrorAwareMixture, z: np.ndarray, threshold: float, asked: int) -> dict:
    return {
        "n_slices": model.n_slices,
        "n_components": int(z.shape[1]),
        "n_components_requested": asked,
        "y_weight": model.y_weight,
        "y_hat_weight": model.y_hat_weight,
        "reg_covar": model.reg_covar,
        "n_init": model.n_init,
        "init": model.init,
        "seed": model.seed,
        "threshold": float(threshold),
        "em_iterations": model.n_iter_,
        "em_converged": model.converged_,
        "objective": model.objective_,
        "y_hat": "soft (predicted probability as a Bernoulli target)",
        "assignment": "hard (argmax responsibility)",
        "ranking": "error gap: slice error rate at the threshold minus the overall error rate",
    }


def _subgroup_info(subgroup: np.ndarray | None, known: np.ndarray | None) -> dict | None:
    if subgroup is None:
        return None
    return {
        "name": "positives without the spurious feature + negatives with it",
        "n": int(subgroup.sum()),
        "n_known": int(known.sum()),
    }


def _slice_brief(row: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one slice."""
    keys = ("rank", "component", "n", "error_rate", "error_gap", "positive_rate", "auroc")
    brief = {k: row.get(k) for k in keys}
    if "subgroup" in row:
        brief.update({k: row["subgroup"][k] for k in ("precision", "recall", "f1")})
    return brief


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The slice with the highest F1 against the subgroup."""
    scored = [r for r in rows if r["subgroup"]["f1"] is not None]
    return _slice_brief(max(scored, key=lambda r: r["subgroup"]["f1"])) if scored else None
