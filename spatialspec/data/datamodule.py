"""LightningDataModule over a manifest: split selection, transforms, caching, sampling, loaders."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, get_worker_info

from spatialspec.data.budget import apply_attribute_budget, apply_mask_budget, parse_budget
from spatialspec.data.cache import ImageCache
from spatialspec.data.dataset import ManifestDataset
from spatialspec.data.manifest import load_manifest
from spatialspec.data.roi import check_masking
from spatialspec.data.samplers import (
    AnnotatedShareBatchSampler,
    EpochBatchSampler,
    EpochDraw,
    IndexBatches,
    NegativeUndersampler,
    ResumableLoader,
    ShardSampler,
    ShuffleDraw,
    check_annotated_fraction,
)
from spatialspec.data.specificity import resolve_specificity
from spatialspec.data.transforms import build_augmentation

__all__ = [  # the samplers are re-exported: they were defined here before samplers.py
    "AnnotatedShareBatchSampler",
    "NegativeUndersampler",
    "SpatialDataModule",
    "check_annotated_fraction",
    "seed_worker_transform",
]

#: Independent streams of the data module's seed (one per kind of draw).
_STREAMS = {"augment": 1, "shuffle": 2, "undersample": 3, "annotated": 4, "loader": 5}


def _subseed(seed: int, stream: str) -> int:
    """A 31-bit seed of ``stream``, independent of the other streams of ``seed``."""
    return int(np.random.SeedSequence([seed, _STREAMS[stream]]).generate_state(1)[0] >> 1)


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's augmentation pipeline its own seed.

    Albumentations keeps a random state of its own that every worker would otherwise copy, so
    all workers would draw the same augmentations. The worker's torch seed differs per worker
    and per epoch and follows the global seed.
    """
    info = get_worker_info()
    if info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(info.seed % 2**32)


class SpatialDataModule(L.LightningDataModule):
    """Train / val / test loaders from one manifest.

    Training draws (shuffling, undersampling, annotated batches, augmentation) are functions of
    ``(seed, epoch)`` alone (see :mod:`spatialspec.data.samplers`). Under DDP each process gets
    its rank's share: the training batches of the single-process draw dealt out to the ranks,
    and disjoint, unpadded evaluation shards, so validation metrics gathered over the ranks
    equal the single-process ones. ``batch_size`` is per process.

    **Two views of the manifest.** :attr:`frame` is what the run is given to train on: the
    manifest after the mask budget and the attribute budget. Training batches and a method's
    own reads of attributes (``dfr`` reads val's through :meth:`split_frame`) come from it, and
    annotation accounting counts it. :attr:`metric_frame` is the manifest after the mask budget
    only, with every attribute the manifest holds: the validation, test and prediction loaders
    read it, so ``val/robust_auroc`` (and any metric on those loaders) never depends on the
    attribute budget. The two differ only on the attribute split's ``spurious``.

    Args:
        manifest: Path of ``manifest.csv``.
        image_size: Side of the (square) network input.
        batch_size: Training batch size.
        eval_batch_size: Batch size for val / test / predict (default: 2 x batch_size).
        num_workers: DataLoader workers (0 loads in the main process).
        augment: Augment training images.
        annotation: The method's annotation (``mask``, ``box`` or ``label``), which sets the
            default ``specificity``; ``fit`` sets it from the method.
        specificity: Spatial specificity of the dense target of annotated images: ``mask``,
            ``dilate:R``, ``box``, ``grid:K`` or ``image`` (see
            :mod:`spatialspec.data.specificity`), applied after augmentation; None: the
            annotation's default (``mask`` for seg and its variants, ``box`` for bbox). A
            ``label`` annotation (binary) takes none; a ``box`` one takes only ``box``.
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
        attribute_budget: Rows of the method's ``attribute_split`` that keep their
            spurious-attribute label, as ``mask_budget`` (a count, a fraction of the split's
            rows with a known attribute, ``"10%"``, ``"all"``; None: the manifest as it is).
            The others become unknown in :attr:`frame` (see
            :func:`~spatialspec.data.budget.apply_attribute_budget`); :attr:`metric_frame` keeps
            them. Only for methods that train on attributes (a fit refuses it otherwise).
        attribute_split: The split whose attributes the method trains on
            (:attr:`~spatialspec.methods.SpatialMethod.attribute_split`: ``train`` for
            ``groupdro``, ``val`` for ``dfr``, None for the others); ``fit`` sets it from the
            method.
        budget_seed: Seed of the budgets' selections (nested across budgets for one seed; the
            mask and the attribute budget draw from independent streams of it).
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
        seed: Seed of the training draws; ``fit`` sets it to the run's seed.
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
        specificity: str | None = None,
        channels: int = 1,
        cache_dir: str | None = None,
        undersample_negatives: float | None = None,
        mask_budget: int | float | str | None = None,
        attribute_budget: int | float | str | None = None,
        attribute_split: str | None = None,
        budget_seed: int = 0,
        annotated_batch_fraction: float | None = None,
        roi_masking: str | None = None,
        roi_masking_region: str = "mask",
        roi_masking_fill: str = "mean",
        seed: int = 0,
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
        level = resolve_specificity(annotation, specificity)  # fail at construction
        #: The resolved level's name (None: a label-only method, no dense target).
        self.specificity = None if level is None else level.name
        self.channels = channels
        self.cache_dir = cache_dir
        self.undersample_negatives = undersample_negatives
        self.mask_budget = mask_budget
        if attribute_split not in (None, "train", "val"):
            raise ValueError(f"attribute_split must be train, val or None, got {attribute_split!r}")
        self.attribute_budget = attribute_budget
        self.attribute_split = attribute_split
        self.budget_seed = budget_seed
        check_annotated_fraction(annotated_batch_fraction)
        self.annotated_batch_fraction = annotated_batch_fraction
        self.roi_masking = roi_masking
        self.roi_masking_region = roi_masking_region
        self.roi_masking_fill = roi_masking_fill
        self.seed = seed
        parse_budget(mask_budget)  # fail at construction, not at the first epoch
        parse_budget(attribute_budget, "attribute budget")
        #: What the budget kept (``n_masks``, ...); None without a budget.
        self.budget_info: dict | None = None
        #: The attributes the method may read (``budget``, ``split``, ``n_attributes`` kept,
        #: ``n_known``, ``n_rows``; budget ``"all"`` without an attribute budget); None for a
        #: method without an ``attribute_split``. Set when :attr:`frame` is first read.
        self.attribute_budget_info: dict | None = None
        self._metric_frame: pd.DataFrame | None = None
        self._frame: pd.DataFrame | None = None

    @property
    def metric_frame(self) -> pd.DataFrame:
        """The validated manifest after the mask budget, every attribute kept (loaded once):
        what the evaluation loaders read."""
        if self._metric_frame is None:
            frame = load_manifest(self.manifest_path)
            if self.mask_budget is not None:
                frame, self.budget_info = apply_mask_budget(
                    frame, self.mask_budget, seed=self.budget_seed
                )
            self._metric_frame = frame
        return self._metric_frame

    @property
    def frame(self) -> pd.DataFrame:
        """The manifest after the mask and attribute budgets: what the run trains on.

        The attribute budget applies to the rows of ``attribute_split``; without one (a data
        module built for evaluation from a run's config) there is nothing to apply it to and
        :attr:`frame` equals :attr:`metric_frame`.
        """
        if self._frame is None:
            frame = self.metric_frame
            if self.attribute_split is not None:
                frame, self.attribute_budget_info = apply_attribute_budget(
                    frame, self.attribute_budget, self.attribute_split, seed=self.budget_seed
                )
            self._frame = frame
        return self._frame

    def setup(self, stage: str) -> None:
        """Before a fit: refuse an attribute budget for a method that reads no attributes, and
        apply the budgets (so :attr:`attribute_budget_info` is set).

        Raises:
            ValueError: ``attribute_budget`` without an ``attribute_split``.
        """
        if stage != "fit":
            return
        if self.attribute_budget is not None and self.attribute_split is None:
            raise ValueError(
                f"data.attribute_budget={self.attribute_budget!r}, but this method trains on "
                "no spurious attributes (its attribute_split is None); drop the option or use "
                "a method that reads attributes (groupdro, dfr)"
            )
        _ = self.frame

    def split_frame(self, split: str, metric: bool = False) -> pd.DataFrame:
        """Rows of one split of :attr:`frame` (of :attr:`metric_frame` if ``metric``); an
        error names the manifest if the split is empty."""
        frame = self.metric_frame if metric else self.frame
        rows = frame[frame["split"] == split]
        if rows.empty:
            raise ValueError(f"{self.manifest_path}: split {split!r} has no rows")
        return rows

    def dataset(self, split: str, train: bool = False, metric: bool = False) -> ManifestDataset:
        """Dataset of one split, augmented if ``train`` and augmentation is on; its attributes
        are those of :attr:`frame`, or of :attr:`metric_frame` if ``metric``."""
        augment = train and self.augment
        seed = _subseed(self.seed, "augment")
        return ManifestDataset(
            self.split_frame(split, metric=metric),
            build_augmentation(augment, seed=seed if augment else None),
            self.annotation,
            self.channels,
            image_size=self.image_size,
            specificity=self.specificity,
            cache=ImageCache(self.cache_dir) if self.cache_dir else None,
            roi_masking=self.roi_masking,
            roi_masking_region=self.roi_masking_region,
            roi_masking_fill=self.roi_masking_fill,
            seed=seed,
        )

    def train_draw(self, dataset: ManifestDataset) -> EpochDraw:
        """The training batches of every epoch, as one process trains on them.

        Negatives undersampled if ``undersample_negatives`` is set; batches with an annotated
        share if ``annotated_batch_fraction`` is set and the split mixes rows with and without
        an annotation; plain shuffling otherwise (the last partial batch dropped, unless the
        split fits in one batch).
        """
        undersampler = None
        if self.undersample_negatives is not None:
            labels = [rec["label"] for rec in dataset.records]
            seed = _subseed(self.seed, "undersample")
            undersampler = NegativeUndersampler(labels, self.undersample_negatives, seed=seed)
        annotated = np.array([rec["mask_available"] > 0.5 for rec in dataset.records])
        if self.annotated_batch_fraction is not None and annotated.any() and not annotated.all():
            return AnnotatedShareBatchSampler(
                annotated,
                self.batch_size,
                self.annotated_batch_fraction,
                seed=_subseed(self.seed, "annotated"),
                base=undersampler,
            )
        source = undersampler or ShuffleDraw(len(dataset), seed=_subseed(self.seed, "shuffle"))
        return IndexBatches(source, self.batch_size, drop_last=len(source) > self.batch_size)

    def _ranks(self) -> tuple[int, int]:
        """``(rank, world_size)`` of the attached trainer; ``(0, 1)`` without one."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _train_position(self) -> tuple[int, int, int] | None:
        """``(epoch, batches trained in it, batches it has)`` of the attached trainer's fit."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        total = trainer.num_training_batches
        return trainer.current_epoch, done, int(total) if math.isfinite(total) else done + 1

    def _generator(self) -> torch.Generator:
        """Seeds of the loader's workers, drawn apart from the global RNG (whose state a
        resumed fit restores: iterating a loader must not advance it)."""
        return torch.Generator().manual_seed(_subseed(self.seed, "loader"))

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train=True)
        rank, world = self._ranks()
        batches = EpochBatchSampler(self.train_draw(dataset), rank, world)
        if self.trainer is not None:
            # The epoch Lightning is about to train (what it passes to set_epoch, too late for
            # the iterator it creates first): a resumed or reloaded loader starts there.
            batches.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return ResumableLoader(
            dataset,
            batch_sampler=batches,
            position=self._train_position,
            generator=self._generator(),
            **self._worker_args(),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split, train=False, metric=True)
        rank, world = self._ranks()
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(len(dataset), rank, world) if world > 1 else None,
            shuffle=False,
            generator=self._generator(),
            **self._worker_args(),
        )

    def _worker_args(self) -> dict[str, Any]:
        return dict(
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker_transform if self.num_workers > 0 else None,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_loader(self, split: str) -> DataLoader:
        """Un-augmented loader over any split (for predictions), attributes as in the
        manifest (:attr:`metric_frame`)."""
        return self._eval_loader(split)
