"""``jtt``: image labels only — Just Train Twice (Liu et al., ICML 2021) on the binary network.

**Stage 1** (epochs ``0 .. first_stage_epochs - 1``, default ``max(1, max_epochs // 2)``,
SubpopBench's ``first_stage_step_frac = 0.5``): plain ERM (BCE).

**The error set**: at the start of epoch ``first_stage_epochs``, the model as it stands at the
end of stage 1 (the in-memory weights after its last step, not the best checkpoint) scores every
training image once, without augmentation and in eval mode; the images it misclassifies
(``logit > 0`` disagreeing with the label, SubpopBench's test on a binary logit) are the error
set, keyed by ``image_id``. It needs no attribute.

**Stage 2** (the remaining epochs): every row's BCE is weighted by ``upweight`` (λ_up = 10) if
its image is in the error set, 1 otherwise, and averaged over the batch
(``mean(w · BCE)``, SubpopBench's reweighting; the JTT paper upsamples the error set λ_up
times instead, the same expected gradient up to a constant). With ``fresh_stage2`` (default),
stage 2 starts from freshly initialised weights and a fresh optimiser state, as both the JTT
paper and SubpopBench train a new model in stage 2; ``false`` continues from the stage-1 weights.

Two deliberate differences from SubpopBench: it identifies errors online, with the frozen
stage-1 model on each augmented stage-2 batch (keeping both networks); here the error set is
computed once on un-augmented images, as in the JTT paper, so it is a fixed set that can be
saved and inspected. And stage 2 here has the remaining epochs of one fit, as in SubpopBench
(a step budget split in two), whereas the JTT paper gives stage 2 a full training run.

**Model selection restarts at stage 2**: the stage-1 model only identifies errors. At the
boundary the scores the checkpoint callbacks hold are demoted to the worst possible value, so
the first stage-2 validation replaces ``best.ckpt`` and the selected model (on val, with the
run's ``monitor``) is a stage-2 model. With ``first_stage_epochs >= max_epochs`` there is no
stage 2 and the fit is plain ERM.

**Resume and DDP**: the error set (and how it was made) is saved in every checkpoint
(``checkpoint["jtt"]``) and restored, so a resumed stage 2 keeps it; a fit resumed at the
boundary rebuilds it from the same weights. Under DDP every rank scores its shard and the
shards are summed over the ranks, so every rank holds the whole set; the fresh stage-2 weights
are broadcast from rank 0.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from spatialspec.methods.base import METHODS
from spatialspec.methods.binary import BinaryMethod
from spatialspec.methods.groups import GROUP_NAMES, distributed_world, group_index, split_pass
from spatialspec.models import BackboneConfig


@METHODS.register("jtt")
class JTTMethod(BinaryMethod):
    """Binary network trained twice: ERM, then ERM with the first model's errors up-weighted.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        upweight: Loss weight λ_up of the error set's rows in stage 2 (SubpopBench: 10).
        first_stage_epochs: Epochs of stage 1 (None: ``max(1, trainer.max_epochs // 2)``).
        fresh_stage2: Start stage 2 from fresh weights (JTT, SubpopBench) rather than from the
            stage-1 model.
    """

    annotation = "label"
    attribute_split = None

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        upweight: float = 10.0,
        first_stage_epochs: int | None = None,
        fresh_stage2: bool = True,
    ) -> None:
        if not (math.isfinite(upweight) and upweight > 0):
            raise ValueError(f"upweight must be a finite number > 0, got {upweight}")
        if first_stage_epochs is not None and first_stage_epochs < 1:
            raise ValueError(
                f"first_stage_epochs must be >= 1 (stage 1's model finds the errors), "
                f"got {first_stage_epochs}"
            )
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)
        self.upweight = upweight
        self.first_stage_epochs = first_stage_epochs
        self.fresh_stage2 = fresh_stage2
        #: Image ids the stage-1 model misclassified (None: stage 2 has not started).
        self.error_ids: frozenset[str] | None = None
        #: How the error set was made: epoch, counts, errors per group (a diagnostic).
        self.error_info: dict[str, Any] | None = None

    # -- the loss ------------------------------------------------------------------------------
    def row_weights(self, image_ids: list[str], device: torch.device) -> torch.Tensor:
        """(B,) loss weights: ``upweight`` for the error set's images, 1 for the others."""
        errors = self.error_ids or frozenset()
        return torch.tensor(
            [self.upweight if i in errors else 1.0 for i in image_ids], device=device
        )

    def loss(self, outputs: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = F.binary_cross_entropy_with_logits(
            outputs, batch["label"].float(), reduction="none"
        )  # (B,)
        weights = self.row_weights(list(batch["image_id"]), losses.device)  # (B,)
        return {"loss": (weights * losses).mean(), "erm_loss": losses.mean()}

    # -- the stages ----------------------------------------------------------------------------
    def stage1_epochs(self) -> int:
        """Epochs of stage 1 (``first_stage_epochs`` or half the trainer's ``max_epochs``).

        Raises:
            ValueError: Neither ``first_stage_epochs`` nor ``trainer.max_epochs`` is set.
        """
        if self.first_stage_epochs is not None:
            return self.first_stage_epochs
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            raise ValueError("jtt: set model.first_stage_epochs when trainer.max_epochs is not set")
        return max(1, max_epochs // 2)

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs <= self.stage1_epochs():
            rank_zero_warn(
                f"jtt: stage 1 lasts {self.stage1_epochs()} epoch(s) of {max_epochs}: there is "
                "no stage 2, so this fit is plain ERM"
            )

    def on_train_epoch_start(self) -> None:
        if self.error_ids is None and self.current_epoch >= self.stage1_epochs():
            self.start_stage2()

    def on_train_epoch_end(self) -> None:
        stage2 = self.error_ids is not None
        n_errors = len(self.error_ids) if stage2 else 0
        metrics = {"train/jtt_stage": 2.0 if stage2 else 1.0, "train/jtt_errors": float(n_errors)}
        self.log_dict(metrics, sync_dist=True)  # equal on every rank

    def start_stage2(self) -> None:
        """Build the error set, re-initialise if ``fresh_stage2``, restart model selection."""
        trainer = self.trainer
        self.error_ids, self.error_info = self.identify_errors(trainer.datamodule)
        self.error_info["epoch"] = self.current_epoch
        if self.fresh_stage2:
            self.reinitialise()
            for optimizer in trainer.optimizers:
                optimizer.state.clear()  # fresh Adam moments for the fresh weights
        restart_selection(trainer)
        info = self.error_info
        rank_zero_info(
            f"jtt: stage 2 from epoch {info['epoch']}: {info['n_errors']} of {info['n_train']} "
            f"training images misclassified by the stage-1 model, up-weighted x{self.upweight}"
            + ("; weights re-initialised" if self.fresh_stage2 else "")
        )

    def identify_errors(self, datamodule: Any) -> tuple[frozenset[str], dict[str, Any]]:
        """The training images the current model misclassifies, and counts.

        Returns:
            ``(image ids, info)``; info has ``n_train``, ``n_errors`` and ``by_group``:
            ``{group: [errors, rows]}`` over label × spurious (the manifest's attributes, a
            diagnostic that training never reads).
        """
        logits, records = split_pass(self, datamodule, "train", self.net.image_logits, dim=1)
        labels = torch.tensor([float(r["label"]) for r in records])  # (N,)
        wrong = ((logits[:, 0] > 0).float() != labels).tolist()
        ids = frozenset(r["image_id"] for r, w in zip(records, wrong, strict=True) if w)
        spurious = torch.tensor([float(r["spurious"]) for r in records])
        groups = group_index(labels, spurious).tolist()
        rows, errors = Counter(groups), Counter(g for g, w in zip(groups, wrong, strict=True) if w)
        by_group = {GROUP_NAMES[g]: [errors[g], rows[g]] for g in sorted(rows)}
        info = {"n_train": len(records), "n_errors": len(ids), "by_group": by_group}
        return ids, info

    def reinitialise(self) -> None:
        """Fresh weights for the network (drawn on rank 0 and broadcast under DDP)."""
        device = next(self.parameters()).device
        fresh = self.build_net(self.backbone).state_dict()
        state = {name: value.to(device).contiguous() for name, value in fresh.items()}
        if distributed_world()[1] > 1:
            for tensor in state.values():
                dist.broadcast(tensor, src=0)
        self.net.load_state_dict(state)

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        ids = None if self.error_ids is None else sorted(self.error_ids)
        checkpoint["jtt"] = {"error_ids": ids, "info": self.error_info}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("jtt") or {}
        ids = state.get("error_ids")
        self.error_ids = None if ids is None else frozenset(ids)
        self.error_info = state.get("info")


def restart_selection(trainer: L.Trainer) -> None:
    """Demote every score the trainer's monitoring checkpoint callbacks hold to the worst
    value, so the next validation replaces their best checkpoints (same file names)."""
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.monitor is None:
            continue
        if not callback.best_k_models:
            continue
        worst = torch.tensor(-math.inf if callback.mode == "max" else math.inf)
        callback.best_k_models = dict.fromkeys(callback.best_k_models, worst)
        callback.kth_value = worst
        callback.best_model_score = worst
