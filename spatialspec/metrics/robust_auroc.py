"""AUROC, robust AUROC and bootstrap confidence intervals.

Robust AUROC (Saab et al., MLHC 2022) is the AUROC on the union of the two subgroups in which a
binary spurious attribute disagrees with the label: positives *without* the spurious feature
(label 1, spurious 0) and negatives *with* it (label 0, spurious 1). A model that ranks images by
the spurious feature alone scores 0 on it. Images whose spurious attribute is unknown (``NaN`` or
``-1``) are excluded.

The numpy functions below are the single implementation; :class:`RobustAUROC` is a thin
:class:`torchmetrics.Metric` front end that gathers predictions (across DDP ranks too) and calls
them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, TypedDict

import numpy as np
import torch
from scipy.stats import rankdata
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor
MetricName = Literal["auroc", "robust_auroc"]
OnSingleClass = Literal["raise", "nan"]

# Bootstrap resamples are ranked in blocks of about this many scores, to bound memory.
_BLOCK_ELEMENTS = 1_000_000


class PairedDiff(TypedDict):
    """Result of :func:`paired_bootstrap_diff`."""

    diff: float
    ci: tuple[float, float]
    metric_a: float
    metric_b: float


# --------------------------------------------------------------------------- input validation


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _bad_values(arr: np.ndarray, ok: np.ndarray) -> str:
    bad = np.unique(arr[~ok])
    shown = ", ".join(repr(v.item()) for v in bad[:5])
    return shown + (", ..." if bad.size > 5 else "")


def _validate_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    arr = _to_numpy(scores, name).astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{name} must be finite: {int((~finite).sum())} non-finite value(s), "
            f"first at index {first} ({arr[first]})"
        )
    return arr


def _validate_labels(labels: ArrayLike) -> np.ndarray:
    arr = _to_numpy(labels, "labels").astype(np.float64)
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        raise ValueError(f"labels must be 0 or 1; found {_bad_values(arr, ok)}")
    return arr == 1


def _validate_spurious(spurious: ArrayLike) -> np.ndarray:
    arr = _to_numpy(spurious, "spurious").astype(np.float64)
    ok = (arr == 0) | (arr == 1) | (arr == -1) | np.isnan(arr)
    if not ok.all():
        raise ValueError(
            f"spurious must be 0, 1 or unknown (NaN or -1); found {_bad_values(arr, ok)}"
        )
    arr[arr == -1] = np.nan
    return arr


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have the same length, got {shown}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("inputs are empty")


def _check_single_class(n_pos: int, n_neg: int, on_single_class: OnSingleClass) -> bool:
    """Return True if both classes are present; else raise or return False per the option."""
    if on_single_class not in ("raise", "nan"):
        raise ValueError(f"on_single_class must be 'raise' or 'nan', got {on_single_class!r}")
    if n_pos > 0 and n_neg > 0:
        return True
    if on_single_class == "raise":
        raise ValueError(f"AUROC needs both classes: got {n_pos} positives, {n_neg} negatives")
    return False


# --------------------------------------------------------------------------- point estimates


def _rank_auroc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUROC along the last axis (average ranks for ties)."""
    n_pos, n_neg = pos_scores.shape[-1], neg_scores.shape[-1]
    ranks = rankdata(np.concatenate([pos_scores, neg_scores], axis=-1), axis=-1)
    u_stat = ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    return u_stat / (n_pos * n_neg)


def robust_subgroup_mask(labels: ArrayLike, spurious: ArrayLike) -> np.ndarray:
    """Select the images on which the spurious attribute disagrees with the label.

    Args:
        labels: Binary labels (0/1).
        spurious: Binary spurious attribute; unknown as ``NaN`` or ``-1`` (never selected).

    Returns:
        Boolean mask of positives without the spurious feature and negatives with it.
    """
    y = _validate_labels(labels)
    s = _validate_spurious(spurious)
    _check_lengths(labels=y, spurious=s)
    return (y & (s == 0)) | (~y & (s == 1))


def auroc(
    scores: ArrayLike, labels: ArrayLike, *, on_single_class: OnSingleClass = "raise"
) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic.

    Equals :func:`sklearn.metrics.roc_auc_score`, ties included (they count one half).

    Args:
        scores: Model scores; higher means more likely positive. Must be finite.
        labels: Binary labels (0/1).
        on_single_class: ``"raise"`` (ValueError) or ``"nan"`` when only one class is present.

    Returns:
        AUROC in [0, 1], or NaN for a single class with ``on_single_class="nan"``.
    """
    x = _validate_scores(scores)
    y = _validate_labels(labels)
    _check_lengths(scores=x, labels=y)
    if not _check_single_class(int(y.sum()), int((~y).sum()), on_single_class):
        return float("nan")
    return float(_rank_auroc(x[y], x[~y]))


def robust_auroc(
    scores: ArrayLike,
    labels: ArrayLike,
    spurious: ArrayLike,
    *,
    on_single_class: OnSingleClass = "raise",
) -> float:
    """AUROC on the robust subgroups (see :func:`robust_subgroup_mask`).

    Args:
        scores: Model scores; higher means more likely positive. Must be finite.
        labels: Binary labels (0/1).
        spurious: Binary spurious attribute; unknown as ``NaN`` or ``-1`` (excluded).
        on_single_class: ``"raise"`` or ``"nan"`` when the subgroups hold only one class.

    Returns:
        Robust AUROC in [0, 1], or NaN (see ``on_single_class``).
    """
    x = _validate_scores(scores)
    y = _validate_labels(labels)
    _check_lengths(scores=x, labels=y)
    mask = robust_subgroup_mask(y, spurious)
    if not _check_single_class(int((y & mask).sum()), int((~y & mask).sum()), on_single_class):
        return float("nan")  # includes empty robust subgroups (e.g. no spurious labels)
    return auroc(x[mask], y[mask])


# --------------------------------------------------------------------------- bootstrap


def _evaluated_set(
    score_sets: Sequence[ArrayLike],
    labels: ArrayLike,
    spurious: ArrayLike | None,
    metric: MetricName,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Validate inputs and restrict them to the set on which ``metric`` is computed."""
    names = _score_names(score_sets)
    xs = [_validate_scores(s, name) for s, name in zip(score_sets, names, strict=True)]
    y = _validate_labels(labels)
    _check_lengths(**dict(zip(names, xs, strict=True)), labels=y)
    if metric == "auroc":
        return xs, y
    if metric != "robust_auroc":
        raise ValueError(f"metric must be 'auroc' or 'robust_auroc', got {metric!r}")
    if spurious is None:
        raise ValueError("metric='robust_auroc' needs the spurious attribute")
    mask = robust_subgroup_mask(y, spurious)
    return [x[mask] for x in xs], y[mask]


def _score_names(score_sets: Sequence[ArrayLike]) -> list[str]:
    if len(score_sets) == 1:
        return ["scores"]
    return [f"scores_{chr(ord('a') + i)}" for i in range(len(score_sets))]


def _check_bootstrap_args(n_resamples: int, alpha: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _stratified_blocks(
    labels: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield blocks of resample indices ``(pos_idx, neg_idx)``, each of shape ``(rows, n_class)``.

    Positives and negatives are resampled separately with replacement, so every resample keeps
    the class counts of the original set.
    """
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    rows_per_block = max(1, _BLOCK_ELEMENTS // labels.size)
    for start in range(0, n_resamples, rows_per_block):
        rows = min(rows_per_block, n_resamples - start)
        yield (
            pos[rng.integers(0, pos.size, size=(rows, pos.size))],
            neg[rng.integers(0, neg.size, size=(rows, neg.size))],
        )


def _counted_auroc(pos_groups: np.ndarray, neg_groups: np.ndarray, n_groups: int) -> np.ndarray:
    """AUROC of each resample (row) given the tie-group ids of its scores.

    Tie groups are the dense ranks of the scores, so counting how many resampled negatives fall
    below (and into) each group replaces sorting every resample; ties count one half.
    """
    rows, n_pos = pos_groups.shape
    n_neg = neg_groups.shape[1]
    offsets = np.arange(rows)[:, None] * n_groups

    def counts(groups: np.ndarray) -> np.ndarray:
        flat = np.bincount((groups + offsets).ravel(), minlength=rows * n_groups)
        return flat.reshape(rows, n_groups)

    pos_counts, neg_counts = counts(pos_groups), counts(neg_groups)
    # 2 * (negatives strictly below + half the negatives tied), kept in integers.
    twice_wins = (pos_counts * (2 * np.cumsum(neg_counts, axis=1) - neg_counts)).sum(axis=1)
    return twice_wins / (2.0 * n_pos * n_neg)


def _bootstrap_aurocs(
    score_sets: list[np.ndarray], labels: np.ndarray, n_resamples: int, seed: int
) -> np.ndarray:
    """AUROC of each score set on the same stratified resamples; shape ``(n_sets, n_resamples)``."""
    rng = np.random.default_rng(seed)
    tie_groups = [np.unique(x, return_inverse=True) for x in score_sets]
    stats = np.empty((len(score_sets), n_resamples))
    start = 0
    for pos_idx, neg_idx in _stratified_blocks(labels, n_resamples, rng):
        stop = start + pos_idx.shape[0]
        for k, (uniques, groups) in enumerate(tie_groups):
            stats[k, start:stop] = _counted_auroc(groups[pos_idx], groups[neg_idx], uniques.size)
        start = stop
    return stats


def _percentile_ci(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(
    scores: ArrayLike,
    labels: ArrayLike,
    spurious: ArrayLike | None = None,
    *,
    metric: MetricName = "auroc",
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    on_single_class: OnSingleClass = "raise",
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for AUROC or robust AUROC.

    Images of the evaluated set (all images, or the robust subgroups for ``"robust_auroc"``) are
    resampled with replacement within each class, so every resample holds both classes.

    Args:
        scores: Model scores. Must be finite.
        labels: Binary labels (0/1).
        spurious: Binary spurious attribute (unknown as ``NaN``/``-1``); needed for robust AUROC.
        metric: ``"auroc"`` or ``"robust_auroc"``.
        n_resamples: Number of bootstrap resamples.
        alpha: The interval has coverage ``1 - alpha``.
        seed: Seed for :func:`numpy.random.default_rng`; equal seeds give equal intervals.
        on_single_class: ``"raise"`` or ``"nan"`` (returns ``(nan, nan)``) when the evaluated
            set holds only one class.

    Returns:
        ``(lower, upper)`` bounds.
    """
    _check_bootstrap_args(n_resamples, alpha)
    (x,), y = _evaluated_set([scores], labels, spurious, metric)
    if not _check_single_class(int(y.sum()), int((~y).sum()), on_single_class):
        return float("nan"), float("nan")
    stats = _bootstrap_aurocs([x], y, int(n_resamples), seed)[0]
    return _percentile_ci(stats, alpha)


def paired_bootstrap_diff(
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    labels: ArrayLike,
    spurious: ArrayLike | None = None,
    *,
    metric: MetricName = "auroc",
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairedDiff:
    """Paired bootstrap of the difference ``metric(a) - metric(b)`` between two models.

    Both models are scored on the same resamples (the ones :func:`bootstrap_ci` draws for the
    same seed and evaluated set), so the interval reflects the paired design.

    Args:
        scores_a: Scores of model A. Must be finite.
        scores_b: Scores of model B on the same images.
        labels: Binary labels (0/1).
        spurious: Binary spurious attribute (unknown as ``NaN``/``-1``); needed for robust AUROC.
        metric: ``"auroc"`` or ``"robust_auroc"``.
        n_resamples: Number of bootstrap resamples.
        alpha: The interval has coverage ``1 - alpha``.
        seed: Seed for :func:`numpy.random.default_rng`.

    Returns:
        ``diff`` (point estimate of A minus B), ``ci`` (percentile interval of the difference),
        and the point estimates ``metric_a`` and ``metric_b``.
    """
    _check_bootstrap_args(n_resamples, alpha)
    (xa, xb), y = _evaluated_set([scores_a, scores_b], labels, spurious, metric)
    _check_single_class(int(y.sum()), int((~y).sum()), "raise")
    metric_a, metric_b = float(_rank_auroc(xa[y], xa[~y])), float(_rank_auroc(xb[y], xb[~y]))
    stats = _bootstrap_aurocs([xa, xb], y, int(n_resamples), seed)
    return PairedDiff(
        diff=metric_a - metric_b,
        ci=_percentile_ci(stats[0] - stats[1], alpha),
        metric_a=metric_a,
        metric_b=metric_b,
    )


# --------------------------------------------------------------------------- torchmetrics


class RobustAUROC(Metric):
    """Robust AUROC as a :class:`torchmetrics.Metric` (works under DDP).

    Stores all predictions, labels and spurious attributes (concatenated across processes) and
    computes :func:`robust_auroc` on them. Returns NaN, not an error, when the robust subgroups
    hold a single class (small validation sets) or nothing was seen.

    Example:
        >>> metric = RobustAUROC()
        >>> metric.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]), torch.tensor([0, 1]))
        >>> float(metric.compute())
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    preds: list[torch.Tensor] | torch.Tensor
    target: list[torch.Tensor] | torch.Tensor
    spurious: list[torch.Tensor] | torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("preds", "target", "spurious"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, spurious: torch.Tensor) -> None:
        """Add a batch; all inputs are flattened and must have the same number of elements.

        Args:
            preds: Scores (probabilities or logits).
            target: Binary labels (0/1).
            spurious: Binary spurious attribute; unknown as ``NaN`` or ``-1``.
        """
        preds, target, spurious = (
            torch.as_tensor(t).detach().flatten() for t in (preds, target, spurious)
        )
        if not preds.numel() == target.numel() == spurious.numel():
            raise ValueError(
                "preds, target and spurious must have the same number of elements, got "
                f"{preds.numel()}, {target.numel()}, {spurious.numel()}"
            )
        if not preds.is_floating_point() or preds.dtype in (torch.float16, torch.bfloat16):
            preds = preds.float()
        self.preds.append(preds)
        self.target.append(target.float())
        self.spurious.append(spurious.float())

    def compute(self) -> torch.Tensor:
        """Robust AUROC over everything seen (NaN if undefined)."""
        if isinstance(self.preds, list) and not self.preds:
            value = float("nan")
        else:
            value = robust_auroc(
                dim_zero_cat(self.preds),
                dim_zero_cat(self.target),
                dim_zero_cat(self.spurious),
                on_single_class="nan",
            )
        return torch.tensor(value, dtype=torch.float32, device=self.device)
