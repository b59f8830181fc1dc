"""Tests for the on-disk image cache: keys, hits and misses, corruption, atomic writes, and
cached samples matching uncached ones."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spatialspec.data import cache as cache_module
from spatialspec.data import load_manifest, write_png
from spatialspec.data.cache import ImageCache, dequantise, quantise
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.data.dataset import STD, ManifestDataset
from spatialspec.data.transforms import RESIZE_SPEC, build_augmentation

#: Largest difference of a normalised pixel between cached and uncached samples: the uint16
#: quantisation (0.5 / 65535) scaled by 1 / STD, with room for the contrast factor (<= 1.1).
NORMALISED_ATOL = 1.2 * 0.5 / 65535 / STD + 1e-6


def _files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    write_png(tmp_path / "img.png", rng.random((32, 32)).astype(np.float32))
    mask = np.zeros((32, 32), bool)
    mask[4:12, 8:20] = True
    write_png(tmp_path / "mask.png", mask)
    return tmp_path / "img.png", tmp_path / "mask.png"


def _touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def _sample(cache: ImageCache, image: Path, mask: Path | None, size: int = 16):
    def build() -> tuple[np.ndarray, np.ndarray | None]:
        calls.append(1)
        values = np.full((size, size, 1), 0.25, np.float32)
        return values, None if mask is None else np.ones((size, size), np.uint8)

    calls: list[int] = []
    out = cache.fetch(image, mask, size, 1, RESIZE_SPEC, build)
    return out, len(calls)


# ------------------------------------------------------------------------------- keys


def test_key_changes_with_every_input(tmp_path: Path) -> None:
    image, mask = _files(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    base = cache.key(image, mask, 16, 1, RESIZE_SPEC)
    assert base == cache.key(str(image), str(mask), 16, 1, RESIZE_SPEC)  # stable
    assert base == cache.key(tmp_path / "." / "img.png", mask, 16, 1, RESIZE_SPEC)  # resolved
    others = {
        cache.key(image, None, 16, 1, RESIZE_SPEC),
        cache.key(image, mask, 32, 1, RESIZE_SPEC),
        cache.key(image, mask, 16, 3, RESIZE_SPEC),
        cache.key(image, mask, 16, 1, "image=INTER_LINEAR,mask=INTER_NEAREST"),
    }
    assert base not in others and len(others) == 4


def test_key_changes_when_a_file_changes(tmp_path: Path, monkeypatch) -> None:
    image, mask = _files(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    keys = [cache.key(image, mask, 16, 1, RESIZE_SPEC)]
    _touch_later(image)  # same size, new mtime
    keys.append(cache.key(image, mask, 16, 1, RESIZE_SPEC))
    _touch_later(mask)
    keys.append(cache.key(image, mask, 16, 1, RESIZE_SPEC))
    stat = image.stat()
    with open(image, "ab") as fh:  # new size, same mtime
        fh.write(b"\0")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    keys.append(cache.key(image, mask, 16, 1, RESIZE_SPEC))
    monkeypatch.setattr(cache_module, "CACHE_VERSION", cache_module.CACHE_VERSION + 1)
    keys.append(cache.key(image, mask, 16, 1, RESIZE_SPEC))
    assert len(set(keys)) == 5


# ------------------------------------------------------------------------------- hits, misses


def test_miss_then_hit_and_file_layout(tmp_path: Path) -> None:
    image, mask = _files(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    (first, first_mask), built = _sample(cache, image, mask)
    assert built == 1 and (cache.hits, cache.misses) == (0, 1)
    key = cache.key(image, mask, 16, 1, RESIZE_SPEC)
    assert cache.path(key) == tmp_path / "cache" / key[:2] / f"{key}.npy"
    assert cache.path(key).is_file()
    (second, second_mask), built = _sample(cache, image, mask)
    assert built == 0 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(second, first)  # hit == miss, bit for bit
    np.testing.assert_array_equal(second_mask, first_mask)
    assert second.dtype == np.float32 and second.shape == (16, 16, 1)
    assert second_mask.dtype == np.uint8 and set(np.unique(second_mask)) == {1}


def test_changed_file_or_size_is_a_miss(tmp_path: Path) -> None:
    image, mask = _files(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    assert _sample(cache, image, mask)[1] == 1
    assert _sample(cache, image, mask)[1] == 0
    _touch_later(mask)
    assert _sample(cache, image, mask)[1] == 1
    assert _sample(cache, image, mask, size=8)[1] == 1
    assert _sample(cache, image, None)[1] == 1  # no mask: another entry
    assert (cache.hits, cache.misses) == (1, 4)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "extra", "wrong_shape"])
def test_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path: Path, damage: str) -> None:
    image, mask = _files(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    (expected, _), _ = _sample(cache, image, mask)
    path = cache.path(cache.key(image, mask, 16, 1, RESIZE_SPEC))
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) - 10],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "extra": data + b"\0",
        "wrong_shape": None,
    }[damage]
    if damaged is None:
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((8, 8, 1), np.uint16))
            np.save(fh, np.zeros((8, 8), bool))
    else:
        path.write_bytes(damaged)
    (image_out, _), built = _sample(cache, image, mask)
    assert built == 1 and cache.corrupt == 1 and cache.misses == 2
    np.testing.assert_array_equal(image_out, expected)
    assert path.read_bytes() == data  # rewritten
    assert _sample(cache, image, mask)[1] == 0


def test_missing_image_is_reported_by_the_reader(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")

    def build() -> tuple[np.ndarray, None]:
        raise FileNotFoundError("reader's message")

    with pytest.raises(FileNotFoundError, match="reader's message"):
        cache.fetch(tmp_path / "nope.png", None, 16, 1, RESIZE_SPEC, build)
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------- writes


def test_quantisation_is_within_half_a_step() -> None:
    values = np.concatenate([np.linspace(0, 1, 10001), [0.0, 1.0, -0.1, 1.1]]).astype(np.float32)
    restored = dequantise(quantise(values))
    assert restored.dtype == np.float32
    assert np.abs(restored[:-2] - values[:-2]).max() <= 0.5 / 65535 + 1e-7
    assert restored[-4:].tolist() == [0.0, 1.0, 0.0, 1.0]  # exact ends, clipped outside


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    image, mask = _files(tmp_path)
    cache = ImageCache(tmp_path / "cache")
    key = cache.key(image, mask, 16, 1, RESIZE_SPEC)
    cache.store(key, np.zeros((16, 16, 1), np.float32), None)
    before = cache.path(key).read_bytes()
    real_save = np.save

    def failing_save(fh, array, **kwargs) -> None:
        real_save(fh, array, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", failing_save)
    with pytest.warns(UserWarning, match="disk full"):
        image_out, _ = cache.store(key, np.ones((16, 16, 1), np.float32), None)
    assert image_out.min() == 1.0  # the sample is still returned
    assert cache.path(key).read_bytes() == before  # the old entry is intact
    assert os.listdir(cache.path(key).parent) == [cache.path(key).name]  # no temporary file


def test_concurrent_writers_and_readers_see_whole_entries(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    key = "ab" * 16
    image = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
    expected = dequantise(quantise(image))
    mask = np.ones((64, 64), np.uint8)
    seen: list[bool] = []

    def write() -> None:
        for _ in range(20):
            cache.store(key, image, mask)

    def read() -> None:
        for _ in range(200):
            out = cache.load(key, 64, 1, with_mask=True)
            if out is not None:
                seen.append(np.array_equal(out[0], expected) and bool(out[1].all()))

    threads = [threading.Thread(target=f) for f in (write, write, read, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen and all(seen)
    assert cache.corrupt == 0
    assert os.listdir(cache.path(key).parent) == [cache.path(key).name]


# ------------------------------------------------------------------------------- dataset


def _datasets(frame: pd.DataFrame, cache_root: Path, augment: bool, size: int = 64):
    plain = ManifestDataset(frame, build_augmentation(augment, seed=0), image_size=size)
    cached = ManifestDataset(
        frame, build_augmentation(augment, seed=0), image_size=size, cache=ImageCache(cache_root)
    )
    return plain, cached


@pytest.mark.parametrize("augment", [False, True])
def test_cached_samples_match_uncached(tiny_synthetic: Path, tmp_path: Path, augment: bool):
    frame = load_manifest(tiny_synthetic).iloc[:24]
    plain, cached = _datasets(frame, tmp_path / "cache", augment)
    for epoch in range(2):  # cold, then warm
        for i in range(len(frame)):
            a, b = plain[i], cached[i]
            torch.testing.assert_close(b["image"], a["image"], atol=NORMALISED_ATOL, rtol=0)
            assert torch.equal(b["mask"], a["mask"]), (epoch, i)
            assert b["label"] == a["label"] and b["image_id"] == a["image_id"]
    assert cached.cache.misses == len(frame) and cached.cache.hits == len(frame)


def test_cold_and_warm_cache_give_identical_samples(tiny_synthetic: Path, tmp_path: Path):
    frame = load_manifest(tiny_synthetic).iloc[:12]
    _, cold = _datasets(frame, tmp_path / "cache", augment=True)
    first = [cold[i]["image"] for i in range(len(frame))]
    _, warm = _datasets(frame, tmp_path / "cache", augment=True)  # same seed, filled cache
    second = [warm[i]["image"] for i in range(len(frame))]
    assert warm.cache.hits == len(frame) and warm.cache.misses == 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_cache_needs_image_size(tiny_synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        ManifestDataset(load_manifest(tiny_synthetic), None, cache=ImageCache(tmp_path))


def test_datamodule_cache_dir(tiny_synthetic: Path, tmp_path: Path) -> None:
    plain = SpatialDataModule(str(tiny_synthetic), batch_size=16, augment=False)
    cached = SpatialDataModule(
        str(tiny_synthetic), batch_size=16, augment=False, cache_dir=str(tmp_path / "c")
    )
    expected = [b["image"] for b in plain.predict_loader("val")]
    for _ in range(2):
        got = [b["image"] for b in cached.predict_loader("val")]
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(b, a, atol=NORMALISED_ATOL, rtol=0)
    entries = list((tmp_path / "c").rglob("*.npy"))
    assert len(entries) == 24  # one per val image
    assert not list((tmp_path / "c").rglob("*.tmp"))
