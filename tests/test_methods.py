"""Tests of every registered method (new methods are covered automatically), and of the dense
loss of ``seg`` / ``bbox`` against a reference computed by hand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from segmentation_models_pytorch.losses import DiceLoss

from spatialspec import training
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.evaluation.predict import datamodule_for, load_checkpoint, predict_splits
from spatialspec.methods import METHODS, SpatialMethod, get_method
from spatialspec.models import BackboneConfig

ANNOTATIONS = {"label", "box", "mask"}


def make_batch(b: int = 4, size: int = 64, *, mask_available: list[float] | None = None) -> dict:
    """A hand-made batch: random images, a square lesion on every positive (even index)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([float(i % 2 == 0) for i in range(b)])
    masks = torch.zeros(b, 1, size, size)
    for i in range(b):
        if labels[i]:
            masks[i, 0, 8 + 4 * i : 20 + 4 * i, 10:22] = 1.0
    images = torch.randn(b, 1, size, size, generator=g) + 2.0 * masks
    available = torch.ones(b) if mask_available is None else torch.tensor(mask_available)
    return {
        "image": images,
        "mask": masks,
        "label": labels,
        "mask_available": available,
        "spurious": torch.tensor([float(i % 3 == 0) for i in range(b)]),
        "image_id": [f"img{i}" for i in range(b)],
    }


class MethodTester:
    """Checks every method must pass; runs once per name in ``method_names``."""

    method_names: tuple[str, ...] = tuple(METHODS.names())

    @pytest.fixture(params=method_names)
    def name(self, request: pytest.FixtureRequest) -> str:
        return request.param

    @pytest.fixture
    def method(self, name: str, small_backbone: BackboneConfig) -> SpatialMethod:
        torch.manual_seed(0)
        return get_method(name)(backbone=small_backbone)

    def test_registration_and_annotation(self, name: str, method: SpatialMethod) -> None:
        assert METHODS.name_of(type(method)) == name
        assert method.annotation in ANNOTATIONS
        assert method.backbone.encoder_name == "tu-mobilenetv3_small_100"

    def test_compute_loss_is_finite_scalar_with_grad(self, method: SpatialMethod) -> None:
        method.train()
        losses = method.compute_loss(make_batch(mask_available=[1, 0, 1, 0]))
        loss = losses["loss"]
        assert loss.ndim == 0
        assert torch.isfinite(loss)
        assert loss.item() > 0
        assert loss.requires_grad
        for key, value in losses.items():
            assert torch.isfinite(value).all(), key
        loss.backward()
        grads = [p.grad for p in method.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)

    def test_score_shape_and_range(self, method: SpatialMethod) -> None:
        method.eval()
        with torch.no_grad():
            scores = method.score(make_batch(b=5)["image"])
        assert scores.shape == (5,)
        assert ((scores >= 0) & (scores <= 1)).all()

    def test_log_odds_are_those_of_the_score_in_float64(self, method: SpatialMethod) -> None:
        method.eval()
        images = make_batch(b=3)["image"]
        with torch.no_grad():
            log_odds = method.log_odds(method(images))
            p = method.score(images).double()
        assert log_odds.dtype == torch.float64 and log_odds.shape == (3,)
        torch.testing.assert_close(log_odds, torch.log(p / (1 - p)), rtol=1e-4, atol=1e-4)

    def test_score_rejects_bad_input_size(self, method: SpatialMethod) -> None:
        method.eval()
        with pytest.raises(ValueError, match="divisible by 16"):
            method.score(torch.zeros(1, 1, 60, 64))

    def test_fast_dev_run(self, method: SpatialMethod, tiny_synthetic: Path) -> None:
        data = SpatialDataModule(str(tiny_synthetic), batch_size=8, annotation=method.annotation)
        before = {k: v.clone() for k, v in method.state_dict().items()}
        trainer = L.Trainer(
            fast_dev_run=True,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(method, datamodule=data)
        assert trainer.global_step == 1
        metrics = trainer.callback_metrics
        for key in ("train/loss", "val/loss", "val/auroc", "val/robust_auroc"):
            assert key in metrics, key
        assert math.isfinite(float(metrics["train/loss"]))
        assert 0.0 <= float(metrics["val/auroc"]) <= 1.0
        after = method.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)  # an optimiser step

    def test_checkpoint_round_trip_and_predictions(
        self,
        name: str,
        tmp_path: Path,
        quick_fit_args: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        built: dict[str, Any] = {}
        original = training.build_components

        def capture(cfg, parser):
            model, data = original(cfg, parser)
            built["model"], built["data"] = model, data
            return model, data

        monkeypatch.setattr(training, "build_components", capture)
        out = tmp_path / "run"
        info = training.fit(["--method", name, "--out_dir", str(out), *quick_fit_args])
        best = Path(info["best_checkpoint"])
        assert best.is_file()
        assert built["data"].annotation == built["model"].annotation

        loaded, config = load_checkpoint(best)  # weights_only=True: plain types only
        assert type(loaded) is type(built["model"])
        assert loaded.backbone == built["model"].backbone
        hparams = yaml.safe_load((out / "logs" / "hparams.yaml").read_text())
        # the loggers get the whole resolved run config, model section included
        backbone = hparams["model"]["backbone"]
        assert backbone["encoder_name"] == built["model"].backbone.encoder_name
        assert hparams["method"] == name and hparams["data"]["manifest"]
        assert not loaded.training
        assert config["method"] == name
        assert config["data"]["manifest"] == built["data"].manifest_path

        # one epoch: the best checkpoint holds the final weights of the in-memory model
        memory = built["model"].eval()
        images = next(iter(built["data"].predict_loader("test")))["image"]
        with torch.no_grad():
            torch.testing.assert_close(loaded.score(images), memory.score(images))

        data = datamodule_for(loaded, config)
        preds = predict_splits(loaded, data, accelerator="cpu", progress=False)
        assert list(preds.columns) == ["image_id", "split", "score"]
        assert len(preds) == 24 + 40
        assert preds["image_id"].is_unique
        assert (preds["split"] == "val").sum() == 24
        assert set(preds.loc[preds["split"] == "test", "image_id"]) == set(
            data.split_frame("test")["image_id"]
        )
        assert np.isfinite(preds["score"]).all()
        assert preds["score"].between(0, 1).all()
        test_ids = data.split_frame("test")["image_id"].iloc[: len(images)].tolist()
        first = preds.set_index("image_id").loc[test_ids, "score"].to_numpy()
        with torch.no_grad():
            np.testing.assert_allclose(first, memory.score(images).numpy(), rtol=1e-4, atol=1e-5)


class TestRegisteredMethods(MethodTester):
    pass


# ------------------------------------------------------------------------------- annotations


def test_annotations_of_the_three_methods() -> None:
    assert get_method("binary").annotation == "label"
    assert get_method("bbox").annotation == "box"
    assert get_method("seg").annotation == "mask"


def test_dense_method_rejects_unknown_pooling(small_backbone: BackboneConfig) -> None:
    with pytest.raises(ValueError, match="unknown pooling 'median'; valid: max, mean, topk"):
        get_method("seg")(backbone=small_backbone, pooling="median")


def test_binary_loss_is_bce_on_image_logits(small_backbone: BackboneConfig) -> None:
    method = get_method("binary")(backbone=small_backbone).eval()
    batch = make_batch()
    with torch.no_grad():
        logits = method.net.image_logits(batch["image"])
        expected = F.binary_cross_entropy_with_logits(logits, batch["label"])
        torch.testing.assert_close(method.compute_loss(batch)["loss"], expected)
        torch.testing.assert_close(method.score(batch["image"]), torch.sigmoid(logits))


# ------------------------------------------------------------------------------- dense loss


@pytest.fixture(params=["seg", "bbox"])
def dense(request: pytest.FixtureRequest, small_backbone: BackboneConfig) -> SpatialMethod:
    torch.manual_seed(0)
    return get_method(request.param)(backbone=small_backbone).eval()  # eval: per-image logits


def _topk_bce(logits: torch.Tensor, labels: torch.Tensor, k: int = 16) -> torch.Tensor:
    pooled = torch.sigmoid(logits).flatten(1).topk(k, dim=1).values.mean(dim=1)
    return F.binary_cross_entropy(pooled.clamp(1e-6, 1 - 1e-6), labels)


def _pixel_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float = 1.0):
    dice = DiceLoss(mode="binary", from_logits=True)(logits, masks)
    return F.binary_cross_entropy_with_logits(logits, masks) + dice_weight * dice


def test_dense_loss_with_all_masks_is_bce_plus_dice(dense: SpatialMethod) -> None:
    batch = make_batch()
    with torch.no_grad():
        logits = dense.net.pixel_logits(batch["image"])
        losses = dense.compute_loss(batch)
    torch.testing.assert_close(losses["loss"], _pixel_loss(logits, batch["mask"]))
    torch.testing.assert_close(losses["pixel_loss"], _pixel_loss(logits, batch["mask"]))
    assert losses["image_loss"].item() == 0.0


def test_dense_loss_without_masks_is_bce_of_topk_scores(dense: SpatialMethod) -> None:
    batch = make_batch(mask_available=[0, 0, 0, 0])
    batch["mask"] = torch.rand_like(batch["mask"])  # must be ignored
    with torch.no_grad():
        logits = dense.net.pixel_logits(batch["image"])
        losses = dense.compute_loss(batch)
    expected = _topk_bce(logits, batch["label"])
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["image_loss"], expected)
    assert losses["pixel_loss"].item() == 0.0
    # the image term equals BCE between the model's own image scores and the labels
    scores = dense.score(batch["image"]).detach().clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(losses["loss"], F.binary_cross_entropy(scores, batch["label"]))


def test_dense_loss_mixed_batch_sums_the_per_term_means(dense: SpatialMethod) -> None:
    available = [1.0, 0.0, 1.0, 1.0]  # 3 of 4 with masks
    batch = make_batch(mask_available=available)
    known = torch.tensor(available) > 0.5
    with torch.no_grad():
        logits = dense.net.pixel_logits(batch["image"])
        losses = dense.compute_loss(batch)
    pixel = _pixel_loss(logits[known], batch["mask"][known])  # mean over the 3 masked rows
    image = _topk_bce(logits[~known], batch["label"][~known])  # the 1 row without a mask
    torch.testing.assert_close(losses["pixel_loss"], pixel)
    torch.testing.assert_close(losses["image_loss"], image)
    torch.testing.assert_close(losses["loss"], pixel + image)  # not scaled by 3/4 and 1/4


@pytest.mark.parametrize("name", ["bbox", "seg", "seg_ssl", "seg_spl"])
def test_dense_loss_term_weights(small_backbone: BackboneConfig, name: str) -> None:
    torch.manual_seed(0)
    method = get_method(name)(backbone=small_backbone, pixel_weight=2.0, image_weight=0.25)
    method.eval()
    batch = make_batch(mask_available=[1, 0, 0, 1])
    with torch.no_grad():
        losses = method.loss(method.net.pixel_logits(batch["image"]), batch)
    expected = 2.0 * losses["pixel_loss"] + 0.25 * losses["image_loss"]
    torch.testing.assert_close(losses["loss"], expected)
    assert losses["pixel_loss"] > 0 and losses["image_loss"] > 0


@pytest.mark.parametrize("weights", [{"pixel_weight": -1.0}, {"image_weight": -0.5}])
def test_dense_loss_negative_term_weight_is_an_error(
    small_backbone: BackboneConfig, weights: dict[str, float]
) -> None:
    with pytest.raises(ValueError, match="pixel_weight and image_weight must be >= 0"):
        get_method("seg")(backbone=small_backbone, **weights)


def test_dense_loss_dice_weight_and_pooling(small_backbone: BackboneConfig) -> None:
    torch.manual_seed(0)
    method = get_method("seg")(backbone=small_backbone, dice_weight=0.0, pooling="max").eval()
    batch = make_batch(mask_available=[1, 1, 0, 0])
    known = batch["mask_available"] > 0.5
    with torch.no_grad():
        logits = method.net.pixel_logits(batch["image"])
        losses = method.compute_loss(batch)
        scores = method.score(batch["image"])
    pixel = F.binary_cross_entropy_with_logits(logits[known], batch["mask"][known])
    pooled = torch.sigmoid(logits[~known]).flatten(1).amax(dim=1).clamp(1e-6, 1 - 1e-6)
    image = F.binary_cross_entropy(pooled, batch["label"][~known])
    torch.testing.assert_close(losses["loss"], pixel + image)
    torch.testing.assert_close(scores, torch.sigmoid(logits).flatten(1).amax(dim=1))


def test_dense_loss_keeps_the_graph_when_one_term_is_empty(dense: SpatialMethod) -> None:
    dense.train()
    for available in ([1, 1, 1, 1], [0, 0, 0, 0]):
        dense.zero_grad()
        loss = dense.compute_loss(make_batch(mask_available=available))["loss"]
        assert loss.requires_grad
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dense.parameters())


def test_unfetchable_pretrained_weights_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from spatialspec.models import SpatialNet

    # offline mode (read at import, so patch the constant): fail at once instead of retrying
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = BackboneConfig(encoder_name="resnet18", encoder_weights="imagenet", encoder_depth=5)
    with pytest.raises(RuntimeError, match=r"could not fetch 'imagenet' weights for encoder "
                       r"'resnet18'.*encoder_weights=null"):  # fmt: skip
        SpatialNet(cfg, image_head=True, dense=False)


@pytest.mark.parametrize("dense", [False, True])
def test_channels_last_net_gives_the_same_outputs_and_gradients(dense: bool) -> None:
    from spatialspec.models import SpatialNet

    cfg = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": (32, 16, 8)}
    nets = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        nets[channels_last] = SpatialNet(
            BackboneConfig(**cfg, channels_last=channels_last), image_head=not dense, dense=dense
        ).eval()

    def a_conv(net: torch.nn.Module) -> torch.Tensor:  # one whose two layouts differ
        return next(p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 < p.shape[2])

    assert a_conv(nets[True]).is_contiguous(memory_format=torch.channels_last)
    assert not a_conv(nets[False]).is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 32, 32)
    outs, grads = [], []
    for channels_last in (False, True):
        net = nets[channels_last]
        image = x.clone().requires_grad_(True)  # a plain NCHW input: the net converts it
        out = net.pixel_logits(image) if dense else net.image_logits(image)
        out.sum().backward()
        outs.append(out.detach())
        grads.append(image.grad)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)
    assert grads[1].shape == x.shape


def test_checkpoints_without_channels_last_hparam_still_load() -> None:
    cfg = BackboneConfig(encoder_name="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8))
    stored = {k: v for k, v in cfg.to_dict().items() if k != "channels_last"}  # older hparams
    method = get_method("seg")(backbone=stored)
    assert method.backbone.channels_last is True
