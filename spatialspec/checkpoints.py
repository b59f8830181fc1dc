"""Checkpoint files: atomic saves, and reads that say which file is wrong and how.

Every command that reads a checkpoint (``fit --resume``, ``evaluate --checkpoint``, the audits)
goes through :func:`read_checkpoint`, so a truncated download, a file that is not a checkpoint
at all, or another program's checkpoint gives one clear error naming the file, instead of
torch's unpickler messages ("Unsupported operand 103", "failed finding central directory").
Saves go through :class:`AtomicCheckpointIO`: a fit killed while writing ``last.ckpt`` leaves
the previous ``last.ckpt`` intact.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from spatialspec.data.io import atomic_open

__all__ = ["AtomicCheckpointIO", "CheckpointError", "read_checkpoint"]

#: What Lightning needs, besides weights, to continue a fit from a checkpoint.
TRAINING_STATE = ("optimizer_states", "loops", "epoch", "global_step")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def read_checkpoint(path: str | Path, *, for_training: bool = False) -> dict[str, Any]:
    """Load a spatialspec checkpoint on the CPU (``weights_only``: tensors and plain types).

    Args:
        path: The ``.ckpt`` file.
        for_training: Also require the training state (optimizer, loops) a resumed fit needs.

    Returns:
        The checkpoint dictionary.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: The file is empty, truncated or corrupt, not a PyTorch checkpoint, not
            a Lightning checkpoint, not a spatialspec one, names an unknown method, or (with
            ``for_training``) holds no training state.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    checkpoint = _load(path, size)
    _check_contents(path, checkpoint, for_training)
    return checkpoint


def _load(path: Path, size: int) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: the checkpoint holds Python objects other than tensors and plain "
                f"values (first: {found.group(1)}); spatialspec checkpoints hold none, so this "
                "one was written by another program"
            ) from None
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({size} bytes that torch cannot read: "
            f"{_first_line(str(err), 'operand')})"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError) as err:  # "PytorchStreamReader failed"
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({size} bytes; "
            f"{_first_line(str(err)).split('. This is')[0]})"
        ) from None
    except (KeyError, ValueError, UnicodeDecodeError) as err:  # e.g. a text file: KeyError
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({size} bytes that torch cannot read: "
            f"{type(err).__name__} {err})"
        ) from None


def _check_contents(path: Path, checkpoint: Any, for_training: bool) -> None:
    from spatialspec.methods import METHODS

    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    info = checkpoint.get("spatialspec")
    if not isinstance(info, dict) or "method" not in info:
        raise CheckpointError(
            f"{path}: not a spatialspec checkpoint (no 'spatialspec' entry); it was saved by "
            "another program"
        )
    if info["method"] not in METHODS:
        raise CheckpointError(
            f"{path}: saved by method {info['method']!r}, which is not registered here "
            f"(registered: {', '.join(METHODS.names())})"
        )
    missing = [key for key in TRAINING_STATE if key not in checkpoint]
    if for_training and missing:
        raise CheckpointError(
            f"{path}: holds no training state ({', '.join(missing)} missing), so a fit cannot "
            "continue from it"
        )


def _first_line(text: str, containing: str = "") -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if containing in line:
            return line
    return lines[0] if lines else ""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary sibling, fsynced, then renamed over the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_open(path, "wb") as fh:
            torch.save(checkpoint, fh)
