"""Shared recipe of every method: optimiser, validation metrics, scoring, prediction.

A method is a LightningModule that turns a batch (dict with ``image``, ``label``, ``mask``,
``mask_available``, ``spurious``, ``image_id``) into a loss and into one image-level score.
Everything downstream (metrics, reports, audits) only sees scores.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from torchmetrics.classification import BinaryAUROC

from spatialspec.metrics import RobustAUROC
from spatialspec.models import BackboneConfig, SpatialNet
from spatialspec.registry import Registry

METHODS: Registry[type[SpatialMethod]] = Registry("method")


def get_method(name: str) -> type[SpatialMethod]:
    """The method class registered as ``name`` (KeyError listing valid names otherwise)."""
    return METHODS.get(name)


class SpatialMethod(L.LightningModule):
    """Base class. Subclasses set :attr:`annotation` and implement the three hooks below.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    #: Spatial annotation the method trains on: ``label`` (none), ``box`` or ``mask``.
    annotation: ClassVar[str] = "label"

    def __init__(
        self, backbone: BackboneConfig | None = None, lr: float = 1e-3, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone or BackboneConfig()
        self.net = self.build_net(self.backbone)
        self.val_auroc = BinaryAUROC()
        self.val_robust_auroc = RobustAUROC()

    # -- hooks for subclasses ------------------------------------------------------------------
    def build_net(self, cfg: BackboneConfig) -> SpatialNet:
        """Build the network this method needs."""
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, <component>: value, ...}`` for a batch."""
        raise NotImplementedError

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B,) image-level probabilities."""
        raise NotImplementedError

    # -- Lightning -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_loss(batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses = self.compute_loss(batch)
        scores = self.score(batch["image"])
        labels = batch["label"].long()
        self.val_auroc.update(scores, labels)
        self.val_robust_auroc.update(scores, labels, batch["spurious"])
        self.log("val/loss", losses["loss"], batch_size=labels.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val/auroc", self.val_auroc.compute(), prog_bar=True)
        self.log("val/robust_auroc", self.val_robust_auroc.compute(), prog_bar=True)
        self.val_auroc.reset()
        self.val_robust_auroc.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"image_id": list(batch["image_id"]), "score": self.score(batch["image"]).float()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["spatialspec"] = {
            "method": METHODS.name_of(type(self)),
            "config": getattr(self, "run_config", None),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
