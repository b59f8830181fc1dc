"""Shared by the group-robustness methods (``groupdro``, ``jtt``, ``dfr``): groups from the label
and the spurious attribute, and one deterministic pass of the network over a whole split.

**Groups** are label × spurious attribute, with "unknown" as a third attribute value: rows of
label ``y`` whose attribute is known fall in group ``2y + s`` (0-3), rows whose attribute is
unknown (``spurious`` NaN or -1: not annotated, or hidden by ``data.attribute_budget``) in group
``4 + y``. Unknown rows are thus never dropped and never guessed: they form one group per label.
Without any attribute the groups are the two classes, which is SubpopBench's setting for
training without attributes (``--train_attr no``: every attribute set to one value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from spatialspec.data.samplers import ShardSampler

__all__ = ["GROUP_NAMES", "N_GROUPS", "distributed_world", "group_index", "split_pass"]

#: Group names, by index: label, then spurious attribute (``na``: unknown).
GROUP_NAMES = ("y0_s0", "y0_s1", "y1_s0", "y1_s1", "y0_sna", "y1_sna")
N_GROUPS = len(GROUP_NAMES)


def group_index(labels: torch.Tensor, spurious: torch.Tensor) -> torch.Tensor:
    """(B,) labels (0/1) and (B,) spurious attributes (0/1; NaN or -1 unknown) -> (B,) groups.

    Raises:
        ValueError: A label other than 0/1, or an attribute other than 0, 1, NaN or -1.
    """
    y = labels.long()
    if not ((y == 0) | (y == 1)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(labels.tolist()))}")
    s = spurious.float()
    unknown = torch.isnan(s) | (s == -1)
    if not (unknown | (s == 0) | (s == 1)).all():
        raise ValueError(f"spurious must be 0, 1 or unknown (NaN, -1), got {s.tolist()}")
    known = 2 * y + torch.where(unknown, torch.zeros_like(s), s).long()
    return torch.where(unknown, 4 + y, known)


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def split_pass(
    module: torch.nn.Module,
    datamodule: Any,
    split: str,
    fn: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``fn`` over every image of ``split``, without augmentation, in eval mode, no gradients.

    Under DDP each rank runs its shard (:class:`~spatialspec.data.samplers.ShardSampler`) and
    the rows are summed over the ranks, so every rank returns the whole split.

    Args:
        module: The module ``fn`` uses (put in eval mode for the pass, then restored).
        datamodule: A :class:`~spatialspec.data.datamodule.SpatialDataModule`; the rows and
            attributes are those of its ``frame`` (the budgets applied).
        split: ``train``, ``val`` or ``test``.
        fn: (B, C, H, W) images -> (B, dim) outputs.
        dim: Output width of ``fn``.
        device: Where to run (default: the module's first parameter's device).

    Returns:
        ``(outputs (N, dim) float32 on the CPU, records)``: row ``i`` belongs to
        ``records[i]`` (``image_id``, ``label``, ``spurious``, ... of the split's rows).
    """
    dataset = datamodule.dataset(split)
    rank, world = distributed_world()
    sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(
        dataset,
        batch_size=datamodule.eval_batch_size,
        sampler=sampler,
        num_workers=datamodule.num_workers,
    )
    device = device or next(module.parameters()).device
    out = torch.zeros(len(dataset), dim, device=device)  # (N, dim)
    index = torch.tensor(list(sampler), dtype=torch.long)
    was_training, done = module.training, 0
    module.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                values = fn(batch["image"].to(device)).reshape(-1, dim).float()  # (B, dim)
                out[index[done : done + len(values)].to(device)] = values
                done += len(values)
    finally:
        module.train(was_training)
    if world > 1:
        dist.all_reduce(out)  # disjoint shards: the sum puts every row in place
    return out.cpu(), dataset.records
