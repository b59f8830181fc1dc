"""Domino-style slice discovery: where does the model fail, and is that the shortcut?

Domino (Eyuboglu et al., *Domino: Discovering Systematic Errors with Cross-Modal Embeddings*,
ICLR 2022) fits an *error-aware mixture model* to a model's embeddings together with the labels
Y and the predictions Ŷ, so that each mixture component — a *slice* — is coherent both in
embedding space and in the kind of mistake the model makes. Here:

- **Embeddings** are the global-average-pooled deepest encoder features of the shared U-Net
  encoder (the same layer for every method; dense methods may use the pooled last decoder
  features instead, ``features="decoder"``). They are standardised, reduced by PCA to
  ``n_components`` dimensions and whitened (:func:`reduce_embeddings`).
- **Mixture** (:class:`ErrorAwareMixture`): ``n_slices`` components, each a diagonal Gaussian
  over the reduced embeddings times a Bernoulli over Y times a Bernoulli over Ŷ. The Y and Ŷ
  log-likelihood terms are multiplied by ``y_weight`` and ``y_hat_weight`` (Domino's γ and γ̂).
  The default here is 10, not the domino package's 1: with a handful of whitened PCA dimensions,
  each contributing O(1) nats per image, a weight of 10 makes the label and the prediction as
  loud as the embedding, so a slice does not mix correct and wrong predictions. EM is written
  out with numpy/scipy (log-sum-exp E-step, closed-form M-step, ``reg_covar`` added to every
  variance, ``n_init`` seeded restarts, the best objective kept).
- **Ŷ is soft**: the predicted probability enters as a soft Bernoulli target,
  ``ŷ log q_k + (1 - ŷ) log(1 - q_k)``, whose M-step (responsibility-weighted mean of ŷ) is
  exact, so EM never decreases its objective. (Domino's code uses ``log(ŷ q_k + (1-ŷ)(1-q_k))``;
  the two agree for hard predictions.) Errors used for *ranking* are hard: a prediction is
  wrong when ``(score >= threshold) != label``, with the threshold chosen on the val split
  (Youden's J, as in the evaluation report) or given.
- **Ranking**: every image goes to its most responsible component; slices are ranked by their
  *error gap*, error rate in the slice minus the overall error rate (Domino ranks components by
  ``|mean ŷ − mean y|``; that value is reported as ``domino_score``).
- **Scoring against the shortcut**: where the spurious attribute is known, the anti-correlated
  subgroup A (positives without the spurious feature ∪ negatives with it) is what a
  shortcut-reliant model gets wrong. Each slice gets precision ``|slice ∩ A| / |slice|``, recall
  ``|slice ∩ A| / |A|`` (over images with a known attribute), the same for the union of the
  top-k slices, and the AUROC of its responsibility as a detector of A.
- **Domino's evaluation** (:mod:`spatialspec.audit.slice_eval`, key ``subgroup_evaluation``):
  a mixture fitted on val is applied to the audited split, and for each known subgroup (A,
  ``spurious == 1``, ``spurious == 0``) the slice or complement with the highest average
  precision of its membership probability is reported with precision-at-10/25 and the
  precision / recall / F1 of its hard assignment.

Out of scope: Domino *describes* slices in words by matching them to CLIP text embeddings.
There is no cross-modal (text) model offline here, so slices are described by their numbers and
example images only.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spatialspec.audit.base import Audit, AuditResult, fmt, register_audit, write_result
from spatialspec.audit.mixture import DEFAULT_WEIGHT, ErrorAwareMixture
from spatialspec.runinfo import run_metadata

__all__ = [
    "DEFAULT_WEIGHT",
    "ErrorAwareMixture",
    "add_slices_parser",
    "audit_slices",
    "discover_slices",
    "embed",
    "fit_slices",
    "plot_slices",
    "rank_slices",
    "reduce_embeddings",
    "run_slices",
    "slices_markdown",
    "subgroup_overlap",
    "write_slices",
]

#: How many example images of the top slice the figure shows.
N_EXAMPLES = 8
TEXT_NOTE = (
    "Slice descriptions in words (Domino matches slices to CLIP text embeddings) are out of "
    "scope offline: slices are described by their statistics and example images only."
)


# --------------------------------------------------------------------------- embeddings


def _pool(output: Any) -> torch.Tensor:
    """(B, F) global average of a feature map (the deepest one if a list of maps)."""
    fmap = output[-1] if isinstance(output, (list, tuple)) else output
    return fmap.float().mean(dim=(-2, -1))


@torch.inference_mode()
def embed(
    method: torch.nn.Module, images: torch.Tensor, batch_size: int = 64, features: str = "encoder"
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and scores of ``images`` in one forward pass per batch.

    A forward hook on the method's encoder (or decoder) catches the features that
    ``method.score`` computes anyway.

    Args:
        method: A trained :class:`~spatialspec.methods.SpatialMethod` with a ``net``.
        images: (N, C, S, S) network inputs.
        batch_size: Images per forward pass.
        features: ``"encoder"`` (pooled deepest encoder features, every method) or
            ``"decoder"`` (pooled last decoder features, dense methods only).

    Returns:
        (N, D) float embeddings and (N,) image-level probabilities.
    """
    module = _feature_module(method, features)
    caught: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: caught.append(_pool(out)))
    device = next(method.parameters()).device
    method.eval()
    embeddings, scores = [], []
    try:
        for batch in images.split(batch_size):
            caught.clear()
            scores.append(method.score(batch.to(device)).float().cpu())
            if not caught:
                raise RuntimeError(f"method.score never ran the {features}")
            embeddings.append(caught[-1].cpu())
    finally:
        handle.remove()
    return torch.cat(embeddings).double().numpy(), torch.cat(scores).double().numpy()


def _feature_module(method: torch.nn.Module, features: str) -> torch.nn.Module:
    """The sub-module whose output is pooled into embeddings."""
    if features not in ("encoder", "decoder"):
        raise ValueError(f"features must be 'encoder' or 'decoder', got {features!r}")
    module = getattr(method.net, features, None)
    if module is None:
        raise ValueError(f"this method's network has no {features}; use features='encoder'")
    return module


def reduce_embeddings(
    embeddings: np.ndarray, n_components: int = 16, seed: int = 0
) -> tuple[np.ndarray, Any]:
    """Standardise, PCA-reduce and whiten embeddings.

    Args:
        embeddings: (N, D) features.
        n_components: PCA dimensions (capped at ``min(N - 1, D)``).
        seed: PCA's random state (randomised solvers only).

    Returns:
        (N, d) coordinates with unit variance per dimension, and the fitted sklearn pipeline.
    """
    x = np.asarray(embeddings, dtype=float)
    d = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    pipe = make_pipeline(StandardScaler(), PCA(n_components=d, whiten=True, random_state=seed))
    return pipe.fit_transform(x), pipe


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


# --------------------------------------------------------------------------- ranking


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


# --------------------------------------------------------------------------- audit


def audit_slices(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    n_slices: int = 8,
    n_components: int = 16,
    y_weight: float = DEFAULT_WEIGHT,
    y_hat_weight: float = DEFAULT_WEIGHT,
    limit: int | None = None,
    seed: int = 0,
    *,
    threshold: float | str = "val",
    features: str = "encoder",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Discover the slices where a checkpoint fails on ``split``.

    Args:
        checkpoint: A spatialspec checkpoint.
        manifest: Data to audit (default: the run's own manifest).
        split: Split to embed and slice.
        n_slices: Mixture components (every one is a candidate slice).
        n_components: PCA dimensions of the embeddings.
        y_weight: γ, weight of the label term.
        y_hat_weight: γ̂, weight of the prediction term.
        limit: Use a seeded random subset of this many images.
        seed: Subset, PCA and EM seed.
        threshold: ``"val"`` (Youden's J on the val split; 0.5 if val has one class) or a
            number.
        features: ``"encoder"`` or ``"decoder"`` (dense methods), see :func:`embed`.
        batch_size: Images per forward pass.

    Returns:
        :func:`discover_slices`'s dict plus ``metadata``, per-image ``images`` rows,
        ``subgroup_evaluation`` (Domino's evaluation, mixture fitted on val; None without a
        known spurious attribute) and a private ``_examples`` (top slice's images).
    """
    from spatialspec.audit.common import load_audit_set, load_model

    method, config, data = load_model(checkpoint, manifest)
    audit = load_audit_set(data, split, limit, seed)
    embeddings, scores = embed(method, audit.images, batch_size, features)
    val = _val_embeddings(method, data, split, batch_size, features, threshold)
    thr, source = _threshold(threshold, method, data, batch_size, val)
    result = discover_slices(
        embeddings,
        audit.labels,
        scores,
        audit.spurious,
        threshold=thr,
        n_slices=n_slices,
        n_components=n_components,
        y_weight=y_weight,
        y_hat_weight=y_hat_weight,
        seed=seed,
    )
    result["settings"].update(threshold_source=source, features=features, split=split)
    result["settings"]["embedding_dim"] = int(embeddings.shape[1])
    result["metadata"] = run_metadata(
        checkpoint=str(checkpoint),
        method=config.get("method"),
        manifest=str(data.manifest_path),
        split=split,
        limit=limit,
    )
    mixture = {"n_slices": n_slices, "n_components": n_components, "y_weight": y_weight,
               "y_hat_weight": y_hat_weight, "seed": seed}  # fmt: skip
    result["subgroup_evaluation"] = _subgroup_evaluation(
        result, (embeddings, audit.labels, scores), audit.spurious, val, split, thr, mixture
    )
    result["images"] = _image_rows(result, audit.image_ids, audit.labels, scores, audit.spurious)
    result["_examples"] = _examples(result, audit.images, audit.image_ids)
    result["note"] = TEXT_NOTE
    return result


def _val_embeddings(
    method: torch.nn.Module,
    data: Any,
    split: str,
    batch_size: int,
    features: str,
    threshold: float | str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Val embeddings, labels, scores and spurious attribute (one pass for threshold and fit).

    None when neither the threshold nor the val-fitted evaluation needs val, or when val is
    empty and the threshold is given.
    """
    from spatialspec.audit.common import load_audit_set

    if threshold != "val" and split == "val":
        return None
    try:
        val = load_audit_set(data, "val")
    except ValueError:
        if threshold == "val":
            raise
        return None
    emb, scores = embed(method, val.images, batch_size, features)
    return emb, val.labels, scores, val.spurious


def _threshold(
    threshold: float | str,
    method: torch.nn.Module,
    data: Any,
    batch_size: int,
    val: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[float, str]:
    """The decision threshold and where it came from (``val``: precomputed val arrays)."""
    if threshold != "val":
        return float(threshold), "given"
    from spatialspec.evaluation.report import choose_threshold

    if val is None:
        val = _val_embeddings(method, data, "", batch_size, "encoder", threshold)
    _, labels, scores, _ = val
    if len(np.unique(labels)) < 2:
        return 0.5, "fixed 0.5 (val has one class)"
    return choose_threshold(scores, labels), "val (Youden's J)"


def _subgroup_evaluation(
    result: dict[str, Any],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    spurious: np.ndarray,
    val: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
    split: str,
    threshold: float,
    mixture: dict[str, Any],
) -> dict[str, Any] | None:
    """Domino's evaluation (:mod:`spatialspec.audit.slice_eval`) of the split's slices.

    The mixture is refitted on val and applied to ``split`` (Domino's protocol); if that is not
    possible (``split`` is val, or val cannot fill the slices) the slices fitted on ``split``
    itself are evaluated and the protocol says why. Slices are named by their rank (error gap
    on ``split``, as in the main table, but of the mixture that is evaluated).
    """
    from spatialspec.audit.slice_eval import evaluate_subgroups, fit_on_val_apply, known_subgroups

    labels, scores = np.asarray(test[1], int), np.asarray(test[2], float)
    if not np.isfinite(np.asarray(spurious, float)).any():
        return None
    resp, why = None, ""
    if val is None or split == "val":
        why = f"the audited split is val, so the slices were fitted on {split} itself"
    else:
        try:
            resp = fit_on_val_apply(val[:3], test, **mixture)
        except ValueError as err:
            why = f"the val fit failed ({err}); slices fitted on {split} itself"
    if resp is None:
        resp, protocol, fit_split = result["_resp"], why, split
    else:
        protocol, fit_split = f"mixture fitted on val and applied to {split} (Domino's)", "val"
    rows = rank_slices(resp, labels, scores, threshold)
    rank_of = {r["component"]: r["rank"] for r in rows}
    names = [rank_of[k] for k in range(resp.shape[1])]
    return {
        "protocol": protocol,
        "fit_split": fit_split,
        "eval_split": split,
        "slice": "rank by error gap on the evaluated split, of the evaluated mixture",
        "subgroups": evaluate_subgroups(resp, known_subgroups(labels, spurious), names),
    }


def _image_rows(
    result: dict[str, Any],
    ids: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    spurious: np.ndarray,
) -> list[dict[str, Any]]:
    """One row per image: slice rank, its responsibility, the first two PCA coordinates."""
    resp, coords, ranks = result["_resp"], result["_coords"], result["_assign"]
    subgroup, known = anti_correlated(labels, spurious)
    pcs = np.pad(coords[:, :2], ((0, 0), (0, max(0, 2 - coords.shape[1]))))
    return [
        {
            "image_id": ids[i],
            "label": int(labels[i]),
            "spurious": float(spurious[i]) if known[i] else None,
            "score": float(scores[i]),
            "slice": int(ranks[i]),
            "responsibility": float(resp[i].max()),
            "anti_correlated": bool(subgroup[i]) if known[i] else None,
            "pc1": float(pcs[i, 0]),
            "pc2": float(pcs[i, 1]),
        }
        for i in range(len(ids))
    ]


def _examples(result: dict[str, Any], images: torch.Tensor, ids: list[str]) -> dict[str, Any]:
    """Up to :data:`N_EXAMPLES` images of the top slice, most responsible first."""
    top = result["slices"][0]["component"]
    resp = result["_resp"][:, top]
    members = np.flatnonzero(result["_assign"] == 1)
    chosen = members[np.argsort(-resp[members], kind="stable")][:N_EXAMPLES]
    return {
        "index": chosen,
        "images": images[chosen].float().numpy(),
        "image_ids": [ids[i] for i in chosen],
    }


# --------------------------------------------------------------------------- outputs


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def slices_markdown(result: dict[str, Any]) -> str:
    """The slice report as Markdown: settings, ranked slices, the shortcut check."""
    s, o = result["settings"], result["overall"]
    lines = [
        "# Slice discovery (Domino-style error-aware mixture)",
        "",
        f"- {o['n']} images ({o['n_positive']} positive), split `{s.get('split', '?')}`; "
        f"overall error rate {_fmt(o['error_rate'])} at threshold {s['threshold']:.3f} "
        f"({s.get('threshold_source', 'given')})",
        f"- {s['n_slices']} slices over {s['n_components']} whitened PCA dimensions of the "
        f"{s.get('features', 'encoder')} embeddings; γ (label) = {s['y_weight']:g}, "
        f"γ̂ (prediction) = {s['y_hat_weight']:g}; EM {s['em_iterations']} iterations "
        f"({'converged' if s['em_converged'] else 'not converged'}), {s['n_init']} inits",
        "- ranked by error gap (slice error rate − overall error rate); Ŷ enters the mixture as "
        "the soft predicted probability",
        *_subgroup_lines(result),
        "",
        *_slice_table(result),
        "",
        *_evaluation_lines(result),
        TEXT_NOTE,
    ]
    meta = result.get("metadata")
    if meta:
        lines += [
            "",
            f"Checkpoint `{meta.get('checkpoint')}`, git commit "
            f"`{meta.get('git_commit')}`, created {meta.get('created')}.",
        ]
    return "\n".join(lines) + "\n"


def _evaluation_lines(result: dict[str, Any]) -> list[str]:
    from spatialspec.audit.slice_eval import subgroup_evaluation_markdown

    lines = subgroup_evaluation_markdown(result.get("subgroup_evaluation"))
    return [*lines, ""] if lines else []


def _subgroup_lines(result: dict[str, Any]) -> list[str]:
    sub = result.get("subgroup")
    if not sub:
        return ["- spurious attribute unknown: slices are not scored against the shortcut"]
    top, best = result["top_slice"], result["best_slice"] or {}
    return [
        f"- anti-correlated subgroup A ({sub['name']}): {sub['n']} of {sub['n_known']} images "
        "with a known attribute",
        f"- **top slice**: precision {_fmt(top.get('precision'))}, recall "
        f"{_fmt(top.get('recall'))} for A (AUROC of its responsibility "
        f"{_fmt(top.get('auroc'))})",
        f"- best-matching slice (rank {best.get('rank', '–')}, highest F1 — an oracle view): "
        f"precision {_fmt(best.get('precision'))}, recall {_fmt(best.get('recall'))}",
    ]


def _slice_table(result: dict[str, Any]) -> list[str]:
    scored = result.get("subgroup") is not None
    head = "| rank | n | positives | mean score | error rate | error gap |"
    rule = "|---:|---:|---:|---:|---:|---:|"
    if scored:
        head += " precision A | recall A | cum. recall A | AUROC A |"
        rule += "---:|---:|---:|---:|"
    lines = [head, rule]
    for r in result["slices"]:
        cells = [
            str(r["rank"]),
            str(r["n"]),
            str(r["n_positive"]),
            _fmt(r["mean_score"]),
            _fmt(r["error_rate"]),
            _fmt(r["error_gap"]),
        ]
        if scored:
            cells += [
                _fmt(r["subgroup"]["precision"]),
                _fmt(r["subgroup"]["recall"]),
                _fmt(r["cumulative"]["recall"]),
                _fmt(r["auroc"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_slices(result: dict[str, Any], examples: dict[str, Any] | None = None) -> bytes:
    """PNG bytes: PCA scatter coloured by slice (A circled) and the top slice's examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_ex = 0 if examples is None else len(examples["index"])
    fig = plt.figure(figsize=(6.5 + (3.2 if n_ex else 0), 5.0), dpi=110)
    grid = fig.add_gridspec(4, 6 if n_ex else 4)
    _scatter(fig.add_subplot(grid[:, :4]), result)
    for j in range(n_ex):
        ax = fig.add_subplot(grid[j // 2, 4 + j % 2])
        _example(ax, examples["images"][j], result["images"][examples["index"][j]])
    if n_ex:
        fig.text(0.83, 0.98, "top slice, most responsible first", ha="center", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _scatter(ax: Any, result: dict[str, Any]) -> None:
    """PC1/PC2 of the embeddings, one colour per slice rank, A circled in black."""
    import matplotlib

    rows = result.get("images") or []
    if not rows:
        ax.text(0.5, 0.5, "no per-image rows", ha="center", transform=ax.transAxes)
        return
    pc = np.array([[r["pc1"], r["pc2"]] for r in rows])
    rank = np.array([r["slice"] for r in rows])
    cmap = matplotlib.colormaps["tab10"]
    for k in np.unique(rank)[::-1]:  # the top slice drawn last, on top
        sel = rank == k
        ax.scatter(*pc[sel].T, s=7, color=cmap((k - 1) % 10), label=f"slice {k}", alpha=0.7)
    anti = np.array([bool(r["anti_correlated"]) for r in rows])
    if anti.any():
        ax.scatter(
            *pc[anti].T,
            s=26,
            facecolors="none",
            edgecolors="black",
            linewidths=0.6,
            label="anti-correlated (A)",
        )
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    handles, labels = ax.get_legend_handles_labels()
    n = len(np.unique(rank))  # slices were drawn in reverse rank order
    order = [*range(n - 1, -1, -1), *range(n, len(handles))]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=6, loc="best")
    ax.set_title("embeddings by slice (rank 1 = largest error gap)", fontsize=9)


def _example(ax: Any, image: np.ndarray, row: dict[str, Any]) -> None:
    """One example image titled with label, score and spurious attribute."""
    img = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if img.ndim == 3:
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-8)
    ax.imshow(img, cmap="gray")
    spur = "?" if row["spurious"] is None else int(row["spurious"])
    ax.set_title(f"y={row['label']} s={spur} p={row['score']:.2f}", fontsize=6)
    ax.axis("off")


def _json_ready(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_slices(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``slices.json``, ``slices.md`` and ``slices.png`` atomically; returns the paths."""
    return write_result(SlicesAudit(), AuditResult("slices", result), out_dir)


# --------------------------------------------------------------------------- CLI


def _threshold_arg(text: str) -> float | str:
    if text == "val":
        return text
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'val' or a number, got {text!r}") from err


def add_slices_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``slices`` to the ``audit`` subcommands; returns its parser."""
    p = sub.add_parser("slices", help="Domino-style slice discovery: where does the model fail?")
    p.add_argument("--checkpoint", required=True, help="a spatialspec checkpoint")
    p.add_argument("--manifest", help="data to audit (default: the run's manifest)")
    p.add_argument("--split", default="test", help="split to slice (default test)")
    p.add_argument("--n-slices", type=int, default=8, help="mixture components (default 8)")
    p.add_argument("--n-components", type=int, default=16, help="PCA dimensions (default 16)")
    p.add_argument(
        "--y-weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help="γ, weight of the label term (default 10)",
    )
    p.add_argument(
        "--y-hat-weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help="γ̂, weight of the prediction term (default 10)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold_arg,
        default="val",
        help="'val' (Youden's J on val, default) or a number",
    )
    p.add_argument(
        "--features",
        choices=("encoder", "decoder"),
        default="encoder",
        help="pooled encoder (default) or decoder features (dense methods)",
    )
    p.add_argument("--limit", type=int, help="a seeded random subset of this many images")
    p.add_argument("--seed", type=int, default=0, help="subset, PCA and EM seed")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--out", required=True, help="folder for slices.json, slices.md, slices.png")
    return p


def run_slices(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``spatialspec audit slices``: audit, write the files, print the headline."""
    result = audit_slices(
        args.checkpoint,
        args.manifest,
        args.split,
        args.n_slices,
        args.n_components,
        args.y_weight,
        args.y_hat_weight,
        args.limit,
        args.seed,
        threshold=args.threshold,
        features=args.features,
        batch_size=args.batch_size,
    )
    paths = write_slices(result, args.out)
    top = result["top_slice"]
    print(
        f"top slice: n={top['n']} error rate {_fmt(top['error_rate'])} "
        f"(gap {_fmt(top['error_gap'])}); anti-correlated precision {_fmt(top.get('precision'))}"
        f" recall {_fmt(top.get('recall'))} -> " + ", ".join(map(str, paths))
    )
    return result


# --------------------------------------------------------------------------- the audit


@register_audit
class SlicesAudit(Audit):
    """``slices``: Domino-style slice discovery, scored against the anti-correlated subgroup."""

    name = "slices"
    table_order = 1

    compute = staticmethod(audit_slices)

    def headline(self, result: AuditResult) -> dict[str, Any]:
        top = result.data["top_slice"]
        return {
            "top_slice_precision": top.get("precision"),
            "top_slice_recall": top.get("recall"),
            "top_slice_size": top.get("n"),
        }

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        return {"top-slice precision": fmt(headline["top_slice_precision"])}

    def json_ready(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return _json_ready(dict(data))

    def markdown(self, data: Mapping[str, Any]) -> str:
        return slices_markdown(dict(data))

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        return {"slices.png": plot_slices(dict(data), data.get("_examples"))}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        return add_slices_parser(sub)

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return run_slices(args)
