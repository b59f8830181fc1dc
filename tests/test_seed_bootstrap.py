"""Two-level (seeds × images) bootstrap: exact cases and coverage against a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from spatialspec.metrics import auroc, paired_bootstrap_diff, robust_auroc
from spatialspec.metrics.seeds import seed_bootstrap_diff, seed_bootstrap_mean, seed_pairs


def _runs(rng, y, effect, n_seeds, tau, difficulty, noise=0.7):
    return [y * (effect + rng.normal(0, tau)) + difficulty + rng.normal(0, noise, y.size)
            for _ in range(n_seeds)]  # fmt: skip


def test_one_run_each_is_the_paired_image_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 2, 300)
    a, b = y + rng.normal(0, 1, 300), 0.5 * y + s + rng.normal(0, 1, 300)
    for metric in ("auroc", "robust_auroc"):
        res = seed_bootstrap_diff([a], [b], y, s, metric=metric, n_resamples=500, seed=3)
        ref = paired_bootstrap_diff(a, b, y, s, metric=metric, n_resamples=500, seed=3)
        assert res["diff"] == pytest.approx(ref["diff"])
        assert res["ci"] == pytest.approx(list(ref["ci"]))
        assert res["seed_level"] is False and res["n_runs_a"] == res["n_runs_b"] == 1


def test_means_per_seed_diffs_and_wins_are_hand_checkable():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    runs_a = [y * e + rng.normal(0, 1, 200) for e in (2.0, 1.0, 1.5)]
    runs_b = [y * e + rng.normal(0, 1, 200) for e in (1.2, 1.4, 0.2)]
    res = seed_bootstrap_diff(runs_a, runs_b, y, seeds_a=[0, 1, 2], seeds_b=[2, 0, 1],
                              n_resamples=300)  # fmt: skip
    va = [auroc(x, y) for x in runs_a]
    vb = [auroc(x, y) for x in runs_b]
    assert res["metric_a"] == pytest.approx(np.mean(va))
    assert res["diff"] == pytest.approx(np.mean(va) - np.mean(vb))
    # matched by seed: A's seed 0 (index 0) with B's seed 0 (index 1), etc.
    expected = [va[0] - vb[1], va[1] - vb[2], va[2] - vb[0]]
    assert res["seed_pairing"] == "matched"
    assert res["per_seed_diffs"] == pytest.approx(expected)
    assert res["a_wins"] == sum(d > 0 for d in expected)
    assert res["n_runs_a"] == res["n_runs_b"] == 3
    lo, hi = res["ci"]
    assert lo <= res["diff"] <= hi


def test_unmatched_seeds_pair_every_run():
    pairs, how = seed_pairs([0, 1], [5], 2, 1)
    assert how == "all pairs" and pairs == [(0, 0), (1, 0)]
    assert seed_pairs(None, None, 2, 2)[1] == "all pairs"
    assert seed_pairs([0, 0], [0, 1], 2, 2)[1] == "all pairs"  # duplicated seed


def test_mean_interval_and_robust_subset():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    s = np.where(rng.random(400) < 0.8, y, 1 - y).astype(float)
    s[:10] = np.nan
    runs = [y + e * np.nan_to_num(s) + rng.normal(0, 1, 400) for e in (0.5, 1.0, 2.0)]
    res = seed_bootstrap_mean(runs, y, s, metric="robust_auroc", n_resamples=400)
    values = [robust_auroc(x, y, s) for x in runs]
    assert res["runs"] == pytest.approx(values)
    assert res["mean"] == pytest.approx(np.mean(values))
    assert res["sd"] == pytest.approx(np.std(values, ddof=1))
    assert res["ci"][0] < res["mean"] < res["ci"][1]


def test_one_class_is_a_clear_error():
    y = np.ones(20, int)
    with pytest.raises(ValueError, match="one class"):
        seed_bootstrap_mean([np.arange(20.0)], y)


def _coverage(n_sims, n_seeds, tau, seed=123):
    """Share of simulated comparisons whose 95 % interval covers the true difference.

    scores = label × (effect_m + u_seed) + d_image + e_run,image with u ~ N(0, tau),
    d, e ~ N(0, 0.7): the expected AUROC over seeds is Phi(effect / sqrt(s² + tau²)),
    s² = 2 (0.7² + 0.7²), so the true difference is known in closed form.
    """
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], 100)
    s2 = 2 * (0.7**2 + 0.7**2)
    true = norm.cdf(1.0 / np.sqrt(s2 + tau**2)) - norm.cdf(0.8 / np.sqrt(s2 + tau**2))
    hits = {"two_level": 0, "images_only": 0, "one_run": 0}
    for k in range(n_sims):
        d = rng.normal(0, 0.7, y.size)
        a, b = _runs(rng, y, 1.0, n_seeds, tau, d), _runs(rng, y, 0.8, n_seeds, tau, d)
        lo, hi = seed_bootstrap_diff(a, b, y, n_resamples=400, seed=k)["ci"]
        hits["two_level"] += lo <= true <= hi
        lo, hi = paired_bootstrap_diff(np.mean(a, 0), np.mean(b, 0), y, n_resamples=400,
                                       seed=k)["ci"]  # fmt: skip
        hits["images_only"] += lo <= true <= hi
        lo, hi = paired_bootstrap_diff(a[0], b[0], y, n_resamples=400, seed=k)["ci"]
        hits["one_run"] += lo <= true <= hi
    return {name: n / n_sims for name, n in hits.items()}


def test_two_level_interval_covers_a_known_difference():
    """Over 200 simulated 3-seed comparisons the two-level interval covers 90–99 % of the time
    while image-only intervals (today's compare, on one run or the seed-mean scores) do not."""
    cov = _coverage(n_sims=200, n_seeds=3, tau=0.3)
    assert 0.90 <= cov["two_level"] <= 0.99, cov
    assert cov["images_only"] < 0.85, cov
    assert cov["one_run"] < 0.85, cov
