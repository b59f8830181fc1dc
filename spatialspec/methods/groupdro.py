"""``groupdro``: image labels + spurious-attribute labels — Group DRO (Sagawa et al., ICLR 2020)
on the binary network, as YyzHarry/SubpopBench implements it.

Every training step, for each group present in the batch (the mean BCE of its rows ``L̄_g``),
``q_g ← q_g · exp(η · L̄_g)``; then ``q`` is normalised to sum 1 and the loss is
``Σ_g q_g · L̄_g`` over the present groups, ``q`` held fixed (no gradient through it).
Validation (eval mode) computes the same loss with the current ``q`` and never updates it.

Groups are label × {spurious 0, spurious 1, unknown}
(:func:`~spatialspec.methods.groups.group_index`): rows whose attribute is unknown (not
annotated, or hidden by ``data.attribute_budget``) form one group per label and get their own
weight. They still train, and ``q`` up-weights them if their loss is high, but they never count
as a known attribute group. With no attribute at all, Group DRO is over the two classes
(SubpopBench's attribute-free setting). The attributes read are those of the **train** split
(:attr:`attribute_split`); the model is selected on val like every method (``monitor``).

``q`` is a registered buffer: it is saved in checkpoints and restored on resume. Under DDP the
per-group loss sums and row counts are all-reduced before the update, so every rank updates
``q`` from the same global group means and holds the same ``q``. The backpropagated loss of a
rank is ``world_size · Σ_g q_g · S_g / N_g`` (its own rows' loss sum ``S_g`` over the global
count ``N_g``): DDP's gradient average is then the gradient of the global objective.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from spatialspec.methods.base import METHODS
from spatialspec.methods.binary import BinaryMethod
from spatialspec.methods.groups import GROUP_NAMES, N_GROUPS, distributed_world, group_index
from spatialspec.models import BackboneConfig


@METHODS.register("groupdro")
class GroupDROMethod(BinaryMethod):
    """Binary network trained with Group DRO over label × spurious groups.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        eta: Step size of the group-weight update (SubpopBench's ``groupdro_eta``, 0.01).
    """

    annotation = "label"
    attribute_split = "train"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        eta: float = 0.01,
    ) -> None:
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta}")
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)
        self.eta = eta
        #: Group weights q, by :data:`~spatialspec.methods.groups.GROUP_NAMES` (sum 1).
        self.register_buffer("group_weights", torch.full((N_GROUPS,), 1.0 / N_GROUPS))

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        labels = batch["label"].float()
        losses = F.binary_cross_entropy_with_logits(outputs, labels, reduction="none")  # (B,)
        groups = group_index(labels, batch["spurious"]).to(losses.device)  # (B,)
        sums = losses.new_zeros(N_GROUPS).index_add(0, groups, losses)  # (G,), with gradient
        counts = torch.bincount(groups, minlength=N_GROUPS).to(losses.dtype)  # (G,)
        world = 1
        total_sums, total_counts = sums.detach().clone(), counts.clone()
        if self.training:
            rank_world = distributed_world()[1]
            if rank_world > 1:
                dist.all_reduce(total_sums)
                dist.all_reduce(total_counts)
                world = rank_world
            self.update_weights(total_sums / total_counts.clamp(min=1), total_counts > 0)
        per_count = self.group_weights / total_counts.clamp(min=1)  # (G,); 0-sum where absent
        return {"loss": world * (per_count * sums).sum(), "erm_loss": losses.mean()}

    @torch.no_grad()
    def update_weights(self, means: torch.Tensor, present: torch.Tensor) -> None:
        """``q_g ← q_g · exp(η · means_g)`` for the ``present`` groups, then ``q ← q / Σ q``."""
        factor = torch.where(present, torch.exp(self.eta * means), torch.ones_like(means))
        self.group_weights.mul_(factor)
        self.group_weights.div_(self.group_weights.sum())

    def on_train_epoch_end(self) -> None:
        q = {f"train/q_{name}": self.group_weights[i] for i, name in enumerate(GROUP_NAMES)}
        self.log_dict(q, sync_dist=True)  # equal on every rank; sync silences the warning
