"""``seg_ssl``: semi-supervised segmentation — masks where annotated, a mean teacher elsewhere.

Under an annotation budget only some training images keep their masks. ``seg_ssl`` trains like
``seg`` on every image and adds a consistency term on the images without a mask: an EMA copy of
the network (the teacher, Tarvainen & Valpola 2017) labels their confident pixels, and the
network (the student) must reproduce those pseudo-masks from a perturbed view of the image.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from spatialspec.methods.base import METHODS
from spatialspec.methods.dense import DenseMethod
from spatialspec.models import BackboneConfig, SpatialNet

#: Steepness of the sigmoid ramp exp(-RAMP_STEEPNESS * (1 - t)^2) (Laine & Aila 2017).
RAMP_STEEPNESS = 5.0


# ----------------------------------------------------------------------------- building blocks


def sigmoid_rampup(epochs: float | None, rampup_epochs: float) -> float:
    """Ramp factor in [0, 1] after ``epochs`` (fractional) epochs of training.

    The sigmoid ramp exp(-5 (1 - t)^2), t = epochs / rampup_epochs clipped to [0, 1], shifted and
    rescaled so that it is exactly 0 at t = 0 and 1 at t = 1 (the raw curve starts at
    exp(-5) ~ 0.007). ``epochs=None`` (no fit running) and ``rampup_epochs=0`` give 1.
    """
    if epochs is None or rampup_epochs <= 0:
        return 1.0
    t = min(max(epochs / rampup_epochs, 0.0), 1.0)
    floor = math.exp(-RAMP_STEEPNESS)
    return (math.exp(-RAMP_STEEPNESS * (1.0 - t) ** 2) - floor) / (1.0 - floor)


def epochs_done(trainer: Any | None) -> float | None:
    """Fractional epochs of a running fit (optimizer steps / steps per epoch), None without one.

    Falls back to the integer ``current_epoch`` when the epoch length is unknown (an iterable
    loader). In a ``fast_dev_run`` the single step is at epoch 0: the ramp is 0 there.
    """
    if trainer is None:
        return None
    steps_per_epoch = trainer.num_training_batches / trainer.accumulate_grad_batches
    if not math.isfinite(steps_per_epoch) or steps_per_epoch <= 0:
        return float(trainer.current_epoch)
    return trainer.global_step / steps_per_epoch


def ema_decay_at(update: int, decay: float, warmup: bool) -> float:
    """Decay of the ``update``-th teacher update (1-based).

    With ``warmup``, min(decay, 1 - 1 / (update + 1)) as in Tarvainen & Valpola's code: the
    teacher starts as the plain average of the student's weights so far (0.5 at the first
    update) instead of keeping d**t of the random initialisation for t steps (0.99**100 = 37 %).
    """
    return min(decay, 1.0 - 1.0 / (update + 1)) if warmup else decay


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, in place.

    Runs over the whole state dict: parameters and floating buffers (BatchNorm running
    statistics) are averaged, integer buffers (``num_batches_tracked``) copied.
    """
    source = student.state_dict()
    for name, target in teacher.state_dict().items():
        if target.is_floating_point():
            target.lerp_(source[name], 1.0 - decay)
        else:
            target.copy_(source[name])


def perturb(
    images: torch.Tensor, noise_std: float, intensity_jitter: float, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's view: per-image intensity scale/shift, Gaussian noise, horizontal flip.

    Args:
        images: (N, C, H, W) normalised images.
        noise_std: Standard deviation of the additive pixel noise.
        intensity_jitter: Scale drawn from 1 +- jitter and shift from +- jitter, per image.
        flip: Flip each image horizontally with probability 1/2.

    Returns:
        The views (N, C, H, W) and which rows were flipped (N,) bool: apply
        :func:`flip_rows` with them to the student's output to undo the flip.
    """
    n = images.shape[0]
    jitter = (torch.rand(2, n, 1, 1, 1, device=images.device) * 2 - 1) * intensity_jitter
    views = images * (1 + jitter[0]) + jitter[1]  # (N, C, H, W)
    if noise_std:
        views = views + noise_std * torch.randn_like(views)
    flipped = torch.rand(n, device=images.device) < 0.5 if flip else images.new_zeros(n).bool()
    return flip_rows(views, flipped), flipped


def flip_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Flip (N, ..., W) ``x`` along its last axis in the rows where ``rows`` (N,) is True.

    A flip is its own inverse: the same call undoes it.
    """
    return torch.where(rows.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def pseudo_mask(probs: torch.Tensor, confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher probabilities -> hard pseudo-mask and the weight of each pixel (same shapes).

    Pixels with probability > ``confidence`` are 1, < 1 - ``confidence`` are 0; the others are
    ignored (weight 0).
    """
    target = (probs > confidence).to(probs.dtype)
    weight = ((probs > confidence) | (probs < 1 - confidence)).to(probs.dtype)
    return target, weight


def pseudo_label_bce(
    logits: torch.Tensor, teacher_probs: torch.Tensor, confidence: float
) -> torch.Tensor:
    """BCE of student pixel logits against the teacher's confident pseudo-mask.

    Averaged over all pixels, ignored ones counting as 0 (as FixMatch): the term grows with
    the teacher's confidence instead of weighting a handful of confident pixels fully.
    """
    target, weight = pseudo_mask(teacher_probs.float(), confidence)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (bce * weight).mean()


def _check_args(
    ema_decay: float,
    confidence: float,
    consistency_weight: float,
    rampup_epochs: float,
    noise_std: float,
    intensity_jitter: float,
) -> None:
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    for name, value in (
        ("consistency_weight", consistency_weight),
        ("rampup_epochs", rampup_epochs),
        ("noise_std", noise_std),
        ("intensity_jitter", intensity_jitter),
    ):
        if not value >= 0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0, got {value}")


# ----------------------------------------------------------------------------- the method


@METHODS.register("seg_ssl")
class SegSSLMethod(DenseMethod):
    """Mask supervision where a mask is known, mean-teacher consistency where it is not.

    Rows with a mask (``mask_available == 1``) and rows without one get exactly
    :class:`DenseMethod`'s losses (pixel BCE + Dice; BCE of the pooled score vs the image
    label). On the rows without a mask the method adds a consistency term:

    * **Teacher**: an exponential moving average of the network (``ema_decay``; with
      ``ema_warmup`` the decay of update t is min(``ema_decay``, 1 - 1/(t + 1)), as in the mean
      teacher's code, so the random initialisation fades at once), updated after every
      optimizer step (parameters and BatchNorm statistics), never trained by gradients
      (``requires_grad`` False, left out of the optimizer), predicting in eval mode, saved in
      checkpoints (``teacher.*`` keys).
    * **Two views**: augmentation happens in the dataset, so the batch is already augmented. The
      teacher sees the batch image; the student a second view made on the fly: per-image
      intensity scale 1 +- ``intensity_jitter`` and shift +- ``intensity_jitter``, Gaussian noise
      (``noise_std``) and, with ``flip``, a random horizontal flip undone on the output.
    * **Pseudo-masks**: teacher pixels with probability > ``confidence`` are 1, < 1 -
      ``confidence`` 0, the rest ignored; the term is the student's BCE against them, averaged
      over all pixels of the rows (ignored pixels count 0, as in FixMatch).
    * **Weight**: ``consistency_weight`` x a sigmoid ramp exp(-5 (1 - t)^2) over
      ``rampup_epochs`` (t = fractional epochs / ``rampup_epochs``; rescaled to be exactly 0 at
      the start and 1 at the end; 1 outside a fit). The term is a mean over the rows without a
      mask, like DenseMethod's two terms. A batch where every row has a mask trains exactly as
      ``seg``.

    Negatives without a mask get no known-empty pixel target, although a negative has no
    pathology pixels: an image outside the budget contributes only its label (image loss) and
    the consistency term, so the budget means what it says.

    Validation, scores and predictions use the student (the network the supervised losses train
    directly; the teacher only makes pseudo-masks), so the model selection and the predictions
    of a checkpoint come from one network, as in every other method.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        pooling: How pixel probabilities become an image score: ``max``, ``mean``, ``topk``.
        topk: Pixels averaged by ``topk`` pooling.
        dice_weight: Weight of the Dice term of the pixel loss (0 disables it).
        pixel_weight: Weight of the pixel loss (mean over the rows with a mask).
        image_weight: Weight of the image loss (mean over the rows without one).
        ema_decay: Teacher decay d: teacher <- d * teacher + (1 - d) * student after each step.
        ema_warmup: Use min(d, 1 - 1/(t + 1)) at the t-th update (a running mean at first).
        confidence: Teacher probability above which a pixel is a pseudo-positive (below
            1 - confidence: pseudo-negative; between: ignored).
        consistency_weight: Weight of the consistency term once ramped up.
        rampup_epochs: Epochs of the sigmoid ramp of the consistency weight (0: none).
        noise_std: Standard deviation of the Gaussian noise of the student's view.
        intensity_jitter: Intensity scale (1 +- jitter) and shift (+- jitter) of the student's
            view, drawn per image.
        flip: Randomly flip the student's view horizontally (undone on its output).
    """

    annotation = "mask"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        pooling: str = "topk",
        topk: int = 16,
        dice_weight: float = 1.0,
        pixel_weight: float = 1.0,
        image_weight: float = 1.0,
        ema_decay: float = 0.99,
        ema_warmup: bool = True,
        confidence: float = 0.9,
        consistency_weight: float = 1.0,
        rampup_epochs: float = 5.0,
        noise_std: float = 0.1,
        intensity_jitter: float = 0.1,
        flip: bool = True,
    ) -> None:
        _check_args(
            ema_decay, confidence, consistency_weight, rampup_epochs, noise_std, intensity_jitter
        )
        super().__init__(
            backbone,
            lr=lr,
            weight_decay=weight_decay,
            pooling=pooling,
            topk=topk,
            dice_weight=dice_weight,
            pixel_weight=pixel_weight,
            image_weight=image_weight,
        )
        self.teacher: SpatialNet = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))  # in checkpoints

    # -- teacher -------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1, H, W) teacher pixel probabilities, predicted in eval mode.

        Eval mode (EMA running statistics, no dropout) only for this call: the teacher's mode
        flag otherwise follows the module's, so Lightning sees no module left in eval mode.
        """
        mode = self.teacher.training
        self.teacher.eval()
        try:
            return torch.sigmoid(self.teacher.pixel_logits(images))
        finally:
            self.teacher.train(mode)

    def update_teacher(self) -> None:
        """One EMA step of the teacher towards the student."""
        self.ema_updates += 1
        hp = self.hparams
        decay = ema_decay_at(int(self.ema_updates), hp.ema_decay, hp.ema_warmup)
        ema_update(self.teacher, self.net, decay)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: torch.optim.Optimizer | LightningOptimizer,
        optimizer_closure: Any = None,
    ) -> None:
        """The optimizer step, then the teacher's EMA step (once per step, accumulation too)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.update_teacher()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters only: the teacher is not optimised."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(
            trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # -- losses --------------------------------------------------------------------------------
    def consistency_weight(self) -> float:
        """Current weight of the consistency term (ramped by training progress)."""
        ramp = sigmoid_rampup(epochs_done(self._trainer), self.hparams.rampup_epochs)
        return self.hparams.consistency_weight * ramp

    def consistency_loss(self, images: torch.Tensor) -> torch.Tensor:
        """Student on a perturbed view vs the teacher's pseudo-mask of (N, C, H, W) images."""
        teacher_probs = self.teacher_probs(images)  # (N, 1, H, W)
        hp = self.hparams
        views, flipped = perturb(images, hp.noise_std, hp.intensity_jitter, hp.flip)
        student = flip_rows(self(views), flipped)  # (N, 1, H, W), aligned with the teacher's
        return pseudo_label_bce(student, teacher_probs, hp.confidence)

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """DenseMethod's losses + ramped consistency on the rows without a mask."""
        logits = self(batch["image"])  # (B, 1, H, W)
        losses = self.loss(logits, batch)
        unlabelled = batch["mask_available"] <= 0.5  # (B,)
        consistency = logits.new_zeros(())
        if unlabelled.any():
            consistency = self.consistency_loss(batch["image"][unlabelled])
        weight = self.consistency_weight()
        losses["loss"] = losses["loss"] + weight * consistency
        losses["consistency_loss"] = consistency.detach()
        losses["consistency_weight"] = logits.new_tensor(weight)
        return losses
