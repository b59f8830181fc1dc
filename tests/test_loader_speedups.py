"""Tests of the faster loading path: the DICOM lookup-table grey path against the direct one,
the dataset's own resize against albumentations', the lean brightness/contrast, skipped masks
of negatives, and the negative-undersampling sampler."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from spatialspec.data import io, load_manifest, write_manifest, write_png
from spatialspec.data.datamodule import NegativeUndersampler, SpatialDataModule
from spatialspec.data.dataset import ManifestDataset
from spatialspec.data.transforms import (
    _BrightnessContrast,
    build_augmentation,
    build_transform,
    resize_image,
    resize_mask,
)
from spatialspec.methods import get_method
from spatialspec.testing import write_dicom

# ------------------------------------------------------------------------------- DICOM grey


def _reference_grey(path: Path) -> np.ndarray:
    """The direct grey path (LUTs over every pixel in float64), as read_image used to do."""
    ds = pydicom.dcmread(path)
    values = io._apply_luts(ds.pixel_array, ds).astype(np.float64)
    bounds = io._possible_range(ds)
    if bounds is None or bounds[1] <= bounds[0]:
        bounds = (float(values.min()), float(values.max()))
    low, high = bounds
    if high <= low:
        scaled = np.zeros(values.shape)
    else:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def _uncompressed(
    path: Path, pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2", **elements
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", 1, photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored = pixels.dtype.itemsize * 8, bits_stored
    ds.HighBit, ds.PixelRepresentation = bits_stored - 1, int(pixels.dtype.kind == "i")
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _values(dtype: type, bits: int, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    """Every storable value (and the extremes) of ``bits`` bits in ``dtype``, shuffled."""
    info = np.iinfo(dtype)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if info.min < 0 else (0, 2**bits - 1)
    rng = np.random.default_rng(bits)
    values = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    values.flat[:2] = low, high
    return values


def _modality_lut() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = [int(v) for v in (np.arange(256) ** 2 // 4)]
    item["LUTData"].VR = "US"
    return item


CASES: dict[str, tuple[type, int, dict[str, Any]]] = {
    "8bit": (np.uint8, 8, {}),
    "8bit_monochrome1": (np.uint8, 8, {"photometric": "MONOCHROME1"}),
    "8bit_signed": (np.int8, 8, {}),
    "12bit_rescaled_monochrome1": (
        np.uint16, 12, {"photometric": "MONOCHROME1", "RescaleSlope": 2, "RescaleIntercept": -100}
    ),
    "12bit_window": (np.uint16, 12, {"WindowCenter": 1000, "WindowWidth": 201}),
    "12bit_signed_rescale_window": (
        np.int16, 12,
        {"RescaleSlope": 0.5, "RescaleIntercept": 20, "WindowCenter": 0, "WindowWidth": 800},
    ),
    "12bit_sigmoid": (
        np.uint16, 12,
        {"WindowCenter": 2000, "WindowWidth": 1000, "VOILUTFunction": "SIGMOID"},
    ),
    "16bit": (np.uint16, 16, {}),
    "16bit_signed": (np.int16, 16, {}),
    "16bit_signed_monochrome1": (np.int16, 16, {"photometric": "MONOCHROME1"}),
    "8bit_modality_lut_sequence": (np.uint8, 8, {"ModalityLUTSequence": [_modality_lut()]}),
    "degenerate_range": (np.uint16, 12, {"RescaleSlope": 0, "RescaleIntercept": 5}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_table_grey_path_equals_direct_path(tmp_path: Path, case: str, monkeypatch) -> None:
    dtype, bits, elements = CASES[case]
    path = _uncompressed(tmp_path / "a.dcm", _values(dtype, bits), bits, **elements)
    lookups: list[int] = []
    real_lookup = io._lookup
    monkeypatch.setattr(io, "_lookup", lambda t, a: lookups.append(t.size) or real_lookup(t, a))
    out = io.read_image(path)
    # The table covers every value of the pixel dtype; a degenerate range falls back.
    assert lookups == ([] if case == "degenerate_range" else [256 if bits == 8 else 65536])
    assert out.dtype == np.float32 and out.shape == (40, 50)
    np.testing.assert_array_equal(out, _reference_grey(path))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_table_grey_path_handles_values_above_bits_stored(tmp_path: Path) -> None:
    """12 bits stored in 16: stray high bits must not index past the table."""
    pixels = _values(np.uint16, 12)
    pixels[0, :3] = [4096, 40000, 65535]
    path = _uncompressed(tmp_path / "a.dcm", pixels, 12)
    np.testing.assert_array_equal(io.read_image(path), _reference_grey(path))


def test_table_grey_path_on_jpeg_baseline(tmp_path: Path) -> None:
    y, x = np.mgrid[0:96, 0:128]
    pixels = (127 + 120 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.uint8)
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        path = write_dicom(
            tmp_path / f"{photometric}.dcm", pixels, "1.2.3.4", photometric=photometric
        )
        np.testing.assert_array_equal(io.read_image(path), _reference_grey(path))


SHARED = os.environ.get("SPATIALSPEC_SHARED_DATA")


@pytest.mark.integration
@pytest.mark.skipif(not SHARED, reason="SPATIALSPEC_SHARED_DATA is not set")
def test_table_grey_path_on_real_siim_dicoms() -> None:
    files = sorted(Path(str(SHARED), "siim", "sample_images").glob("*.dcm"))
    assert files
    for path in files:
        np.testing.assert_array_equal(io.read_image(path), _reference_grey(path))


# ------------------------------------------------------------------------------- resize, augment


@pytest.mark.parametrize("channels", [1, 3])
def test_dataset_resize_equals_albumentations_resize(channels: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((100, 120, channels)).astype(np.float32)
    mask = (rng.random((100, 120)) > 0.7).astype(np.uint8)
    expected = build_transform(48, augment=False)(image=image, mask=mask)
    np.testing.assert_array_equal(resize_image(image, 48), expected["image"])
    np.testing.assert_array_equal(resize_mask(mask, 48), expected["mask"])
    same = rng.random((48, 48, channels)).astype(np.float32)
    assert resize_image(same, 48) is same


@pytest.mark.parametrize("side", [40, 50])
def test_grey_to_rgb_after_resize_equals_before(side: int) -> None:
    """The dataset repeats grey channels after resizing (3x less work): same up to 1 ulp."""
    grey = np.random.default_rng(1).random((100, 100, 1)).astype(np.float32)
    before = resize_image(np.repeat(grey, 3, axis=-1), side)
    after = np.repeat(resize_image(grey, side), 3, axis=-1)
    np.testing.assert_allclose(after, before, atol=1.2e-7, rtol=0)


def test_lean_brightness_contrast_matches_albumentations() -> None:
    image = np.random.default_rng(2).random((64, 64, 1)).astype(np.float32)
    ours = A.Compose([_BrightnessContrast(0.3, 0.3, p=1.0)], seed=5)
    theirs = A.Compose([A.RandomBrightnessContrast(0.3, 0.3, p=1.0)], seed=5)
    changed = 0
    for _ in range(20):
        a, b = ours(image=image)["image"], theirs(image=image)["image"]
        assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
        np.testing.assert_allclose(a, b, atol=2e-7, rtol=0)
        changed += not np.array_equal(a, image)
    assert changed == 20
    uint8 = (image * 255).astype(np.uint8)  # other dtypes go through albucore
    np.testing.assert_array_equal(ours(image=uint8)["image"], theirs(image=uint8)["image"])


def _frame(tmp_path: Path, rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    write_png(tmp_path / "img.png", np.random.default_rng(0).random((128, 128)).astype(np.float32))
    return pd.DataFrame(
        [{"image_id": i, "image_path": str(tmp_path / "img.png"), "label": y, "split": "train",
          "spurious": float("nan"), "mask_path": m, "mask_available": 1} for i, y, m in rows]
    )  # fmt: skip


def test_dataset_resize_path_equals_transform_resize_path(tmp_path: Path) -> None:
    mask = np.zeros((128, 128), bool)
    mask[30:70, 40:90] = True
    write_png(tmp_path / "m.png", mask)
    frame = _frame(tmp_path, [("pos", 1, str(tmp_path / "m.png")), ("neg", 0, "")])
    for channels in (1, 3):
        legacy = ManifestDataset(frame, build_transform(64, False), channels=channels)
        resized = ManifestDataset(frame, None, channels=channels, image_size=64)
        for i in range(2):
            a, b = legacy[i], resized[i]
            assert torch.equal(a["mask"], b["mask"])
            if channels == 1:
                assert torch.equal(a["image"], b["image"])
            else:  # grey -> RGB after the resize: cv2's 2x area path may differ by 1 ulp
                torch.testing.assert_close(b["image"], a["image"], atol=1e-6, rtol=0)
    assert resized[0]["mask"].sum() == 20 * 25


def test_masks_of_negatives_are_not_read(tmp_path: Path) -> None:
    """A negative's target is empty, so its mask file is not even opened (here: unreadable)."""
    (tmp_path / "bad.png").write_text("<html>not a png</html>")
    frame = _frame(tmp_path, [("neg", 0, str(tmp_path / "bad.png"))])
    for ds in (
        ManifestDataset(frame, build_transform(64, False)),
        ManifestDataset(frame, build_augmentation(True, seed=0), image_size=64),
    ):
        sample = ds[0]
        assert sample["mask"].shape == (1, 64, 64) and sample["mask"].sum() == 0
    positive = _frame(tmp_path, [("pos", 1, str(tmp_path / "bad.png"))])
    with pytest.raises(ValueError, match=r"bad\.png"):
        ManifestDataset(positive, None, image_size=64)[0]


def test_sample_image_is_contiguous_float32_for_rgb(tmp_path: Path) -> None:
    frame = _frame(tmp_path, [("neg", 0, "")])
    image = ManifestDataset(frame, build_augmentation(True, seed=0), channels=3, image_size=32)[0][
        "image"
    ]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and image.is_contiguous()


# ------------------------------------------------------------------------------- undersampling


LABELS = np.array([1] * 10 + [0] * 90)


def test_undersampler_counts_and_positives() -> None:
    sampler = NegativeUndersampler(LABELS, ratio=2.0, seed=0)
    assert len(sampler) == 30
    subsets = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(set(indices)) == 30
        assert set(range(10)) <= set(indices)  # every positive, every epoch
        negatives = frozenset(i for i in indices if i >= 10)
        assert len(negatives) == 20
        subsets.append(negatives)
    assert len(set(subsets)) == 4  # a fresh subset each epoch
    assert indices != sorted(indices)  # shuffled


def test_undersampler_is_reproducible_and_advances_without_set_epoch() -> None:
    a, b = NegativeUndersampler(LABELS, 1.0, seed=7), NegativeUndersampler(LABELS, 1.0, seed=7)
    first = [list(a) for _ in range(3)]  # no set_epoch: epochs 0, 1, 2
    assert first == [list(b) for _ in range(3)]
    assert first[0] != first[1]
    b.set_epoch(1)
    assert list(b) == first[1]
    assert list(NegativeUndersampler(LABELS, 1.0, seed=8)) != first[0]


def test_undersampler_ratio_limits() -> None:
    assert len(NegativeUndersampler(LABELS, ratio=100.0)) == 100  # all negatives
    assert len(NegativeUndersampler(LABELS, ratio=0.04)) == 10  # round(0.4) == 0 negatives
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive ratio"):
            NegativeUndersampler(LABELS, ratio=bad)
        with pytest.raises(ValueError, match="positive ratio"):
            SpatialDataModule("unused.csv", undersample_negatives=bad)
    with pytest.raises(ValueError, match="has none"):
        NegativeUndersampler(np.zeros(5), ratio=1.0)


def _skewed_manifest(tiny_synthetic: Path, tmp_path: Path) -> Path:
    """The tiny benchmark with only 6 training positives (42 negatives)."""
    frame = load_manifest(tiny_synthetic)
    train_pos = frame.index[(frame["split"] == "train") & (frame["label"] == 1)]
    frame = frame.drop(train_pos[6:])
    path = tmp_path / "manifest.csv"
    write_manifest(frame, path)
    return path


def test_datamodule_undersamples_training_only(tiny_synthetic: Path, tmp_path: Path) -> None:
    manifest = _skewed_manifest(tiny_synthetic, tmp_path)
    dm = SpatialDataModule(str(manifest), batch_size=5, undersample_negatives=1.5)

    def epochs(seed: int) -> list[list[str]]:
        dm.seed = seed
        loader = dm.train_dataloader()
        out = []
        for epoch in range(3):
            loader.batch_sampler.set_epoch(epoch)
            out.append([i for batch in loader for i in batch["image_id"]])
        return out

    runs = epochs(0)
    for ids in runs:
        assert len(ids) == 6 + 9  # 6 positives + round(1.5 * 6) negatives: 3 full batches
        labels = dm.frame.set_index("image_id").loc[ids, "label"]
        assert labels.sum() == 6
    assert len({frozenset(ids) for ids in runs}) == 3
    assert runs == epochs(0) and runs != epochs(1)
    assert sum(b["image"].shape[0] for b in dm.val_dataloader()) == 24  # not undersampled
    assert sum(b["image"].shape[0] for b in dm.test_dataloader()) == 40


def test_undersampled_fast_dev_run_fit(tiny_synthetic: Path, tmp_path: Path, small_backbone):
    torch.manual_seed(0)
    method = get_method("seg")(backbone=small_backbone)
    data = SpatialDataModule(
        str(_skewed_manifest(tiny_synthetic, tmp_path)),
        batch_size=4,
        undersample_negatives=1.0,
        annotation=method.annotation,
        cache_dir=str(tmp_path / "cache"),
    )
    epochs: list[int] = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            epochs.append(trainer.train_dataloader.batch_sampler.epoch)

    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Spy()],
    )  # fmt: skip
    trainer.fit(method, datamodule=data)
    assert trainer.global_step == 4
    assert epochs == [0, 1]  # Lightning called set_epoch before each epoch
    draw = trainer.train_dataloader.batch_sampler.draw
    assert isinstance(draw.source, NegativeUndersampler)
    assert len(draw.source) == 12 and len(draw) == 3  # 12 rows in batches of 4
    assert any((tmp_path / "cache").rglob("*.npy"))

    dev = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False,
                    enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    dev.fit(method, datamodule=data)
    assert dev.global_step == 1
    assert np.isfinite(float(dev.callback_metrics["train/loss"]))


def test_worker_seeding_without_augmentation(tiny_synthetic: Path) -> None:
    dm = SpatialDataModule(str(tiny_synthetic), batch_size=8, num_workers=1, augment=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 64, 64)  # worker_init_fn copes with no transform
