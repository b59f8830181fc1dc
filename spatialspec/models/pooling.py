"""Image-level scores from pixel probabilities.

A dense (box / mask) model predicts a probability per pixel; an image needs one score. The
choice matters for robust AUROC, so it is explicit:

- ``max``: the largest pixel probability. Sensitive to one confident pixel.
- ``mean``: the mean pixel probability. Dominated by image size vs. lesion size.
- ``topk`` (default): the mean of the ``k`` largest pixel probabilities. With ``k`` about the
  size of the smallest lesion this keeps ``max``'s sensitivity to small findings while one stray
  pixel cannot decide the score.
"""

from __future__ import annotations

import torch

POOLINGS = ("max", "mean", "topk")


def pool_scores(probs: torch.Tensor, method: str = "topk", k: int = 16) -> torch.Tensor:
    """Pool pixel probabilities into one score per image.

    Args:
        probs: (B, 1, H, W) or (B, H, W) probabilities.
        method: One of ``max``, ``mean``, ``topk``.
        k: Pixels averaged by ``topk`` (clipped to the number of pixels).

    Returns:
        (B,) scores.
    """
    flat = probs.reshape(probs.shape[0], -1)  # (B, H*W)
    if method == "max":
        return flat.amax(dim=1)
    if method == "mean":
        return flat.mean(dim=1)
    if method == "topk":
        if k < 1:
            raise ValueError(f"topk pooling needs k >= 1, got {k}")
        return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)
    raise ValueError(f"unknown pooling {method!r}; valid: {', '.join(POOLINGS)}")
