"""Tests for spatialspec.metrics: AUROC, robust AUROC, bootstrap CIs and the torchmetrics metric."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from spatialspec.metrics import (
    RobustAUROC,
    auroc,
    bootstrap_ci,
    paired_bootstrap_diff,
    robust_auroc,
    robust_subgroup_mask,
)
from spatialspec.metrics.robust_auroc import _counted_auroc


def _random_data(n: int, seed: int, *, ties: bool = False, unknown: bool = False):
    """Scores, labels and spurious attribute; scores depend on both label and spurious."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    spurious = np.where(rng.random(n) < 0.8, labels, 1 - labels).astype(float)
    scores = 0.7 * labels + 0.7 * spurious + rng.normal(size=n)
    if ties:
        scores = np.round(scores, 1)
    if unknown:
        spurious[rng.random(n) < 0.1] = np.nan
    return scores, labels, spurious


def _two_normals(n_per_class: int, d: float, seed: int):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(d, 1.0, n_per_class), rng.normal(0.0, 1.0, n_per_class)])
    labels = np.repeat([1, 0], n_per_class)
    return scores, labels


# --------------------------------------------------------------------------- auroc


def test_auroc_hand_computed():
    # Pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3 of 4.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75, abs=1e-15)
    # One tie between a positive and a negative counts one half: (1 + 0.5) / 2.
    assert auroc([0.2, 0.5, 0.5], [0, 0, 1]) == pytest.approx(0.75, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(seed: int, ties: bool):
    scores, labels, _ = _random_data(500, seed, ties=ties)
    if ties:
        assert np.unique(scores).size < 100
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_accepts_lists_arrays_and_tensors():
    scores, labels, _ = _random_data(100, 0)
    expected = roc_auc_score(labels, scores)
    assert auroc(scores.tolist(), labels.tolist()) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
        expected, abs=1e-12
    )
    assert auroc(scores, labels.astype(bool)) == pytest.approx(expected, abs=1e-12)


def test_auroc_single_class():
    with pytest.raises(ValueError, match="AUROC needs both classes: got 3 positives, 0 negatives"):
        auroc([0.1, 0.2, 0.3], [1, 1, 1])
    assert math.isnan(auroc([0.1, 0.2, 0.3], [1, 1, 1], on_single_class="nan"))


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2, 0.3], [0, 1], "same length"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "labels must be 0 or 1; found 2"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "scores must be finite.*index 1"),
        ([0.1, float("inf"), 0.3], [0, 1, 1], "scores must be finite"),
        ([[0.1, 0.2]], [[0, 1]], "must be 1-D"),
        ([], [], "empty"),
    ],
)
def test_auroc_bad_inputs(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        auroc(scores, labels)


# --------------------------------------------------------------------------- robust auroc


def test_robust_subgroup_mask():
    labels = [1, 1, 0, 0, 1, 0, 1, 0]
    spurious = [0, 1, 1, 0, np.nan, np.nan, -1, -1]
    expected = [True, False, True, False, False, False, False, False]
    np.testing.assert_array_equal(robust_subgroup_mask(labels, spurious), expected)


@pytest.mark.parametrize("seed", range(3))
def test_robust_auroc_matches_sklearn_on_subset(seed: int):
    scores, labels, spurious = _random_data(1000, seed, ties=seed == 2)
    subset = ((labels == 1) & (spurious == 0)) | ((labels == 0) & (spurious == 1))
    expected = roc_auc_score(labels[subset], scores[subset])
    assert robust_auroc(scores, labels, spurious) == pytest.approx(expected, abs=1e-12)


def test_robust_auroc_of_shortcut_model_is_zero():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    spurious = np.where(rng.random(2000) < 0.9, labels, 1 - labels)
    scores = spurious + 1e-3 * rng.random(2000)  # ranks images by the spurious feature only
    assert auroc(scores, labels) > 0.85
    assert robust_auroc(scores, labels, spurious) == 0.0


@pytest.mark.parametrize("unknown", [np.nan, -1])
def test_robust_auroc_excludes_unknown_spurious(unknown: float):
    scores, labels, spurious = _random_data(600, 3)
    known = robust_auroc(scores, labels, spurious)
    # Append images with unknown attribute whose scores would flip the result if counted.
    extra_labels = np.array([1] * 50 + [0] * 50)
    extra_scores = np.where(extra_labels == 1, -100.0, 100.0)
    value = robust_auroc(
        np.concatenate([scores, extra_scores]),
        np.concatenate([labels, extra_labels]),
        np.concatenate([spurious, np.full(100, unknown)]),
    )
    assert value == pytest.approx(known, abs=1e-15)


def test_robust_auroc_bad_spurious():
    with pytest.raises(ValueError, match="spurious must be 0, 1 or unknown"):
        robust_auroc([0.1, 0.2], [0, 1], [0, 2])
    with pytest.raises(ValueError, match="same length"):
        robust_auroc([0.1, 0.2], [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="needs both classes: got 0 positives, 1 negatives"):
        robust_auroc([0.1, 0.2], [0, 1], [1, 1])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_deterministic_and_contains_estimate():
    scores, labels, spurious = _random_data(800, 0, unknown=True)
    for metric in ("auroc", "robust_auroc"):
        ci = bootstrap_ci(scores, labels, spurious, metric=metric, seed=7)
        assert ci == bootstrap_ci(scores, labels, spurious, metric=metric, seed=7)
        assert ci != bootstrap_ci(scores, labels, spurious, metric=metric, seed=8)
        point = (
            auroc(scores, labels) if metric == "auroc" else robust_auroc(scores, labels, spurious)
        )
        assert ci[0] < point < ci[1]


def test_bootstrap_ci_width_shrinks_with_n():
    small = bootstrap_ci(*_two_normals(100, 1.0, seed=1))
    large = bootstrap_ci(*_two_normals(2500, 1.0, seed=1))
    width_small, width_large = small[1] - small[0], large[1] - large[0]
    # Width scales as 1/sqrt(n): expect a ratio near sqrt(25) = 5.
    assert 3.5 < width_small / width_large < 7.0


def test_bootstrap_ci_covers_analytic_auroc():
    d = 1.0
    true_auroc = norm.cdf(d / math.sqrt(2.0))  # P(X_pos > X_neg) for N(d, 1) vs N(0, 1)
    # A single interval misses 1 time in 20 by design, so check coverage over 40 large samples.
    covered = []
    for rep in range(40):
        lo, hi = bootstrap_ci(*_two_normals(1000, d, seed=100 + rep), seed=rep)
        assert hi - lo < 0.05
        covered.append(lo < true_auroc < hi)
    assert np.mean(covered) >= 0.85


def test_bootstrap_resample_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)
    labels = rng.integers(0, 2, 300).astype(bool)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    pos_idx = pos[rng.integers(0, pos.size, (5, pos.size))]
    neg_idx = neg[rng.integers(0, neg.size, (5, neg.size))]
    uniques, groups = np.unique(scores, return_inverse=True)
    got = _counted_auroc(groups[pos_idx], groups[neg_idx], uniques.size)
    resample_labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    expected = [
        roc_auc_score(resample_labels, np.r_[scores[pos_idx[r]], scores[neg_idx[r]]])
        for r in range(5)
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_bootstrap_ci_resamples_within_robust_subgroups():
    scores, labels, spurious = _random_data(1000, 4)
    mask = robust_subgroup_mask(labels, spurious)
    expected = bootstrap_ci(scores[mask], labels[mask], seed=3)
    assert bootstrap_ci(scores, labels, spurious, metric="robust_auroc", seed=3) == expected


def test_bootstrap_ci_alpha_and_speed():
    scores, labels = _two_normals(1500, 1.0, seed=2)
    start = time.perf_counter()
    ci95 = bootstrap_ci(scores, labels, n_resamples=1000)
    elapsed = time.perf_counter() - start
    ci80 = bootstrap_ci(scores, labels, n_resamples=1000, alpha=0.2)
    assert ci95[0] < ci80[0] < ci80[1] < ci95[1]
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": [0.1, 0.2, 0.3], "labels": [0, 1]}, "same length"),
        ({"scores": [0.1, 0.2, 0.3], "labels": [0, 1, 2]}, "labels must be 0 or 1"),
        ({"scores": [0.1, np.nan, 0.3], "labels": [0, 1, 1]}, "scores must be finite"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "metric": "robust_auroc"}, "needs the spur"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "metric": "accuracy"}, "metric must be"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "n_resamples": 0}, "n_resamples"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "alpha": 1.5}, "alpha"),
        ({"scores": [0.1, 0.2], "labels": [1, 1]}, "needs both classes"),
    ],
)
def test_bootstrap_ci_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


def test_bootstrap_ci_single_class_nan_option():
    lo, hi = bootstrap_ci([0.1, 0.2], [1, 1], on_single_class="nan")
    assert math.isnan(lo) and math.isnan(hi)


# --------------------------------------------------------------------------- paired bootstrap


@pytest.mark.parametrize("metric", ["auroc", "robust_auroc"])
def test_paired_diff_identical_and_monotone_transformed_models(metric: str):
    scores, labels, spurious = _random_data(500, 5)
    for scores_b in (scores, 3.0 * scores + 2.0):  # AUROC is invariant to increasing maps
        result = paired_bootstrap_diff(scores, scores_b, labels, spurious, metric=metric)
        assert result["diff"] == 0.0
        assert result["ci"] == (0.0, 0.0)


def test_paired_diff_against_perfect_model():
    scores, labels, _ = _random_data(500, 6)
    perfect = scores + 100.0 * labels  # separates the classes: AUROC 1 on every resample
    result = paired_bootstrap_diff(scores, perfect, labels, n_resamples=500, seed=11)
    assert result["metric_b"] == 1.0
    assert result["diff"] == pytest.approx(auroc(scores, labels) - 1.0, abs=1e-12)
    # Same seed and evaluated set -> same resamples as bootstrap_ci, shifted by -1.
    lo, hi = bootstrap_ci(scores, labels, n_resamples=500, seed=11)
    assert result["ci"] == pytest.approx((lo - 1.0, hi - 1.0), abs=1e-12)


def test_paired_diff_reverse_sign_and_length_check():
    scores, labels, spurious = _random_data(400, 7)
    other = scores + np.random.default_rng(0).normal(size=400)
    ab = paired_bootstrap_diff(scores, other, labels, spurious, metric="robust_auroc")
    ba = paired_bootstrap_diff(other, scores, labels, spurious, metric="robust_auroc")
    assert ab["diff"] == pytest.approx(-ba["diff"], abs=1e-15)
    assert ab["ci"] == pytest.approx((-ba["ci"][1], -ba["ci"][0]), abs=1e-12)
    with pytest.raises(ValueError, match="scores_a=400, scores_b=399"):
        paired_bootstrap_diff(scores, other[:-1], labels)


# --------------------------------------------------------------------------- torchmetrics


def test_robust_auroc_metric_matches_functional():
    scores, labels, spurious = _random_data(1000, 8, unknown=True)
    spurious[:20] = -1
    metric = RobustAUROC()
    for chunk in np.array_split(np.arange(1000), [100, 150, 600, 601]):
        metric.update(
            torch.from_numpy(scores[chunk]).float(),
            torch.from_numpy(labels[chunk]),
            torch.from_numpy(spurious[chunk]),
        )
    expected = robust_auroc(scores.astype(np.float32), labels, spurious)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        assert math.isnan(metric.compute().item())


def test_robust_auroc_metric_single_class_is_nan_and_shape_check():
    metric = RobustAUROC()
    metric.update(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert math.isnan(metric.compute().item())
    with pytest.raises(ValueError, match="same number of elements"):
        metric.update(torch.tensor([0.2, 0.9]), torch.tensor([1]), torch.tensor([0, 0]))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, shards: list, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        metric = RobustAUROC()
        scores, labels, spurious = shards[rank]
        for chunk in np.array_split(np.arange(len(scores)), 3):
            metric.update(
                torch.from_numpy(scores[chunk]),
                torch.from_numpy(labels[chunk]),
                torch.from_numpy(spurious[chunk]),
            )
        value = metric.compute().item()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"value": value}))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_robust_auroc_metric_ddp(tmp_path: Path):
    scores, labels, spurious = _random_data(1001, 9, ties=True, unknown=True)
    split = 357  # uneven shards
    shards = [
        (scores[:split], labels[:split], spurious[:split]),
        (scores[split:], labels[split:], spurious[split:]),
    ]
    mp.spawn(_ddp_worker, args=(2, _free_port(), shards, str(tmp_path)), nprocs=2, join=True)
    expected = robust_auroc(scores, labels, spurious)
    for rank in range(2):
        value = json.loads((tmp_path / f"rank{rank}.json").read_text())["value"]
        assert value == pytest.approx(expected, abs=1e-6)


def test_robust_auroc_with_empty_robust_subgroups() -> None:
    """Every image agrees with its attribute, or none is labelled: NaN, or a clear error."""
    scores, labels = np.array([0.9, 0.1, 0.8]), np.array([1, 0, 1])
    for spurious in (np.array([1, 0, 1]), np.full(3, np.nan)):
        assert np.isnan(robust_auroc(scores, labels, spurious, on_single_class="nan"))
        with pytest.raises(ValueError, match="needs both classes: got 0 positives, 0 negatives"):
            robust_auroc(scores, labels, spurious)
