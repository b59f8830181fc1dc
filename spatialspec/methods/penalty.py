"""Shared recipe of the mask-penalty methods (``rrr``, ``gradmask``, ``actdiff``).

These methods use masks as a *penalty on a classifier* instead of a segmentation target
(Ross et al. 2017; Simpson et al. 2019; Viviano et al. 2021): the network is ``binary``'s
(encoder -> pooled features -> one logit) and the loss is

    BCE(logits, labels)  [mean over every row]
    + penalty_weight x penalty  [mean over the rows whose mask is known]

The penalty discourages the classifier from relying on pixels outside the mask (``1 - mask``).
Only rows with ``mask_available == 1`` are penalised, so mask budgets (``data.mask_budget``)
mean what they say; the other rows train on their label only. As in the reference
implementation (josephdviviano/saliency-red-herring, whose RSNA pathology masks of negatives are
all zero), a negative with a known-empty mask is penalised over its whole image: nothing in a
negative is evidence for the label, so no pixel should carry the explanation. The term is a mean
over the penalised rows, not scaled by their share of the batch (as :class:`DenseMethod`'s
terms), so a small mask budget is not drowned by the label loss.

Validation reports the BCE alone as ``val/loss`` (a penalty needs input gradients, which
validation does not compute); training logs ``train/bce`` and ``train/penalty`` besides
``train/loss``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spatialspec.methods.binary import BinaryMethod
from spatialspec.models import BackboneConfig, SpatialNet


def outside(masks: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) masks in [0, 1] -> (N, 1, H, W) weights of the pixels outside them."""
    return 1.0 - masks.float().clamp(0.0, 1.0)


class Hardsigmoid(nn.Module):
    """``nn.Hardsigmoid`` as relu6(x + 3) / 6: the same values, and a double backward.

    PyTorch implements no derivative of ``hardsigmoid_backward``, so double backpropagation
    through MobileNetV3's squeeze-excite gates fails; ``relu6`` (hardtanh) has one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


def twice_differentiable(net: nn.Module) -> list[str]:
    """Replace ``net``'s ``nn.Hardsigmoid`` modules by :class:`Hardsigmoid`, in place.

    They hold no parameters: state dicts and checkpoints are unchanged.

    Returns:
        Dotted names of the replaced modules.
    """
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Hardsigmoid)]
    for name in names:
        net.set_submodule(name, Hardsigmoid())
    return names


class MaskPenaltyMethod(BinaryMethod):
    """``binary``'s network and BCE + ``penalty_weight`` x a mask penalty on annotated rows.

    Subclasses implement :meth:`logits_and_penalty`.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        penalty_weight: λ, the weight of the penalty (0: the method trains exactly as
            ``binary``, and computes no penalty).
    """

    annotation = "mask"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        penalty_weight: float = 1.0,
    ) -> None:
        if not penalty_weight >= 0:  # also rejects NaN
            raise ValueError(f"penalty_weight must be >= 0, got {penalty_weight}")
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)

    def logits_and_penalty(
        self, images: torch.Tensor, masks: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's logits and the penalty of its annotated rows, from one forward pass.

        Args:
            images: (B, C, H, W) images.
            masks: (B, 1, H, W) masks (only the ``known`` rows are read).
            known: (B,) bool, the rows whose mask is known (at least one).

        Returns:
            (B,) image logits and the scalar penalty (mean over the ``known`` rows), with
            graphs when gradients are enabled.
        """
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": bce + λ x penalty, "bce": ..., "penalty": ...}`` of a training batch."""
        images = batch["image"]
        known = batch["mask_available"] > 0.5  # (B,)
        if self.hparams.penalty_weight and bool(known.any()):
            logits, penalty = self.logits_and_penalty(images, batch["mask"], known)
        else:  # nothing to penalise: binary's step, at binary's cost
            logits, penalty = self(images), images.new_zeros((), dtype=torch.float32)
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        loss = bce + self.hparams.penalty_weight * penalty
        return {"loss": loss, "bce": bce.detach(), "penalty": penalty.detach()}

    def grad_scale(self) -> float:
        """The loss scale of a running fit's 16-bit mixed precision (1 otherwise).

        Input gradients under float16 autocast underflow like parameter gradients do; the
        penalties scale the differentiated output by the fit's ``GradScaler`` scale and divide
        the gradients by it, as PyTorch's AMP recipe for gradient penalties does. An overflow
        gives a non-finite loss, and the scaler then skips that step as for any other.
        """
        plugin = getattr(self._trainer, "precision_plugin", None)
        scaler = getattr(plugin, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return 1.0
        return float(scaler.get_scale())


class InputGradientPenalty(MaskPenaltyMethod):
    """A penalty on the input gradients of a per-row quantity, outside the mask.

    The gradient of ``explained(logits)`` (summed over the annotated rows, as the reference
    implementation sums over the batch) with respect to the input pixels is taken with
    ``create_graph`` (double backpropagation: the penalty is trained through it). In training
    mode BatchNorm's batch statistics couple the rows, so an image's input gradient also carries
    its effect on the other annotated rows' outputs (in eval mode it is the image's own).
    :meth:`reduce` turns the masked gradients of each row into its penalty. The network's
    hard-sigmoid gates are rebuilt twice differentiable (:func:`twice_differentiable`).
    """

    def build_net(self, cfg: BackboneConfig) -> SpatialNet:
        net = super().build_net(cfg)
        twice_differentiable(net)
        return net

    def explained(self, logits: torch.Tensor) -> torch.Tensor:
        """(K,) float32 logits of the annotated rows -> (K,) the quantity whose gradient counts."""
        raise NotImplementedError

    def reduce(self, masked: torch.Tensor) -> torch.Tensor:
        """(K, C, H, W) input gradients x outside-mask weights -> (K,) per-row penalties."""
        raise NotImplementedError

    def logits_and_penalty(
        self, images: torch.Tensor, masks: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        train = torch.is_grad_enabled()  # else: values only (no graph), e.g. in tests
        with torch.enable_grad():
            images = images.detach().requires_grad_(True)  # a leaf to differentiate against
            logits = self(images)  # (B,)
            target = self.explained(logits[known].float()).sum()
            scale = self.grad_scale()
            (grads,) = torch.autograd.grad(target * scale, images, create_graph=train)
            grads = grads[known].float() / scale  # (K, C, H, W)
            penalty = self.reduce(grads * outside(masks[known])).mean()
        if not train:
            logits, penalty = logits.detach(), penalty.detach()
        return logits, penalty
