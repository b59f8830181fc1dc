"""``detect``: a box detector on the shared encoder (torchvision's FCOS over the encoder + an FPN).

Where ``bbox`` trains a U-Net on filled boxes (it never predicts a box), ``detect`` regresses
boxes and scores each one: :class:`~spatialspec.models.detector.DetectorNet` is torchvision's
FCOS whose backbone is the shared smp encoder with an FPN (levels, anchor sizes and box
coordinates are documented in :mod:`spatialspec.models.detector`).

**Targets.** The annotation is ``box``: the dataset's dense target is one filled box per
8-connected mask component, derived after augmentation (:mod:`spatialspec.data.specificity`).
The method turns each annotated row's target back into boxes, one per 8-connected component
(:func:`~spatialspec.models.detector.masks_to_targets`, on the CPU). Those are the mask's own
component boxes, except that boxes which touch or overlap merge into their common bounding box
(none of the 400 un-augmented training positives of the demo's synthetic draw do, though 28 of
them have several components). Deriving the boxes costs 0.7 ms of CPU per batch of 16 at 64 px
and 19 ms at 512 px; the data pipeline is not changed (batches stay dicts of fixed-shape
tensors).

**Loss.** Rows whose annotation is known (``mask_available == 1``) get FCOS's losses (sigmoid
focal loss on every location, GIoU and centre-ness BCE on the locations assigned to a box); a
negative with a known-empty mask is an image without boxes, every location a background
example. Rows without an annotation get BCE between their image score and their label, as the
dense methods' image term. The loss is ``box_weight`` x detector loss + ``image_weight`` x image
loss, each over its own rows (a term without rows is 0), as in
:class:`~spatialspec.methods.dense.DenseMethod`. Annotated rows get no image term: the focal
loss already trains every one of their locations, and the image score is a function of those
same location scores, so the term would count the annotated images twice.

**Image score** (``image_score``), from the box score of every location (FCOS's
``sqrt(sigmoid(class) * sigmoid(centre-ness))``), differentiable so that image-level losses and
the captum saliency audits work:

- ``max`` (default): the best box score, taken before NMS (NMS never removes the best box, so it
  is the score of the top detection whenever a box passes ``score_thresh``).
- ``noisy_or``: ``1 - prod(1 - s_i)`` over the ``topk`` best boxes left by NMS: the chance that
  at least one of them is a finding, were they independent. ``topk = 1`` is ``max``.

**Evaluation.** :meth:`DetectMethod.predict_step` also returns each image's detections and true
boxes; ``spatialspec evaluate`` hands those of the evaluated split to
:meth:`DetectMethod.evaluation_metrics`, which adds box mAP@0.5 to the report and writes the
predicted boxes beside it (``<report stem>.boxes.csv``, :mod:`spatialspec.evaluation.boxes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spatialspec.methods.base import METHODS, SpatialMethod
from spatialspec.models import BackboneConfig
from spatialspec.models.detector import (
    IMAGE_SCORES,
    DetectorConfig,
    DetectorNet,
    image_scores,
    masks_to_targets,
)

#: The raw head outputs of :meth:`DetectorNet.forward`.
HEAD_OUTPUTS = ("cls_logits", "bbox_regression", "bbox_ctrness")


@METHODS.register("detect")
class DetectMethod(SpatialMethod):
    """Box detection (FCOS) on the shared encoder; the image score comes from its boxes.

    Args:
        backbone: Architecture of the shared encoder.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        image_score: ``max`` or ``noisy_or`` (see the module docstring).
        topk: Boxes combined by ``noisy_or``.
        box_weight: Weight of the detector loss (over the rows with an annotation).
        image_weight: Weight of the image loss (over the rows without one).
        fpn_channels: FPN and head width (a multiple of 32).
        min_stride: Stride of the finest FPN level (4 for 64 px images, 8 for 512 px).
        head_convs: Conv blocks per head branch.
        center_sampling_radius: FCOS's centre sampling radius, in strides.
        score_thresh: Detections (and the boxes file) keep boxes scoring at least this.
        nms_thresh: NMS IoU threshold (detections and ``noisy_or``).
        detections_per_img: Boxes kept per image after NMS.
    """

    annotation = "box"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        image_score: str = "max",
        topk: int = 3,
        box_weight: float = 1.0,
        image_weight: float = 1.0,
        fpn_channels: int = 256,
        min_stride: int = 8,
        head_convs: int = 4,
        center_sampling_radius: float = 1.5,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
    ) -> None:
        if image_score not in IMAGE_SCORES:
            raise ValueError(
                f"unknown image_score {image_score!r}; valid: {', '.join(IMAGE_SCORES)}"
            )
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if box_weight < 0 or image_weight < 0:
            raise ValueError(
                f"box_weight and image_weight must be >= 0, got {box_weight}, {image_weight}"
            )
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)

    @property
    def detector(self) -> DetectorConfig:
        """The detector's architecture and post-processing, from the hyper-parameters."""
        hp = self.hparams
        return DetectorConfig(
            fpn_channels=hp.fpn_channels,
            min_stride=hp.min_stride,
            head_convs=hp.head_convs,
            center_sampling_radius=hp.center_sampling_radius,
            score_thresh=hp.score_thresh,
            nms_thresh=hp.nms_thresh,
            detections_per_img=hp.detections_per_img,
        )

    def build_net(self, cfg: BackboneConfig) -> DetectorNet:
        return DetectorNet(cfg, self.detector)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        return self.net(images)  # raw FCOS outputs over all locations, see DetectorNet.forward

    def scores(self, outputs: dict[str, Any], rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) image scores (or those of the bool ``rows``), per ``image_score``."""
        scores = self.net.location_scores(outputs)  # (B, L)
        how = self.hparams.image_score
        boxes = self.net.decode_boxes(outputs) if how == "noisy_or" else None  # (B, L, 4)
        if rows is not None:
            scores, boxes = scores[rows], None if boxes is None else boxes[rows]
        return image_scores(scores, boxes, how, self.hparams.topk, self.hparams.nms_thresh,
                            self.net.topk_candidates)  # fmt: skip

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        known = batch["mask_available"] > 0.5  # (B,)
        image = outputs["cls_logits"].new_zeros((), dtype=torch.float32)
        if known.any():
            parts = self.net.losses(outputs, masks_to_targets(batch["mask"][known]), known)
            box = sum(parts.values())
        else:
            # Keep every head output in the graph: with no annotated row the box branch would
            # get no gradient at all, which DDP (no search for unused parameters) rejects.
            box = sum(outputs[k].float().sum() for k in HEAD_OUTPUTS) * 0.0
        if (~known).any():
            image = self.image_loss(self.scores(outputs, ~known), batch["label"][~known])
        loss = self.hparams.box_weight * box + self.hparams.image_weight * image
        return {"loss": loss, "box_loss": box.detach(), "image_loss": image.detach()}

    @staticmethod
    def image_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE between (N,) image scores and labels, in float32 with autocast off."""
        with torch.autocast(device_type=scores.device.type, enabled=False):
            return F.binary_cross_entropy(scores.float().clamp(1e-6, 1 - 1e-6), labels.float())

    # -- prediction and evaluation ---------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Scores, as every method, plus each image's detections and true boxes (on the CPU)."""
        outputs = self(batch["image"])
        return {
            "image_id": list(batch["image_id"]),
            "score": self.scores(outputs).float(),
            "detections": [_on_cpu(d) for d in self.net.detections(outputs)],
            "targets": [_on_cpu(t) for t in masks_to_targets(batch["mask"])],
            "label": batch["label"].cpu(),
            "mask_available": batch["mask_available"].cpu(),
        }

    def evaluation_metrics(
        self, outputs: list[dict[str, Any]], report_path: str | Path
    ) -> dict[str, Any]:
        """Box mAP@0.5 of one split's :meth:`predict_step` outputs; writes the boxes file.

        ``box_map_50`` is over the positives whose boxes are known (``mask_available``, at
        least one box at the input size): it measures localisation, while the image score's
        AUROC judges the negatives. ``box_map_50_all`` adds every negative (an image without
        boxes, where each predicted box is a false positive). Positives without known boxes are
        left out of both and counted. Boxes are in pixels of the network input.

        Args:
            outputs: :meth:`predict_step` results, one per batch.
            report_path: The report being written: the boxes go to ``<stem>.boxes.csv``.

        Returns:
            The report's ``method_metrics``.
        """
        from spatialspec.evaluation.boxes import box_map, boxes_path, write_boxes

        ids = [i for out in outputs for i in out["image_id"]]
        dets = [d for out in outputs for d in out["detections"]]
        targets = [t for out in outputs for t in out["targets"]]
        labels = torch.cat([out["label"] for out in outputs]).tolist()
        known = torch.cat([out["mask_available"] for out in outputs]).tolist()
        has_boxes = [k > 0.5 and len(t["boxes"]) > 0 for k, t in zip(known, targets, strict=True)]
        pos = [i for i, y in enumerate(labels) if y > 0.5 and has_boxes[i]]
        scored = pos + [i for i, y in enumerate(labels) if y <= 0.5]
        path = boxes_path(report_path)
        n_rows = write_boxes(path, ids, dets)
        return {
            "box_map_50": box_map([dets[i] for i in pos], [targets[i] for i in pos]),
            "box_map_50_all": box_map([dets[i] for i in scored], [targets[i] for i in scored]),
            "n_positives_with_boxes": len(pos),
            "n_positives_without_boxes": sum(y > 0.5 for y in labels) - len(pos),
            "n_true_boxes": sum(len(targets[i]["boxes"]) for i in pos),
            "n_predicted_boxes": n_rows,
            "score_thresh": self.hparams.score_thresh,
            "image_score": self.hparams.image_score,
            "boxes_file": str(path.resolve()),
            "box_coordinates": "x0, y0, x1, y1 in pixels of the network input (pixel edges)",
        }


def _on_cpu(entry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in entry.items()}
