"""The masking audit's dose-response, fill control and blur fill, against hand-computed values."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from spatialspec.audit.base import AuditResult
from spatialspec.audit.common import AuditSet
from spatialspec.audit.dose_response import dose_response, parse_doses
from spatialspec.audit.fill_control import (
    conclusions,
    disagreements,
    fill_control,
    verdict_vs_chance,
    verdict_vs_original,
)
from spatialspec.audit.masking import MaskingAudit
from spatialspec.audit.masking_conditions import Masking, MaskingScorer, MaskingSet
from spatialspec.audit.masking_render import dose_response_figure, masking_markdown
from spatialspec.data.dataset import MEAN, STD
from spatialspec.data.roi import BLUR_FLOOR, BLUR_SIGMA, FILLS, fill_values, grow_mask

SIZE = 16


# ------------------------------------------------------------------ erosion / dilation by hand


def test_grow_mask_by_hand() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[3:6, 3:6] = True  # 3x3
    assert grow_mask(mask, 1).sum() == 25 and grow_mask(mask, 2).sum() == 49  # 5x5, 7x7
    assert grow_mask(mask, -1).sum() == 1 and grow_mask(mask, -1)[4, 4]  # the centre
    assert not grow_mask(mask, -2).any()
    assert np.array_equal(grow_mask(mask, 0), mask)
    top = np.zeros((9, 9), dtype=bool)
    top[:3] = True  # touches three borders: only the inner edge erodes
    expected = np.zeros((9, 9), dtype=bool)
    expected[:2] = True
    assert np.array_equal(grow_mask(top, -1), expected)
    assert 1 - grow_mask(mask, 1).mean() == pytest.approx(1 - 25 / 81)  # the visible fraction


def test_parse_doses() -> None:
    assert parse_doses("-8:16:4") == [-8, -4, 0, 4, 8, 12, 16]
    assert parse_doses("4, -2,4") == [-2, 4]
    assert parse_doses(" ") == []
    with pytest.raises(ValueError, match="START:STOP:STEP"):
        parse_doses("-8:x:4")
    with pytest.raises(ValueError, match="step must be positive"):
        parse_doses("0:4:0")


# ------------------------------------------------------------------------------ a stub audit


class _RoiMean:
    """Scores the sigmoid of the mean normalised intensity where positives have their ROI."""

    def __init__(self) -> None:
        self.hparams: dict[str, Any] = {}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(images[:, 0, 5:7, 3:5].mean(dim=(1, 2)))


def _lungs() -> np.ndarray:
    lungs = np.zeros((SIZE, SIZE), dtype=bool)
    lungs[4:10, 2:6] = lungs[4:10, 10:14] = True  # two 6x4 'lungs', 48 pixels
    return lungs


def _mset() -> MaskingSet:
    """20 positives (a bright 2x2 ROI in the left lung) and 20 negatives; dark lungs (0.2) in
    a bright body (0.6); every image has the anatomy mask."""
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
    audit = AuditSet(
        image_ids=ids,
        images=torch.from_numpy((raw - MEAN) / STD),
        roi_masks=roi,
        has_roi_mask=labels == 1,
        spurious_masks=np.zeros((n, SIZE, SIZE), dtype=bool),
        has_spurious_mask=np.zeros(n, dtype=bool),
        labels=labels,
        spurious=spurious,
        frame=pd.DataFrame({"image_id": ids}),
    )
    anatomy = np.broadcast_to(_lungs(), (n, SIZE, SIZE)).copy()
    return MaskingSet(audit, anatomy, np.ones(n, dtype=bool))


def test_dose_response_visible_fraction_by_hand_and_monotone() -> None:
    scorer = MaskingScorer(_RoiMean(), _mset())
    curve = dose_response(scorer, "anatomy", [2, -1, 0, 1, 4], Masking("original"), 20, 0)
    doses = [p["dilation_px"] for p in curve["points"]]
    visible = [p["visible_fraction"] for p in curve["points"]]
    assert doses == [-1, 0, 1, 2, 4]
    # eroded: two 4x2 (16 px); as is: 48; dilated: two 8x6 (96), two 10x8 (160); +4: all
    assert visible[:4] == pytest.approx([1 - 16 / 256, 1 - 48 / 256, 1 - 96 / 256, 1 - 160 / 256])
    assert visible[4] == pytest.approx(1 - (14 * 16) / 256)  # rows 0-13, every column
    assert all(a >= b for a, b in itertools.pairwise(visible))
    assert curve["original"]["auroc"] == 1.0 and curve["original"]["visible_fraction"] == 1.0
    roi = dose_response(scorer, "roi", [-1, 0, 1], Masking("original"), 20, 0)
    points = roi["points"]
    # only the 20 positives have a 2x2 ROI: eroded away, 4 px, 16 px (mean over 40 images)
    assert [p["visible_fraction"] for p in points] == pytest.approx([1, 1 - 2 / 256, 1 - 8 / 256])
    assert [p["n_altered"] for p in points] == [0, 20, 20]
    assert points[0]["auroc"] == roi["original"]["auroc"]  # nothing removed: the original


# ------------------------------------------------------------------------------ fill control


def test_verdicts_by_hand() -> None:
    assert verdict_vs_original(0.40, [0.5, 0.7]) == "below"
    assert verdict_vs_original(0.50, [0.5, 0.7]) == "within"
    assert verdict_vs_original(0.71, [0.5, 0.7]) == "above"
    assert verdict_vs_original(None, [0.5, 0.7]) is None
    assert verdict_vs_original(0.6, [None, None]) is None
    assert verdict_vs_chance([0.51, 0.90]) == "above"
    assert verdict_vs_chance([0.10, 0.49]) == "below"
    assert verdict_vs_chance([0.45, 0.55]) == "chance"
    assert verdict_vs_chance([None, None]) is None


def _cell(auroc: float, ci: tuple, robust: float | None, robust_ci: tuple) -> dict[str, Any]:
    return {"auroc": auroc, "auroc_ci": list(ci), "robust_auroc": robust,
            "robust_auroc_ci": list(robust_ci)}  # fmt: skip


def test_conclusions_and_disagreements_on_hand_made_numbers() -> None:
    original = _cell(0.90, (0.85, 0.95), 0.20, (0.10, 0.30))
    mean = _cell(0.80, (0.70, 0.88), 0.60, (0.52, 0.70))  # hurts AUROC, robust above chance
    zero = _cell(0.87, (0.80, 0.92), 0.25, (0.15, 0.35))  # AUROC within, robust below chance
    noise = _cell(0.79, (0.70, 0.86), 0.55, (0.51, 0.60))  # agrees with mean
    undefined = _cell(0.82, (0.75, 0.89), None, (None, None))
    c = {f: conclusions(original, x) for f, x in
         {"mean": mean, "zero": zero, "noise": noise, "blur": undefined}.items()}  # fmt: skip
    assert c["mean"] == {"robust_auroc_vs_original": "above", "robust_auroc_vs_chance": "above",
                         "auroc_vs_original": "below", "auroc_vs_chance": "above"}  # fmt: skip
    assert c["zero"]["robust_auroc_vs_chance"] == "below"
    assert c["blur"]["robust_auroc_vs_original"] is None
    assert disagreements({"mean": c["mean"], "noise": c["noise"]}) == {}
    changed = disagreements(c)
    assert set(changed) == {"robust_auroc_vs_original", "robust_auroc_vs_chance",
                            "auroc_vs_original"}  # fmt: skip
    assert changed["robust_auroc_vs_chance"] == {
        "mean": "above",
        "zero": "below",
        "noise": "above",
    }  # blur: undefined, left out
    assert changed["auroc_vs_original"]["zero"] == "within"


def test_fill_control_flags_a_conclusion_made_by_the_fill() -> None:
    """A ROI-reading stub: the mean fill (brighter than the lung under the ROI) still tells the
    positives apart; the zero fill (darker) reverses them: AUROC 1 vs 0."""
    scorer = MaskingScorer(_RoiMean(), _mset())
    control = fill_control(scorer, ["original", "roi_removed", "anatomy_only"],
                           ("zero", "mean"), Masking("original"), 20, 0)  # fmt: skip
    table = control["table"]["roi_removed"]
    assert table["mean"]["auroc"] == 1.0 and table["zero"]["auroc"] == 0.0
    assert control["changes"]["roi_removed"]["auroc_vs_chance"] == {"zero": "below",
                                                                    "mean": "above"}  # fmt: skip
    assert control["conditions"] == ["roi_removed", "anatomy_only"]
    assert control["flagged"] == ["roi_removed"]  # the lungs and ROI kept: fills agree
    assert control["changes"]["anatomy_only"] == {}


# ------------------------------------------------------------------------------------ blur


def test_fills_are_documented_and_blur_is_one() -> None:
    assert FILLS == ("mean", "noise", "zero", "blur")


def test_blur_is_the_normalised_convolution_of_the_reference_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (9, 9, 1)).astype(np.float32)
    region = np.zeros((9, 9), dtype=bool)
    region[:, 3:] = True  # the reference: the three left columns
    values = fill_values(image, region, "blur")
    # by hand: scipy's truncated, normalised 1-D Gaussian (radius int(4 sigma + 0.5)) per axis
    radius = int(4 * BLUR_SIGMA + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / BLUR_SIGMA) ** 2)
    k /= k.sum()
    g = lambda d: k[radius + d] if abs(d) <= radius else 0.0  # noqa: E731
    ref = [(r, c) for r in range(9) for c in range(3)]
    mean = np.mean([image[r, c, 0] for r, c in ref], dtype=np.float64)
    for idx, (r, c) in enumerate([(r, c) for r in range(9) for c in range(3, 9)]):
        w = np.array([g(r - rr) * g(c - cc) for rr, cc in ref])
        x = np.array([image[rr, cc, 0] for rr, cc in ref])
        expected = (w @ x + BLUR_FLOOR * mean) / (w.sum() + BLUR_FLOOR)
        assert values[idx, 0] == pytest.approx(expected, abs=1e-5)


def test_blur_takes_nothing_from_the_filled_pixels() -> None:
    image = np.full((12, 12, 1), 0.3, dtype=np.float32)
    region = np.zeros((12, 12), dtype=bool)
    region[3:9, 3:9] = True
    constant = fill_values(image, region, "blur")
    assert constant == pytest.approx(np.full_like(constant, 0.3), abs=1e-6)  # a flat reference
    image[region] = 1.0  # what is removed does not leak into the fill
    assert np.array_equal(fill_values(image, region, "blur"), constant)
    two = np.zeros((5, 5, 1), dtype=np.float32)
    two[:, 3:] = 1.0
    middle = np.zeros((5, 5), dtype=bool)
    middle[:, 2] = True  # equidistant from the 0s and the 1s
    assert fill_values(two, middle, "blur") == pytest.approx(np.full((5, 1), 0.5), abs=1e-6)


# --------------------------------------------------------------------- headline and rendering


def _result(scorer: MaskingScorer) -> dict[str, Any]:
    from spatialspec.audit.masking_conditions import metrics_of

    base, audit = Masking("original"), scorer.mset.audit
    original = scorer.original()
    conditions = {c: metrics_of(scorer(base.but(condition=c)), audit, 20, 0, original)
                  for c in ("original", "roi_removed", "anatomy_removed")}  # fmt: skip
    return {
        "split": "test", "n": 40, "method": "stub", "checkpoint": "stub.ckpt",
        "manifest": "stub.csv", "conditions": conditions, "metadata_references": [],
        "train_condition": {"condition": "original"},
        "dose_response": {a: dose_response(scorer, a, [0, 2], base, 20, 0)
                          for a in ("roi", "anatomy")},
        "fill_control": fill_control(scorer, list(conditions), ("zero", "mean"), base, 20, 0),
        "config": {"limit": None, "region": "mask", "fill": "mean", "dilate": 2,
                   "n_resamples": 20, "seed": 0, "descriptions": {}},
    }  # fmt: skip


def test_headline_carries_the_dose_response_and_the_report_renders() -> None:
    result = _result(MaskingScorer(_RoiMean(), _mset()))
    head = MaskingAudit().headline(AuditResult("masking", result))
    curve = head["masking_dose_response"]
    assert [set(p) for p in curve] == [{"dilation_px", "visible_fraction", "auroc",
                                        "robust_auroc"}] * 2  # fmt: skip
    assert curve[0]["visible_fraction"] == pytest.approx(1 - 2 / 256)
    assert len(head["masking_dose_response_anatomy"]) == 2
    assert head["masking_fill_flagged"] == ["roi_removed"]
    assert (
        head["masking"]["anatomy_removed"]
        == result["conditions"]["anatomy_removed"]["robust_auroc"]
    )
    cols = MaskingAudit().summary_columns(head)
    assert "robust AUROC: anatomy_removed" in cols and cols["masking: fill-dependent"] == "1"
    md = masking_markdown(result)
    assert "## Dose-response: `anatomy_removed`" in md and "| +2 |" in md
    assert "## Fill control" in md and "| roi_removed |" in md and "⚑" in md
    # the lungs (and the ROI in them) filled: every score equal, under either fill
    assert result["fill_control"]["table"]["anatomy_removed"]["zero"]["score_std"] == 0.0
    assert "0.500 / 0.500 (constant scores)" in md
    assert dose_response_figure(result).startswith(b"\x89PNG\r\n\x1a\n")
