"""Tests for ManifestDataset, the transforms and SpatialDataModule."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spatialspec.data import box_mask, load_manifest, write_manifest, write_png
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.data.dataset import MEAN, STD, ManifestDataset
from spatialspec.data.transforms import build_transform

KEYS = {"image", "mask", "label", "mask_available", "spurious", "image_id"}


def _two_blobs(size: int = 64) -> np.ndarray:
    """A mask with an L-shaped blob and a diagonal line (their boxes hold extra pixels)."""
    mask = np.zeros((size, size), bool)
    mask[10:30, 8:14] = True
    mask[24:30, 8:26] = True  # L shape
    for k in range(12):
        mask[40 + k, 36 + k] = True  # diagonal: box 12x12 holds 12 pixels
    return mask


@pytest.fixture
def custom_manifest(tmp_path: Path) -> Path:
    """Four rows: a positive with mask and unknown spurious attribute, a label-only positive,
    a negative with a known-empty mask, and an RGB negative; all in the train split."""
    rng = np.random.default_rng(0)
    mask = _two_blobs()
    image = (0.1 + 0.8 * mask).astype(np.float32)  # bright exactly on the mask
    write_png(tmp_path / "img" / "pos.png", image)
    write_png(tmp_path / "img" / "pos_nomask.png", rng.random((64, 64)).astype(np.float32))
    write_png(tmp_path / "img" / "neg.png", rng.random((64, 64)).astype(np.float32))
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    write_png(tmp_path / "img" / "red.png", red)
    write_png(tmp_path / "mask" / "pos.png", mask)
    rows = [
        ("pos", "img/pos.png", 1, None, "mask/pos.png", 1),
        ("pos_nomask", "img/pos_nomask.png", 1, 1, "", 0),
        ("neg", "img/neg.png", 0, 0, "", 1),
        ("red", "img/red.png", 0, 1, "", 1),
    ]
    frame = pd.DataFrame(
        [
            {
                "image_id": i,
                "image_path": p,
                "label": y,
                "split": "train",
                "spurious": s,
                "mask_path": m,
                "mask_available": a,
            }
            for i, p, y, s, m, a in rows
        ]
    )
    path = tmp_path / "manifest.csv"
    write_manifest(frame, path)
    return path


def _dataset(manifest: Path, **kwargs) -> ManifestDataset:
    return ManifestDataset(load_manifest(manifest), build_transform(64, augment=False), **kwargs)


# ------------------------------------------------------------------------------- samples


def test_sample_keys_shapes_and_dtypes(tiny_synthetic: Path) -> None:
    frame = load_manifest(tiny_synthetic)
    ds = ManifestDataset(frame, build_transform(64, augment=False))
    assert len(ds) == len(frame) == 48 + 24 + 40
    positive = int(np.flatnonzero(frame["label"].to_numpy() == 1)[0])
    sample = ds[positive]
    assert set(sample) == KEYS
    assert sample["image"].shape == (1, 64, 64)
    assert sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (1, 64, 64)
    assert sample["mask"].dtype == torch.float32
    assert set(sample["mask"].unique().tolist()) == {0.0, 1.0}
    assert sample["mask"].sum().item() == frame["pathology_pixels"].iloc[positive]
    assert sample["label"].dtype == torch.float32 and sample["label"].item() == 1.0
    assert sample["mask_available"].item() == 1.0
    assert sample["spurious"].item() == frame["spurious"].iloc[positive]
    assert isinstance(sample["image_id"], str)
    assert sample["image_id"] == frame["image_id"].iloc[positive]


def test_image_normalisation(custom_manifest: Path) -> None:
    sample = _dataset(custom_manifest)[0]
    raw = (0.1 + 0.8 * _two_blobs()).astype(np.float32)
    expected = (np.round(raw * 255) / 255 - MEAN) / STD
    np.testing.assert_allclose(sample["image"][0].numpy(), expected, atol=1e-5)


def test_unknown_spurious_is_minus_one_and_missing_masks_are_empty(custom_manifest: Path) -> None:
    ds = _dataset(custom_manifest)
    by_id = {ds[i]["image_id"]: ds[i] for i in range(len(ds))}
    assert by_id["pos"]["spurious"].item() == -1.0
    assert by_id["pos_nomask"]["spurious"].item() == 1.0
    assert by_id["neg"]["spurious"].item() == 0.0
    assert by_id["pos_nomask"]["mask_available"].item() == 0.0
    assert by_id["pos_nomask"]["mask"].sum().item() == 0.0
    assert by_id["neg"]["mask_available"].item() == 1.0
    assert by_id["neg"]["mask"].sum().item() == 0.0
    assert by_id["pos"]["mask"][0].bool().numpy().tolist() == _two_blobs().tolist()


def test_box_annotation_fills_each_component_box(custom_manifest: Path) -> None:
    mask = _two_blobs()
    sample = _dataset(custom_manifest, annotation="box")[0]
    target = sample["mask"][0].numpy().astype(bool)
    np.testing.assert_array_equal(target, box_mask(mask))
    assert target[mask].all()  # the boxes contain the mask
    assert target.sum() == 20 * 18 + 12 * 12 > mask.sum()


def test_label_annotation_still_supplies_the_mask(custom_manifest: Path) -> None:
    sample = _dataset(custom_manifest, annotation="label")[0]
    np.testing.assert_array_equal(sample["mask"][0].numpy().astype(bool), _two_blobs())


def test_unknown_annotation_raises(custom_manifest: Path) -> None:
    with pytest.raises(
        ValueError, match=re.escape("unknown annotation 'boxes'; valid: label, box, mask")
    ):
        _dataset(custom_manifest, annotation="boxes")


def test_grey_to_three_channels(custom_manifest: Path) -> None:
    grey = _dataset(custom_manifest, channels=1)[0]["image"]
    rgb = _dataset(custom_manifest, channels=3)[0]["image"]
    assert rgb.shape == (3, 64, 64)
    for c in range(3):
        torch.testing.assert_close(rgb[c], grey[0])


def test_rgb_to_one_channel_uses_luminance(custom_manifest: Path) -> None:
    ds = _dataset(custom_manifest, channels=1)
    red = ds[3]
    assert red["image_id"] == "red"
    assert red["image"].shape == (1, 64, 64)
    torch.testing.assert_close(red["image"], torch.full((1, 64, 64), (0.299 - MEAN) / STD))
    assert _dataset(custom_manifest, channels=3)[3]["image"].shape == (3, 64, 64)


def test_resize_to_image_size(tmp_path: Path) -> None:
    mask = np.zeros((128, 128), bool)
    mask[32:64, 64:96] = True
    write_png(tmp_path / "i.png", mask.astype(np.float32))
    write_png(tmp_path / "m.png", mask)
    frame = pd.DataFrame(
        [{"image_id": "a", "image_path": "i.png", "label": 1, "split": "train",
          "spurious": 0, "mask_path": "m.png", "mask_available": 1}]
    )  # fmt: skip
    write_manifest(frame, tmp_path / "manifest.csv")
    sample = ManifestDataset(load_manifest(tmp_path / "manifest.csv"), build_transform(64, False))[
        0
    ]
    assert sample["image"].shape == (1, 64, 64)
    expected = np.zeros((64, 64), bool)
    expected[16:32, 32:48] = True
    np.testing.assert_array_equal(sample["mask"][0].numpy().astype(bool), expected)


# ------------------------------------------------------------------------------- augmentation


def test_augmentation_moves_the_mask_with_the_image(custom_manifest: Path) -> None:
    """The image is bright exactly on the mask: after every random geometric transform the
    bright pixels must still coincide with the transformed mask."""
    transform = build_transform(64, augment=True)
    ds = ManifestDataset(load_manifest(custom_manifest), transform)
    original = _two_blobs()
    moved = 0
    for seed in range(30):
        transform.set_random_seed(seed)
        sample = ds[0]
        image, mask = sample["image"][0].numpy(), sample["mask"][0].numpy() > 0.5
        bright = image > (image.min() + image.max()) / 2
        iou = (bright & mask).sum() / (bright | mask).sum()
        assert iou > 0.95, (seed, iou)
        assert mask.sum() > 0.8 * original.sum()
        moved += not np.array_equal(mask, original)
    assert moved >= 5  # the geometry did change in many draws


def test_augmentation_off_is_identity_for_64px(custom_manifest: Path) -> None:
    sample = _dataset(custom_manifest)[0]
    np.testing.assert_array_equal(sample["mask"][0].numpy().astype(bool), _two_blobs())


def test_augmented_box_targets_bound_the_augmented_mask(custom_manifest: Path) -> None:
    transform = build_transform(64, augment=True)
    masks = ManifestDataset(load_manifest(custom_manifest), transform, annotation="mask")
    boxes = ManifestDataset(load_manifest(custom_manifest), transform, annotation="box")
    for seed in range(10):
        transform.set_random_seed(seed)
        mask = masks[0]["mask"][0].numpy().astype(bool)
        transform.set_random_seed(seed)
        box = boxes[0]["mask"][0].numpy().astype(bool)
        np.testing.assert_array_equal(box, box_mask(mask))


# ------------------------------------------------------------------------------- data module


def test_datamodule_batches(tiny_synthetic: Path) -> None:
    dm = SpatialDataModule(str(tiny_synthetic), batch_size=8, annotation="box")
    assert dm.eval_batch_size == 16
    train = list(dm.train_dataloader())
    assert [b["image"].shape[0] for b in train] == [8] * 6
    val_sizes = [b["image"].shape[0] for b in dm.val_dataloader()]
    assert val_sizes == [16, 8]
    test_sizes = [b["image"].shape[0] for b in dm.test_dataloader()]
    assert test_sizes == [16, 16, 8]
    batch = train[0]
    assert batch["image"].shape == (8, 1, 64, 64)
    assert batch["mask"].shape == (8, 1, 64, 64)
    assert batch["label"].shape == batch["spurious"].shape == batch["mask_available"].shape == (8,)
    assert len(batch["image_id"]) == 8
    ids = [i for b in dm.predict_loader("test") for i in b["image_id"]]
    assert ids == [f"test_{i:05d}" for i in range(40)]  # un-shuffled, manifest order


def test_datamodule_channels_and_drop_last(tiny_synthetic: Path) -> None:
    dm = SpatialDataModule(str(tiny_synthetic), batch_size=32, channels=3, augment=False)
    train = list(dm.train_dataloader())
    assert [b["image"].shape[0] for b in train] == [32]  # 48 images, last partial batch dropped
    assert train[0]["image"].shape[1] == 3
    small = SpatialDataModule(str(tiny_synthetic), batch_size=64)  # batch larger than the split
    assert sum(b["image"].shape[0] for b in small.train_dataloader()) == 48


def test_empty_split_error_names_the_manifest(custom_manifest: Path) -> None:
    dm = SpatialDataModule(str(custom_manifest), batch_size=2)
    assert len(dm.dataset("train")) == 4
    with pytest.raises(ValueError, match=re.escape(f"{custom_manifest}: split 'val' has no rows")):
        dm.val_dataloader()
    with pytest.raises(ValueError, match="split 'test' has no rows"):
        dm.predict_loader("test")


def _augmented_stream(dm: SpatialDataModule, workers: int, n: int = 8) -> list[torch.Tensor]:
    torch.manual_seed(0)  # fixes the loader's base seed, hence each worker's seed
    loader = dm.train_dataloader()
    loader = torch.utils.data.DataLoader(
        loader.dataset, batch_size=1, num_workers=workers, worker_init_fn=loader.worker_init_fn
    )
    return [batch["image"][0] for _, batch in zip(range(n), loader, strict=False)]


def test_training_augmentations_follow_the_seed_epoch_and_index(tiny_synthetic: Path) -> None:
    """A keyed sample is augmented from (seed, epoch, index) alone; plain indices draw on."""
    from spatialspec.data.samplers import SampleKey

    def sample(seed: int, key: SampleKey | int) -> torch.Tensor:
        dm = SpatialDataModule(str(tiny_synthetic), image_size=64, batch_size=4, seed=seed)
        return dm.dataset("train", train=True)[key]["image"]

    key = SampleKey(epoch=2, index=0)
    assert torch.equal(sample(0, key), sample(0, key))
    draws = {tuple(sample(s, k).flatten()[:64].tolist())
             for s, k in [(0, key), (1, key), (0, SampleKey(3, 0))]}  # fmt: skip
    assert len(draws) == 3  # another seed or another epoch: another augmentation
    ds = SpatialDataModule(str(tiny_synthetic), image_size=64, seed=0).dataset("train", True)
    assert not torch.equal(ds[0]["image"], ds[0]["image"])  # a plain index: the running state
    assert torch.equal(ds[key]["image"], sample(0, key))  # ...which keyed samples do not use


def test_each_worker_draws_its_own_augmentations(tiny_synthetic: Path, tmp_path: Path) -> None:
    """Without per-worker reseeding, both workers would copy one albumentations random state
    and augment the same image identically."""
    frame = load_manifest(tiny_synthetic)
    same = pd.concat([frame[frame["split"] == "train"].iloc[[0]]] * 8, ignore_index=True)
    same["image_id"] = [f"copy{i}" for i in range(8)]
    manifest = tmp_path / "manifest.csv"
    write_manifest(same, manifest)
    dm = SpatialDataModule(str(manifest), image_size=64, batch_size=1, num_workers=2)
    stream = _augmented_stream(dm, workers=2)
    worker0, worker1 = stream[0::2], stream[1::2]  # loaders alternate between workers
    assert any(not torch.equal(a, b) for a, b in zip(worker0, worker1, strict=True))
