"""Checkpoint -> per-image scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import yaml

from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.methods import SpatialMethod, get_method


def load_checkpoint(path: str | Path) -> tuple[SpatialMethod, dict[str, Any]]:
    """Load a spatialspec checkpoint on the CPU.

    Returns:
        The method (eval mode) and its resolved run config (``{}`` if the checkpoint has none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    info = ckpt.get("spatialspec")
    if not info:
        raise ValueError(f"{path} is not a spatialspec checkpoint (no 'spatialspec' entry)")
    method = get_method(info["method"]).load_from_checkpoint(
        path, map_location="cpu", weights_only=True
    )
    method.eval()
    return method, yaml.safe_load(info["config"] or "{}") or {}


def datamodule_for(
    method: SpatialMethod, config: dict[str, Any], manifest: str | None = None, **overrides: Any
) -> SpatialDataModule:
    """Data module matching a trained method (its image size, channels), on any manifest."""
    data = dict(config.get("data", {}))
    if manifest is not None:
        data["manifest"] = str(manifest)
    if not data.get("manifest"):
        raise ValueError("no manifest: pass one (the checkpoint's config names none)")
    data.update(overrides)
    return SpatialDataModule(
        **data, annotation=method.annotation, channels=method.backbone.in_channels
    )


def predict_splits(
    method: SpatialMethod,
    data: SpatialDataModule,
    splits: Sequence[str] = ("val", "test"),
    accelerator: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Scores of every image of ``splits``.

    Returns:
        Frame with columns ``image_id``, ``split``, ``score``.
    """
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    parts = []
    for split in splits:
        batches = trainer.predict(method, dataloaders=data.predict_loader(split))
        ids = [i for b in batches for i in b["image_id"]]
        scores = torch.cat([b["score"] for b in batches]).cpu().double().numpy()
        parts.append(pd.DataFrame({"image_id": ids, "split": split, "score": scores}))
    return pd.concat(parts, ignore_index=True)
