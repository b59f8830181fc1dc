"""Saliency criteria on hand-made maps: localization and its baselines, spurious share, SSIM,
the similarity floor, replicate pairs, paired differences and the pass rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score

from spatialspec.audit.saliency_metrics import (
    RULES,
    average_mask,
    localization_auprc,
    paired_difference,
    pairwise_ssim,
    repeatability,
    similarity_floor,
    spurious_attribution_share,
    ssim_maps,
    verdict,
)

S = 32


def _square(n: int, top: int, left: int, side: int) -> np.ndarray:
    """(n, S, S) bool masks, each a ``side``-pixel square at (top, left)."""
    masks = np.zeros((n, S, S), dtype=bool)
    masks[:, top : top + side, left : left + side] = True
    return masks


def _smooth_maps(n: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=(n, S, S))
    return np.stack([ndimage.gaussian_filter(m, 2.0) for m in noise])  # (n, S, S)


# --------------------------------------------------------------------------- localization


def test_localization_auprc_is_one_for_the_mask_and_prevalence_for_a_constant_map() -> None:
    roi = _square(2, 4, 4, 8)  # area 64 / 1024
    labels = np.array([1, 1])
    perfect = localization_auprc(roi.astype(float), roi, labels)
    constant = localization_auprc(np.ones((2, S, S)), roi, labels)
    assert perfect["mean"] == pytest.approx(1.0)
    assert perfect["n"] == 2
    assert constant["mean"] == pytest.approx(64 / 1024)
    assert constant["prevalence"] == constant["chance"] == pytest.approx(64 / 1024)


def test_localization_auprc_per_image_and_ignored_images() -> None:
    roi = np.zeros((4, 2, 2), dtype=bool)
    roi[:, 0, 0] = roi[:, 1, 0] = True  # pixels (row-major) 0 and 2 are the ROI
    maps = np.zeros((4, 2, 2))
    maps[0] = [[0.9, 0.8], [0.7, 0.1]]  # ranks P, N, P, N: AP = 0.5 * 1 + 0.5 * 2 / 3
    maps[1] = [[1.0, 0.0], [1.0, 0.0]]  # perfect
    maps[2] = [[0.0, 1.0], [0.0, 1.0]]  # a negative with a mask: ignored
    roi[3] = False  # a positive without ROI: ignored
    result = localization_auprc(maps, roi, np.array([1, 1, 0, 1]))
    np.testing.assert_allclose(result["per_image"][:2], [5 / 6, 1.0])
    assert np.isnan(result["per_image"][2:]).all()
    assert result["mean"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert result["n"] == 2


def test_localization_auprc_without_counted_images_is_none() -> None:
    result = localization_auprc(np.ones((1, S, S)), _square(1, 0, 0, 4), np.array([0]))
    assert result["mean"] is None and result["prevalence"] is None and result["n"] == 0


def test_average_training_mask_baseline_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    train = np.zeros((5, S, S), dtype=bool)
    for i, (top, left) in enumerate(rng.integers(0, 20, size=(5, 2))):
        train[i, top : top + 10, left : left + 10] = True
    mean_map = average_mask(train)
    np.testing.assert_allclose(mean_map, train.mean(axis=0))
    roi = _square(3, 8, 8, 9)
    result = localization_auprc(mean_map, roi, np.array([1, 1, 0]))
    expected = average_precision_score(roi[0].ravel(), mean_map.ravel())
    np.testing.assert_allclose(result["per_image"][:2], expected)
    assert np.isnan(result["per_image"][2]) and result["mean"] == pytest.approx(expected)


def test_average_mask_needs_masks() -> None:
    with pytest.raises(ValueError, match="N >= 1"):
        average_mask(np.zeros((0, S, S)))


# --------------------------------------------------------------------------- spurious share


def test_spurious_share_all_inside_uniform_and_missing_masks() -> None:
    spur = _square(3, 8, 8, 8)  # 64 px of 1024
    maps = np.stack([spur[0] * 5.0, np.ones((S, S)), np.ones((S, S))])
    result = spurious_attribution_share(maps, spur, np.array([True, True, False]), dilate=0)
    np.testing.assert_allclose(result["per_image"][:2], [1.0, 64 / 1024])
    assert np.isnan(result["per_image"][2])  # no spurious mask: excluded
    assert result["n"] == 2
    assert result["mean"] == pytest.approx((1.0 + 64 / 1024) / 2)
    assert result["uniform"] == pytest.approx(64 / 1024)
    assert result["lift"] == result["ratio"] == pytest.approx(result["mean"] / (64 / 1024))


def test_spurious_share_of_a_uniform_map_has_lift_one() -> None:
    spur = _square(2, 0, 0, 4)
    result = spurious_attribution_share(np.full((2, S, S), 0.3), spur, np.ones(2, bool), dilate=0)
    assert result["mean"] == pytest.approx(16 / 1024)
    assert result["lift"] == pytest.approx(1.0)


def test_spurious_share_dilation_grows_the_region_by_square_steps() -> None:
    spur = np.zeros((1, S, S), dtype=bool)
    spur[0, 16, 16] = True
    maps = np.zeros((1, S, S))
    maps[0, 18, 18] = 1.0  # two pixels away diagonally
    has = np.array([True])
    for dilate, share, area in ((0, 0.0, 1), (1, 0.0, 9), (2, 1.0, 25)):
        result = spurious_attribution_share(maps, spur, has, dilate=dilate)
        assert result["mean"] == pytest.approx(share)
        assert result["uniform"] == pytest.approx(area / S**2)


def test_spurious_share_leaves_out_pixels_next_to_the_roi() -> None:
    spur = np.zeros((1, S, S), dtype=bool)
    spur[0, 10, 4:20] = True  # a horizontal tube
    roi = _square(1, 12, 4, 4)  # two rows below the tube's left end
    maps = roi.astype(float)
    maps[0, 11, 4:8] = 1.0  # the ROI's border: mass on 16 + 4 pixels
    has = np.array([True])
    plain = spurious_attribution_share(maps, spur, has, dilate=2)
    assert plain["mean"] == pytest.approx(8 / 20)  # the border + ROI row 12 (within 2 px)
    excluded = spurious_attribution_share(maps, spur, has, dilate=2, roi_masks=roi)
    assert excluded["mean"] == pytest.approx(0.0)
    region = 20 * 5 - 8 * 3  # the grown tube (rows 8-12, cols 2-21) less the grown ROI's rows 10-12
    assert excluded["uniform"] == pytest.approx(region / S**2)


def test_spurious_share_ignores_all_zero_maps_and_negative_values() -> None:
    spur = _square(2, 0, 0, 4)
    maps = np.zeros((2, S, S))
    maps[1] = -1.0  # negative mass is clipped: an all-zero map has no share
    maps[1, 0, 0] = 2.0
    result = spurious_attribution_share(maps, spur, np.ones(2, bool), dilate=0)
    assert np.isnan(result["per_image"][0])
    assert result["per_image"][1] == pytest.approx(1.0)
    assert result["n"] == 1


# --------------------------------------------------------------------------- SSIM


def test_ssim_of_identical_maps_is_one_and_ignores_scale() -> None:
    maps = _smooth_maps(4)
    np.testing.assert_allclose(ssim_maps(maps, maps), 1.0, atol=1e-5)
    np.testing.assert_allclose(ssim_maps(maps, 3.0 * maps + 1.0), 1.0, atol=1e-5)
    assert repeatability(maps, maps) == pytest.approx(1.0, abs=1e-5)


def test_ssim_of_a_negated_or_shuffled_map_is_much_lower() -> None:
    maps = _smooth_maps(4)
    shuffled = np.random.default_rng(1).permutation(maps.reshape(4, -1), axis=1).reshape(maps.shape)
    assert ssim_maps(maps, -maps).max() < 0.0
    assert ssim_maps(maps, shuffled).max() < 0.3
    assert repeatability(maps, _smooth_maps(4, seed=1)) < 0.3


def test_ssim_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        ssim_maps(np.zeros((2, S, S)), np.zeros((3, S, S)))


def test_similarity_floor_pairs_every_image_with_another() -> None:
    maps = _smooth_maps(2)
    floor = similarity_floor(maps, seed=5)  # two images: the only derangement swaps them
    expected = ssim_maps(maps, maps[::-1])
    np.testing.assert_allclose(floor["per_image"], expected)
    assert floor["mean"] == pytest.approx(expected.mean()) and floor["n"] == 2
    same = similarity_floor(np.repeat(maps[:1], 5, axis=0), seed=0)
    np.testing.assert_allclose(same["per_image"], 1.0, atol=1e-5)  # identical maps: floor 1
    unrelated = similarity_floor(_smooth_maps(12, seed=3), seed=0)
    assert abs(unrelated["mean"]) < 0.2  # independent maps: near 0
    with pytest.raises(ValueError, match="at least 2"):
        similarity_floor(maps[:1])


def test_similarity_floor_is_never_an_image_with_itself() -> None:
    maps = _smooth_maps(7, seed=2)
    for seed in range(20):  # a fixed point would give SSIM 1
        assert similarity_floor(maps, seed=seed)["per_image"].max() < 0.9


def test_pairwise_ssim_within_and_across_groups() -> None:
    a, b, c = _smooth_maps(3, 0), _smooth_maps(3, 1), _smooth_maps(3, 2)
    within = pairwise_ssim([a, b, c])
    pair_means = [ssim_maps(x, y).mean() for x, y in ((a, b), (a, c), (b, c))]
    np.testing.assert_allclose(within["pairs"], pair_means)
    assert within["n_pairs"] == 3 and within["mean"] == pytest.approx(np.mean(pair_means))
    assert within["sd"] == pytest.approx(np.std(pair_means, ddof=1))
    across = pairwise_ssim([a, a], [a])
    assert across["n_pairs"] == 2 and across["sd"] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(across["per_image"], 1.0, atol=1e-5)
    assert pairwise_ssim([a], [b])["sd"] is None
    with pytest.raises(ValueError, match="pair"):
        pairwise_ssim([a])


# --------------------------------------------------------------------------- verdicts


def test_paired_difference_mean_interval_and_nans() -> None:
    values = np.array([0.5, 0.6, np.nan, 0.9, 0.7])
    baseline = np.array([0.1, 0.2, 0.3, np.nan, 0.3])
    result = paired_difference(values, baseline, seed=0)
    assert result["n"] == 3 and result["diff"] == pytest.approx(0.4)
    assert result["ci"] == [pytest.approx(0.4), pytest.approx(0.4)]  # no spread
    noisy = paired_difference(np.arange(10.0), np.zeros(10), seed=0)
    assert noisy["ci"][0] < 4.5 < noisy["ci"][1]
    assert paired_difference(noisy["ci"], noisy["ci"], seed=0)["diff"] == 0.0
    assert paired_difference(np.array([np.nan]), np.array([1.0])) == {
        "diff": None,
        "ci": None,
        "n": 0,
    }
    assert paired_difference(np.array([1.0]), np.array([0.0]))["ci"] is None


@pytest.mark.parametrize(
    ("criterion", "ci", "passed"),
    [
        ("localization", [0.01, 0.2], True),
        ("localization", [-0.01, 0.2], False),
        ("repeatability", [0.05, 0.1], True),
        ("reproducibility", [-0.1, -0.05], False),
        ("randomization", [-0.05, 0.02], True),  # at the floor's level
        ("randomization", [-0.2, -0.1], True),  # below it
        ("randomization", [0.01, 0.1], False),  # above it: the maps survive randomization
    ],
)
def test_pass_rules(criterion: str, ci: list[float], passed: bool) -> None:
    assert verdict(criterion, {"diff": sum(ci) / 2, "ci": ci, "n": 10}) is passed


def test_pass_rules_without_an_interval_and_unknown_criteria() -> None:
    assert verdict("repeatability", {"diff": 0.3, "ci": None, "n": 1}) is None
    assert verdict("localization", None) is None
    with pytest.raises(ValueError, match="localization"):
        verdict("faithfulness", {"ci": [0, 1]})
    assert set(RULES) == {"localization", "randomization", "repeatability", "reproducibility"}
