"""Tests for spatialspec.models.pooling.pool_scores."""

from __future__ import annotations

import re

import pytest
import torch

from spatialspec.models import POOLINGS, pool_scores


@pytest.fixture
def maps() -> torch.Tensor:
    """Two 2x3 probability maps with known max / mean / top-k."""
    first = [[0.1, 0.9, 0.2], [0.4, 0.0, 0.6]]  # sorted: .9 .6 .4 .2 .1 0
    second = [[0.5, 0.5, 0.5], [0.5, 0.5, 1.0]]  # sorted: 1 .5 .5 .5 .5 .5
    return torch.tensor([first, second]).unsqueeze(1)  # (2, 1, 2, 3)


def test_max(maps: torch.Tensor) -> None:
    torch.testing.assert_close(pool_scores(maps, "max"), torch.tensor([0.9, 1.0]))


def test_mean(maps: torch.Tensor) -> None:
    torch.testing.assert_close(pool_scores(maps, "mean"), torch.tensor([2.2 / 6, 3.5 / 6]))


def test_topk_is_mean_of_k_largest(maps: torch.Tensor) -> None:
    expected = torch.tensor([(0.9 + 0.6 + 0.4) / 3, (1.0 + 0.5 + 0.5) / 3])
    torch.testing.assert_close(pool_scores(maps, "topk", k=3), expected)
    torch.testing.assert_close(
        pool_scores(maps, "topk", k=2), torch.tensor([(0.9 + 0.6) / 2, 0.75])
    )


def test_default_is_topk_16() -> None:
    probs = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) / 64
    expected = torch.arange(48, 64, dtype=torch.float32).mean() / 64
    torch.testing.assert_close(pool_scores(probs), expected.reshape(1))


def test_three_dim_input_matches_four_dim(maps: torch.Tensor) -> None:
    for method in POOLINGS:
        torch.testing.assert_close(
            pool_scores(maps[:, 0], method, k=3), pool_scores(maps, method, k=3)
        )


def test_topk_with_k_above_pixel_count_is_mean(maps: torch.Tensor) -> None:
    torch.testing.assert_close(pool_scores(maps, "topk", k=1000), pool_scores(maps, "mean"))


def test_topk_extremes_equal_max_and_mean() -> None:
    probs = torch.rand(4, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pool_scores(probs, "topk", k=1), pool_scores(probs, "max"))
    torch.testing.assert_close(pool_scores(probs, "topk", k=5 * 7), pool_scores(probs, "mean"))


def test_output_shape_and_gradient() -> None:
    probs = torch.rand(3, 1, 4, 4, requires_grad=True)
    scores = pool_scores(probs, "topk", k=4)
    assert scores.shape == (3,)
    scores.sum().backward()
    # exactly the 4 largest pixels of each map receive gradient 1/4
    assert probs.grad is not None
    assert (probs.grad > 0).sum().item() == 3 * 4
    torch.testing.assert_close(probs.grad.sum(), torch.tensor(3.0))


@pytest.mark.parametrize("k", [0, -3])
def test_topk_needs_positive_k(maps: torch.Tensor, k: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"topk pooling needs k >= 1, got {k}")):
        pool_scores(maps, "topk", k=k)


def test_unknown_method_lists_valid_names(maps: torch.Tensor) -> None:
    with pytest.raises(
        ValueError, match=re.escape("unknown pooling 'median'; valid: max, mean, topk")
    ):
        pool_scores(maps, "median")
