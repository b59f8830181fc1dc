"""Predicted boxes: mAP against the ground-truth boxes, and the boxes file ``evaluate`` writes.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the network input (``data.image_size``), pixel
edges: the inclusive pixel box ``(row0, col0, row1, col1)`` of a mask component is ``(col0,
row0, col1 + 1, row1 + 1)`` (see :mod:`spatialspec.models.detector`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from spatialspec.data.io import atomic_open

__all__ = ["BOX_COLUMNS", "box_map", "boxes_path", "write_boxes"]

#: Columns of the boxes file, one row per predicted box.
BOX_COLUMNS = ("image_id", "x0", "y0", "x1", "y1", "score")


def boxes_path(report_path: str | Path) -> Path:
    """Where the predicted boxes behind a report go: ``<report stem>.boxes.csv``."""
    report_path = Path(report_path)
    return report_path.with_name(report_path.stem + ".boxes.csv")


def box_map(
    predictions: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    iou_threshold: float = 0.5,
) -> float | None:
    """COCO average precision at one IoU threshold (torchmetrics ``MeanAveragePrecision``).

    Every image counts: a predicted box that matches no true box (IoU below the threshold, or
    an image without true boxes) is a false positive; a true box no prediction matches is
    missed. AP is COCO's (101-point interpolated precision over recall, at most 100 boxes per
    image, all box sizes), computed by pycocotools.

    Args:
        predictions: Per image ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}``.
        targets: Per image ``{"boxes": (M, 4) xyxy, "labels": (M,)}``, aligned with
            ``predictions``.
        iou_threshold: IoU from which a predicted box matches a true one.

    Returns:
        AP in [0, 1]; None when no image has a true box (AP is undefined).
    """
    from torchmetrics.detection import MeanAveragePrecision

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not any(len(t["boxes"]) for t in targets):
        return None
    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", iou_thresholds=[iou_threshold], backend="pycocotools"
    )
    metric.update([_cpu(p) for p in predictions], [_cpu(t) for t in targets])
    value = float(metric.compute()["map"])
    return None if value < 0 else value  # torchmetrics' -1: undefined


def _cpu(entry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in entry.items()}


def write_boxes(
    path: str | Path,
    image_ids: Sequence[str],
    predictions: Sequence[dict[str, torch.Tensor]],
) -> int:
    """Write one row per predicted box (:data:`BOX_COLUMNS`), atomically.

    Images without a predicted box have no row. Coordinates have 2 decimals, scores 5.

    Returns:
        The number of rows written.
    """
    if len(image_ids) != len(predictions):
        raise ValueError(f"{len(image_ids)} image ids but {len(predictions)} predictions")
    rows = 0
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(BOX_COLUMNS)
        for image_id, pred in zip(image_ids, predictions, strict=True):
            boxes = pred["boxes"].detach().cpu().tolist()
            scores = pred["scores"].detach().cpu().tolist()
            for (x0, y0, x1, y1), score in zip(boxes, scores, strict=True):
                writer.writerow([image_id, f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}", f"{y1:.2f}",
                                 f"{score:.5f}"])  # fmt: skip
                rows += 1
    return rows
