"""Data-loading throughput: 1024² JPEG-Baseline DICOMs -> 512² augmented tensors, per worker.

Goes through the real :class:`~spatialspec.data.dataset.ManifestDataset` (augment on, a quarter
of the images positive with a 1024² mask PNG, as in SIIM) in one thread, i.e. one DataLoader
worker, and times three ways of reading:

* uncached: decode the DICOM, resize, augment (every epoch without a cache);
* cached, cold: the same plus writing the on-disk cache (epoch 1 with a cache);
* cached, warm: load the resized image from the cache, augment (epochs 2+).

The images are the SIIM sample DICOMs of ``$SPATIALSPEC_SHARED_DATA/siim/sample_images``
(copied under new names up to ``--images`` files, each copy a distinct cache entry) or, without
that folder, generated smooth X-ray-like 1024² JPEG-Baseline DICOMs.

    python benchmarks/loader.py [--images 40] [--passes 5] [--image-size 512] [--workers 2]

Each round times one uncached and one warm pass back to back; the medians and the median of the
per-round ratios are reported. Targets: uncached >= 150 images/s per worker; warm / uncached >= 5
(the last line printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler

from spatialspec.data import read_image, read_mask, write_png
from spatialspec.data.cache import ImageCache
from spatialspec.data.dataset import ManifestDataset, _normalised_tensor
from spatialspec.data.transforms import build_augmentation, resize_image, resize_mask
from spatialspec.testing import write_dicom

SIDE = 1024


def xray_like(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A smooth (side, side) uint8 chest-film-like image: body, lungs, ribs, spine, grain."""
    y, x = np.mgrid[0:side, 0:side] / side
    body = np.exp(-((((x - 0.5) / 0.45) ** 2 + ((y - 0.6) / 0.6) ** 2) ** 2))
    lungs = sum(
        np.exp(-((((x - cx) / 0.16) ** 2 + ((y - 0.48) / 0.3) ** 2) ** 2)) for cx in (0.31, 0.69)
    )
    ribs = 0.06 * np.sin(2 * np.pi * (y * 10 + 2 * (x - 0.5) ** 2)) * lungs
    spine = 0.25 * np.exp(-(((x - 0.5) / 0.05) ** 2)) * body
    texture = cv2.GaussianBlur(rng.normal(0, 1, (side, side)), (0, 0), side / 200)
    image = 0.1 + 0.75 * body - 0.45 * lungs + ribs + spine + 0.03 * texture / texture.std()
    image += rng.normal(0, 0.004, (side, side))  # film grain
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def blob_mask(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A (side, side) bool blob, like a pneumothorax region."""
    y, x = np.mgrid[0:side, 0:side] / side
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
    return ((x - cx) / r) ** 2 + ((y - cy) / (1.6 * r)) ** 2 < 1


def build_images(folder: Path, count: int, seed: int = 0) -> tuple[list[Path], str]:
    """``count`` DICOMs in ``folder``: copies of the SIIM samples if available, else generated."""
    shared = os.environ.get("SPATIALSPEC_SHARED_DATA")
    sources = sorted(Path(shared, "siim", "sample_images").glob("*.dcm")) if shared else []
    paths = [folder / f"img{i:04d}.dcm" for i in range(count)]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        if sources:
            shutil.copyfile(sources[i % len(sources)], path)
        else:
            write_dicom(path, xray_like(rng), sop_instance_uid=f"1.2.826.0.1.3680043.99.{i + 1}")
    origin = f"SIIM sample DICOMs ({len(sources)} files)" if sources else "generated DICOMs"
    return paths, origin


def build_frame(folder: Path, images: list[Path], seed: int = 0) -> pd.DataFrame:
    """Manifest rows: every fourth image positive with a mask PNG, the rest negative."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, path in enumerate(images):
        positive = i % 4 == 0
        mask_path = ""
        if positive:
            mask_path = str(folder / f"mask{i:04d}.png")
            write_png(mask_path, blob_mask(rng))
        rows.append({"image_id": path.stem, "image_path": str(path), "label": int(positive),
                     "split": "train", "spurious": 0.0, "mask_path": mask_path,
                     "mask_available": 1})  # fmt: skip
    return pd.DataFrame(rows)


def images_per_s(dataset: ManifestDataset) -> float:
    """One pass over ``dataset`` in this thread."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def loader_images_per_s(dataset: ManifestDataset, workers: int, passes: int) -> float:
    """Median over passes of a DataLoader's images/s (all workers together), after a warm-up.

    A pass draws 8x the dataset's length (with replacement), so starting and draining the
    workers' queues does not dominate.
    """
    sampler = RandomSampler(dataset, replacement=True, num_samples=8 * len(dataset))
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=workers,
                        persistent_workers=True)  # fmt: skip
    rates = []
    for p in range(passes + 1):
        start = time.perf_counter()
        count = sum(batch["image"].shape[0] for batch in loader)
        if p:  # the first pass starts the workers
            rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def stage_ms(fn: Callable[[], object], repeat: int = 20) -> float:
    """Mean milliseconds of one call (mean: random augmentations are bimodal), after a warm-up."""
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) * 1e3 / repeat


def breakdown(frame: pd.DataFrame, size: int, cache: ImageCache) -> None:
    """Mean milliseconds per stage of one negative and one positive sample."""
    aug = build_augmentation(True, seed=0)
    for label in (0, 1):
        rec = frame[frame["label"] == label].iloc[0]
        image = read_image(rec["image_path"])
        small = resize_image(image[..., None], size)
        mask = None if not label else read_mask(rec["mask_path"]).view(np.uint8)
        small_mask = None if mask is None else resize_mask(mask, size)
        kwargs = {"image": small} if mask is None else {"image": small, "mask": small_mask}
        key = cache.key(rec["image_path"], rec["mask_path"] or None, size, 1, "breakdown")
        cache.store(key, small, small_mask)
        parts = {
            "read_image": stage_ms(lambda r=rec: read_image(r["image_path"])),
            "read_mask": 0.0 if mask is None else stage_ms(lambda r=rec: read_mask(r["mask_path"])),
            "resize": stage_ms(lambda im=image: resize_image(im[..., None], size)),
            "cache load": stage_ms(lambda k=key, m=mask: cache.load(k, size, 1, m is not None)),
            "augment": stage_ms(lambda kw=kwargs: aug(**kw), repeat=400),
            "copy + to tensor": stage_ms(lambda s=small: _normalised_tensor(s.copy())),
        }
        text = ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        print(f"  {'positive + mask' if label else 'negative'}: {text} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=40, help="DICOMs per epoch")
    p.add_argument("--passes", type=int, default=5, help="timed passes (median reported)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, origin = build_images(root, args.images)
        frame = build_frame(root, images)
        size = args.image_size
        kb = statistics.mean(path.stat().st_size for path in images) / 1024
        print(f"{len(images)} {origin}, {SIDE}² JPEG Baseline, {kb:.0f} KB on average, "
              f"{int(frame['label'].sum())} positive with masks; -> {size}² augmented tensors, "
              f"1 thread, median of {args.passes} passes")  # fmt: skip

        def dataset(cache: ImageCache | None) -> ManifestDataset:
            aug = build_augmentation(True, seed=0)
            return ManifestDataset(frame, aug, image_size=size, cache=cache)

        uncached = dataset(None)
        images_per_s(uncached)  # warm-up: imports, page cache
        cold = [images_per_s(dataset(ImageCache(root / f"cold{i}"))) for i in range(args.passes)]
        warm = dataset(ImageCache(root / "cold0"))
        images_per_s(warm)
        a, c, ratios = [], [], []  # one uncached and one warm pass per round: the CPU drifts
        for _ in range(args.passes):
            a.append(images_per_s(uncached))
            c.append(images_per_s(warm))
            ratios.append(c[-1] / a[-1])
        assert warm.cache is not None and warm.cache.misses == 0, "the warm cache missed"
        a_med, c_med, ratio = statistics.median(a), statistics.median(c), statistics.median(ratios)
        print(f"(a) uncached (decode + resize + augment): {a_med:7.1f} images/s per worker")
        print(f"(b) cached, epoch 1 (cold, fills cache):  {statistics.median(cold):7.1f} "
              f"images/s per worker")  # fmt: skip
        print(f"(c) cached, epochs 2+ (warm):             {c_med:7.1f} images/s per worker")
        print("stage breakdown (mean ms per call):")
        breakdown(frame, size, ImageCache(root / "breakdown"))
        if args.workers:
            la = loader_images_per_s(uncached, args.workers, args.passes)
            lc = loader_images_per_s(warm, args.workers, args.passes)
            print(f"DataLoader, {args.workers} workers, batch 8: uncached {la:.1f} images/s, "
                  f"warm cache {lc:.1f} images/s (all workers)")  # fmt: skip
        print(f"targets: (a) >= 150 images/s: {'met' if a_med >= 150 else 'MISSED'}; "
              f"(c)/(a) >= 5: {'met' if ratio >= 5 else 'MISSED'}")  # fmt: skip
        print(f"ratio warm/uncached (c)/(a) (median of per-round ratios): {ratio:.2f}")


if __name__ == "__main__":
    main()
