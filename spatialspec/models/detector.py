"""A box detector on the shared encoder: torchvision's FCOS over the smp encoder + an FPN.

The network is torchvision's :class:`~torchvision.models.detection.FCOS` (anchor-free, one
"anchor" point per feature-map location): its head, its target assignment
(:meth:`FCOS.compute_loss`: centre sampling, one scale range per level, focal + GIoU +
centre-ness losses) and its post-processing (:meth:`FCOS.postprocess_detections`: score
threshold, top candidates, NMS) run unchanged. Three things differ:

- **Backbone**: the shared smp encoder (built and pruned exactly as :class:`SpatialNet` builds
  it) with torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` on its feature maps
  (:class:`EncoderFPN`, the counterpart of torchvision's ``BackboneWithFPN``).
- **No transform**: FCOS's ``GeneralizedRCNNTransform`` would renormalise images with ImageNet
  statistics and resize them to ``min_size`` (800 px). Our images come from the data pipeline
  already normalised, at one fixed size (``data.image_size``), as a (B, C, H, W) batch, so
  :meth:`DetectorNet.forward` runs backbone -> head -> anchors itself and the transform is
  never called. Boxes are in pixels of the network input.
- **Box-branch start**: the box branch's bias starts at 1 (:data:`BOX_BIAS`: each side one
  stride from the location, the anchor box) instead of 0, so its ReLU starts active (see
  :class:`DetectorNet`).

**Levels and anchor sizes.** Encoder feature map ``i`` has stride ``2**i``. The FPN levels are
the encoder's maps with stride ``min_stride`` up to ``2**encoder_depth`` (e.g. 4, 8, 16 for
the synthetic 64 px images at depth 4; 8, 16, 32 for 512 px at depth 5). As FCOS prescribes,
each level's single anchor is a square of its stride, and level ``k`` (stride ``s_k``) is
responsible for the boxes whose largest distance from a location to a box side lies in
``(4 s_k, 8 s_k)``; the first level takes everything below, the last everything above (so a
512 px box still has a level at any depth). A location is a positive of a box only when it
lies strictly inside it and within ``center_sampling_radius`` strides of its centre, so a box
needs a side of more than ``s_k`` pixels to be sure of one: choose ``min_stride`` at or below
the smallest box side worth detecting (the synthetic boxes have a median width of 7 px:
``min_stride`` 4).

**Box convention.** A mask component's inclusive pixel box ``(row0, col0, row1, col1)``
(:mod:`spatialspec.data.boxes`) is the continuous box ``(x0, y0, x1, y1) = (col0, row0,
col1 + 1, row1 + 1)``: pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so a one-pixel
component has area 1. Predicted boxes use the same coordinates.

**Image score.** Each location's box score is FCOS's ``sqrt(sigmoid(class) *
sigmoid(centre-ness))`` (:meth:`DetectorNet.location_scores`), computed in log space so its
gradient stays finite. :func:`image_scores` turns them into one differentiable score per image:
``max`` (the best box score; NMS always keeps the highest-scoring box, so this is the score of
the top detection whenever there is one) or ``noisy_or`` (``1 - prod(1 - s_i)`` over the ``k``
best boxes left by NMS).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, batched_nms

from spatialspec.data.boxes import mask_to_boxes
from spatialspec.models.backbone import BackboneConfig, SpatialNet

__all__ = [
    "IMAGE_SCORES",
    "DetectorConfig",
    "DetectorNet",
    "EncoderFPN",
    "image_scores",
    "masks_to_targets",
    "pixel_boxes_to_xyxy",
]

#: Ways to turn the box scores of an image into its score.
IMAGE_SCORES = ("max", "noisy_or")
#: GroupNorm groups of FCOS's head: ``fpn_channels`` must be a multiple.
HEAD_GROUPS = 32
#: Initial box-branch output: distances to the box sides in strides (1: the anchor box).
BOX_BIAS = 1.0


@dataclass
class DetectorConfig:
    """The detector on top of the encoder.

    Attributes:
        fpn_channels: Width of the FPN maps and of the head (a multiple of 32: FCOS's head
            uses GroupNorm with 32 groups). torchvision's FCOS uses 256.
        min_stride: Stride of the finest FPN level (a power of two, at most
            ``2**encoder_depth``); see the module docstring.
        head_convs: 3x3 conv + GroupNorm + ReLU blocks in each head branch (FCOS: 4).
        center_sampling_radius: FCOS's centre sampling radius, in strides.
        score_thresh: Detections below this box score are dropped (torchvision: 0.2; 0.05 keeps
            the low-scoring boxes that mAP's recall counts).
        nms_thresh: IoU above which NMS suppresses a lower-scoring box.
        detections_per_img: Boxes kept per image after NMS.
        topk_candidates: Boxes kept per level before NMS (and the candidates of ``noisy_or``).
    """

    fpn_channels: int = 256
    min_stride: int = 8
    head_convs: int = 4
    center_sampling_radius: float = 1.5
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    topk_candidates: int = 1000

    def __post_init__(self) -> None:
        if self.fpn_channels < HEAD_GROUPS or self.fpn_channels % HEAD_GROUPS:
            raise ValueError(
                f"fpn_channels must be a positive multiple of {HEAD_GROUPS} (FCOS's head "
                f"normalises with GroupNorm({HEAD_GROUPS})), got {self.fpn_channels}"
            )
        if self.min_stride < 2 or self.min_stride & (self.min_stride - 1):
            raise ValueError(f"min_stride must be a power of two >= 2, got {self.min_stride}")
        if self.head_convs < 0:
            raise ValueError(f"head_convs must be >= 0, got {self.head_convs}")
        for name in ("score_thresh", "nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict."""
        return asdict(self)


class EncoderFPN(nn.Module):
    """smp encoder + torchvision FPN: (B, C, H, W) -> FPN maps, finest first.

    The counterpart of torchvision's ``BackboneWithFPN`` for an smp encoder (which returns a
    list of feature maps rather than named layers).

    Args:
        encoder: smp encoder (returns the input first, then one map per stage).
        levels: Indices of the encoder maps the FPN takes (increasing).
        in_channels: Channels of those maps.
        out_channels: FPN width.
    """

    def __init__(
        self, encoder: nn.Module, levels: list[int], in_channels: list[int], out_channels: int
    ) -> None:
        super().__init__()
        self.body = encoder
        self.levels = list(levels)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels)
        #: FCOS reads its head width from here.
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)  # [x, stride 2, stride 4, ...]
        return self.fpn(OrderedDict((str(i), features[i]) for i in self.levels))


class DetectorNet(FCOS):
    """FCOS over the shared encoder, for a fixed-size, normalised (B, C, H, W) batch.

    Built with one class (the finding). Besides FCOS's own methods it offers the pieces the
    method needs from one forward pass: :meth:`forward` (raw head outputs and anchors),
    :meth:`location_scores`, :meth:`decode_boxes`, :meth:`losses` and :meth:`detections`.

    The attributes the audits look for are those of :class:`SpatialNet`: :attr:`encoder` (the
    smp encoder, whose deepest map Grad-CAM and the slice embeddings use), :attr:`pixel_head`
    (the per-location head, first to be re-initialised by cascading randomization), and
    ``image_head`` / ``decoder`` None (no pooled-feature head; the FPN returns several maps, not
    one decoder output).

    Args:
        cfg: Architecture of the shared encoder.
        detector: The detector on top.
    """

    image_head = None
    decoder = None

    def __init__(self, cfg: BackboneConfig, detector: DetectorConfig | None = None) -> None:
        det = detector or DetectorConfig()
        # SpatialNet builds the smp encoder (weights, clear errors) and prunes what the deepest
        # feature does not use; the rest of that network is dropped.
        base = SpatialNet(cfg, image_head=True, dense=False)
        encoder, stride = base.encoder, base.stride
        if det.min_stride > stride:
            valid = [2**i for i in range(1, cfg.encoder_depth + 1)]
            raise ValueError(
                f"min_stride {det.min_stride} exceeds the encoder's total stride {stride} "
                f"(2**encoder_depth); choose one of {valid}"
            )
        levels = list(range(int(math.log2(det.min_stride)), cfg.encoder_depth + 1))
        channels = [encoder.out_channels[i] for i in levels]
        strides = [2**i for i in levels]
        super().__init__(
            EncoderFPN(encoder, levels, channels, det.fpn_channels),
            num_classes=1,
            anchor_generator=AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(levels)),
            head=FCOSHead(det.fpn_channels, 1, 1, num_convs=det.head_convs),
            center_sampling_radius=det.center_sampling_radius,
            score_thresh=det.score_thresh,
            nms_thresh=det.nms_thresh,
            detections_per_img=det.detections_per_img,
            topk_candidates=det.topk_candidates,
            # the transform is never called (see the module docstring); identity statistics
            image_mean=[0.0] * cfg.in_channels,
            image_std=[1.0] * cfg.in_channels,
        )
        # The box branch starts at the anchor box (1 stride to every side) instead of
        # torchvision's 0: its outputs pass a ReLU, and from 0 under Adam (lr 2e-3) the branch of
        # a 4-conv, 128-wide head died within 10 steps on the synthetic data (0.2 % of outputs
        # positive, every box a point, mAP 0); from 1 it stayed alive.
        nn.init.constant_(self.head.regression_head.bbox_reg.bias, BOX_BIAS)
        #: Total stride of the encoder: input sides must be multiples.
        self.stride = stride
        #: Strides of the FPN levels (= FCOS anchor sizes), finest first.
        self.strides = strides
        #: Encoder modules replaced by ``Identity`` (names relative to ``encoder``).
        self.pruned = base.pruned
        self.memory_format = base.memory_format
        self.to(memory_format=self.memory_format)

    @property
    def encoder(self) -> nn.Module:
        """The shared smp encoder."""
        return self.backbone.body

    @property
    def pixel_head(self) -> nn.Module:
        """FCOS's per-location head (class, box and centre-ness branches)."""
        return self.head

    #: Checks that (B, C, H, W) ``x`` fits the encoder; returns it in the net's memory order
    #: (the shared network's check: both have ``stride`` and ``memory_format``).
    prepare = SpatialNet.prepare

    def forward(self, x: torch.Tensor) -> dict[str, Any]:  # type: ignore[override]
        """(B, C, H, W) normalised images -> raw FCOS outputs over all L locations.

        Returns:
            ``cls_logits`` (B, L, 1), ``bbox_regression`` (B, L, 4), ``bbox_ctrness`` (B, L, 1),
            ``anchors`` (L, 4) (the same for every image), ``num_anchors_per_level`` and
            ``image_size`` (H, W).
        """
        x = self.prepare(x)
        features = list(self.backbone(x).values())  # finest first, (B, F, H / s, W / s)
        outputs: dict[str, Any] = dict(self.head(features))
        size = (int(x.shape[-2]), int(x.shape[-1]))
        anchors = self.anchor_generator(ImageList(x[:1], [size]), features)[0]  # (L, 4)
        outputs.update(
            anchors=anchors,
            num_anchors_per_level=[f.shape[-2] * f.shape[-1] for f in features],
            image_size=size,
        )
        return outputs

    @staticmethod
    def location_scores(outputs: dict[str, Any]) -> torch.Tensor:
        """(B, L) box score of every location: ``sqrt(sigmoid(class) * sigmoid(centre-ness))``.

        FCOS's own detection score, computed as ``exp((log σ(c) + log σ(t)) / 2)``: equal up to
        rounding, with a finite gradient where the product underflows.
        """
        logits = outputs["cls_logits"].float()[..., 0]  # (B, L)
        ctr = outputs["bbox_ctrness"].float()[..., 0]
        return torch.exp(0.5 * (F.logsigmoid(logits) + F.logsigmoid(ctr)))

    def decode_boxes(self, outputs: dict[str, Any]) -> torch.Tensor:
        """(B, L, 4) box of every location, ``(x0, y0, x1, y1)``, clipped to the image."""
        boxes = self.box_coder.decode(outputs["bbox_regression"].float(), outputs["anchors"])
        h, w = outputs["image_size"]
        x = boxes[..., 0::2].clamp(0, w)
        y = boxes[..., 1::2].clamp(0, h)
        return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)

    def losses(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], rows: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """FCOS's losses (:meth:`FCOS.compute_loss`) of the images ``rows`` against ``targets``.

        Args:
            outputs: :meth:`forward` of the whole batch.
            targets: One ``{"boxes": (N_i, 4) xyxy, "labels": (N_i,) zeros}`` per selected
                image; an image without boxes is all background.
            rows: (B,) bool, which images of the batch the targets belong to.

        Returns:
            ``classification`` (sigmoid focal loss), ``bbox_regression`` (GIoU) and
            ``bbox_ctrness`` (BCE), each summed over the selected images and divided by their
            number of positive locations (at least 1), in float32.
        """
        head = {k: outputs[k][rows].float() for k in ("cls_logits", "bbox_regression",
                                                      "bbox_ctrness")}  # fmt: skip
        anchors = [outputs["anchors"]] * len(targets)
        return self.compute_loss(targets, head, anchors, outputs["num_anchors_per_level"])

    def detections(self, outputs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Post-processed boxes per image (:meth:`FCOS.postprocess_detections`).

        Returns:
            One ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}`` per image, at most
            ``detections_per_img`` boxes with score >= ``score_thresh``, after NMS.
        """
        split = outputs["num_anchors_per_level"]
        head = {k: list(outputs[k].float().split(split, dim=1))
                for k in ("cls_logits", "bbox_regression", "bbox_ctrness")}  # fmt: skip
        n = outputs["cls_logits"].shape[0]
        anchors = [list(outputs["anchors"].split(split))] * n
        return self.postprocess_detections(head, anchors, [outputs["image_size"]] * n)


def image_scores(
    scores: torch.Tensor,
    boxes: torch.Tensor | None = None,
    method: str = "max",
    k: int = 1,
    nms_thresh: float = 0.6,
    candidates: int = 1000,
) -> torch.Tensor:
    """One score per image from the box scores of its locations (differentiable).

    Args:
        scores: (B, L) box scores in [0, 1].
        boxes: (B, L, 4) their boxes (needed by ``noisy_or``; only their order matters to NMS,
            which sees them detached).
        method: ``max``: the largest score. ``noisy_or``: ``1 - prod(1 - s_i)`` over the ``k``
            best boxes left by NMS (``nms_thresh``) among the ``candidates`` best locations:
            the probability that at least one of ``k`` independent detections is right.
        k: Boxes combined by ``noisy_or`` (fewer if NMS leaves fewer).

    Returns:
        (B,) scores; ``noisy_or`` with ``k = 1`` equals ``max``.
    """
    if method == "max":
        return scores.amax(dim=1)
    if method != "noisy_or":
        raise ValueError(f"unknown image score {method!r}; valid: {', '.join(IMAGE_SCORES)}")
    if k < 1:
        raise ValueError(f"noisy_or needs k >= 1, got {k}")
    if boxes is None:
        raise ValueError("noisy_or needs the boxes of the scores (NMS picks the k best boxes)")
    out = []
    for s, b in zip(scores, boxes, strict=True):
        top = s.topk(min(candidates, s.numel())).indices  # best first
        keep = batched_nms(b[top].detach().float(), s[top].detach().float(),
                           torch.zeros_like(top), nms_thresh)  # fmt: skip
        best = s[top[keep[:k]]]  # (<= k,)
        out.append(1.0 - torch.prod(1.0 - best))
    return torch.stack(out)


def pixel_boxes_to_xyxy(boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Inclusive pixel boxes ``(row0, col0, row1, col1)`` -> (N, 4) float ``(x0, y0, x1, y1)``
    with ``x1 = col1 + 1``, ``y1 = row1 + 1`` (pixel edges)."""
    if not boxes:
        return torch.zeros((0, 4), dtype=torch.float32)
    rc = np.asarray(boxes, dtype=np.float32)  # (N, 4) r0, c0, r1, c1
    return torch.from_numpy(np.stack([rc[:, 1], rc[:, 0], rc[:, 3] + 1, rc[:, 2] + 1], axis=1))


def masks_to_targets(masks: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """FCOS targets from (B, 1, H, W) masks: one box per 8-connected component.

    Components are found on the CPU (:func:`spatialspec.data.boxes.mask_to_boxes`); the
    targets are returned on the masks' device. An empty mask gives an image without boxes.

    Returns:
        One ``{"boxes": (N, 4) float32 xyxy, "labels": (N,) int64 zeros}`` per image.
    """
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (B, 1, H, W), got {tuple(masks.shape)}")
    planes = (masks.detach()[:, 0] > 0.5).cpu().numpy()
    out = []
    for plane in planes:
        boxes = pixel_boxes_to_xyxy(mask_to_boxes(plane)).to(masks.device)
        labels = torch.zeros(len(boxes), dtype=torch.int64, device=masks.device)
        out.append({"boxes": boxes, "labels": labels})
    return out
