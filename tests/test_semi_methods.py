"""``seg_ssl`` (mean teacher) and ``seg_spl`` (pixel SupCon): their parts against references
computed by hand. Registration, fits and checkpoints of both also run in tests/test_methods.py."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spatialspec import training
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.evaluation.predict import load_checkpoint
from spatialspec.methods import get_method
from spatialspec.methods.seg_spl import SegSPLMethod, sample_pixels, supcon_loss
from spatialspec.methods.seg_ssl import (
    SegSSLMethod,
    ema_decay_at,
    ema_update,
    epochs_done,
    flip_rows,
    perturb,
    pseudo_label_bce,
    pseudo_mask,
    sigmoid_rampup,
)
from spatialspec.models import BackboneConfig
from tests.test_methods import make_batch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ssl(backbone: BackboneConfig, **kwargs) -> SegSSLMethod:
    torch.manual_seed(0)
    return get_method("seg_ssl")(backbone=backbone, **kwargs)


def _spl(backbone: BackboneConfig, **kwargs) -> SegSPLMethod:
    torch.manual_seed(0)
    return get_method("seg_spl")(backbone=backbone, **kwargs)


def test_both_methods_are_registered_mask_methods() -> None:
    assert get_method("seg_ssl") is SegSSLMethod
    assert get_method("seg_spl") is SegSPLMethod
    assert SegSSLMethod.annotation == SegSPLMethod.annotation == "mask"


# ------------------------------------------------------------------------------- seg_spl


def _supcon_reference(z: torch.Tensor, labels: list[int], temperature: float) -> float:
    """Khosla et al.'s L_out, one anchor and one positive at a time."""
    n, total, anchors = len(labels), 0.0, 0
    sim = [[float(z[i] @ z[j]) / temperature for j in range(n)] for i in range(n)]
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(sim[i][a]) for a in range(n) if a != i)
        total -= sum(math.log(math.exp(sim[i][p]) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("labels", [[1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 2, 1]])
def test_supcon_matches_a_loop_reference(labels: list[int], temperature: float) -> None:
    z = F.normalize(torch.randn(len(labels), 5, generator=torch.Generator().manual_seed(1)), dim=1)
    z = z.double().requires_grad_(True)
    loss = supcon_loss(z, torch.tensor(labels), temperature)
    assert loss.item() == pytest.approx(_supcon_reference(z.detach(), labels, temperature))
    loss.backward()
    assert torch.isfinite(z.grad).all()  # the masked diagonal (-inf) leaks no NaN


def test_supcon_without_positives_is_zero_with_graph() -> None:
    z = F.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]), 0.1)
    assert loss.item() == 0.0 and loss.requires_grad


def test_sample_pixels_respects_n_pixels_classes_and_rows() -> None:
    masks = make_batch(b=4)["mask"]  # lesions (144 px) on rows 0 and 2
    rows = torch.tensor([True, True, False, True])  # row 2's mask is unknown
    torch.manual_seed(0)
    coords, labels = sample_pixels(masks, rows, n_pixels=50)
    assert coords.shape == (100, 3) and (labels == 1).sum() == 50 and (labels == 0).sum() == 50
    assert len({tuple(c) for c in coords.tolist()}) == 100  # without replacement
    b, y, x = coords.unbind(1)
    torch.testing.assert_close(masks[b, 0, y, x], labels.float())  # each label is its pixel's
    assert set(b.tolist()) <= {0, 1, 3}

    coords, labels = sample_pixels(masks, rows, n_pixels=10_000)
    assert (labels == 1).sum() == 144  # every lesion pixel of row 0, none of row 2
    assert (labels == 0).sum() == 10_000  # background capped
    coords, labels = sample_pixels(masks, torch.zeros(4, dtype=torch.bool), n_pixels=8)
    assert coords.shape == (0, 3) and labels.numel() == 0


def test_spl_loss_is_dense_loss_plus_weighted_supcon(small_backbone: BackboneConfig) -> None:
    method = _spl(small_backbone, contrastive_weight=0.3, n_pixels=32).eval()
    batch = make_batch(mask_available=[1, 0, 1, 1])
    with torch.no_grad():
        torch.manual_seed(5)
        losses = method.compute_loss(batch)
        features, logits = method.features_and_logits(batch["image"])
        torch.testing.assert_close(logits, method(batch["image"]))
        dense = method.loss(logits, batch)
        torch.manual_seed(5)  # the same pixels
        coords, labels = sample_pixels(batch["mask"], batch["mask_available"] > 0.5, 32)
        supcon = supcon_loss(method.embed(features, coords), labels, 0.1)
    assert features.shape[1] == small_backbone.decoder_channels[-1]
    torch.testing.assert_close(losses["contrastive_loss"], supcon)
    torch.testing.assert_close(losses["loss"], dense["loss"] + 0.3 * supcon)
    assert supcon.item() > 0


def test_spl_embeddings_are_unit_vectors(small_backbone: BackboneConfig) -> None:
    method = _spl(small_backbone, proj_dim=12)
    features = torch.randn(2, small_backbone.decoder_channels[-1], 8, 8)
    embeddings = method.embed(features, torch.tensor([[0, 1, 2], [1, 7, 7], [1, 0, 3]]))
    assert embeddings.shape == (3, 12)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("available", [[0, 1, 0, 1], [0, 0, 0, 0]])  # masks of negatives / none
def test_spl_contrastive_term_is_zero_without_lesion_pixels(
    small_backbone: BackboneConfig, available: list[float]
) -> None:
    method = _spl(small_backbone).train()
    losses = method.compute_loss(make_batch(mask_available=available))
    assert losses["contrastive_loss"].item() == 0.0
    assert losses["loss"].requires_grad
    losses["loss"].backward()
    assert all(p.grad is not None for p in method.projector.parameters())  # DDP-safe


# ------------------------------------------------------------------------------- seg_ssl


def test_sigmoid_ramp_runs_from_zero_to_the_weight() -> None:
    assert sigmoid_rampup(0.0, 5) == 0.0
    assert sigmoid_rampup(5.0, 5) == pytest.approx(1.0)
    assert sigmoid_rampup(9.0, 5) == pytest.approx(1.0)
    floor = math.exp(-5)
    mid = (math.exp(-5 * 0.5**2) - floor) / (1 - floor)
    assert sigmoid_rampup(2.5, 5) == pytest.approx(mid)
    values = [sigmoid_rampup(e / 4, 5) for e in range(25)]
    assert values == sorted(values)
    assert sigmoid_rampup(None, 5) == sigmoid_rampup(0.0, 0) == 1.0


def test_epochs_done_counts_optimizer_steps() -> None:
    trainer = SimpleNamespace(
        num_training_batches=10, accumulate_grad_batches=2, global_step=10, current_epoch=1
    )
    assert epochs_done(trainer) == 2.0
    assert epochs_done(SimpleNamespace(**{**vars(trainer), "num_training_batches": math.inf})) == 1
    assert epochs_done(None) is None


def test_consistency_weight_is_full_outside_a_fit(small_backbone: BackboneConfig) -> None:
    assert _ssl(small_backbone, consistency_weight=0.4).consistency_weight() == 0.4


def test_pseudo_mask_ignores_unconfident_pixels() -> None:
    probs = torch.tensor([0.95, 0.05, 0.5, 0.89, 0.11, 0.91])
    target, weight = pseudo_mask(probs, 0.9)
    assert target.tolist() == [1, 0, 0, 0, 0, 1]
    assert weight.tolist() == [1, 1, 0, 0, 0, 1]
    logits = torch.tensor([0.3, -1.0, 2.0, -2.0, 4.0, 1.5])
    expected = (F.softplus(-logits[0]) + F.softplus(logits[1]) + F.softplus(-logits[5])) / 6
    torch.testing.assert_close(pseudo_label_bce(logits, probs, 0.9), expected)
    moved = logits.clone()
    moved[2:5] = torch.tensor([-9.0, 9.0, -9.0])  # ignored pixels do not count
    torch.testing.assert_close(pseudo_label_bce(moved, probs, 0.9), expected)


def test_perturb_flip_is_undone_by_flip_rows() -> None:
    torch.manual_seed(0)
    images = torch.randn(16, 1, 8, 8)
    views, flipped = perturb(images, noise_std=0.0, intensity_jitter=0.0, flip=True)
    assert 0 < flipped.sum() < 16
    torch.testing.assert_close(views[flipped], images[flipped].flip(-1))
    torch.testing.assert_close(flip_rows(views, flipped), images)
    views, flipped = perturb(images, noise_std=0.1, intensity_jitter=0.1, flip=False)
    assert not flipped.any() and not torch.equal(views, images)
    assert (views - images).abs().max() < 1.5  # a mild view, not a new image


def test_ema_update_formula() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    student(torch.randn(8, 3))  # BatchNorm running statistics move
    teacher = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for name, value in teacher.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[name] + 0.1 * student.state_dict()[name]
            torch.testing.assert_close(value, expected)
        else:
            assert torch.equal(value, student.state_dict()[name])  # num_batches_tracked


def test_ema_warmup_starts_as_a_running_mean(small_backbone: BackboneConfig) -> None:
    assert [ema_decay_at(t, 0.9, True) for t in (1, 2, 3, 9, 10, 50)] == pytest.approx(
        [1 / 2, 2 / 3, 3 / 4, 0.9, 0.9, 0.9]
    )
    assert ema_decay_at(1, 0.9, False) == 0.9
    method = _ssl(small_backbone)
    init = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    students = []
    for _ in range(3):  # move the student, then an EMA update
        with torch.no_grad():
            for p in method.net.parameters():
                p.add_(torch.randn_like(p))
        students.append({k: v.clone() for k, v in method.net.state_dict().items()})
        method.update_teacher()
    assert int(method.ema_updates) == 3
    for name, value in method.teacher.named_parameters():  # the mean of init and 3 students
        mean = (init[name] + sum(s[name] for s in students)) / 4
        torch.testing.assert_close(value, mean)


def _plain_view(backbone: BackboneConfig, **kwargs) -> SegSSLMethod:
    """seg_ssl whose student view equals the image: student == teacher in eval mode at init."""
    return _ssl(backbone, noise_std=0.0, intensity_jitter=0.0, flip=False, **kwargs).eval()


def test_consistency_applies_only_to_unlabelled_rows(small_backbone: BackboneConfig) -> None:
    method = _plain_view(small_backbone, confidence=0.5, consistency_weight=2.0)
    batch = make_batch(mask_available=[1, 1, 1, 1])
    with torch.no_grad():
        losses = method.compute_loss(batch)
        dense = method.loss(method(batch["image"]), batch)
    assert losses["consistency_loss"].item() == 0.0
    torch.testing.assert_close(losses["loss"], dense["loss"])  # trains exactly as seg

    batch = make_batch(mask_available=[1, 0, 1, 0])
    unlabelled = batch["mask_available"] == 0
    with torch.no_grad():
        losses = method.compute_loss(batch)
        logits = method(batch["image"])
        dense = method.loss(logits, batch)
    expected = pseudo_label_bce(logits[unlabelled], torch.sigmoid(logits[unlabelled]), 0.5)
    torch.testing.assert_close(losses["consistency_loss"], expected)
    assert expected.item() > 0
    torch.testing.assert_close(losses["loss"], dense["loss"] + 2.0 * expected)
    assert losses["consistency_weight"].item() == 2.0


def test_teacher_gets_no_gradient_and_is_not_optimised(small_backbone: BackboneConfig) -> None:
    method = _ssl(small_backbone, confidence=0.5).train()
    losses = method.compute_loss(make_batch(mask_available=[1, 0, 1, 0]))
    assert losses["consistency_loss"].item() > 0
    losses["loss"].backward()
    teacher = list(method.teacher.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    groups = method.configure_optimizers().param_groups
    optimised = {id(p) for group in groups for p in group["params"]}
    assert optimised == {id(p) for p in method.net.parameters()}
    assert not optimised & {id(p) for p in teacher}


def test_fit_updates_the_teacher_and_the_checkpoint_restores_it(
    small_backbone: BackboneConfig, tiny_synthetic: Path, tmp_path: Path
) -> None:
    method = _ssl(small_backbone, ema_decay=0.9, ema_warmup=False)
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = SpatialDataModule(str(tiny_synthetic), batch_size=8, annotation=method.annotation)
    trainer.fit(method, datamodule=data)
    assert trainer.callback_metrics["train/consistency_weight"].item() == 0.0  # ramp start
    student, teacher = method.net.state_dict(), method.teacher.state_dict()
    for name, value in teacher.items():
        if value.is_floating_point():  # one step: teacher = d * teacher + (1 - d) * student
            torch.testing.assert_close(value, 0.9 * teacher_before[name] + 0.1 * student[name])
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)

    path = tmp_path / "ssl.ckpt"
    trainer.save_checkpoint(path)
    loaded, _ = load_checkpoint(path)
    assert type(loaded) is SegSSLMethod and loaded.hparams.ema_decay == 0.9
    assert int(loaded.ema_updates) == 1
    for name, value in loaded.teacher.state_dict().items():
        assert torch.equal(value, teacher[name]), name


# ------------------------------------------------------------------------------- both


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("seg_ssl", {"ema_decay": 1.0}, "ema_decay"),
        ("seg_ssl", {"confidence": 0.4}, "confidence"),
        ("seg_ssl", {"consistency_weight": -1.0}, "consistency_weight"),
        ("seg_ssl", {"rampup_epochs": float("nan")}, "rampup_epochs"),
        ("seg_ssl", {"noise_std": -0.1}, "noise_std"),
        ("seg_ssl", {"pooling": "median"}, "unknown pooling"),
        ("seg_spl", {"temperature": 0.0}, "temperature"),
        ("seg_spl", {"contrastive_weight": -0.1}, "contrastive_weight"),
        ("seg_spl", {"proj_dim": 0}, "proj_dim"),
        ("seg_spl", {"n_pixels": 1}, "n_pixels"),
    ],
)
def test_invalid_arguments_raise(
    name: str, kwargs: dict, match: str, small_backbone: BackboneConfig
) -> None:
    with pytest.raises(ValueError, match=match):
        get_method(name)(backbone=small_backbone, **kwargs)


@pytest.mark.parametrize("dataset", ["synthetic", "siim", "isic"])
@pytest.mark.parametrize("name", ["seg_ssl", "seg_spl"])
def test_shipped_configs_parse_and_pool_as_seg(dataset: str, name: str) -> None:
    folder = REPO_ROOT / "configs" / dataset
    _, cfg = training.parse_fit_args(["--config", str(folder / f"{name}.yaml")])
    _, seg = training.parse_fit_args(["--config", str(folder / "seg.yaml")])
    assert cfg.method == name and cfg.out_dir == f"runs/{dataset}/{name}"
    assert (cfg.model.pooling, cfg.model.topk) == (seg.model.pooling, seg.model.topk)
    assert cfg.model.backbone == seg.model.backbone
