"""Attribution methods: every registered method on a stub model, the common post-processing,
guided backprop on the real encoders, and XRAI's optional dependency."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spatialspec.audit.attributions import (
    ATTRIBUTIONS,
    XRAI_HINT,
    AttributionSettings,
    ScoreModel,
    attribution_maps,
    missing_dependency,
    postprocess,
    xrai_segments,
)
from spatialspec.audit.saliency_metrics import localization_auprc, spurious_attribution_share
from spatialspec.methods import SpatialMethod, get_method
from spatialspec.models import BackboneConfig

S = 32
#: Cheap settings: few path steps and noisy samples.
FAST = {"n_steps": 4, "nt_samples": 4, "smooth_ig_samples": 2, "batch_size": 4}
HAS_XRAI = missing_dependency("xrai") is None


class _StubEncoder(nn.Module):
    """Feature maps as an smp encoder returns them: the input, then coarser and coarser maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        nn.init.constant_(self.conv.weight, 1 / 9)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.act(self.conv(x))  # (B, 4, S, S)
        return [x, f1, F.avg_pool2d(f1, 4)]  # deepest: (B, 4, S/4, S/4)


class RegionStub(nn.Module):
    """Scores an image by its pixels inside ``region`` only (like a method: ``net``, ``score``)."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.encoder = _StubEncoder()
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        deepest = self.net.encoder(images * self.region)[-1]
        return deepest.mean(dim=(1, 2, 3)) - 1.0  # (B,) image logits

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs)

    def log_odds(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.double()  # as binary: the image logit


class PooledStub(RegionStub):
    """A dense stub: pixel logits, scored by their probabilities' mean (as a dense method)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20.0 * images * self.region - 5.0  # (B, 1, S, S) pixel logits, saturating

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs).mean(dim=(1, 2, 3))

    def log_odds(self, outputs: torch.Tensor) -> torch.Tensor:
        return SpatialMethod.log_odds(self, outputs)  # the shared float64 recipe


def _region() -> np.ndarray:
    region = np.zeros((S, S), dtype=bool)
    region[8:16, 12:20] = True
    return region


# --------------------------------------------------------------------------- post-processing


def test_postprocess_sums_magnitudes_clips_at_the_99th_percentile_and_scales() -> None:
    ramp = np.arange(100.0).reshape(10, 10)
    raw = np.stack([ramp, -ramp])[None]  # (1, 2, 10, 10): |.| summed = 2 * ramp
    out = postprocess(raw)
    top = 196.0 + 0.01 * 2.0  # 99th percentile of 0, 2, ..., 198 (linear interpolation)
    assert out.shape == (1, 10, 10) and out.dtype == np.float32
    assert out[0, 0, 0] == 0.0
    assert out[0, 0, 1] == pytest.approx(2.0 / top)
    assert out[0, 9, 8] == pytest.approx(196.0 / top)
    assert out[0, 9, 9] == pytest.approx(1.0)  # 198 clipped to the percentile
    np.testing.assert_array_equal(postprocess(np.full((2, 1, 4, 4), 3.0)), 0.0)  # constant


def test_postprocess_scales_each_image_on_its_own() -> None:
    raw = np.random.default_rng(0).normal(size=(3, 1, 8, 8))
    raw[1] *= 100.0
    out = postprocess(raw)
    np.testing.assert_allclose(out.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(out[1], postprocess(raw[1:2])[0], rtol=1e-6)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", list(ATTRIBUTIONS))
def test_every_method_gives_unit_maps_on_the_region_the_score_reads(name: str) -> None:
    if name == "xrai" and not HAS_XRAI:
        pytest.skip(XRAI_HINT)
    region = _region()
    n = 2 if name == "xrai" else 4
    images = torch.rand(n, 1, S, S) * 0.2 + 0.5 + torch.as_tensor(region).float()  # > 0
    maps = attribution_maps(RegionStub(region), images, name, **FAST)
    assert maps.shape == (n, S, S) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
    masks = np.repeat(region[None], n, 0)
    share = spurious_attribution_share(maps, masks, np.ones(n, bool), dilate=0)
    loc = localization_auprc(maps, masks, np.ones(n, int))
    if name == "xrai":  # its segments are dilated by 5 px (tuned for 224-px images): coarse
        assert loc["mean"] > 0.3 > 3 * loc["prevalence"]  # prevalence: 64 / 1024
        assert share["lift"] > 2.0
        return
    assert loc["mean"] > 0.6 > 3 * loc["prevalence"]
    assert share["lift"] > 4.0
    if name not in ("gradcam", "guided_gradcam"):  # no upsampling from 8x8
        assert share["mean"] > 0.999


def test_score_model_leaves_the_method_untouched_and_taps_the_deepest_map() -> None:
    stub = RegionStub(np.ones((S, S)))
    model = ScoreModel(stub)
    seen = []
    model.deepest.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    x = torch.rand(2, 1, S, S)
    torch.testing.assert_close(model(x), stub(x).double())  # the image logit
    assert seen == [torch.Size([2, 4, S // 4, S // 4])]
    assert not stub.net.encoder._forward_hooks  # the hook lives on the copy


def test_score_model_explains_the_log_odds_of_the_score_without_saturating() -> None:
    stub = PooledStub(_region())
    x = torch.rand(3, 1, S, S) + 1.0  # pixel logits up to 35 inside the region
    p = stub.scores(stub(x).double())
    torch.testing.assert_close(ScoreModel(stub)(x), torch.log(p / (1 - p)))
    assert (stub.scores(stub(x)) > 0.0).all()
    grads = attribution_maps(stub, x, "gradient")
    assert (grads.reshape(3, -1).max(axis=1) == 1.0).all()  # not blank: float64 log-odds
    saturated = torch.full((1, 1, S, S), 10.0)  # every region pixel's probability is 1.0
    assert torch.isfinite(ScoreModel(stub)(saturated)).all()


def test_unknown_attribution_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="integrated_gradients"):
        attribution_maps(RegionStub(np.ones((S, S))), torch.rand(1, 1, S, S), "lime")


def test_noise_tunnel_stdev_is_a_fraction_of_the_input_range() -> None:
    assert AttributionSettings(noise=0.15).stdev == pytest.approx(0.15 / 0.25)  # 1 / STD wide


# --------------------------------------------------------------------------- guided backprop


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through positive inputs."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp_min(0) * (x > 0)


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
@pytest.mark.parametrize("encoder", ["tu-mobilenetv3_small_100", "resnet18"])
def test_guided_backprop_rectifies_every_relu_module_of_the_real_encoders(
    encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """captum's hooks equal a guided ReLU in every ``nn.ReLU`` module (resnet18 calls each
    block's ReLU twice); other activations (mobilenetv3's Hardswish) keep their gradient."""
    cfg = BackboneConfig(
        encoder_name=encoder,
        in_channels=1,
        encoder_weights=None,
        encoder_depth=4,
        decoder_channels=(16, 16, 8, 8),
    )
    torch.manual_seed(0)
    method = get_method("seg")(backbone=cfg).eval()
    x = torch.randn(2, 1, S, S)
    ours = ScoreModel(method)
    from captum.attr import GuidedBackprop

    guided = GuidedBackprop(ours).attribute(x.clone().requires_grad_())
    plain = x.clone().requires_grad_()
    ours(plain).sum().backward()
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, t: _GuidedReLU.apply(t))
    reference = x.clone().requires_grad_()
    ours(reference).sum().backward()
    torch.testing.assert_close(guided, reference.grad, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(guided, plain.grad)  # it is not the plain gradient


# --------------------------------------------------------------------------- XRAI's extra


def test_xrai_without_its_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "saliency", None)  # import saliency.core -> ImportError
    monkeypatch.setitem(sys.modules, "saliency.core", None)
    assert missing_dependency("xrai") == XRAI_HINT
    assert "spatialspec[xrai]" in XRAI_HINT
    assert missing_dependency("gradient") is None
    with pytest.raises(ImportError, match=r"spatialspec\[xrai\]"):
        attribution_maps(RegionStub(_region()), torch.rand(1, 1, S, S), "xrai")


@pytest.mark.parametrize("name", ["smoothgrad", "smooth_ig"])
def test_noise_tunnel_maps_repeat_for_a_seed(name: str) -> None:
    stub, images = RegionStub(_region()), torch.rand(3, 1, S, S)
    first = attribution_maps(stub, images, name, **FAST)
    np.testing.assert_array_equal(first, attribution_maps(stub, images, name, **FAST))
    assert not np.array_equal(first, attribution_maps(stub, images, name, **FAST, seed=1))
    state = torch.random.get_rng_state()
    attribution_maps(stub, images, name, **FAST)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is restored


@pytest.mark.skipif(not HAS_XRAI, reason=XRAI_HINT)
def test_xrai_segments_are_pairs_default_segments() -> None:
    from saliency.core import xrai as pair_xrai  # the library's own recipe, to compare with

    image = np.random.default_rng(0).normal(size=(S, S, 1)).astype(np.float32)
    image[8:16, 12:20] += 3.0
    ours = xrai_segments(image.tobytes(), image.shape)
    theirs = pair_xrai._get_segments_felzenszwalb(image)
    assert len(ours) == len(theirs) > 6
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert xrai_segments(image.tobytes(), image.shape) is ours  # cached per image
