"""The shared backbone: an smp U-Net whose parts each method uses as it needs.

``binary`` uses encoder -> pooled features -> image logit; ``bbox`` and ``seg`` use
encoder -> U-Net decoder -> pixel logits. The wiring follows smp's ``SegmentationModel``: the
parts are plain modules, and no loss lives here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import segmentation_models_pytorch as smp
import torch
from torch import nn


@dataclass
class BackboneConfig:
    """Architecture of the shared network.

    Attributes:
        encoder_name: Any smp encoder name (``resnet50``, ``resnet18``, ``tu-<timm name>``...).
        in_channels: 1 (grey) or 3 (RGB).
        encoder_weights: Pretrained weights name (e.g. ``imagenet``) or None. smp fetches weights
            from the Hugging Face hub; offline runs keep None or pre-fill that cache.
        encoder_depth: Number of encoder stages (3-5); input sides must divide 2**depth.
        decoder_channels: U-Net decoder widths, one per stage (length == encoder_depth).
        dropout: Dropout before the image-level linear head.
        channels_last: Keep weights and inputs in channels-last (NHWC) memory order. The
            numbers are the same; oneDNN's CPU convolutions run up to 1.6x faster on it (see
            ``benchmarks/channels_last.py``), and so do cuDNN's under mixed precision.
    """

    encoder_name: str = "resnet18"
    in_channels: int = 1
    encoder_weights: str | None = None
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    dropout: float = 0.0
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        self.decoder_channels = tuple(self.decoder_channels)
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels has {len(self.decoder_channels)} entries but encoder_depth is "
                f"{self.encoder_depth}; give one width per encoder stage"
            )

    def to_dict(self) -> dict:
        """Plain-type dict (lists, no tuples): YAML- and ``weights_only``-checkpoint friendly."""
        return {**asdict(self), "decoder_channels": list(self.decoder_channels)}


def _build_unet(cfg: BackboneConfig, image_head: bool) -> smp.Unet:
    aux = {"classes": 1, "pooling": "avg", "dropout": cfg.dropout} if image_head else None
    try:
        return smp.Unet(
            encoder_name=cfg.encoder_name,
            encoder_weights=cfg.encoder_weights,
            encoder_depth=cfg.encoder_depth,
            decoder_channels=cfg.decoder_channels,
            in_channels=cfg.in_channels,
            classes=1,
            aux_params=aux,
        )
    except (KeyError, ValueError) as err:
        if "weights" in str(err).lower() or cfg.encoder_weights is None:
            raise ValueError(f"cannot build encoder {cfg.encoder_name!r}: {err}") from err
        raise
    except OSError as err:  # URLError, ConnectionError, ... while fetching weights
        raise RuntimeError(
            f"could not fetch {cfg.encoder_weights!r} weights for encoder {cfg.encoder_name!r} "
            f"({err}). Offline? Set model.backbone.encoder_weights=null, or fetch the weights "
            "once on a machine with network access (smp caches them in the Hugging Face hub "
            "cache, HF_HOME) and copy that cache here."
        ) from err


def prune_unused(encoder: nn.Module, in_channels: int, stride: int) -> list[str]:
    """Replace the encoder's modules that do not contribute to its features by ``Identity``.

    smp builds every stage of an encoder even when ``encoder_depth`` uses fewer (ResNet's
    ``layer4`` at depth 4 is never called; timm's MobileNetV3 features compute their last blocks
    and drop them). Their parameters get no gradient, which DDP rejects unless it searches for
    unused parameters on every step (``find_unused_parameters``). One tiny backward pass of the
    deepest feature (which every later feature and head depends on) tells which modules take
    part: a module none of whose parameters gets a gradient is replaced.

    Args:
        encoder: smp encoder (returns one feature map per stage, the input first).
        in_channels: Its input channels.
        stride: Its total stride (the smallest input side it accepts).

    Returns:
        Dotted names of the replaced modules, relative to ``encoder``.
    """
    mode = encoder.training
    encoder.eval()  # no BatchNorm statistics are updated by the probe
    try:
        with torch.enable_grad():
            probe = torch.zeros(1, in_channels, stride, stride)
            encoder(probe)[-1].float().sum().backward()
    finally:
        encoder.train(mode)
    used = {name for name, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad(set_to_none=True)
    pruned = []
    for name, module in list(encoder.named_modules()):
        params = [f"{name}.{n}" if name else n for n, _ in module.named_parameters()]
        if (
            name
            and params
            and not used & set(params)
            and not any(name.startswith(f"{done}.") for done in pruned)
        ):
            encoder.set_submodule(name, nn.Identity())
            pruned.append(name)
    return pruned


class SpatialNet(nn.Module):
    """Encoder with an optional image-level head and an optional U-Net decoder + pixel head.

    Encoder modules that do not contribute to its features (stages beyond ``encoder_depth``)
    are replaced by ``Identity`` at construction (:func:`prune_unused`), so every parameter of
    the network is trained and DDP needs no search for unused parameters. Their names are in
    :attr:`pruned`; checkpoints saved before the pruning still load (the methods drop those
    weights).

    Args:
        cfg: Architecture.
        image_head: Build the pooled-features -> logit head.
        dense: Build the U-Net decoder and the pixel head.
    """

    def __init__(self, cfg: BackboneConfig, *, image_head: bool, dense: bool) -> None:
        super().__init__()
        if not (image_head or dense):
            raise ValueError("SpatialNet needs an image head, a dense head, or both")
        unet = _build_unet(cfg, image_head)
        self.stride = 2**cfg.encoder_depth
        #: Encoder modules replaced by ``Identity`` (names relative to ``encoder``).
        self.pruned = prune_unused(unet.encoder, cfg.in_channels, self.stride)
        self.encoder = unet.encoder
        self.decoder = unet.decoder if dense else None
        self.pixel_head = unet.segmentation_head if dense else None
        self.image_head = unet.classification_head if image_head else None
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check that (B, C, H, W) ``x`` fits the encoder; return it in the net's memory order."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"input of {h}x{w} pixels: both sides must be divisible by {self.stride} "
                "(2**encoder_depth); change data.image_size"
            )
        return x.contiguous(memory_format=self.memory_format)

    def image_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) image-level logits."""
        if self.image_head is None:
            raise RuntimeError("this SpatialNet was built without an image head")
        x = self.prepare(x)
        return self.image_head(self.encoder(x)[-1]).squeeze(1)

    def pixel_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) pixel logits."""
        if self.decoder is None:
            raise RuntimeError("this SpatialNet was built without a decoder")
        x = self.prepare(x)
        return self.pixel_head(self.decoder(self.encoder(x)))
