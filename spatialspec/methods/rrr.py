"""``rrr``: Right for the Right Reasons (Ross, Hughes & Doshi-Velez, IJCAI 2017) with masks.

A classifier on ``binary``'s network, trained with BCE plus λ x the squared input gradients of
its log-probabilities outside the mask, on the rows whose mask is known (see
:mod:`spatialspec.methods.penalty` for what that means for budgets and negatives)::

    penalty_i = Σ_pixels ((1 - mask_i) ⊙ ∂(log p_i + log(1 - p_i)) / ∂x_i)²

Ross et al. differentiate the sum of the log-probabilities of *every* class; a single-logit
head's two classes have probabilities p = σ(z) and 1 - p = σ(-z) (the softmax of the two-class
logits (0, z)), so the differentiated quantity is log σ(z) + log σ(-z), whose input gradient is
(1 - 2p) ∂z/∂x. The penalty is the mean of penalty_i over the annotated rows of a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spatialspec.methods.base import METHODS
from spatialspec.methods.penalty import InputGradientPenalty


@METHODS.register("rrr")
class RRRMethod(InputGradientPenalty):
    """Squared input gradients of Σ_classes log p outside the mask (Ross et al. 2017).

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        penalty_weight: λ, the weight of the penalty.
    """

    def explained(self, logits: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(logits) + F.logsigmoid(-logits)  # log p + log(1 - p)

    def reduce(self, masked: torch.Tensor) -> torch.Tensor:
        return masked.square().flatten(1).sum(dim=1)
