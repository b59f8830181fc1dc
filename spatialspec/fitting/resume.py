"""``fit --resume``: which checkpoint a fit continues from, and whether it may.

``--resume auto`` continues from the run folder's newest checkpoint -- ``checkpoints/last.ckpt``
(end of the last finished epoch) or ``hpc_ckpt_<n>.ckpt`` (a SLURM requeue, mid-epoch) -- or
starts afresh when there is none. ``--resume PATH`` continues from that file. Either way the run
folder's saved ``config.yaml`` must match this fit's config except for the settings that cannot
change what is computed: the trainer's stopping limits (``max_epochs``, ``max_steps``,
``max_time``) and the progress display. Anything else (a learning rate, a mask budget, the
number of devices) is refused with the list of differences, since the continued run would
silently mix two settings. A key the saved config lacks (an option added by a later version of
spatialspec) passes when this fit leaves it at its default: the run computed that already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from spatialspec.checkpoints import CheckpointError, read_checkpoint
from spatialspec.fitting.requeue import hpc_checkpoints

__all__ = ["MAY_DIFFER", "ResumePoint", "check_same_config", "config_differences", "find_resume"]

#: Config keys a resumed fit may change (dotted).
MAY_DIFFER = frozenset(
    {
        "resume",
        "overwrite",
        "progress_every",
        "trainer.max_epochs",
        "trainer.max_steps",
        "trainer.max_time",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
    }
)


class ResumePoint:
    """A checkpoint to continue from.

    Attributes:
        path: The checkpoint file.
        epoch: Epochs finished when it was saved (Lightning's ``epoch``).
        global_step: Optimizer steps taken.
        logged_step: The last step the loggers had recorded (the CSV log is cut there).
    """

    def __init__(self, path: Path, checkpoint: dict[str, Any]) -> None:
        self.path = path
        self.epoch = int(checkpoint.get("epoch", 0))
        self.global_step = int(checkpoint.get("global_step", 0))
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        stepped = loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped")
        self.logged_step = int(stepped) if stepped is not None else self.global_step

    def __repr__(self) -> str:
        return f"ResumePoint({self.path}, epoch={self.epoch}, step={self.global_step})"


def find_resume(out_dir: str | Path, resume: str | None) -> ResumePoint | None:
    """The checkpoint ``--resume`` names, validated; None to start afresh.

    Args:
        out_dir: The run folder.
        resume: ``None`` (no resuming), ``"auto"`` or a checkpoint path.

    Raises:
        FileNotFoundError: ``resume`` is a path that does not exist.
        CheckpointError: The chosen checkpoint is unusable (names the file and why).
    """
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        return ResumePoint(path, read_checkpoint(path, for_training=True))
    out_dir = Path(out_dir)
    candidates = [
        p for p in (out_dir / "checkpoints" / "last.ckpt", *hpc_checkpoints(out_dir)) if p.is_file()
    ]
    points = [ResumePoint(p, read_checkpoint(p, for_training=True)) for p in candidates]
    if not points:
        return None
    # the most training; at the same step, the file written last (last.ckpt after validation
    # at the end of the epoch in which a requeue checkpoint was taken after the last batch)
    return max(points, key=lambda p: (p.global_step, p.path.stat().st_mtime_ns))


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``"key: saved -> now"`` for every dotted key whose value differs (except MAY_DIFFER,
    and keys absent from ``saved`` whose current value is their value in ``defaults``)."""
    flat_saved, flat_now = _flatten(saved), _flatten(current)
    flat_defaults = _flatten(defaults or {})
    out = []
    for key in sorted(set(flat_saved) | set(flat_now)):
        if key in MAY_DIFFER:
            continue
        if (
            key not in flat_saved
            and key in flat_defaults
            and flat_now.get(key) == flat_defaults[key]
        ):
            continue
        before, now = flat_saved.get(key, "<absent>"), flat_now.get(key, "<absent>")
        if before != now:
            out.append(f"{key}: {before!r} -> {now!r}")
    return out


def check_same_config(
    out_dir: Path,
    point: ResumePoint,
    current: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume a run whose saved config differs from ``current`` (see the module doc).

    The reference is ``out_dir/config.yaml``, else the config saved inside the checkpoint.
    ``defaults``: the config a fit gets for keys it is not given (keys the saved config lacks
    pass at these values).

    Raises:
        ValueError: The configs differ; the message lists every difference.
        CheckpointError: Neither holds a config.
    """
    saved_file = out_dir / "config.yaml"
    if saved_file.is_file():
        saved, source = yaml.safe_load(saved_file.read_text()) or {}, saved_file
    else:
        text = read_checkpoint(point.path)["spatialspec"].get("config")
        if not text:
            raise CheckpointError(f"{point.path}: holds no run config to compare this fit with")
        saved, source = yaml.safe_load(text) or {}, point.path
    differences = config_differences(saved, current, defaults)
    if differences:
        listed = "\n  ".join(differences)
        raise ValueError(
            f"refusing to resume {out_dir} from {point.path.name}: this fit's config differs "
            f"from the one in {source}:\n  {listed}\nOnly trainer.max_epochs, max_steps and "
            "max_time may change when resuming; use the same settings, or start over with "
            "--overwrite true (or another --out_dir)."
        )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out
