"""Tests for the ROI-masking audit (spatialspec.audit.masking) and the training-time option."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spatialspec.audit import masking
from spatialspec.audit.common import AuditSet, load_audit_set
from spatialspec.audit.masking import (
    CONDITIONS,
    add_masking_parser,
    audit_masking,
    audit_masking_matrix,
    condition_masks,
    mask_images,
    run_masking,
    write_masking,
    write_masking_matrix,
)
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.data.dataset import MEAN, STD, ManifestDataset
from spatialspec.data.roi import condition_region, fill_region, fill_values

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _norm(raw: np.ndarray | float) -> np.ndarray:
    return (np.asarray(raw, dtype=np.float32) - MEAN) / STD


# ------------------------------------------------------------------------ mask_images by hand


@pytest.fixture
def pair() -> tuple[torch.Tensor, np.ndarray]:
    """Two normalised 1-channel 8x8 images; a 3x3 region in the first, none in the second."""
    images = torch.from_numpy(_norm(np.random.default_rng(0).uniform(0.2, 0.8, (2, 1, 8, 8))))
    regions = np.zeros((2, 8, 8), dtype=bool)
    regions[0, 2:5, 3:6] = True
    return images, regions


def test_zero_fill_changes_only_the_region_bit_for_bit(pair) -> None:
    images, regions = pair
    before = images.clone()
    out = mask_images(images, regions, fill="zero")
    assert torch.equal(images, before)  # the input is untouched
    inside = torch.from_numpy(regions)[:, None].expand_as(out)
    assert torch.equal(out[~inside], images[~inside])  # bit for bit
    assert torch.all(out[inside] == float(_norm(0.0)))
    assert torch.equal(out[1], images[1])  # no region: unchanged


def test_mean_fill_is_the_mean_outside_the_region(pair) -> None:
    images, regions = pair
    out = mask_images(images, regions, fill="mean")
    outside = images[0, 0][~torch.from_numpy(regions[0])]
    filled = out[0, 0][torch.from_numpy(regions[0])]
    assert torch.allclose(filled, outside.mean().expand_as(filled), atol=1e-5)


def test_reference_masks_set_the_fill_statistics(pair) -> None:
    images, regions = pair
    reference = np.zeros_like(regions)
    reference[:, 0, :] = True  # the first row only
    out = mask_images(images, regions, fill="mean", reference_masks=reference)
    assert out[0, 0, 3, 4].item() == pytest.approx(images[0, 0, 0].mean().item(), abs=1e-5)


def test_noise_fill_is_seeded_and_has_the_outside_mean_and_std() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(0.5, 0.1, (1, 1, 64, 64))  # outside: mean 0.5, std 0.1
    images = torch.from_numpy(_norm(raw))
    regions = np.zeros((1, 64, 64), dtype=bool)
    regions[0, :, :32] = True
    a = mask_images(images, regions, fill="noise", seed=3)
    assert torch.equal(a, mask_images(images, regions, fill="noise", seed=3))
    assert not torch.equal(a, mask_images(images, regions, fill="noise", seed=4))
    filled = a[0, 0, :, :32].numpy() * STD + MEAN
    outside = raw[0, 0, :, 32:]
    assert filled.mean() == pytest.approx(outside.mean(), abs=0.01)
    assert filled.std() == pytest.approx(outside.std(), abs=0.01)
    assert torch.equal(a[0, 0, :, 32:], images[0, 0, :, 32:])


def test_noise_per_image_id_does_not_depend_on_the_batch(pair) -> None:
    images, regions = pair
    regions[1, 0, 0] = True
    both = mask_images(images, regions, fill="noise", image_ids=["a", "b"])
    alone = mask_images(images[1:], regions[1:], fill="noise", image_ids=["b"])
    assert torch.equal(both[1], alone[0])


def test_mask_images_rejects_bad_input(pair) -> None:
    images, regions = pair
    with pytest.raises(ValueError, match="unknown masking fill 'sepia'"):
        mask_images(images, regions, fill="sepia")
    with pytest.raises(ValueError, match="expected images"):
        mask_images(images, regions[:, :4], fill="mean")


def test_box_region_fills_the_bounding_box() -> None:
    roi = np.zeros((8, 8), dtype=bool)
    roi[1, 1:5] = True
    roi[1:6, 1] = True  # an L: its box is rows 1-5, cols 1-4
    filled, _ = condition_region("roi_removed", roi, None, (8, 8), region="box")
    box = np.zeros((8, 8), dtype=bool)
    box[1:6, 1:5] = True
    assert np.array_equal(filled, box)
    filled, _ = condition_region("roi_removed", roi, None, (8, 8), region="mask")
    assert np.array_equal(filled, roi)
    kept, _ = condition_region("roi_only", roi, None, (8, 8), region="box")
    assert np.array_equal(kept, ~box)


def test_images_without_a_roi() -> None:
    """roi_removed leaves them as they are; roi_only fills all, with the image's own mean."""
    removed, _ = condition_region("roi_removed", None, None, (4, 4))
    assert not removed.any()
    only, reference = condition_region("roi_only", None, None, (4, 4))
    assert only.all()
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1) / 16
    out = fill_region(image, only, "mean", reference=reference)
    assert np.allclose(out, image.mean())


def test_roi_only_fills_with_the_background_statistics() -> None:
    roi = np.zeros((4, 4), dtype=bool)
    roi[0, 0] = True
    image = np.full((4, 4, 1), 0.3, dtype=np.float32)
    image[0, 0] = 0.9
    filled, reference = condition_region("roi_only", roi, None, (4, 4))
    out = fill_region(image, filled, "mean", reference=reference)
    assert out[0, 0, 0] == pytest.approx(0.9)  # the ROI is kept
    assert np.allclose(out[1:], 0.3)  # the background's mean, not the ROI's


def test_spurious_region_is_dilated() -> None:
    spurious = np.zeros((9, 9), dtype=bool)
    spurious[4, 4] = True
    filled, reference = condition_region("spurious_removed", None, spurious, (9, 9), dilate=2)
    assert filled.sum() == 25 and filled[2:7, 2:7].all()
    assert np.array_equal(reference, ~filled)
    none, _ = condition_region("spurious_removed", np.ones((9, 9), bool), None, (9, 9))
    assert not none.any()  # no spurious mask: unchanged, whatever the ROI
    with pytest.raises(ValueError, match="unknown masking condition 'blur'"):
        condition_region("blur", None, None, (9, 9))


def test_fill_values_zero_and_noise_need_no_statistics_outside() -> None:
    image = np.full((2, 2, 3), 0.5, dtype=np.float32)
    region = np.ones((2, 2), dtype=bool)
    assert fill_values(image, region, "zero").shape == (4, 3)
    with pytest.raises(ValueError, match="random generator"):
        fill_values(image, region, "noise")


# ---------------------------------------------------------------- a stub model: known numbers


class _RegionMean:
    """A 'model' whose score is the sigmoid of the mean normalised intensity in a region."""

    def __init__(self, rows: slice, cols: slice) -> None:
        self.rows, self.cols = rows, cols
        self.hparams: dict[str, Any] = {}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(images[:, 0, self.rows, self.cols].mean(dim=(1, 2)))


class _RegionContrast(_RegionMean):
    """Scores the spread of intensities in a region: sees a two-tone tube, not its mean."""

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, self.rows, self.cols].std(dim=(1, 2))


def _stub_audit_set() -> AuditSet:
    """20 positives (bright 4x4 ROI top left) and 20 negatives on a flat 0.5 background.

    A tube (two pixels, 0.2 and 0.8: it leaves the image mean unchanged) marks 18 positives
    and 2 negatives.
    """
    n, size = 40, 16
    labels = np.repeat([1, 0], n // 2)
    spurious = np.zeros(n)
    spurious[:18] = 1
    spurious[20:22] = 1
    raw = np.full((n, 1, size, size), 0.5, dtype=np.float32)
    roi = np.zeros((n, size, size), dtype=bool)
    roi[labels == 1, :4, :4] = True
    raw[:, 0][roi] = 0.9
    tube = np.zeros((n, size, size), dtype=bool)
    tube[spurious == 1, 12, 10:12] = True
    raw[spurious == 1, 0, 12, 10] = 0.2
    raw[spurious == 1, 0, 12, 11] = 0.8
    return AuditSet(
        image_ids=[f"i{k}" for k in range(n)],
        images=torch.from_numpy(_norm(raw)),
        roi_masks=roi,
        has_roi_mask=labels == 1,
        spurious_masks=tube,
        has_spurious_mask=spurious == 1,
        labels=labels,
        spurious=spurious,
        frame=pd.DataFrame({"image_id": [f"i{k}" for k in range(n)]}),
    )


def _stub_audit(monkeypatch: pytest.MonkeyPatch, model: _RegionMean, **kwargs: Any) -> dict:
    data = SimpleNamespace(manifest_path="stub.csv")
    config = {"method": "stub", "data": {"roi_masking": None}}
    monkeypatch.setattr(masking, "load_model", lambda *a, **k: (model, config, data))
    monkeypatch.setattr(masking, "load_audit_set", lambda *a, **k: _stub_audit_set())
    return audit_masking("stub.ckpt", n_resamples=20, batch_size=16, **kwargs)


def test_a_model_reading_the_roi_drops_to_chance_without_it(monkeypatch) -> None:
    result = _stub_audit(monkeypatch, _RegionMean(slice(0, 4), slice(0, 4)), dilate=0)
    c = result["conditions"]
    assert c["original"]["auroc"] == 1.0 and c["original"]["robust_auroc"] == 1.0
    assert c["roi_removed"]["auroc"] == 0.5  # every score equals the background's
    assert c["roi_removed"]["robust_auroc"] == 0.5
    assert c["roi_removed"]["auroc_drop"] == pytest.approx(0.5)
    assert c["roi_removed"]["n_altered"] == 20
    assert c["roi_only"]["auroc"] == 1.0 and c["roi_only"]["n_altered"] == 40
    assert c["spurious_removed"]["auroc"] == 1.0 and c["spurious_removed"]["n_altered"] == 20
    assert c["original"]["mean_score_positive"] == pytest.approx(torch.sigmoid(torch.tensor(1.6)))
    assert c["roi_removed"]["mean_score_positive"] == pytest.approx(0.5)
    assert c["original"]["n_robust"] == 4


def test_a_shortcut_model_is_exposed_by_removing_the_spurious_region(monkeypatch) -> None:
    result = _stub_audit(monkeypatch, _RegionContrast(slice(12, 13), slice(10, 12)), dilate=1)
    c = result["conditions"]
    assert c["original"]["robust_auroc"] == 0.0  # it ranks by the tube
    assert c["spurious_removed"]["robust_auroc"] == 0.5
    assert c["spurious_removed"]["robust_auroc_drop"] == -0.5
    assert c["roi_removed"]["robust_auroc"] == 0.0  # removing the ROI changes nothing for it
    assert result["method"] == "stub"
    assert result["train_condition"]["condition"] == "original"


# ------------------------------------------------------------------ end to end: real checkpoints


def test_audit_masking_writes_every_condition(tiny_checkpoints, tiny_synthetic, tmp_path) -> None:
    result = audit_masking(tiny_checkpoints["seg"], tiny_synthetic, limit=24, n_resamples=20)
    paths = write_masking(result, tmp_path)
    assert [p.name for p in paths] == [
        "masking.json",
        "masking.md",
        "masking.png",
        "masking_dose_response.png",
    ]
    saved = json.loads((tmp_path / "masking.json").read_text())
    assert list(saved["conditions"]) == list(CONDITIONS)
    assert "_example_images" not in saved
    assert saved["method"] == "seg" and saved["n"] == 24
    assert saved["config"]["region"] == "mask" and saved["config"]["fill"] == "mean"
    assert saved["metadata"]["versions"]["torch"]
    for c in saved["conditions"].values():
        assert 0.0 <= c["auroc"] <= 1.0 and c["n"] == 24
        assert {"auroc_ci", "robust_auroc", "robust_auroc_ci", "n_robust"} <= set(c)
        assert {"mean_score_positive", "mean_score_negative", "auroc_drop"} <= set(c)
    assert saved["conditions"]["original"]["n_altered"] == 0
    assert saved["conditions"]["roi_only"]["n_altered"] == 24
    assert all(set(e["scores"]) == set(CONDITIONS) for e in saved["examples"])
    md = (tmp_path / "masking.md").read_text()
    assert all(f"| {c} |" in md for c in CONDITIONS)
    assert (tmp_path / "masking.png").read_bytes().startswith(PNG_MAGIC)
    ref = saved["metadata_reference"]  # the tiny benchmark knows `spurious`: the default
    assert ref["columns"] == ["spurious"] and ref["split"] == "test" and ref["n_scored"] > 0
    assert ref["robust_auroc"] in (0.0, None)  # the spurious attribute alone is the shortcut
    assert "Metadata-only reference" in md
    assert saved["anatomy"]["n_missing"] == 0 and saved["skipped_conditions"] == {}
    assert saved["conditions"]["anatomy_only"]["n_altered"] == 24
    for curve in saved["dose_response"].values():  # roi and anatomy
        assert [p["dilation_px"] for p in curve["points"]] == [-8, -4, 0, 4, 8, 16]
        visible = [p["visible_fraction"] for p in curve["points"]]
        assert visible == sorted(visible, reverse=True)
    assert set(saved["fill_control"]["table"]["anatomy_removed"]) == {
        "zero", "mean", "noise", "blur"}  # fmt: skip
    assert "## Fill control" in md and "## Dose-response: `anatomy_removed`" in md
    off = audit_masking(tiny_checkpoints["seg"], tiny_synthetic, limit=8, n_resamples=10,
                        conditions=["original"], metadata_columns=[], doses=(),
                        fills=())  # fmt: skip
    assert off["metadata_reference"] is None and off["metadata_references"] == []
    assert off["dose_response"] == {} and off["fill_control"] is None


def test_spurious_removed_alters_only_images_with_a_spurious_mask(
    tiny_checkpoints, tiny_synthetic
) -> None:
    from spatialspec.audit.common import load_model

    _, _, data = load_model(tiny_checkpoints["seg"], tiny_synthetic)
    audit = load_audit_set(data, "test")
    rows = np.arange(len(audit))
    filled, _ = condition_masks(audit, "spurious_removed", rows)
    out = mask_images(audit.images, filled, "mean", image_ids=audit.image_ids)
    changed = (out != audit.images).flatten(1).any(dim=1).numpy()
    assert audit.has_spurious_mask.any()
    assert np.array_equal(changed, audit.has_spurious_mask)
    # the filled area covers the spurious mask
    assert not (audit.spurious_masks & ~filled).any()


# ----------------------------------------------------------------- training-time option


def _datamodule(manifest: Path, **kwargs: Any) -> SpatialDataModule:
    return SpatialDataModule(str(manifest), batch_size=8, augment=False, **kwargs)


@pytest.mark.parametrize(
    ("condition", "fill"),
    [
        ("roi_removed", "mean"),
        ("roi_only", "zero"),
        ("spurious_removed", "noise"),
        ("anatomy_removed", "blur"),
        ("anatomy_box_only", "mean"),
    ],
)
def test_training_batches_are_masked_as_the_audit_masks(tiny_synthetic, condition, fill) -> None:
    """A training batch equals the audit's masking of the same images (one shared fill)."""
    dm = _datamodule(tiny_synthetic, roi_masking=condition, roi_masking_fill=fill)
    batch = next(iter(dm.train_dataloader()))
    audit = load_audit_set(_datamodule(tiny_synthetic), "train")
    rows = np.array([audit.image_ids.index(i) for i in batch["image_id"]])
    filled, reference = condition_masks(audit, condition, rows)
    ids = [audit.image_ids[i] for i in rows]
    expected = mask_images(audit.images[rows], filled, fill, 0, ids, reference)
    assert filled.any()
    assert torch.allclose(batch["image"], expected, atol=1e-4)
    plain = _datamodule(tiny_synthetic).dataset("train", train=True)
    index = {rec["image_id"]: k for k, rec in enumerate(plain.records)}
    targets = torch.stack([plain[index[i]]["mask"] for i in batch["image_id"]])
    assert torch.equal(targets, batch["mask"])  # the dense target is unchanged


def test_roi_masking_reads_the_roi_of_negatives_with_a_mask_file(tiny_synthetic, tmp_path) -> None:
    """The ROI is not label-gated: a negative with a mask file has it removed too."""
    frame = SpatialDataModule(str(tiny_synthetic)).split_frame("train")
    row = frame[frame["label"] == 1].iloc[[0]].assign(label=0)
    plain = ManifestDataset(row, None, image_size=64)[0]
    masked = ManifestDataset(row, None, image_size=64, roi_masking="roi_removed")[0]
    assert not torch.equal(plain["image"], masked["image"])
    assert not masked["mask"].any()  # still an empty target for a negative


def test_unknown_roi_masking_values_error() -> None:
    with pytest.raises(ValueError, match=r"unknown masking condition 'roi'.*roi_removed"):
        SpatialDataModule("unused.csv", roi_masking="roi")
    with pytest.raises(ValueError, match="unknown masking fill 'sepia'"):
        SpatialDataModule("unused.csv", roi_masking="roi_only", roi_masking_fill="sepia")
    with pytest.raises(ValueError, match="unknown masking region 'circle'"):
        SpatialDataModule("unused.csv", roi_masking="roi_only", roi_masking_region="circle")


@pytest.fixture(scope="module")
def roi_removed_run(tmp_path_factory, quick_fit_args) -> Path:
    """A seconds-long ``binary`` fit with ``--data.roi_masking roi_removed``."""
    from spatialspec.training import fit

    out = tmp_path_factory.mktemp("masked_fit") / "binary"
    info = fit(["--method", "binary", "--out_dir", str(out), "--seed", "0",
                "--data.roi_masking", "roi_removed", *quick_fit_args])  # fmt: skip
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["roi_masking"] == (
        "roi_removed"
    )
    return Path(info["best_checkpoint"] or info["last_checkpoint"])


def test_matrix_crosses_train_and_test_conditions(
    roi_removed_run, tiny_checkpoints, tiny_synthetic, tmp_path
) -> None:
    conditions = ("original", "roi_removed")
    matrix = audit_masking_matrix(
        [tiny_checkpoints["seg"], roi_removed_run], tiny_synthetic,
        conditions=conditions, limit=16, n_resamples=20, doses=(), fills=(),
    )  # fmt: skip
    assert matrix["rows"] == ["seg_original", "binary_roi_removed"]
    assert matrix["columns"] == list(conditions)
    assert matrix["train_conditions"]["binary_roi_removed"]["condition"] == "roi_removed"
    for key in ("auroc", "robust_auroc"):
        assert set(matrix[key]["seg_original"]) == set(conditions)
    paths = write_masking_matrix(matrix, tmp_path)
    assert (tmp_path / "seg_original" / "masking.png").is_file()
    saved = json.loads((tmp_path / "masking_matrix.json").read_text())
    assert "audits" not in saved and saved["rows"] == matrix["rows"]
    md = (tmp_path / "masking_matrix.md").read_text()
    assert "| binary_roi_removed | roi_removed |" in md
    assert tmp_path / "masking_matrix.md" in paths


def test_cli_masking(tiny_checkpoints, tiny_synthetic, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="spatialspec")
    audit = parser.add_subparsers(dest="command").add_parser("audit")
    add_masking_parser(audit.add_subparsers(dest="audit", required=True))
    common = ["--manifest", str(tiny_synthetic), "--limit", "12", "--n-resamples", "10"]
    args = parser.parse_args(["audit", "masking", "--checkpoint", str(tiny_checkpoints["seg"]),
                              "--fill", "noise", "--region", "box", "--dose-range=-2:2:4",
                              "--fills", "mean,blur", "--fill-conditions", "anatomy_only",
                              "--metadata-columns", "spurious", "--metadata-columns",
                              "view,age,sex", "--out", str(tmp_path / "one"), *common])  # fmt: skip
    result = run_masking(args)
    assert result["config"]["fill"] == "noise" and result["config"]["region"] == "box"
    assert result["config"]["doses"] == [-2, 2] and result["config"]["fills"] == ["mean", "blur"]
    assert result["fill_control"]["conditions"] == ["anatomy_only"]
    assert [r["columns"] for r in result["metadata_references"]] == [
        ["spurious"], ["view", "age", "sex"]]  # fmt: skip
    assert (tmp_path / "one" / "masking.json").is_file()
    args = parser.parse_args(["audit", "masking", "--checkpoint", f"a={tiny_checkpoints['seg']}",
                              "--checkpoint", f"b={tiny_checkpoints['binary']}",
                              "--conditions", "original,roi_only", "--dose-range", "",
                              "--fills", "", "--out", str(tmp_path / "two"), *common])  # fmt: skip
    matrix = run_masking(args)
    assert matrix["rows"] == ["a", "b"] and matrix["columns"] == ["original", "roi_only"]
    assert (tmp_path / "two" / "b" / "masking.md").is_file()
    assert "ROI-masking matrix" in capsys.readouterr().out
