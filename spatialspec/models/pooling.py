"""Image-level scores from pixel probabilities.

A dense (box / mask) model predicts a probability per pixel; an image needs one score. The
choice matters for robust AUROC, so it is explicit:

- ``max``: the largest pixel probability. Sensitive to one confident pixel.
- ``mean``: the mean pixel probability. Dominated by image size vs. lesion size.
- ``topk`` (default): the mean of the ``k`` largest pixel probabilities. With ``k`` about the
  size of the smallest lesion this keeps ``max``'s sensitivity to small findings while one stray
  pixel cannot decide the score.

:func:`parse_poolings` reads the ``max,mean,topk:16`` lists of ``spatialspec evaluate
--pooling``; each :class:`Pooling` applies :func:`pool_scores`, the function the dense methods
train and score with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

POOLINGS = ("max", "mean", "topk")
#: The forms a pooling is written in on the command line.
POOLING_FORMS = "max, mean, topk:K (K a whole number >= 1)"


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


@dataclass(frozen=True)
class Pooling:
    """One pooling of pixel probabilities: a :func:`pool_scores` method and, for ``topk``, k.

    Attributes:
        method: ``max``, ``mean`` or ``topk``.
        k: Pixels averaged by ``topk``; None for the others (two ``max`` poolings are equal
            whatever k a model was configured with).
    """

    method: str
    k: int | None = None

    def __post_init__(self) -> None:
        if self.method not in POOLINGS:
            raise ValueError(f"unknown pooling {self.method!r}; valid: {', '.join(POOLINGS)}")
        if self.method != "topk":
            object.__setattr__(self, "k", None)
        elif self.k is None or self.k < 1:
            raise ValueError(f"topk pooling needs k >= 1, got {self.k}")

    @property
    def name(self) -> str:
        """``max``, ``mean`` or ``topk:K``: the form :func:`parse_pooling` reads."""
        return f"topk:{self.k}" if self.method == "topk" else self.method

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) or (B, H, W) probabilities -> (B,) scores (:func:`pool_scores`)."""
        return pool_scores(probs, self.method, self.k or 1)


def parse_pooling(text: str) -> Pooling:
    """``max``, ``mean`` or ``topk:K`` -> :class:`Pooling`.

    Raises:
        ValueError: naming the entry and the valid forms.
    """
    entry = text.strip()
    method, sep, k = entry.partition(":")
    if not sep and method in ("max", "mean"):
        return Pooling(method)
    k = k.strip()
    if method == "topk" and k.isascii() and k.isdigit() and int(k) >= 1:
        return Pooling("topk", int(k))
    hint = " (give k: topk:16)" if entry == "topk" else ""
    raise ValueError(f"bad pooling {entry!r}{hint}; valid forms: {POOLING_FORMS}")


def parse_poolings(text: str) -> dict[str, Pooling]:
    """A comma-separated list (``max,mean,topk:16,topk:256``) -> name as written -> pooling.

    Raises:
        ValueError: for an empty list, a bad entry or one pooling listed twice; the message
            names the entry and the valid forms.
    """
    out: dict[str, Pooling] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            raise ValueError(
                f"empty entry in pooling list {text!r}; give a comma-separated list of "
                f"{POOLING_FORMS}"
            )
        pooling = parse_pooling(entry)
        twin = next((name for name, p in out.items() if p == pooling), None)
        if twin is not None:
            raise ValueError(f"pooling {entry!r} is listed twice in {text!r} (as {twin!r})")
        out[entry] = pooling
    return out
