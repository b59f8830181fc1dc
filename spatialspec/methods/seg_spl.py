"""``seg_spl``: segmentation + supervised pixel-level similarity (a pixel contrastive loss).

Besides ``seg``'s losses, decoder embeddings of lesion pixels are pulled together and pushed
away from background pixels (supervised contrastive loss, Khosla et al. 2020, over pixels as in
Wang et al. 2021, "Exploring cross-image pixel contrast for semantic segmentation").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spatialspec.methods.base import METHODS
from spatialspec.methods.dense import DenseMethod
from spatialspec.models import BackboneConfig

# ----------------------------------------------------------------------------- building blocks


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) of L2-normalised embeddings.

    For each anchor i with at least one positive: -mean over positives p of
    log(exp(z_i.z_p / T) / sum over a != i of exp(z_i.z_a / T)); averaged over those anchors.
    Plain form: no ``temperature / base_temperature`` rescaling. Computed in float32.

    Args:
        embeddings: (N, D) unit vectors.
        labels: (N,) class of each embedding (positives share it).
        temperature: Softmax temperature T.

    Returns:
        Scalar loss; 0 (graph kept) when no anchor has a positive.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        z = embeddings.float()
        n = z.shape[0]
        self_pair = torch.eye(n, dtype=torch.bool, device=z.device)  # (N, N)
        sim = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))  # (N, N)
        log_prob = sim - sim.logsumexp(dim=1, keepdim=True)  # (N, N), -inf on the diagonal
        positives = (labels[:, None] == labels[None, :]) & ~self_pair  # (N, N)
        n_pos = positives.sum(dim=1)  # (N,)
        anchors = n_pos > 0
        if not anchors.any():
            return z.sum() * 0.0
        pos_log_prob = torch.where(positives, log_prob, 0.0).sum(dim=1)  # (N,)
        return -(pos_log_prob[anchors] / n_pos[anchors]).mean()


def sample_pixels(
    masks: torch.Tensor, rows: torch.Tensor, n_pixels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw at most ``n_pixels`` lesion and ``n_pixels`` background pixels of the chosen rows.

    Uniform without replacement over the pixels of each class across the batch (never all
    pixels at once downstream: at most 2 x ``n_pixels`` are returned).

    Args:
        masks: (B, 1, H, W) dense targets (lesion where > 0.5).
        rows: (B,) bool, the rows whose mask is known.
        n_pixels: Pixels per class at most.

    Returns:
        Coordinates (M, 3) as (row, y, x) and labels (M,) (1 lesion, 0 background), M <=
        2 x ``n_pixels``, lesion pixels first.
    """
    lesion = masks[:, 0] > 0.5  # (B, H, W)
    known = rows.view(-1, 1, 1)  # (B, 1, 1)
    coords, labels = [], []
    for label, chosen in ((1, lesion & known), (0, ~lesion & known)):
        flat = chosen.flatten().nonzero().squeeze(1)  # (K,)
        flat = flat[torch.randperm(flat.numel(), device=flat.device)[:n_pixels]]  # (k <= n,)
        coords.append(torch.stack(torch.unravel_index(flat, chosen.shape), dim=1))  # (k, 3)
        labels.append(torch.full_like(flat, label))
    return torch.cat(coords), torch.cat(labels)


def _check_args(
    contrastive_weight: float, temperature: float, proj_dim: int, n_pixels: int
) -> None:
    if not contrastive_weight >= 0:  # also rejects NaN
        raise ValueError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if proj_dim < 1:
        raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
    if n_pixels < 2:
        raise ValueError(f"n_pixels must be >= 2 (an anchor needs a positive), got {n_pixels}")


# ----------------------------------------------------------------------------- the method


@METHODS.register("seg_spl")
class SegSPLMethod(DenseMethod):
    """Mask supervision + a supervised contrastive loss on decoder pixel embeddings.

    One pass gives both the decoder's last feature map (before smp's segmentation head) and the
    pixel logits. On the rows with a mask (``mask_available == 1``; masked negatives included),
    at most ``n_pixels`` lesion pixels and ``n_pixels`` background pixels are drawn at random
    across the batch; a projection head (two 1x1 layers, decoder width -> decoder width ->
    ``proj_dim``, ReLU between, L2-normalised output) maps their features to embeddings, and the
    supervised contrastive loss (SupCon, Khosla et al. 2020; temperature ``temperature``)
    treats same-class pixels as positives and the other class as negatives. The head lives in
    the method, is applied only to the sampled pixels (a 1x1 convolution is a linear map of each
    pixel's feature vector), and is unused at inference.

    Total = DenseMethod's loss + ``contrastive_weight`` x SupCon (a mean over the sampled
    pixels, like DenseMethod's per-term means). A batch without lesion pixels or without
    background pixels among its masked rows adds 0 (graph kept).

    The contrastive term is a training-only regulariser: ``val/loss`` is DenseMethod's loss
    (comparable with ``seg``'s), and the forward pass, scores and predictions are ``seg``'s.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        pooling: How pixel probabilities become an image score: ``max``, ``mean``, ``topk``.
        topk: Pixels averaged by ``topk`` pooling.
        dice_weight: Weight of the Dice term of the pixel loss (0 disables it).
        pixel_weight: Weight of the pixel loss (mean over the rows with a mask).
        image_weight: Weight of the image loss (mean over the rows without one).
        contrastive_weight: Weight of the SupCon term.
        temperature: SupCon temperature.
        proj_dim: Width of the L2-normalised pixel embeddings.
        n_pixels: Lesion pixels and background pixels drawn per batch, each at most.
    """

    annotation = "mask"

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
        contrastive_weight: float = 0.1,
        temperature: float = 0.1,
        proj_dim: int = 32,
        n_pixels: int = 256,
    ) -> None:
        _check_args(contrastive_weight, temperature, proj_dim, n_pixels)
        super().__init__(
            backbone,
            lr=lr,
            weight_decay=weight_decay,
            pooling=pooling,
            topk=topk,
            dice_weight=dice_weight,
            pixel_weight=pixel_weight,
            image_weight=image_weight,
        )
        width = self.backbone.decoder_channels[-1]
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim)
        )

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> decoder features (B, F, H, W) and pixel logits (B, 1, H, W)."""
        images = self.net.prepare(images)
        features = self.net.decoder(self.net.encoder(images))  # (B, F, H, W)
        return features, self.net.pixel_head(features)

    def embed(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (M, proj_dim) of the pixels at (M, 3) (row, y, x) ``coords``."""
        b, y, x = coords.unbind(dim=1)
        picked = features[b, :, y, x]  # (M, F)
        return F.normalize(self.projector(picked), dim=1)

    def contrastive_loss(self, features: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """SupCon over sampled pixels of the masked rows; 0 (graph kept) without both classes."""
        known = batch["mask_available"] > 0.5  # (B,)
        coords, labels = sample_pixels(batch["mask"], known, self.hparams.n_pixels)
        embeddings = self.embed(features, coords)  # (M, proj_dim); M may be 0
        if labels.unique().numel() < 2:
            return embeddings.sum() * 0.0  # touches the projector: no unused parameters
        return supcon_loss(embeddings, labels, self.hparams.temperature)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """DenseMethod's losses + weighted SupCon on decoder embeddings, from one forward."""
        features, logits = self.features_and_logits(batch["image"])
        losses = self.loss(logits, batch)
        contrastive = self.contrastive_loss(features, batch)
        losses["loss"] = losses["loss"] + self.hparams.contrastive_weight * contrastive
        losses["contrastive_loss"] = contrastive.detach()
        return losses
