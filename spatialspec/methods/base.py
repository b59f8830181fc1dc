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


#: Clamp of a probability before its log-odds (float64's smallest normal number and epsilon).
_TINY, _EPS = torch.finfo(torch.float64).tiny, torch.finfo(torch.float64).eps


def probability_log_odds(p: torch.Tensor) -> torch.Tensor:
    """(B,) probabilities -> (B,) float64 ``log p - log(1 - p)``, ``p`` clamped inside (0, 1).

    Exactly 0 or 1 in float64 means a logit beyond ~37, where the gradient is cut.
    """
    p = p.double().clamp(_TINY, 1.0 - _EPS)
    return torch.log(p) - torch.log1p(-p)


def get_method(name: str) -> type[SpatialMethod]:
    """The method class registered as ``name`` (KeyError listing valid names otherwise)."""
    return METHODS.get(name)


class SpatialMethod(L.LightningModule):
    """Base class. Subclasses set :attr:`annotation` and implement the hooks below.

    A method maps images to raw network ``outputs`` (:meth:`forward`), ``outputs`` + batch to
    losses (:meth:`loss`) and ``outputs`` to image-level probabilities (:meth:`scores`), so
    validation scores and losses come from one forward pass.

    Class attributes a subclass sets:

    * :attr:`annotation`: the spatial annotation it trains on, ``label``, ``box`` or ``mask``.
    * :attr:`attribute_split`: the split whose spurious-attribute labels (the manifest's
      ``spurious`` column) it trains on: ``None`` when it uses none (every spatial method),
      ``"train"`` for a method that needs them on its training images (``groupdro``), ``"val"``
      for one that fits on validation images (``dfr``). Annotation-cost accounting counts these
      labels on that split.

    Hyper-parameters: every ``__init__`` argument of the class and of its bases is recorded in
    :attr:`hparams` (and so in checkpoints) by Lightning's ``save_hyperparameters``, which walks
    the constructor frames of the subclass chain; a subclass only declares its arguments and
    passes its base's on with ``super().__init__(...)``. The backbone is stored as a plain dict,
    so checkpoints load with ``weights_only=True``.

    Args:
        backbone: Architecture of the shared network (a dict is accepted too).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    #: Spatial annotation the method trains on: ``label`` (none), ``box`` or ``mask``; for
    #: dense methods it is the default ``data.specificity`` (see
    #: :func:`spatialspec.data.specificity.resolve_specificity`).
    annotation: ClassVar[str] = "label"
    #: Split whose spurious-attribute labels the method trains on (``None``: none; ``"train"``
    #: or ``"val"``); see the class docstring.
    attribute_split: ClassVar[str | None] = None

    def __init__(
        self, backbone: BackboneConfig | None = None, lr: float = 1e-3, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        if isinstance(backbone, dict):  # as stored in checkpoints' hyper-parameters
            backbone = BackboneConfig(**backbone)
        self.backbone = backbone or BackboneConfig()
        # every __init__ argument along the subclass chain (Lightning collects the constructor
        # frames that call super().__init__, the most derived winning); logger=False: ``fit``
        # logs the whole resolved run config to every logger instead
        self.save_hyperparameters(logger=False)
        # the backbone as a plain dict: readable hparams.yaml, weights_only checkpoints
        self.save_hyperparameters({"backbone": self.backbone.to_dict()}, logger=False)
        self.net = self.build_net(self.backbone)
        self.val_auroc = BinaryAUROC()
        self.val_robust_auroc = RobustAUROC()

    # -- hooks for subclasses ------------------------------------------------------------------
    def build_net(self, cfg: BackboneConfig) -> SpatialNet:
        """Build the network this method needs."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> raw outputs (image logits (B,) or pixel logits (B, 1, H, W))."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": total, <component>: value, ...}`` from outputs and their batch."""
        raise NotImplementedError

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> (B,) image-level probabilities."""
        raise NotImplementedError

    # -- conveniences --------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses of a batch (one forward pass)."""
        return self.loss(self(batch["image"]), batch)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B,) image-level probabilities."""
        return self.scores(self(images))

    def log_odds(self, outputs: Any) -> torch.Tensor:
        """Raw outputs -> (B,) float64 log-odds of the image-level score (what the saliency
        audit's maps explain: they rank images as the score does but do not saturate).

        Default: :func:`probability_log_odds` of :meth:`scores` computed on float64 outputs; a
        method whose score is the sigmoid of a logit returns the logit itself.
        """
        if torch.is_tensor(outputs):
            outputs = outputs.double()  # (B,) or (B, 1, H, W); detect's outputs are a dict
        return probability_log_odds(self.scores(outputs))

    # -- Lightning -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_loss(batch)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self(batch["image"])
        losses, scores = self.loss(outputs, batch), self.scores(outputs)
        labels = batch["label"].long()
        self.val_auroc.update(scores, labels)
        self.val_robust_auroc.update(scores, labels, batch["spurious"])
        self.log("val/loss", losses["loss"], batch_size=labels.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        # compute() gathers the predictions of every rank (the states are concatenated), so
        # the values are those of one process seeing the whole split; sync_dist averages these
        # equal values (it only silences Lightning's warning about unsynced epoch metrics).
        self.log("val/auroc", self.val_auroc.compute(), prog_bar=True, sync_dist=True)
        self.log("val/robust_auroc", self.val_robust_auroc.compute(), prog_bar=True, sync_dist=True)
        self.val_auroc.reset()
        self.val_robust_auroc.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"image_id": list(batch["image_id"]), "score": self.score(batch["image"]).float()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the weights of encoder modules the network no longer builds (a checkpoint saved
        before :func:`~spatialspec.models.backbone.prune_unused` replaced them)."""
        state = checkpoint.get("state_dict")
        if not state:
            return
        expected = set(self.state_dict())
        pruned = tuple(f"encoder.{name}." for name in self.net.pruned)
        for key in [k for k in state if k not in expected]:
            if any(part in key for part in pruned):
                del state[key]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["spatialspec"] = {
            "method": METHODS.name_of(type(self)),
            "config": getattr(self, "run_config", None),
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
