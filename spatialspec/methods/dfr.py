"""``dfr``: image labels + **val** spurious-attribute labels — Deep Feature Reweighting
(Kirichenko et al., ICLR 2023), "DFR on validation", on the binary network.

**Training** is ``binary``'s: the whole network learns from image labels (ERM), and the model is
selected on val by the run's ``monitor`` (``val/auroc`` in the shipped configs: val image labels
only). **After the fit** (``on_fit_end``), the selected model (``best.ckpt``, or the in-memory
one when the fit kept no best checkpoint) is loaded, its features (the pooled encoder features
the image head reads) are frozen, and a new last layer is fitted on the **val** split — the
split that carries the attribute in the SIIM setting, where tube labels exist only in val and
test. Test images are never read.

The last layer follows the DFR authors' ``dfr_on_validation_tune`` / ``_eval`` with
``balance_val=True``, ``add_train=False``:

1. Rows: every val row, its group label × spurious where the attribute is known (after
   ``data.attribute_budget``), label × unknown where it is not
   (:func:`~spatialspec.methods.groups.group_index`; with no attribute at all the groups are the
   classes, SubpopBench's attribute-free DFR).
2. Choosing C: val is halved, stratified by group (DFR halves at random; stratifying keeps
   every group of two or more rows in both halves). On the first half, subsampled so every
   present group has as many rows as the smallest one and standardised, an L1 logistic
   regression (sklearn ``liblinear``) is fitted for each C of ``c_grid`` (DFR's grid
   1 ... 0.01); the C with the best worst-group accuracy (threshold 0.5) on the whole second
   half wins (ties: the first in the grid). When the second half is empty (every group holds
   one row) the first C of the grid is used and ``tuned`` is false.
3. Refit: ``n_retrains`` (20) group-balanced subsamples of all rows, one standardisation fitted
   on all rows (DFR fits it on train features; val keeps the head a function of val alone), the
   coefficients and intercepts averaged.

The standardisation is folded into the head (``w / σ``, ``b - Σ w μ / σ``), kept in the
buffers ``dfr_weight`` / ``dfr_bias``; ``dfr_fitted`` switches :meth:`forward` to it. The ERM
head stays, untouched, and trains on resume.

**Checkpoints**: ``best.ckpt`` (what ``evaluate``, ``sweep`` and the audits read) is rewritten
atomically with the DFR head and ``checkpoint["dfr"]`` (C, the search, group counts);
``last.ckpt`` keeps the training state without it. A resumed fit trains the ERM head (the flag
is reset when the fit starts) and refits DFR at its end; a finished fit resumed again refits
the same head (same features, same seeded draws). Under DDP every rank extracts its shard of
val, the shards are summed, every rank fits the same head; rank 0 writes.

**Model selection and val**: selection uses val labels (and val attributes only with
``monitor: val/robust_auroc``), DFR then fits on val, so ``evaluate``'s val numbers for a dfr
model are on images its last layer was fitted on (optimistic); its test numbers are clean.
``val/robust_auroc`` logged during training is the ERM head's, on all val attributes
(:attr:`~spatialspec.data.datamodule.SpatialDataModule.metric_frame`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from spatialspec.checkpoints import read_checkpoint
from spatialspec.methods.base import METHODS
from spatialspec.methods.binary import BinaryMethod
from spatialspec.methods.groups import GROUP_NAMES, group_index, split_pass
from spatialspec.models import BackboneConfig

__all__ = ["C_GRID", "DFRMethod", "HeadFit", "balanced_subset", "fit_head", "group_halves"]

#: DFR's C grid (Kirichenko et al., ``dfr_evaluate_spurious.py``, Waterbirds).
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
#: Second entropy word of DFR's draws (the first is the run's seed).
_DFR_STREAM = 0xDF
#: The DFR buffers rewritten into ``best.ckpt``.
_BUFFERS = ("dfr_weight", "dfr_bias", "dfr_fitted")


# ---------------------------------------------------------------------------------------------
# The last layer (numpy / sklearn)
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadFit:
    """A fitted last layer on raw (unstandardised) features: ``logit = x · weight + bias``."""

    weight: np.ndarray  # (D,)
    bias: float
    info: dict[str, Any]


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a subsample with as many rows of every present group as the smallest has."""
    present = np.unique(groups)
    smallest = min(int((groups == g).sum()) for g in present)
    picks = [rng.permutation(np.flatnonzero(groups == g))[:smallest] for g in present]
    return np.sort(np.concatenate(picks))


def group_halves(groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified halves: each group's rows shuffled, the first ``ceil(n / 2)`` to the first."""
    first, second = [], []
    for g in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == g))
        cut = math.ceil(len(rows) / 2)
        first.append(rows[:cut])
        second.append(rows[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def worst_group_accuracy(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """The lowest accuracy over the groups present."""
    return min(float((pred[groups == g] == labels[groups == g]).mean()) for g in np.unique(groups))


def l1_logistic(c: float) -> LogisticRegression:
    """sklearn's L1-penalised logistic regression (``liblinear``) with inverse strength ``c``
    (``penalty="l1"``, spelt ``l1_ratio=1`` since sklearn 1.8)."""
    major, minor = (int(part) for part in sklearn.__version__.split(".")[:2])
    penalty = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(C=c, solver="liblinear", random_state=0, **penalty)


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    c_grid: tuple[float, ...] = C_GRID,
    n_retrains: int = 20,
    seed: int = 0,
) -> HeadFit:
    """DFR's last layer on ``features`` (N, D) with 0/1 ``labels`` (N,) and ``groups`` (N,).

    Raises:
        ValueError: The rows do not hold both labels.
    """
    labels, groups = np.asarray(labels).astype(int), np.asarray(groups).astype(int)
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError(
            f"dfr: the retraining rows must hold both labels; found only {np.unique(labels)}"
        )
    rng = np.random.default_rng([seed, _DFR_STREAM])
    c, search = _choose_c(features, labels, groups, tuple(c_grid), rng)
    scaler = StandardScaler().fit(features)
    x = scaler.transform(features)
    coefs, intercepts, n_balanced = [], [], 0
    for _ in range(n_retrains):
        rows = balanced_subset(groups, rng)
        model = l1_logistic(c).fit(x[rows], labels[rows])
        coefs.append(model.coef_[0])
        intercepts.append(model.intercept_[0])
        n_balanced = len(rows)
    coef, intercept = np.mean(coefs, axis=0), float(np.mean(intercepts))
    weight = coef / scaler.scale_
    bias = intercept - float((coef * scaler.mean_ / scaler.scale_).sum())
    info = {
        "c": c,
        "tuned": bool(search),
        "search": search,
        "n_rows": len(labels),
        "rows_per_group": _counts(groups),
        "n_balanced": n_balanced,
        "n_retrains": n_retrains,
        "nonzero_weights": int((coef != 0).sum()),
        "n_features": int(features.shape[1]),
    }
    return HeadFit(weight, bias, info)


def _choose_c(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    c_grid: tuple[float, ...],
    rng: np.random.Generator,
) -> tuple[float, dict[str, float]]:
    """The C of ``c_grid`` with the best worst-group accuracy on the second half, and the search
    (``{str(C): worst-group accuracy}``; empty when the second half is empty)."""
    first, second = group_halves(groups, rng)
    if len(second) == 0:
        return c_grid[0], {}
    rows = first[balanced_subset(groups[first], rng)]
    scaler = StandardScaler().fit(features[rows])
    x_fit, x_select = scaler.transform(features[rows]), scaler.transform(features[second])
    search = {}
    for c in c_grid:
        pred = l1_logistic(c).fit(x_fit, labels[rows]).predict(x_select)
        search[str(c)] = worst_group_accuracy(pred, labels[second], groups[second])
    best = max(c_grid, key=lambda c: search[str(c)])  # the first of equal ones
    return best, search


def _counts(groups: np.ndarray) -> dict[str, int]:
    return {GROUP_NAMES[g]: n for g, n in sorted(Counter(groups.tolist()).items())}


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


@METHODS.register("dfr")
class DFRMethod(BinaryMethod):
    """Binary network whose last layer is refitted on group-balanced val features after the fit.

    Args:
        backbone: Architecture of the shared network.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        c_grid: Inverse L1 strengths searched (DFR's grid by default).
        n_retrains: Group-balanced subsamples whose fits are averaged (DFR: 20).
    """

    annotation = "label"
    attribute_split = "val"

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        c_grid: list[float] = list(C_GRID),  # noqa: B006 (a plain default for the config)
        n_retrains: int = 20,
    ) -> None:
        if not c_grid or any(not (math.isfinite(c) and c > 0) for c in c_grid):
            raise ValueError(f"c_grid must be a non-empty list of numbers > 0, got {c_grid}")
        if n_retrains < 1:
            raise ValueError(f"n_retrains must be >= 1, got {n_retrains}")
        super().__init__(backbone, lr=lr, weight_decay=weight_decay)
        self.c_grid = tuple(float(c) for c in c_grid)
        self.n_retrains = n_retrains
        width = self._last_linear()[1].in_features
        self.register_buffer("dfr_weight", torch.zeros(width))
        self.register_buffer("dfr_bias", torch.zeros(()))
        self.register_buffer("dfr_fitted", torch.tensor(False))
        #: What the last refit did (C, search, group counts); None before one.
        self.dfr_info: dict[str, Any] | None = None

    def _last_linear(self) -> tuple[int, nn.Linear]:
        """Position and module of the image head's linear layer."""
        layers = list(self.net.image_head)
        index = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
        return index, layers[index]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, D) features the last layer reads (pooled encoder output;
        dropout before the layer applies only in training mode)."""
        net = self.net
        index, _ = self._last_linear()
        x = net.encoder(net.prepare(images))[-1]  # (B, D, h, w)
        for layer in list(net.image_head)[:index]:  # pooling, flatten, dropout
            x = layer(x)
        return x  # (B, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if bool(self.dfr_fitted):
            return self.features(images) @ self.dfr_weight + self.dfr_bias  # (B,)
        return self.net.image_logits(images)  # (B,) the ERM head

    def on_fit_start(self) -> None:
        # training and its validation (sanity check included) are the ERM head's, also when a
        # fit resumes from a checkpoint that holds a DFR head
        self.dfr_fitted.fill_(False)

    def on_fit_end(self) -> None:
        self.retrain_last_layer()

    def retrain_last_layer(self) -> HeadFit:
        """Load the selected model, fit DFR's last layer on val, rewrite ``best.ckpt``."""
        trainer = self.trainer
        if trainer.datamodule is None:
            raise RuntimeError("dfr reads val through the fit's data module; fit with datamodule=")
        self.to(trainer.strategy.root_device)  # Lightning's teardown moved the model to the CPU
        best = _best_checkpoint(trainer)
        if best is not None:
            self.load_state_dict(read_checkpoint(best)["state_dict"])
        self.dfr_fitted.fill_(False)
        width = self.dfr_weight.numel()
        feats, records = split_pass(self, trainer.datamodule, "val", self.features, dim=width)
        labels = torch.tensor([float(r["label"]) for r in records])
        spurious = torch.tensor([float(r["spurious"]) for r in records])
        head = fit_head(
            feats.double().numpy(),
            labels.numpy(),
            group_index(labels, spurious).numpy(),
            self.c_grid,
            self.n_retrains,
            seed=int(getattr(trainer.datamodule, "seed", 0)),
        )
        self.dfr_weight.copy_(torch.from_numpy(head.weight))
        self.dfr_bias.fill_(head.bias)
        self.dfr_fitted.fill_(True)
        self.dfr_info = {**head.info, "split": "val", "selected_checkpoint": best}
        if best is not None and trainer.is_global_zero:
            self._rewrite(best)
        trainer.strategy.barrier("dfr")
        rank_zero_info(
            f"dfr: last layer refitted on {head.info['n_balanced']} group-balanced val rows "
            f"(x{self.n_retrains}), C={head.info['c']}"
            + (f", written to {best}" if best is not None else "")
        )
        self.cpu()
        return head

    def _rewrite(self, path: str) -> None:
        """``path`` with the DFR buffers and ``checkpoint["dfr"]`` (saved atomically)."""
        checkpoint = read_checkpoint(path)
        for name in _BUFFERS:
            checkpoint["state_dict"][name] = getattr(self, name).detach().cpu()
        checkpoint["dfr"] = self.dfr_info
        self.trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.dfr_info = checkpoint.get("dfr")


def _best_checkpoint(trainer: Any) -> str | None:
    """The best checkpoint of the trainer's first monitoring ModelCheckpoint, if written."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            path = callback.best_model_path
            return path or None
    return None
