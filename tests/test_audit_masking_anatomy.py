"""The masking audit's anatomy region (roi_mask_path): exact pixels, boxes, missing masks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from spatialspec.audit import masking
from spatialspec.audit.common import AuditSet
from spatialspec.audit.masking_conditions import (
    Masking,
    MaskingScorer,
    condition_masks,
    load_masking_set,
    mask_images,
    metrics_of,
)
from spatialspec.data.dataset import MEAN, STD, ManifestDataset
from spatialspec.data.io import write_png
from spatialspec.data.roi import condition_region

SIZE = 16


def _lungs() -> np.ndarray:
    """Two 'lungs' (6x4 rectangles) in a 16x16 image: the anatomy region."""
    lungs = np.zeros((SIZE, SIZE), dtype=bool)
    lungs[4:10, 2:6] = True
    lungs[4:10, 10:14] = True
    return lungs


def _blob_lungs() -> np.ndarray:
    """Two non-rectangular components (their boxes are larger than they are)."""
    lungs = np.zeros((SIZE, SIZE), dtype=bool)
    lungs[3, 2:4] = lungs[4, 2:6] = lungs[5:8, 3:5] = True  # boxes rows 3-7, cols 2-5
    lungs[9:12, 12] = lungs[11, 10:13] = True  # rows 9-11, cols 10-12
    return lungs


# ---------------------------------------------------------------------- exact pixels, by hand


def test_anatomy_conditions_fill_exactly_the_anatomy() -> None:
    lungs = _blob_lungs()
    removed, reference = condition_region("anatomy_removed", None, None, lungs.shape,
                                          anatomy=lungs)  # fmt: skip
    assert np.array_equal(removed, lungs) and np.array_equal(reference, ~lungs)
    only, reference = condition_region("anatomy_only", None, None, lungs.shape, anatomy=lungs)
    assert np.array_equal(only, ~lungs) and np.array_equal(reference, ~lungs)
    boxes = np.zeros_like(lungs)
    boxes[3:8, 2:6] = boxes[9:12, 10:13] = True  # each component's bounding box, by hand
    box_removed, _ = condition_region("anatomy_box_removed", None, None, lungs.shape,
                                      anatomy=lungs)  # fmt: skip
    assert np.array_equal(box_removed, boxes) and box_removed.sum() == 20 + 9
    box_only, reference = condition_region("anatomy_box_only", None, None, lungs.shape,
                                           anatomy=lungs)  # fmt: skip
    assert np.array_equal(box_only, ~boxes) and np.array_equal(reference, ~boxes)
    # the ROI and the spurious mask play no part, the ROI's `region` neither
    roi = np.ones_like(lungs)
    again, _ = condition_region("anatomy_removed", roi, roi, lungs.shape, "box", anatomy=lungs)
    assert np.array_equal(again, lungs)


def test_an_anatomy_condition_without_an_anatomy_mask_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs an anatomy mask"):
        condition_region("anatomy_only", np.ones((4, 4), bool), None, (4, 4))


def test_mask_images_changes_only_the_anatomy_pixels() -> None:
    audit = _stub_audit_set(_no_files())
    mset = load_masking_set(audit)
    mset.anatomy_masks[:] = _lungs()
    mset.has_anatomy_mask[:] = True
    rows = np.arange(4)
    filled, reference = condition_masks(mset, "anatomy_removed", rows)
    out = mask_images(audit.images[rows], filled, "zero", reference_masks=reference)
    changed = (out != audit.images[rows])[:, 0].numpy()
    assert np.array_equal(changed, np.broadcast_to(_lungs(), changed.shape))
    assert torch.all(out[:, 0][torch.from_numpy(filled)] == (0.0 - MEAN) / STD)


# --------------------------------------------------------------- a stub audit: known numbers


class _LeftLungMean:
    """Scores the sigmoid of the mean normalised intensity of the left lung."""

    def __init__(self) -> None:
        self.hparams: dict[str, Any] = {}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(images[:, 0, 4:10, 2:6].mean(dim=(1, 2)))


def _no_files() -> list[str]:
    return [""] * 40


def _stub_audit_set(anatomy_paths: list[str]) -> AuditSet:
    """20 positives (a bright ROI in the left lung) and 20 negatives; dark lungs, bright body."""
    n = 40
    labels = np.repeat([1, 0], n // 2)
    spurious = np.zeros(n)
    spurious[:18] = spurious[20:22] = 1
    raw = np.full((n, 1, SIZE, SIZE), 0.6, dtype=np.float32)
    raw[:, 0][:, _lungs()] = 0.2
    roi = np.zeros((n, SIZE, SIZE), dtype=bool)
    roi[labels == 1, 5:7, 3:5] = True
    raw[:, 0][roi] = 0.9
    ids = [f"i{k}" for k in range(n)]
    return AuditSet(
        image_ids=ids,
        images=torch.from_numpy((raw - MEAN) / STD),
        roi_masks=roi,
        has_roi_mask=labels == 1,
        spurious_masks=np.zeros((n, SIZE, SIZE), dtype=bool),
        has_spurious_mask=np.zeros(n, dtype=bool),
        labels=labels,
        spurious=spurious,
        frame=pd.DataFrame({"image_id": ids, "roi_mask_path": anatomy_paths}),
    )


@pytest.fixture
def lung_files(tmp_path: Path) -> list[str]:
    """roi_mask_path of the 40 stub images; rows 0 (positive) and 20 (negative) have none."""
    path = tmp_path / "lungs.png"
    write_png(path, _lungs().astype(np.uint8) * 255)
    paths = [str(path)] * 40
    paths[0] = paths[20] = ""
    return paths


def _audit(monkeypatch: pytest.MonkeyPatch, paths: list[str], **kwargs: Any) -> dict:
    data = SimpleNamespace(manifest_path="stub.csv")
    config = {"method": "stub", "data": {}}
    monkeypatch.setattr(masking, "load_model", lambda *a, **k: (_LeftLungMean(), config, data))
    monkeypatch.setattr(masking, "load_audit_set", lambda *a, **k: _stub_audit_set(paths))
    return masking.audit_masking("stub.ckpt", n_resamples=20, metadata_columns=[], **kwargs)


def test_missing_anatomy_masks_are_counted_and_left_out(monkeypatch, lung_files) -> None:
    result = _audit(monkeypatch, lung_files, doses=(), fills=())
    assert result["anatomy"]["n_missing"] == 2
    assert result["anatomy"]["missing_ids"] == ["i0", "i20"]
    c = result["conditions"]
    assert list(c) == list(masking.CONDITIONS)
    removed, only = c["anatomy_removed"], c["anatomy_only"]
    assert removed["n"] == only["n"] == 38 and removed["n_unknown"] == 2
    assert removed["n_altered"] == 38 and c["roi_removed"]["n_unknown"] == 0
    # lungs filled with the body's mean: every score is the same, the ROI is gone
    assert removed["auroc"] == 0.5 and removed["auroc_drop"] == 0.5
    assert only["auroc"] == 1.0  # the lungs (and the ROI in them) are kept
    assert removed["visible_fraction"] == pytest.approx(1 - 48 / 256)
    assert only["visible_fraction"] == pytest.approx(48 / 256)
    assert c["anatomy_box_removed"]["visible_fraction"] == pytest.approx(1 - 48 / 256)
    md = masking.masking_markdown(result)
    assert "**2 of 40 images have no anatomy mask" in md and "i0, i20" in md


def test_without_the_column_anatomy_conditions_are_skipped_or_refused(monkeypatch) -> None:
    result = _audit(monkeypatch, _no_files(), doses=(), fills=())
    assert "anatomy_removed" not in result["conditions"]
    assert "no audited image" in result["skipped_conditions"]["anatomy_only"]
    with pytest.raises(ValueError, match="needs anatomy masks"):
        _audit(monkeypatch, _no_files(), conditions=["original", "anatomy_removed"])
    lenient = _audit(
        monkeypatch,
        _no_files(),
        doses=(),
        fills=("mean", "zero"),
        fill_conditions=["roi_removed", "anatomy_only"],
    )
    assert lenient["fill_control"]["conditions"] == ["roi_removed"]
    assert "no audited image" in lenient["skipped_conditions"]["anatomy_only (fill control)"]


def test_scorer_reuses_original_scores_of_unaltered_images(lung_files) -> None:
    mset = load_masking_set(_stub_audit_set(lung_files))
    scorer = MaskingScorer(_LeftLungMean(), mset, batch_size=7)
    original = scorer.original()
    assert scorer.n_forward == 40
    roi = scorer(Masking("roi_removed"))
    assert scorer.n_forward == 60  # the 20 positives only
    assert np.array_equal(roi.scores[20:], original[20:])
    lungs = scorer(Masking("anatomy_removed", region="box", dilate=5))  # unused fields ignored
    assert scorer(Masking("anatomy_removed")) is lungs and scorer.n_forward == 98
    assert np.isnan(lungs.scores[[0, 20]]).all() and not lungs.known[[0, 20]].any()
    assert metrics_of(lungs, mset.audit, 10, 0)["n_unknown"] == 2


# ----------------------------------------------------------------- training under the anatomy


def test_training_refuses_rows_without_an_anatomy_mask(tiny_synthetic) -> None:
    from spatialspec.data.datamodule import SpatialDataModule

    frame = SpatialDataModule(str(tiny_synthetic)).split_frame("train").copy()
    frame.loc[frame.index[:3], "roi_mask_path"] = ""
    ManifestDataset(frame, None, image_size=64, roi_masking="roi_removed")  # not needed there
    with pytest.raises(ValueError, match=r"roi_mask_path .* 3 of 48 rows .*first: train_"):
        ManifestDataset(frame, None, image_size=64, roi_masking="anatomy_removed")


def test_training_anatomy_removed_fills_the_lungs(tiny_synthetic) -> None:
    from spatialspec.data.datamodule import SpatialDataModule

    frame = SpatialDataModule(str(tiny_synthetic)).split_frame("train").iloc[[0]]
    plain = ManifestDataset(frame, None, image_size=64)[0]["image"]
    masked = ManifestDataset(frame, None, image_size=64, roi_masking="anatomy_removed",
                             roi_masking_fill="zero")[0]["image"]  # fmt: skip
    from spatialspec.data.io import read_mask
    from spatialspec.data.transforms import resize_mask

    lungs = resize_mask(read_mask(frame["roi_mask_path"].iloc[0]).view(np.uint8), 64) > 0
    assert lungs.any()
    changed = (masked != plain)[0].numpy()
    assert not changed[~lungs].any()  # nothing outside the lungs changes
    assert torch.all(masked[0][torch.from_numpy(lungs)] == (0.0 - MEAN) / STD)
