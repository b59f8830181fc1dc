"""Seed-aware intervals: a two-level bootstrap over training runs and test images.

A method trained with several seeds is a *distribution* of models. Its AUROC on a test set varies
with the training seed and with the test images, and an interval over test images alone (what a
paired image bootstrap of one checkpoint per method gives) ignores the first source. Here each
bootstrap resample draws

1. the test images, with replacement within each class (stratified), one draw shared by every
   run of every method compared (paired), and
2. the training runs of each method, with replacement,

and the statistic is the mean over the drawn runs of the metric on the drawn images. With few
runs the resampled runs under-state the spread between seeds (a bootstrap of ``n`` values has
variance ``(n − 1) / n`` of the unbiased estimate), so each run's deviation from the method's
mean is scaled by ``sqrt(n / (n − 1))`` before the runs are drawn (the residual rescaling of
Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, §3.3). Intervals are
percentile intervals of the resampled statistic, clipped to the metric's range.

Checked against simulations with a known answer (``tests/test_seed_bootstrap.py``): scores =
label × (effect + per-seed random effect u, sd τ) + image difficulty + run noise (sd 0.7 each),
200 images, 500 comparisons per setting. Coverage of the 95 % interval, two-level vs. image-only
(the paired bootstrap on the seed-mean scores) vs. today's one run per method:

=====  ============  =============  ============  ============
seeds  τ = 0         τ = 0.15       τ = 0.3       τ = 0.5
=====  ============  =============  ============  ============
3      1.00 / 0.94   0.97 / 0.76    0.94 / 0.52   0.90 / 0.33
5      1.00 / 0.94   0.98 / 0.77    0.95 / 0.53   0.94 / 0.34
=====  ============  =============  ============  ============

(one run: 0.95, 0.73, 0.49, 0.30 with 3 seeds). Without a seed effect the two-level interval is
conservative (run noise is counted by both levels); when seed variance dominates, 3 seeds
under-cover slightly (a percentile interval cannot widen to Student's t with 4 df).

With one run per method there is no seed level and the interval is the paired image bootstrap of
:func:`spatialspec.metrics.paired_bootstrap_diff` (the same resamples for the same seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from spatialspec.metrics.robust_auroc import (
    ArrayLike,
    MetricName,
    _bootstrap_aurocs,
    _check_bootstrap_args,
    _evaluated_set,
    _percentile_ci,
    _rank_auroc,
)

__all__ = ["METRIC_NAMES", "seed_bootstrap_diff", "seed_bootstrap_mean", "seed_pairs"]

#: The metrics these intervals are computed for, in display order, with their display names.
METRIC_NAMES: dict[str, str] = {"robust_auroc": "robust AUROC", "auroc": "AUROC"}

# Seed-level resamples are drawn from a stream independent of the image resamples.
_RUN_STREAM = 0x5EED


def _as_runs(runs: Sequence[ArrayLike] | np.ndarray, name: str) -> list[ArrayLike]:
    if isinstance(runs, np.ndarray) and runs.ndim == 1:
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise ValueError(f"{name}: need at least one run's scores")
    return runs


def _run_metrics(
    groups: list[list[ArrayLike]],
    labels: ArrayLike,
    spurious: ArrayLike | None,
    metric: MetricName,
    n_resamples: int,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per group: each run's metric (``(n_runs,)``) and its value on every image resample."""
    flat = [x for runs in groups for x in runs]
    xs, y = _evaluated_set(flat, labels, spurious, metric)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not (n_pos and n_neg):
        raise ValueError(
            f"the {metric} set holds one class only ({n_pos} positive, {n_neg} negative images)"
        )
    points = np.array([_rank_auroc(x[y], x[~y]) for x in xs])
    boots = _bootstrap_aurocs(xs, y, n_resamples, seed)  # (n_runs_total, n_resamples)
    cuts = np.cumsum([0] + [len(g) for g in groups])
    return (
        [points[a:b] for a, b in pairwise(cuts)],
        [boots[a:b] for a, b in pairwise(cuts)],
    )


def _resampled_means(boot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean over resampled runs of each image resample's metric; ``boot`` is (runs, resamples)."""
    n_runs, n_resamples = boot.shape
    if n_runs == 1:
        return boot[0]
    centre = boot.mean(axis=0)  # (n_resamples,)
    scaled = centre + np.sqrt(n_runs / (n_runs - 1)) * (boot - centre)
    picks = rng.integers(0, n_runs, size=(n_resamples, n_runs))
    return scaled.T[np.arange(n_resamples)[:, None], picks].mean(axis=1)


def _clip(ci: tuple[float, float], low: float) -> tuple[float, float]:
    """Keep an interval within the metric's range ([0, 1]; [-1, 1] for a difference): the
    scaled run deviations can step past it."""
    return max(low, ci[0]), min(1.0, ci[1])


def seed_pairs(
    seeds_a: Sequence[Any] | None, seeds_b: Sequence[Any] | None, n_a: int, n_b: int
) -> tuple[list[tuple[int, int]], str]:
    """Which runs of A and B to pair for per-seed differences.

    Runs are matched by seed when both methods were run with the same set of distinct seeds;
    otherwise every run of A is paired with every run of B.

    Returns:
        ``(pairs of run indices, "matched" | "all pairs")``.
    """
    if (
        seeds_a is not None
        and seeds_b is not None
        and None not in seeds_a
        and None not in seeds_b
        and len(set(seeds_a)) == n_a
        and set(seeds_a) == set(seeds_b)
        and len(set(seeds_b)) == n_b
    ):
        where_b = {s: k for k, s in enumerate(seeds_b)}
        return [(k, where_b[s]) for k, s in enumerate(seeds_a)], "matched"
    return [(i, j) for i in range(n_a) for j in range(n_b)], "all pairs"


def seed_bootstrap_diff(
    runs_a: Sequence[ArrayLike] | np.ndarray,
    runs_b: Sequence[ArrayLike] | np.ndarray,
    labels: ArrayLike,
    spurious: ArrayLike | None = None,
    *,
    metric: MetricName = "auroc",
    seeds_a: Sequence[Any] | None = None,
    seeds_b: Sequence[Any] | None = None,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Two-level bootstrap of ``mean metric(A runs) − mean metric(B runs)`` on shared images.

    Args:
        runs_a: One score array per training run of method A, all on the same images.
        runs_b: The same for method B (same images, same order).
        labels: Binary labels (0/1) of the images.
        spurious: Binary spurious attribute (unknown as NaN/-1); needed for robust AUROC.
        metric: ``"auroc"`` or ``"robust_auroc"``.
        seeds_a: Training seeds of A's runs (for matching per-seed differences), optional.
        seeds_b: Training seeds of B's runs.
        n_resamples: Bootstrap resamples.
        alpha: The interval has coverage ``1 − alpha``.
        seed: Bootstrap seed.

    Returns:
        ``metric_a`` / ``metric_b`` (means over runs), ``diff`` (their difference), ``ci``,
        ``excludes_zero``, ``n_runs_a``, ``n_runs_b``, ``runs_a`` / ``runs_b`` (each run's
        value), ``per_seed_diffs`` with ``seed_pairing``, ``a_wins`` (pairs with A > B) out of
        ``n_seed_pairs``, and ``seed_level`` (False when both methods have a single run: the
        interval is then over images only).
    """
    _check_bootstrap_args(n_resamples, alpha)
    groups = [_as_runs(runs_a, "runs_a"), _as_runs(runs_b, "runs_b")]
    (pa, pb), (ba, bb) = _run_metrics(groups, labels, spurious, metric, n_resamples, seed)
    rng = np.random.default_rng([seed, _RUN_STREAM])
    stats = _resampled_means(ba, rng) - _resampled_means(bb, rng)
    lo, hi = _clip(_percentile_ci(stats, alpha), -1.0)
    pairs, pairing = seed_pairs(seeds_a, seeds_b, pa.size, pb.size)
    per_seed = [float(pa[i] - pb[j]) for i, j in pairs]
    return {
        "metric_a": float(pa.mean()),
        "metric_b": float(pb.mean()),
        "diff": float(pa.mean() - pb.mean()),
        "ci": [lo, hi],
        "excludes_zero": bool(lo > 0 or hi < 0),
        "n_runs_a": int(pa.size),
        "n_runs_b": int(pb.size),
        "runs_a": pa.tolist(),
        "runs_b": pb.tolist(),
        "per_seed_diffs": per_seed,
        "seed_pairing": pairing,
        "a_wins": int(sum(d > 0 for d in per_seed)),
        "n_seed_pairs": len(per_seed),
        "seed_level": bool(pa.size > 1 or pb.size > 1),
    }


def seed_bootstrap_mean(
    runs: Sequence[ArrayLike] | np.ndarray,
    labels: ArrayLike,
    spurious: ArrayLike | None = None,
    *,
    metric: MetricName = "auroc",
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean metric over one method's training runs, with its two-level bootstrap interval.

    Returns:
        ``mean``, ``ci``, ``runs`` (each run's value), ``sd`` (between runs, ``ddof=1``; None
        for one run) and ``n_runs``.
    """
    _check_bootstrap_args(n_resamples, alpha)
    (points,), (boot,) = _run_metrics(
        [_as_runs(runs, "runs")], labels, spurious, metric, n_resamples, seed
    )
    stats = _resampled_means(boot, np.random.default_rng([seed, _RUN_STREAM]))
    lo, hi = _clip(_percentile_ci(stats, alpha), 0.0)
    return {
        "mean": float(points.mean()),
        "ci": [lo, hi],
        "runs": points.tolist(),
        "sd": float(points.std(ddof=1)) if points.size > 1 else None,
        "n_runs": int(points.size),
    }
