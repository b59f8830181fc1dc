"""Attribution maps of a model's image-level score: Arun et al.'s eight methods.

Every map explains :class:`ScoreModel`: the log-odds of the probability ``method.score`` ranks
images by (for ``binary`` its image logit, for the dense methods the logit of the pooled pixel
probability, computed in float64). The log-odds rank images exactly as the score does, but do
not saturate: a probability of 1.0 in float32 has a zero gradient, and the demo's binary model
scores every SmoothGrad noisy copy 1.0, which made every SmoothGrad map blank.
:data:`ATTRIBUTIONS` maps a name to a function ``(model, images, settings) -> raw maps``
((B, C, H, W) or (B, 1, H, W), signed where the method is); :func:`postprocess` turns every raw
map into the map the audit compares, the same way for all (Arun et al.):

    sum |·| over channels  ->  clip at the image's 99th percentile  ->  min-max scale to [0, 1]

(a constant map becomes all zeros). The methods (captum unless said otherwise):

- ``gradient``: ``Saliency`` (input gradients; Simonyan et al.).
- ``smoothgrad``: ``NoiseTunnel`` over ``Saliency``, ``smoothgrad_sq`` (mean of squared
  gradients), ``nt_samples`` (25) noisy copies with Gaussian noise of standard deviation
  ``noise`` (0.15) × the input range (raw intensities span [0, 1]: 1 / STD in network units).
- ``integrated_gradients``: ``IntegratedGradients`` from a constant image of raw intensity
  ``baseline`` (0.5, mid-grey: 0 after the fixed normalisation), ``n_steps`` (32) steps.
- ``smooth_ig``: ``NoiseTunnel`` over ``IntegratedGradients`` (``smoothgrad_sq``, same noise;
  ``smooth_ig_samples`` (10) copies: each costs a full integrated-gradients path).
- ``gradcam``: ``LayerGradCam`` on the deepest encoder feature map, ReLU, bilinear upsampling.
- ``guided_backprop``: ``GuidedBackprop`` — the gradient with every ``nn.ReLU`` module's backward
  pass rectified (only positive gradients flow back through positive inputs). captum overrides
  ``nn.ReLU`` *modules* only: other activations — timm's mobilenetv3 ``Hardswish`` blocks and
  ``Hardsigmoid`` squeeze-excite gates — pass their plain gradient, so on ``tu-mobilenetv3_*``
  encoders guided backprop is guided at the ReLU half of the activations (11 of 22 in the
  encoder, plus the U-Net decoder's ReLUs), a plain gradient elsewhere; on ``resnet*`` encoders
  every activation is a ReLU module (reused ones included) and the map is the classic one.
- ``guided_gradcam``: ``GuidedGradCam`` — guided backprop × the (bilinearly) upsampled Grad-CAM.
- ``xrai``: PAIR's ``saliency.core.XRAI`` (Kapishnikov et al.): Felzenszwalb segments of the
  image (:func:`xrai_segments`, PAIR's default recipe, computed once per image) ranked by the
  density of integrated gradients (``n_steps``, black and white baselines: the image's min and
  max) inside them; negative densities are clipped to 0 before the common post-processing.
  PAIR's segment sizes are tuned for 224-px images (masks dilated by 5 px): on small images
  its regions are coarse. Needs the optional extra ``spatialspec[xrai]``; without it the audit skips
  ``xrai`` and says so (:func:`missing_dependency`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import nn

from spatialspec.data.dataset import MEAN, STD

__all__ = [
    "ATTRIBUTIONS",
    "EXPENSIVE",
    "XRAI_HINT",
    "AttributionSettings",
    "ScoreModel",
    "attribution_maps",
    "check_attribution",
    "compute_maps",
    "missing_dependency",
    "postprocess",
    "settings_with",
    "xrai_segments",
]

#: Why ``xrai`` is skipped when PAIR's package is absent, and how to add it.
XRAI_HINT = (
    "xrai skipped: it needs PAIR's saliency package (numpy + scikit-image, no TensorFlow); "
    "install it with `pip install 'spatialspec[xrai]'`"
)


@dataclass(frozen=True)
class AttributionSettings:
    """How the methods are run (one object for all of them).

    Attributes:
        n_steps: Integrated-gradients steps (``integrated_gradients``, ``smooth_ig``, ``xrai``).
        baseline: Raw intensity in [0, 1] of the integrated-gradients baseline image.
        noise: Noise standard deviation of the noise tunnels, as a fraction of the input range.
        nt_samples: Noisy copies averaged by ``smoothgrad``.
        smooth_ig_samples: Noisy copies averaged by ``smooth_ig`` (fewer than SmoothGrad's: each
            costs a full integrated-gradients path).
        batch_size: Images per attribution call (path points and noisy copies are batched too).
        seed: Seed of the noise tunnels' noise, reset before every set of maps: two models
            (replicates, a randomised copy) see the same noise, and a model's maps repeat.
    """

    n_steps: int = 32
    baseline: float = MEAN
    noise: float = 0.15
    nt_samples: int = 25
    smooth_ig_samples: int = 10
    batch_size: int = 32
    seed: int = 0

    @property
    def stdev(self) -> float:
        """Noise standard deviation in network units (raw intensities span [0, 1])."""
        return self.noise * (1.0 - 0.0) / STD


class ScoreModel(nn.Module):
    """(B, C, H, W) images -> (B,) log-odds of a trained method's image-level score, for captum.

    The log-odds are the method's own (:meth:`~spatialspec.methods.SpatialMethod.log_odds`:
    ``binary``'s image logit itself; otherwise ``log p - log(1 - p)`` of the score ``p``
    computed from float64 outputs). The copy is in eval mode with frozen weights. A
    pass-through forward hook on its encoder routes the deepest feature map through
    :attr:`deepest` (an ``nn.Identity``), so a layer attribution (Grad-CAM) can target the last
    encoder stage of any smp encoder.

    Args:
        method: A trained method (anything with ``net.encoder``, ``forward`` and ``log_odds``).
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = copy.deepcopy(method).eval().requires_grad_(False)
        self.deepest = nn.Identity()
        self.method.net.encoder.register_forward_hook(self._tap)

    def _tap(
        self, module: nn.Module, inputs: Any, features: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [*features[:-1], self.deepest(features[-1])]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.log_odds(self.method(images))  # (B,) float64


Attribution = Callable[[ScoreModel, torch.Tensor, AttributionSettings], torch.Tensor]

#: Attribution methods by name, in Arun et al.'s order: (model, images, settings) -> raw maps.
ATTRIBUTIONS: dict[str, Attribution] = {}

#: Methods whose cost is many passes per image (the audit may give them fewer images).
EXPENSIVE = frozenset({"smooth_ig", "xrai"})


def _register(name: str) -> Callable[[Attribution], Attribution]:
    def wrap(fn: Attribution) -> Attribution:
        ATTRIBUTIONS[name] = fn
        return fn

    return wrap


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def _ig_baseline(s: AttributionSettings) -> float:
    return (s.baseline - MEAN) / STD


def _upsample(cam: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return LayerAttribution.interpolate(cam, tuple(like.shape[-2:]), interpolate_mode="bilinear")


@_register("gradient")
def _gradient(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    return Saliency(model).attribute(_grad_input(x), abs=False)  # (B, C, H, W)


@_register("smoothgrad")
def _smoothgrad(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    tunnel = NoiseTunnel(Saliency(model))
    return tunnel.attribute(
        _grad_input(x),
        nt_type="smoothgrad_sq",
        nt_samples=s.nt_samples,
        stdevs=s.stdev,
        nt_samples_batch_size=s.nt_samples,
        abs=False,
    )  # (B, C, H, W)


@_register("integrated_gradients")
def _integrated_gradients(
    model: ScoreModel, x: torch.Tensor, s: AttributionSettings
) -> torch.Tensor:
    ig = IntegratedGradients(model)
    return ig.attribute(
        x, baselines=_ig_baseline(s), n_steps=s.n_steps, internal_batch_size=s.batch_size
    )  # (B, C, H, W)


@_register("smooth_ig")
def _smooth_ig(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    tunnel = NoiseTunnel(IntegratedGradients(model))
    return tunnel.attribute(
        x,
        nt_type="smoothgrad_sq",
        nt_samples=s.smooth_ig_samples,
        stdevs=s.stdev,
        nt_samples_batch_size=1,
        baselines=_ig_baseline(s),
        n_steps=s.n_steps,
        internal_batch_size=s.batch_size,
    )  # (B, C, H, W)


@_register("gradcam")
def _gradcam(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    cam = LayerGradCam(model, model.deepest).attribute(x, relu_attributions=True)  # (B, 1, h, w)
    return _upsample(cam, x).clamp_min(0)  # (B, 1, H, W)


@_register("guided_backprop")
def _guided_backprop(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    with _quiet_relu_hooks():
        return GuidedBackprop(model).attribute(_grad_input(x))  # (B, C, H, W)


@_register("guided_gradcam")
def _guided_gradcam(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    ggc = GuidedGradCam(model, model.deepest)
    with _quiet_relu_hooks():
        return ggc.attribute(_grad_input(x), interpolate_mode="bilinear")  # (B, C, H, W)


@contextlib.contextmanager
def _quiet_relu_hooks() -> Iterator[None]:
    """Silence captum's note that it hooks ReLU modules (once per call; documented above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        yield


@_register("xrai")
def _xrai(model: ScoreModel, x: torch.Tensor, s: AttributionSettings) -> torch.Tensor:
    core = _xrai_core()
    xrai, params = core.XRAI(), core.XRAIParameters(steps=s.n_steps)

    def call_model(batch: np.ndarray, call_model_args: Any = None, expected_keys: Any = None):
        t = torch.as_tensor(np.asarray(batch), dtype=x.dtype).permute(0, 3, 1, 2)  # (b, C, H, W)
        t.requires_grad_()
        (grads,) = torch.autograd.grad(model(t).sum(), t)
        return {core.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).numpy()}  # (b, H, W, C)

    maps = []
    for img in x.detach():
        image = img.permute(1, 2, 0).numpy()  # (H, W, C)
        segments = list(xrai_segments(image.tobytes(), image.shape))
        maps.append(
            xrai.GetMask(
                image, call_model, segments=segments, batch_size=s.n_steps, extra_parameters=params
            )
        )  # (H, W)
    return torch.as_tensor(np.stack(maps), dtype=torch.float32).clamp_min(0).unsqueeze(1)


@functools.lru_cache(maxsize=128)
def xrai_segments(image: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """XRAI's candidate regions of one float32 image, as PAIR computes them by default.

    PAIR's recipe (``saliency.core.xrai``): the image min-max scaled to [-1, 1] and resized
    to 224 x 224 (cubic), Felzenszwalb segmentations at scales 50, 100, 150, 250, 500, 1200
    (sigma 0.8, min size 150), each resized back (nearest), every segment a mask dilated by a
    disk of radius 5. Owned here (scikit-image's public API) so that the segments of an image
    are computed once and shared by every model and randomization step; cached per image.

    Args:
        image: The (H, W, C) float32 image's bytes.
        shape: Its shape.

    Returns:
        (H, W) bool masks.
    """
    from skimage.morphology import dilation, disk
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize

    im = np.frombuffer(image, dtype=np.float32).reshape(shape)
    span = im.max() - im.min()
    im = (im - im.min()) / (span if span > 0 else 1.0) * 2.0 - 1.0  # float32, as PAIR
    im = resize(im, (224, 224), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
    masks = []
    for scale in (50, 100, 150, 250, 500, 1200):
        seg = felzenszwalb(im, scale=scale, sigma=0.8, min_size=150)
        seg = resize(
            seg, shape[:2], order=0, preserve_range=True, mode="constant", anti_aliasing=False
        ).astype(int)
        masks += [seg == label for label in range(seg.min(), seg.max() + 1)]
    footprint = disk(5)
    return tuple(dilation(mask, footprint=footprint) for mask in masks)


def _xrai_core() -> Any:
    """PAIR's ``saliency.core`` (ImportError with :data:`XRAI_HINT` when it is not installed)."""
    try:
        import saliency.core as core
    except ImportError as err:
        raise ImportError(XRAI_HINT) from err
    return core


def missing_dependency(name: str) -> str | None:
    """Why method ``name`` cannot run here (a sentence naming the extra), or None if it can."""
    if name != "xrai":
        return None
    try:
        _xrai_core()
    except ImportError as err:
        return str(err)
    return None


def check_attribution(name: str) -> None:
    """Raise a ValueError naming the valid methods if ``name`` is not one of them."""
    if name not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {name!r}; valid: {', '.join(ATTRIBUTIONS)}")


def postprocess(raw: torch.Tensor | np.ndarray) -> np.ndarray:
    """Arun et al.'s post-processing: sum |·| over channels, clip at the 99th percentile, scale.

    Args:
        raw: (B, C, H, W) raw attributions (any sign).

    Returns:
        (B, H, W) float32 maps in [0, 1], per image: ``m = sum_c |raw_c|``, ``m = min(m, p99(m))``
        with ``p99`` the image's 99th percentile (numpy's linear interpolation), then
        ``(m - min m) / (max m - min m)``; a constant map becomes all zeros.
    """
    m = np.abs(np.asarray(raw, dtype=np.float64)).sum(axis=1)  # (B, H, W)
    top = np.percentile(m.reshape(len(m), -1), 99, axis=1)[:, None, None]  # (B, 1, 1)
    m = np.minimum(m, top)
    low = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - low
    return ((m - low) / np.where(span > 0, span, 1.0)).astype(np.float32)


def compute_maps(
    model: ScoreModel, images: torch.Tensor, name: str, settings: AttributionSettings
) -> np.ndarray:
    """Post-processed maps of ``images`` by method ``name`` on a prepared :class:`ScoreModel`.

    The noise tunnels draw their noise after ``torch.manual_seed(settings.seed)`` (the global
    generator is restored afterwards), so the same images get the same noise on every model.

    Returns:
        (N, S, S) float32 maps in [0, 1].
    """
    attribute = ATTRIBUTIONS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        parts = [
            postprocess(attribute(model, x, settings).detach().float())
            for x in images.split(settings.batch_size)
        ]
    return np.concatenate(parts)  # (N, S, S)


def attribution_maps(
    method: nn.Module,
    images: torch.Tensor,
    name: str,
    *,
    settings: AttributionSettings | None = None,
    **overrides: Any,
) -> np.ndarray:
    """Post-processed attribution maps of a method's image-level score (CPU, batched).

    Args:
        method: A trained method (it is copied, never changed).
        images: (N, C, S, S) normalised images.
        name: One of :data:`ATTRIBUTIONS`.
        settings: How to run the methods (default :class:`AttributionSettings`).
        **overrides: Fields of ``settings`` to change (e.g. ``n_steps=16``, ``batch_size=8``).

    Returns:
        (N, S, S) float32 maps in [0, 1] (:func:`postprocess`).

    Raises:
        ValueError: Unknown method.
        ImportError: ``xrai`` without PAIR's package (the message says how to install it).
    """
    check_attribution(name)
    return compute_maps(ScoreModel(method), images, name, settings_with(settings, **overrides))


def settings_with(
    settings: AttributionSettings | None = None, **overrides: Any
) -> AttributionSettings:
    """``settings`` (default :class:`AttributionSettings`) with some fields changed."""
    return dataclasses.replace(settings or AttributionSettings(), **overrides)
