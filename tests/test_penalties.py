"""The mask-penalty methods (``rrr``, ``gradmask``, ``actdiff``) against hand-computed values.

The input-gradient penalties are checked on a linear model, whose input gradient is known in
closed form, including the parameter gradients of the penalty (double backpropagation); ActDiff
on the real network against features computed separately. The generic checks of every method
(fits, checkpoints, predictions) are in tests/test_methods.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spatialspec.methods import get_method
from spatialspec.methods.actdiff import shuffle_outside
from spatialspec.methods.penalty import Hardsigmoid, twice_differentiable
from spatialspec.models import BackboneConfig
from spatialspec.training import fit

PENALTIES = ("rrr", "gradmask", "actdiff")
GRADIENT_PENALTIES = ("rrr", "gradmask")


def _batch(b: int = 4, size: int = 32, channels: int = 1, known: list[float] | None = None):
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(b, 1, size, size)
    masks[:, :, 8:20, 6:18] = 1.0
    masks[1::2] = 0.0  # odd rows: negatives, known-empty masks
    return {
        "image": torch.randn(b, channels, size, size, generator=g),
        "mask": masks,
        "label": torch.tensor([float(i % 2 == 0) for i in range(b)]),
        "mask_available": torch.ones(b) if known is None else torch.tensor(known),
        "spurious": torch.zeros(b),
        "image_id": [f"i{i}" for i in range(b)],
    }


class Linear(nn.Module):
    """z = Σ w ⊙ x + b: ∂z/∂x = w."""

    def __init__(self, size: int, channels: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.w = nn.Parameter(0.1 * torch.randn(1, channels, size, size, generator=g))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(dim=1) + self.b


def _linear_method(name: str, small_backbone: BackboneConfig, weight: float, size: int = 32):
    method = get_method(name)(backbone=small_backbone, penalty_weight=weight)
    linear = method.linear = Linear(size)
    method.forward = lambda x: linear(x)  # the method's logits are the linear model's
    return method


def _expected_penalty(name: str, linear: Linear, batch: dict, rows: torch.Tensor):
    """Closed form of the penalty of ``rows``, as a differentiable function of w and b."""
    x, outside = batch["image"][rows], 1 - batch["mask"][rows]
    z = linear(x)  # (K,)
    if name == "rrr":  # ∂(log σ(z) + log σ(-z))/∂x = (1 - 2σ(z)) w
        grads = (1 - 2 * torch.sigmoid(z)).view(-1, 1, 1, 1) * linear.w
        return (outside * grads).square().flatten(1).sum(dim=1).mean()
    grads = linear.w.expand_as(x)  # gradmask: |∂|z|/∂x| = |w| (z != 0)
    return (outside * grads).abs().flatten(1).sum(dim=1).mean()


@pytest.mark.parametrize("name", GRADIENT_PENALTIES)
def test_input_gradient_penalty_and_its_gradient_match_the_closed_form(
    name: str, small_backbone: BackboneConfig
) -> None:
    batch = _batch(known=[1, 1, 0, 1])
    method = _linear_method(name, small_backbone, weight=2.5)
    losses = method.compute_loss(batch)
    rows = batch["mask_available"] > 0.5

    reference = Linear(32)
    expected = _expected_penalty(name, reference, batch, rows)
    bce = F.binary_cross_entropy_with_logits(reference(batch["image"]), batch["label"])
    torch.testing.assert_close(losses["penalty"], expected.detach())
    torch.testing.assert_close(losses["bce"], bce.detach())
    torch.testing.assert_close(losses["loss"], (bce + 2.5 * expected).detach())
    assert losses["penalty"] > 0

    # double backpropagation: the penalty's parameter gradients are those of the closed form
    losses["loss"].backward()
    (bce + 2.5 * expected).backward()
    torch.testing.assert_close(method.linear.w.grad, reference.w.grad)
    torch.testing.assert_close(method.linear.b.grad, reference.b.grad)


@pytest.mark.parametrize("name", GRADIENT_PENALTIES)
def test_input_gradient_penalty_is_zero_when_the_mask_covers_the_image(
    name: str, small_backbone: BackboneConfig
) -> None:
    batch = _batch()
    batch["mask"] = torch.ones_like(batch["mask"])
    linear = _linear_method(name, small_backbone, weight=1.0)
    assert linear.compute_loss(batch)["penalty"].item() == 0.0
    torch.manual_seed(0)
    method = get_method(name)(backbone=small_backbone, penalty_weight=1.0).train()
    losses = method.compute_loss(batch)  # the real network, train mode
    assert losses["penalty"].item() == 0.0
    torch.testing.assert_close(losses["loss"], losses["bce"])


@pytest.mark.parametrize("name", PENALTIES)
def test_rows_without_a_mask_get_no_penalty(name: str, small_backbone: BackboneConfig) -> None:
    torch.manual_seed(0)
    method = get_method(name)(backbone=small_backbone, penalty_weight=3.0).eval()
    batch = _batch(known=[1, 0, 1, 0])
    torch.manual_seed(1)
    first = method.compute_loss(batch)
    batch["mask"][[1, 3]] = torch.rand(2, 1, 32, 32)  # the unknown rows' masks are not read
    torch.manual_seed(1)
    torch.testing.assert_close(method.compute_loss(batch)["penalty"], first["penalty"])
    assert first["penalty"] > 0

    none = _batch(known=[0, 0, 0, 0])  # no known mask: binary's loss, no penalty computed
    losses = method.compute_loss(none)
    assert losses["penalty"].item() == 0.0
    expected = F.binary_cross_entropy_with_logits(method(none["image"]), none["label"])
    torch.testing.assert_close(losses["loss"], expected)


def test_penalty_weight_zero_is_binary_and_a_negative_one_an_error(
    small_backbone: BackboneConfig,
) -> None:
    torch.manual_seed(0)
    binary = get_method("binary")(backbone=small_backbone).eval()
    torch.manual_seed(0)
    rrr = get_method("rrr")(backbone=small_backbone, penalty_weight=0.0).eval()
    batch = _batch()
    torch.testing.assert_close(rrr.compute_loss(batch)["loss"], binary.compute_loss(batch)["loss"])
    with pytest.raises(ValueError, match=r"penalty_weight must be >= 0, got -1\.0"):
        get_method("actdiff")(backbone=small_backbone, penalty_weight=-1.0)


def test_rrr_undoes_the_amp_loss_scale(small_backbone: BackboneConfig) -> None:
    batch = _batch()
    method = _linear_method("rrr", small_backbone, weight=1.0)
    plain = method.compute_loss(batch)["penalty"]
    method.grad_scale = lambda: 1024.0  # as a running 16-mixed fit's GradScaler
    torch.testing.assert_close(method.compute_loss(batch)["penalty"], plain)


# ------------------------------------------------------------------------------- the network


def test_hard_sigmoid_gates_are_rebuilt_twice_differentiable(
    small_backbone: BackboneConfig,
) -> None:
    x = torch.linspace(-5, 5, 1001)
    torch.testing.assert_close(Hardsigmoid()(x), nn.Hardsigmoid()(x), rtol=0, atol=0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Hardsigmoid())
    assert twice_differentiable(net) == ["1"] and isinstance(net[1], Hardsigmoid)

    torch.manual_seed(0)
    rrr = get_method("rrr")(backbone=small_backbone)
    assert not any(isinstance(m, nn.Hardsigmoid) for m in rrr.modules())
    # the same parameters and buffers as binary's network: checkpoints are interchangeable
    binary = get_method("binary")(backbone=small_backbone)
    assert rrr.state_dict().keys() == binary.state_dict().keys()


@pytest.mark.parametrize("name", GRADIENT_PENALTIES)
def test_double_backprop_through_the_network_in_both_memory_formats(name: str) -> None:
    cfg = {"encoder_name": "tu-mobilenetv3_small_100", "encoder_depth": 3,
           "decoder_channels": (16, 8, 8)}  # fmt: skip
    batch, values, grads = _batch(b=2), [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        backbone = BackboneConfig(**cfg, channels_last=channels_last)
        method = get_method(name)(backbone=backbone, penalty_weight=1.0).eval()
        losses = method.compute_loss(batch)
        losses["loss"].backward()
        values.append(losses["penalty"])
        grads.append(method.net.image_head[3].weight.grad.clone())
    assert values[0] > 0
    torch.testing.assert_close(values[1], values[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------------------- actdiff


def test_shuffle_outside_permutes_only_the_pixels_outside_the_mask() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 8, 8, generator=g)
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, :, 2:5, 3:7] = 1.0
    masks[2] = 1.0  # row 1: empty mask (all shuffled); row 2: full mask (nothing)
    out = shuffle_outside(images, masks, generator=torch.Generator().manual_seed(1))
    inside = masks.bool().expand_as(images)
    assert torch.equal(out[inside], images[inside])
    assert torch.equal(out[2], images[2])
    for i in range(2):
        px = ~masks[i, 0].bool()
        before = images[i][:, px].T  # (P, C): a pixel moves with its channels
        after = out[i][:, px].T
        assert not torch.equal(before, after)
        key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
        assert key(before) == key(after)  # the same pixels, elsewhere


def test_actdiff_penalty_is_the_mean_feature_distance(small_backbone: BackboneConfig) -> None:
    torch.manual_seed(0)
    method = get_method("actdiff")(backbone=small_backbone, penalty_weight=0.5).eval()
    batch = _batch(known=[1, 1, 0, 1])
    rows = batch["mask_available"] > 0.5
    torch.manual_seed(7)
    losses = method.compute_loss(batch)
    torch.manual_seed(7)  # the same permutation
    shuffled = shuffle_outside(batch["image"][rows], batch["mask"][rows])

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return method.net.encoder(method.net.prepare(x))[-1].mean(dim=(2, 3))  # (N, F)

    with torch.no_grad():
        distances = (pooled(batch["image"][rows]) - pooled(shuffled)).norm(dim=1)
        logits = method.net.image_logits(batch["image"])
    torch.testing.assert_close(losses["penalty"], distances.mean(), rtol=1e-4, atol=1e-5)
    bce = F.binary_cross_entropy_with_logits(logits, batch["label"])
    torch.testing.assert_close(losses["loss"], bce + 0.5 * distances.mean(), rtol=1e-4, atol=1e-5)


def test_actdiff_is_zero_when_nothing_is_shuffled(small_backbone: BackboneConfig) -> None:
    torch.manual_seed(0)
    method = get_method("actdiff")(backbone=small_backbone, penalty_weight=1.0).train()
    batch = _batch()
    batch["mask"] = torch.ones_like(batch["mask"])  # x̃ = x
    losses = method.compute_loss(batch)  # train mode: both views in one BatchNorm batch
    assert losses["penalty"].item() == pytest.approx(0.0, abs=1e-5)
    losses["loss"].backward()  # the norm's gradient at 0 is finite
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------- fits


def _metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_mask_budget_of_zero_trains_without_penalty(
    tmp_path: Path, quick_fit_args: list[str]
) -> None:
    out = tmp_path / "run"
    fit(["--method", "rrr", "--out_dir", str(out), *quick_fit_args,
         "--data.mask_budget", "0", "--model.penalty_weight", "10"])  # fmt: skip
    rows = [r for r in _metric_rows(out) if r.get("train/penalty")]
    assert rows and all(float(r["train/penalty"]) == 0.0 for r in rows)
    assert all(float(r["train/loss"]) == float(r["train/bce"]) > 0 for r in rows)


def test_bf16_mixed_precision_fit_does_not_crash(tmp_path: Path, quick_fit_args: list[str]) -> None:
    run = ["--method", "gradmask", "--out_dir", str(tmp_path / "run"), *quick_fit_args]
    info = fit([*run, "--trainer.precision", "bf16-mixed", "--trainer.limit_train_batches", "1"])
    assert info["global_steps"] == 1


def test_actdiff_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, quick_fit_args: list[str]
) -> None:
    base = ["--method", "actdiff", *quick_fit_args, "--data.mask_budget", "50%",
            "--trainer.num_sanity_val_steps", "0", "--seed", "4"]  # fmt: skip
    fit([*base, "--trainer.max_epochs", "2", "--out_dir", str(tmp_path / "whole")])
    fit([*base, "--trainer.max_epochs", "1", "--out_dir", str(tmp_path / "part")])
    fit([*base, "--trainer.max_epochs", "2", "--out_dir", str(tmp_path / "part"),
         "--resume", "auto"])  # fmt: skip
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in ("whole", "part")
    ]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- hparams


def test_hparams_follow_the_subclass_chain(small_backbone: BackboneConfig) -> None:
    """Lightning's save_hyperparameters records every __init__ along the chain, the most
    derived value winning, with no call in the subclasses; the backbone as a plain dict."""
    rrr_class = get_method("rrr")

    class Stronger(rrr_class):
        def __init__(self, backbone=None, lr: float = 1e-3, boost: float = 2.0) -> None:
            super().__init__(backbone, lr=lr, penalty_weight=boost * 5)

    method = Stronger(backbone=small_backbone.to_dict(), lr=0.5)
    assert dict(method.hparams) == {
        "backbone": small_backbone.to_dict(),
        "lr": 0.5,
        "weight_decay": 0.0,
        "penalty_weight": 10.0,
        "boost": 2.0,
    }
    assert method.hparams_initial["backbone"] == small_backbone.to_dict()
    assert rrr_class.annotation == "mask" and rrr_class.attribute_split is None
