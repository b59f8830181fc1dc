"""LightningDataModule over a manifest: split selection, transforms, loaders."""

from __future__ import annotations

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, get_worker_info

from spatialspec.data.dataset import ManifestDataset
from spatialspec.data.manifest import load_manifest
from spatialspec.data.transforms import build_transform


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's augmentation pipeline its own seed.

    Albumentations keeps a random state of its own that every worker would otherwise copy, so
    all workers would draw the same augmentations. The worker's torch seed differs per worker
    and per epoch and follows the global seed.
    """
    info = get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


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
    ) -> None:
        super().__init__()
        self.manifest_path = manifest
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.annotation = annotation
        self.channels = channels
        self._frame: pd.DataFrame | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """The validated manifest (loaded once)."""
        if self._frame is None:
            self._frame = load_manifest(self.manifest_path)
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
        transform = build_transform(self.image_size, augment=augment, seed=seed)
        return ManifestDataset(self.split_frame(split), transform, self.annotation, self.channels)

    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split, train=train),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(self.split_frame(split)) > self.batch_size,
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
