"""``gradmask``: GradMask (Simpson, Dutil, Bengio & Cohen, 2019) with masks.

A classifier on ``binary``'s network, trained with BCE plus λ x the absolute input gradients of
its logit contrast outside the mask, on the rows whose mask is known (see
:mod:`spatialspec.methods.penalty` for what that means for budgets and negatives)::

    penalty_i = Σ_pixels |(1 - mask_i) ⊙ ∂|y0_i - y1_i| / ∂x_i|

GradMask differentiates the contrast |y0 - y1| of a two-logit head. A single-logit head z is the
two-class softmax with logits (y0, y1) = (0, z) (both give p = σ(z)), so the contrast is |z|.
(Taking y0 = -z instead would only double λ.) As in the reference implementation, the
contrasts of the annotated rows are summed before differentiating. For one image alone,
|∂|z|/∂x| = |∂z/∂x| (z ≠ 0); in a training batch BatchNorm's batch statistics couple the rows,
so the gradient at an image's pixels also carries its effect on the other rows' contrasts, and
the absolute value matters: the plain sum of the logits is nearly invariant to the input under
batch statistics (on a trained synthetic ``binary`` model: Σ|gradient| of 2e-5 per image,
against 390 for each image's own logit), the sum of their absolute values is not. The penalty
is the mean of penalty_i over the annotated rows.
"""

from __future__ import annotations

import torch

from spatialspec.methods.base import METHODS
from spatialspec.methods.penalty import InputGradientPenalty


@METHODS.register("gradmask")
class GradMaskMethod(InputGradientPenalty):
    """Absolute input gradients of the logit contrast outside the mask (Simpson et al. 2019).

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        penalty_weight: λ, the weight of the penalty.
    """

    def explained(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.abs()  # |y0 - y1| with (y0, y1) = (0, z)

    def reduce(self, masked: torch.Tensor) -> torch.Tensor:
        return masked.abs().flatten(1).sum(dim=1)
