"""Checkpoint -> per-image scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import yaml

from spatialspec.checkpoints import CheckpointError, read_checkpoint
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.methods import SpatialMethod, get_method


def load_checkpoint(path: str | Path) -> tuple[SpatialMethod, dict[str, Any]]:
    """Load a spatialspec checkpoint on the CPU.

    Returns:
        The method (eval mode) and its resolved run config (``{}`` if the checkpoint has none).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is not a usable spatialspec checkpoint (the message names it
            and says why).
    """
    checkpoint = read_checkpoint(path)
    info = checkpoint["spatialspec"]
    try:
        method = get_method(info["method"]).load_from_checkpoint(
            path, map_location="cpu", weights_only=True
        )
    except (RuntimeError, TypeError, ValueError) as err:  # a state dict that does not fit
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: its weights do not fit the {info['method']!r} network its "
            f"hyper-parameters describe ({message})"
        ) from None
    method.eval()
    return method, yaml.safe_load(info.get("config") or "{}") or {}


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
