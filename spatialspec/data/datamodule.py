"""LightningDataModule over a manifest: split selection, transforms, caching, sampling, loaders."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info

from spatialspec.data.budget import apply_mask_budget, parse_budget
from spatialspec.data.cache import ImageCache
from spatialspec.data.dataset import ManifestDataset
from spatialspec.data.manifest import load_manifest
from spatialspec.data.roi import check_masking
from spatialspec.data.transforms import build_augmentation


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's augmentation pipeline its own seed.

    Albumentations keeps a random state of its own that every worker would otherwise copy, so
    all workers would draw the same augmentations. The worker's torch seed differs per worker
    and per epoch and follows the global seed.
    """
    info = get_worker_info()
    if info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(info.seed % 2**32)


class NegativeUndersampler(Sampler[int]):
    """All positives plus a fresh random subset of the negatives every epoch, shuffled.

    Epoch ``e`` uses ``min(n_neg, round(ratio * n_pos))`` negatives drawn from ``(seed, e)``
    alone, so a run is reproducible. Lightning calls :meth:`set_epoch` before every epoch; a
    plain loop that does not moves on to the next epoch's draw after each pass.

    Args:
        labels: Per-dataset-index label (positive: > 0.5).
        ratio: Negatives per positive (> 0).
        seed: Seed of the draws.
    """

    def __init__(self, labels: Sequence[float] | np.ndarray, ratio: float, seed: int = 0) -> None:
        if not (ratio > 0 and math.isfinite(ratio)):
            raise ValueError(f"undersample_negatives must be a positive ratio, got {ratio}")
        labels = np.asarray(labels, dtype=float)
        self.positives = np.flatnonzero(labels > 0.5)
        self.negatives = np.flatnonzero(labels <= 0.5)
        if self.positives.size == 0:
            raise ValueError("undersample_negatives needs positives, but the split has none")
        self.num_negatives = min(self.negatives.size, round(ratio * self.positives.size))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of epoch ``epoch``."""
        self.epoch = epoch

    def indices(self, epoch: int) -> np.ndarray:
        """Shuffled dataset indices of epoch ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        negatives = rng.choice(self.negatives, self.num_negatives, replace=False)
        return rng.permutation(np.concatenate([self.positives, negatives]))

    def __iter__(self) -> Iterator[int]:
        chosen = self.indices(self.epoch)
        self.epoch += 1  # the next pass draws anew unless set_epoch says otherwise
        return iter(chosen.tolist())

    def __len__(self) -> int:
        return self.positives.size + self.num_negatives


class AnnotatedShareBatchSampler(Sampler[list[int]]):
    """Training batches in which at least a given share of rows has a pixel annotation.

    Under a small mask budget only a few training images keep their annotation, and plain
    shuffling gives each batch a handful of them; this sampler puts
    ``k = max(round(fraction * batch_size), round(batch_size * n_annotated / n))`` annotated rows
    in every batch (never fewer than shuffling would on average) and fills the rest with rows
    without one, as the mean teacher's two-stream batch sampler does (Tarvainen & Valpola 2017).
    An epoch has ``len(epoch_indices) // batch_size`` batches (at least 1), like a shuffled
    loader that drops its last partial batch. The annotated rows cycle, reshuffled on every pass;
    the others are drawn without replacement from a fresh permutation each epoch (so with ``k``
    above the natural share some of them sit an epoch out, different ones each time). Every
    draw comes from ``(seed, epoch)`` alone.

    Args:
        annotated: Per-dataset-index flag: the row has a known annotation (``mask_available``).
        batch_size: Rows per batch.
        fraction: Minimum share of annotated rows per batch, in (0, 1).
        seed: Seed of the draws.
        base: Sampler whose epoch indices to batch (a :class:`NegativeUndersampler`); None: all
            dataset indices.
    """

    def __init__(
        self,
        annotated: Sequence[bool] | np.ndarray,
        batch_size: int,
        fraction: float,
        seed: int = 0,
        base: NegativeUndersampler | None = None,
    ) -> None:
        check_annotated_fraction(fraction)
        if batch_size < 2:
            raise ValueError(f"annotated_batch_fraction needs batch_size >= 2, got {batch_size}")
        self.annotated = np.asarray(annotated, dtype=bool)
        if self.annotated.all() or not self.annotated.any():
            raise ValueError("annotated_batch_fraction needs rows with and without annotation")
        self.batch_size, self.fraction, self.seed, self.base = batch_size, fraction, seed, base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of epoch ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = epoch
        if self.base is not None:
            self.base.set_epoch(epoch)

    def _epoch_indices(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        if self.base is not None:
            return self.base.indices(epoch)
        return rng.permutation(self.annotated.size)

    def _n_annotated(self, n_annotated: int, n: int) -> int:
        """Annotated rows per batch, for an epoch of ``n`` rows of which ``n_annotated`` are."""
        if n_annotated == 0 or n_annotated == n:  # an undersampled epoch may hold one kind only
            return self.batch_size if n_annotated else 0
        natural = round(self.batch_size * n_annotated / n)
        return min(max(round(self.fraction * self.batch_size), natural), self.batch_size - 1)

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of epoch ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        indices = self._epoch_indices(epoch, rng)
        flags = self.annotated[indices]
        pool_a, pool_u = indices[flags], indices[~flags]
        n_batches = max(1, indices.size // self.batch_size)
        k = self._n_annotated(pool_a.size, indices.size)
        u = self.batch_size - k
        annotated = _cycle(pool_a, n_batches * k, rng).reshape(n_batches, k)
        others = _cycle(pool_u, n_batches * u, rng).reshape(n_batches, u)
        rows = np.concatenate([annotated, others], axis=1)  # (n_batches, batch_size)
        return [rng.permutation(row).tolist() for row in rows]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1  # the next pass draws anew unless set_epoch says otherwise
        return iter(batches)

    def __len__(self) -> int:
        size = len(self.base) if self.base is not None else self.annotated.size
        return max(1, size // self.batch_size)


def _cycle(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items of ``pool`` in passes, each pass a fresh permutation (no repeats within)."""
    if n == 0 or pool.size == 0:
        return pool[:0]
    passes = -(-n // pool.size)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]


def check_annotated_fraction(fraction: float | None) -> None:
    """``data.annotated_batch_fraction`` must be None or in (0, 1)."""
    if fraction is not None and not (0 < fraction < 1):
        raise ValueError(f"annotated_batch_fraction must be in (0, 1) or null, got {fraction}")


class SpatialDataModule(L.LightningDataModule):
    """Train / val / test loaders from one manifest.

    Args:
        manifest: Path of ``manifest.csv``.
        image_size: Side of the (square) network input.
        batch_size: Training batch size.
        eval_batch_size: Batch size for val / test / predict (default: 2 x batch_size).
        num_workers: DataLoader workers (0 loads in the main process).
        augment: Augment training images.
        annotation: Dense target (``mask``, ``box`` or ``label``); ``fit`` sets it from the method.
        channels: Network input channels; ``fit`` sets it from the backbone.
        cache_dir: Folder of an on-disk cache of decoded images already resized to
            ``image_size`` (and their masks); epochs 2+ skip decoding and resizing. It holds
            un-augmented images, so augmentation still differs every epoch. Entries are keyed
            by file, size, modification time and settings (stale ones are simply not used).
        undersample_negatives: Negatives per positive in each training epoch: every epoch uses
            all positives and a fresh random subset of ``round(r * n_pos)`` negatives (all of
            them if fewer). Validation and test are never undersampled.
        mask_budget: Training positives that keep their pixel annotation: a count (``300``), a
            fraction of the annotated training positives (``0.1`` or ``"10%"``) or ``"all"``
            (None: the manifest as it is). Negatives keep their known-empty masks in the same
            proportion; the others train on their image label only (see
            :mod:`spatialspec.data.budget`).
        budget_seed: Seed of the budget's selection (nested across budgets for one seed).
        annotated_batch_fraction: Minimum share of each training batch drawn from rows with a
            pixel annotation, when the training split has rows with and without one (a mask
            budget); see :class:`AnnotatedShareBatchSampler`. None, or a split whose rows are all
            (or none) annotated: plain shuffling.
        roi_masking: Train, validate and test under a masking condition of the "Mask of
            truth" audit: ``roi_removed``, ``roi_only`` or ``spurious_removed`` fill that
            region of every image of every split before normalisation (None: off). See
            :mod:`spatialspec.data.roi`; ``spatialspec audit masking`` crosses it with the
            test conditions.
        roi_masking_region: ``mask`` (default) or ``box``: the ROI as its mask or its filled
            bounding boxes.
        roi_masking_fill: ``mean`` (default; the mean intensity of the kept pixels), ``noise``
            (Gaussian with their mean and std, fixed per image) or ``zero``.
    """

    def __init__(
        self,
        manifest: str,
        image_size: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = True,
        annotation: str = "mask",
        channels: int = 1,
        cache_dir: str | None = None,
        undersample_negatives: float | None = None,
        mask_budget: int | float | str | None = None,
        budget_seed: int = 0,
        annotated_batch_fraction: float | None = None,
        roi_masking: str | None = None,
        roi_masking_region: str = "mask",
        roi_masking_fill: str = "mean",
    ) -> None:
        super().__init__()
        check_masking(roi_masking, roi_masking_region, roi_masking_fill)
        r = undersample_negatives
        if r is not None and not (r > 0 and math.isfinite(r)):
            raise ValueError(f"undersample_negatives must be a positive ratio or null, got {r}")
        self.manifest_path = manifest
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.annotation = annotation
        self.channels = channels
        self.cache_dir = cache_dir
        self.undersample_negatives = undersample_negatives
        self.mask_budget = mask_budget
        self.budget_seed = budget_seed
        check_annotated_fraction(annotated_batch_fraction)
        self.annotated_batch_fraction = annotated_batch_fraction
        self.roi_masking = roi_masking
        self.roi_masking_region = roi_masking_region
        self.roi_masking_fill = roi_masking_fill
        parse_budget(mask_budget)  # fail at construction, not at the first epoch
        #: What the budget kept (``n_masks``, ...); None without a budget.
        self.budget_info: dict | None = None
        self._frame: pd.DataFrame | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """The validated manifest (loaded once)."""
        if self._frame is None:
            frame = load_manifest(self.manifest_path)
            if self.mask_budget is not None:
                frame, self.budget_info = apply_mask_budget(
                    frame, self.mask_budget, seed=self.budget_seed
                )
            self._frame = frame
        return self._frame

    def split_frame(self, split: str) -> pd.DataFrame:
        """Rows of one split; an error names the manifest if the split is empty."""
        rows = self.frame[self.frame["split"] == split]
        if rows.empty:
            raise ValueError(f"{self.manifest_path}: split {split!r} has no rows")
        return rows

    def dataset(self, split: str, train: bool = False) -> ManifestDataset:
        """Dataset of one split, augmented if ``train`` and augmentation is on."""
        augment = train and self.augment
        # Drawn from torch's generator, so a seeded run augments reproducibly.
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if augment else None
        return ManifestDataset(
            self.split_frame(split),
            build_augmentation(augment, seed=seed),
            self.annotation,
            self.channels,
            image_size=self.image_size,
            cache=ImageCache(self.cache_dir) if self.cache_dir else None,
            roi_masking=self.roi_masking,
            roi_masking_region=self.roi_masking_region,
            roi_masking_fill=self.roi_masking_fill,
        )

    def _train_sampler(self, dataset: ManifestDataset) -> NegativeUndersampler | None:
        """The undersampling sampler of the training split, or None (plain shuffling)."""
        if self.undersample_negatives is None:
            return None
        # Drawn from torch's generator (after the augmentation seed): reproducible under a seed.
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        labels = [rec["label"] for rec in dataset.records]
        return NegativeUndersampler(labels, self.undersample_negatives, seed=seed)

    def _batch_sampler(
        self, dataset: ManifestDataset, sampler: NegativeUndersampler | None
    ) -> AnnotatedShareBatchSampler | None:
        """Batches with a minimum annotated share, or None (no fraction set, or nothing to mix)."""
        if self.annotated_batch_fraction is None:
            return None
        annotated = np.array([rec["mask_available"] > 0.5 for rec in dataset.records])
        if annotated.all() or not annotated.any():
            return None
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        return AnnotatedShareBatchSampler(
            annotated, self.batch_size, self.annotated_batch_fraction, seed=seed, base=sampler
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split, train=train)
        sampler = self._train_sampler(dataset) if train else None
        batches = self._batch_sampler(dataset, sampler) if train else None
        if batches is not None:
            return DataLoader(dataset, batch_sampler=batches, **self._worker_args())
        size = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and size > self.batch_size,
            **self._worker_args(),
        )

    def _worker_args(self) -> dict[str, Any]:
        return dict(
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker_transform if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_loader(self, split: str) -> DataLoader:
        """Un-augmented loader over any split (for predictions)."""
        return self._loader(split, train=False)
