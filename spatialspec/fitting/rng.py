"""Global random states in checkpoints, restored when a fit resumes.

Lightning restores weights, optimizer, loop counters and callback states, but not the global
random number generators that dropout, the mean teacher's perturbed views and the pixel
sampling of the contrastive loss draw from. :class:`RNGState` saves them (torch, CUDA of the
current device, NumPy, Python) in every checkpoint and puts them back at the start of training
of a resumed fit, after Lightning's restore and sanity check, so the resumed steps draw what the
uninterrupted fit would have drawn. The data pipeline does not depend on these states: its draws
are functions of (seed, epoch, index) (:mod:`spatialspec.data.samplers`).

Under DDP every rank restores rank 0's states (only rank 0's checkpoint is written).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

__all__ = ["RNGState", "capture_rng", "restore_rng"]


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The global random states, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _plain(random.getstate()),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back the states :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (the checkpoint holds plain containers)."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


class RNGState(L.Callback):
    """Saves the global random states in checkpoints; restores them when a fit resumes."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        return capture_rng(trainer.strategy.root_device if trainer is not None else None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            restore_rng(self._pending, trainer.strategy.root_device)
            self._pending = None
