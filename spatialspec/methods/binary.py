"""``binary``: image labels only — pooled encoder features -> logit, BCE."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from spatialspec.methods.base import METHODS, SpatialMethod
from spatialspec.models import BackboneConfig, SpatialNet


@METHODS.register("binary")
class BinaryMethod(SpatialMethod):
    """Image-label supervision: the network may use any pixel, spurious ones included."""

    annotation = "label"

    def build_net(self, cfg: BackboneConfig) -> SpatialNet:
        return SpatialNet(cfg, image_head=True, dense=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.image_logits(images)  # (B,)

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.binary_cross_entropy_with_logits(outputs, batch["label"].float())}

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs)

    def log_odds(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.double()  # the image logit: the score's log-odds exactly
