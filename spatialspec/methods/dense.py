"""Shared recipe of the dense methods (``bbox``, ``seg``): pixel loss + pooled image score."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss

from spatialspec.methods.base import SpatialMethod
from spatialspec.models import POOLINGS, BackboneConfig, SpatialNet, pool_scores


class DenseMethod(SpatialMethod):
    """U-Net trained on a dense target (the dataset's ``mask``: a mask or filled boxes).

    Images whose annotation is known (``mask_available == 1``; a negative's known-empty mask
    counts) get the pixel loss: BCE + ``dice_weight`` x soft Dice over those rows. Images
    without an annotation get BCE between their pooled score and their image label, so a dense
    model can learn from label-only images on the same network. The loss is
    ``pixel_weight`` x pixel loss + ``image_weight`` x image loss, each the mean over its own
    rows (a term without rows is 0). The terms are not scaled by their share of the batch: with
    10 % of the images annotated, a share-weighted pixel term is drowned by the image term, and
    the image term alone (multiple-instance learning on the pooled score) happily learns the
    spurious feature; the per-term means keep the few masks in charge of *where* the
    pathology is.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        pooling: How pixel probabilities become an image score: ``max``, ``mean``, ``topk``.
        topk: Pixels averaged by ``topk`` pooling.
        dice_weight: Weight of the Dice term of the pixel loss (0 disables it).
        pixel_weight: Weight of the pixel loss (mean over the rows with an annotation).
        image_weight: Weight of the image loss (mean over the rows without one).
    """

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        pooling: str = "topk",
        topk: int = 16,
        dice_weight: float = 1.0,
        pixel_weight: float = 1.0,
        image_weight: float = 1.0,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        if pixel_weight < 0 or image_weight < 0:
            raise ValueError(
                f"pixel_weight and image_weight must be >= 0, got {pixel_weight}, {image_weight}"
            )
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)
        self.dice = DiceLoss(mode="binary", from_logits=True)

    def build_net(self, cfg: BackboneConfig) -> SpatialNet:
        return SpatialNet(cfg, image_head=False, dense=True)

    def pool(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) pixel probabilities -> (B,) image scores, per the configured pooling."""
        return pool_scores(probs, self.hparams.pooling, self.hparams.topk)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.pixel_logits(images)  # (B, 1, H, W)

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        known = batch["mask_available"] > 0.5  # (B,)
        pixel = image = logits.new_zeros(())  # a term without rows contributes 0
        if known.any():
            lg, target = logits[known], batch["mask"][known].float()
            pixel = F.binary_cross_entropy_with_logits(lg, target)
            if self.hparams.dice_weight:
                pixel = pixel + self.hparams.dice_weight * self.dice(lg, target)
        if (~known).any():
            image = self.image_loss(logits[~known], batch["label"][~known])
        loss = self.hparams.pixel_weight * pixel + self.hparams.image_weight * image
        return {"loss": loss, "pixel_loss": pixel.detach(), "image_loss": image.detach()}

    def image_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE between pooled scores of (N, 1, H, W) pixel logits and (N,) image labels.

        Computed in float32 with autocast off: BCE on probabilities is unsafe under autocast.
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            scores = self.pool(torch.sigmoid(logits.float())).clamp(1e-6, 1 - 1e-6)
            return F.binary_cross_entropy(scores, labels.float())

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.sigmoid(outputs))
