"""Checkpoint -> per-image scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import yaml

from spatialspec.checkpoints import CheckpointError, read_checkpoint
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.methods import METHODS, SpatialMethod, get_method
from spatialspec.methods.dense import DenseMethod
from spatialspec.models.pooling import Pooling


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


def trained_pooling(method: SpatialMethod) -> Pooling:
    """The pooling a dense method was trained (and selected) with.

    Raises:
        ValueError: ``method`` has no pixel head (``binary``: it scores images directly).
    """
    if not isinstance(method, DenseMethod):
        name = METHODS.name_of(type(method))
        dense = ", ".join(n for n in METHODS.names() if issubclass(METHODS.get(n), DenseMethod))
        raise ValueError(
            f"pooling needs a model with a pixel head ({dense}); a {name!r} model scores "
            "whole images and has no pixel map to pool"
        )
    return Pooling(method.hparams.pooling, method.hparams.topk)


class _PooledScores(L.LightningModule):
    """Prediction of a dense method that also pools its pixel logits in other ways.

    The network runs once per batch: ``score`` is the method's own (its trained pooling, as
    :meth:`SpatialMethod.predict_step` computes it) and each pooling of the same pixel
    probabilities gets a column of its own.
    """

    def __init__(self, method: DenseMethod, poolings: Mapping[str, Pooling]) -> None:
        super().__init__()
        self.method = method
        self.poolings = dict(poolings)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        logits = self.method(batch["image"])  # (B, 1, H, W) pixel logits
        probs = torch.sigmoid(logits)
        out = {"image_id": list(batch["image_id"]), "score": self.method.scores(logits).float()}
        for name, pooling in self.poolings.items():
            out[name] = pooling(probs).float()
        return out


def predict_splits(
    method: SpatialMethod,
    data: SpatialDataModule,
    splits: Sequence[str] = ("val", "test"),
    accelerator: str = "auto",
    progress: bool = True,
    poolings: Mapping[str, Pooling] | None = None,
    outputs: dict[str, list[dict[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Scores of every image of ``splits``.

    Args:
        poolings: Name -> pooling (:func:`~spatialspec.models.pooling.parse_poolings`): a
            dense method's pixel logits, computed once per image, are also pooled each of
            these ways.
        outputs: When given, filled with each split's raw ``predict_step`` results (one dict
            per batch), for a method that predicts more than a score (``detect``: its boxes).

    Returns:
        Frame with columns ``image_id``, ``split``, ``score`` (the method's own score), then
        one column of scores per entry of ``poolings``, named by it.

    Raises:
        ValueError: ``poolings`` for a method without a pixel head (:func:`trained_pooling`).
    """
    model: L.LightningModule = method
    columns = list(poolings or {})
    if columns:
        trained_pooling(method)
        model = _PooledScores(method, poolings)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    parts = []
    for split in splits:
        batches = trainer.predict(model, dataloaders=data.predict_loader(split))
        if outputs is not None:
            outputs[split] = batches
        ids = [i for b in batches for i in b["image_id"]]
        part = {"image_id": ids, "split": split}
        for key in ("score", *columns):
            part[key] = torch.cat([b[key] for b in batches]).cpu().double().numpy()
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)
