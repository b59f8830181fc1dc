"""``actdiff``: activation differences (Viviano, Simpson, Dutil, Bengio & Cohen, ICLR 2021).

A classifier on ``binary``'s network, trained with BCE plus λ x the distance between its
features of an image and of the same image with the pixels outside the mask shuffled, on the
rows whose mask is known (see :mod:`spatialspec.methods.penalty` for what that means for budgets
and negatives)::

    penalty_i = ‖h(x_i) - h(x̃_i)‖₂,   x̃_i = x_i with its pixels outside mask_i permuted

h is the pooled penultimate features: the encoder's deepest feature map averaged over space
(what the image head's linear layer reads). The shuffled image x̃ is a constant (no gradient
flows into the permutation); the gradient flows through both h(x) and h(x̃). The penalty is the
mean of penalty_i over the annotated rows of a batch. A negative's known-empty mask shuffles its
whole image.

Both views go through the network as one batch, so BatchNorm normalises them with the same
statistics: an unshuffled x̃ (a mask covering the image) gives exactly zero, and the
classifier's training batches are normalised as its running statistics record them. The
reference implementation compares several pre-activations of the encoder; here only the pooled
features, as the issue states.
"""

from __future__ import annotations

import torch

from spatialspec.methods.base import METHODS
from spatialspec.methods.penalty import MaskPenaltyMethod


def shuffle_outside(
    images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Permute each image's pixels outside its mask at random; the pixels inside stay put.

    A pixel moves with all its channels. Vectorised: per image, the outside positions sorted by
    random keys receive the values of the outside positions in index order.

    Args:
        images: (N, C, H, W) images.
        masks: (N, 1, H, W) masks; pixels with mask < 0.5 are outside.
        generator: Random source (default: torch's global one, which fits seed and resume).

    Returns:
        (N, C, H, W) shuffled copies.
    """
    n, c = images.shape[:2]
    flat = images.reshape(n, c, -1)  # (N, C, P)
    out_px = (masks.reshape(n, -1) < 0.5).to(images.device)  # (N, P)
    order = torch.arange(flat.shape[2], device=images.device).expand(n, -1) / flat.shape[2]
    keys = torch.rand(out_px.shape, generator=generator, device=images.device)
    # outside positions first (random order for the sources, index order for the destinations),
    # then the inside ones in index order: they map onto themselves
    src = torch.where(out_px, keys, order + 2).argsort(dim=1)  # (N, P)
    dst = torch.where(out_px, order, order + 2).argsort(dim=1)
    shuffled = torch.empty_like(flat)
    shuffled.scatter_(
        2, dst.unsqueeze(1).expand(-1, c, -1), flat.gather(2, src.unsqueeze(1).expand(-1, c, -1))
    )
    return shuffled.reshape(images.shape)


@METHODS.register("actdiff")
class ActDiffMethod(MaskPenaltyMethod):
    """L2 distance of pooled features of x and of x shuffled outside the mask (Viviano et al.).

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        penalty_weight: λ, the weight of the penalty.
    """

    def logits_and_penalty(
        self, images: torch.Tensor, masks: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        shuffled = shuffle_outside(images[known], masks[known]).detach()  # (K, C, H, W)
        fmap = self.net.encoder(self.net.prepare(torch.cat([images, shuffled])))[-1]
        pooled = fmap.float().mean(dim=(2, 3))  # (B + K, F): the head's pooled features
        logits = self.net.image_head(fmap[:b]).squeeze(1)  # (B,)
        distances = torch.linalg.vector_norm(pooled[:b][known] - pooled[b:], dim=1)  # (K,)
        return logits, distances.mean()
