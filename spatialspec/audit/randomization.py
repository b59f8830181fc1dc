"""Cascading randomization (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018).

The layers of a trained method are re-initialised group by group, from the score head inwards
(:func:`randomization_layers`), and the attribution maps recomputed after each group; maps that
stay similar (SSIM) to the trained model's do not depend on what the model learnt. Used by
:mod:`spatialspec.audit.saliency`; the maps come from :mod:`spatialspec.audit.attributions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from spatialspec.audit.attributions import (
    AttributionSettings,
    ScoreModel,
    check_attribution,
    compute_maps,
    settings_with,
)
from spatialspec.audit.saliency_metrics import ssim_maps

__all__ = ["Layers", "cascading_randomization", "randomization_layers"]

Layers = list[tuple[str, list[nn.Module]]]


def randomization_layers(method: nn.Module, probe: torch.Tensor) -> Layers:
    """The groups of layers cascading randomization re-initialises, in order.

    The score head first (``image_head`` or ``pixel_head``), then the decoder's blocks from the
    output side inwards, then the encoder's stages from the deepest. Encoder stage ``k`` is every
    module with parameters that runs after feature map ``k - 1`` is produced and until feature map
    ``k`` is (traced on ``probe``); modules whose output no feature map uses are left out.

    Args:
        method: A method with ``net.encoder``, ``net.decoder`` (or None) and a head.
        probe: (B, C, S, S) images to trace the network with (one is enough).

    Returns:
        ``[(name, modules), ...]`` in randomization order, e.g. ``pixel_head``,
        ``decoder block 3 (64x64)``, ..., ``encoder stage 4 (4x4)``, ...
    """
    net = method.net
    head = "image_head" if net.image_head is not None else "pixel_head"
    calls = _trace(method, probe[:1])
    decoder = _decoder_stages(net.decoder, calls) if net.decoder is not None else []
    return [(head, [getattr(net, head)]), *decoder, *_encoder_stages(net.encoder, calls)]


def _trace(method: nn.Module, probe: torch.Tensor) -> list[tuple[nn.Module, Any]]:
    """``(module, output)`` of every module call of ``method.net`` on ``probe``, as they finish."""
    calls: list[tuple[nn.Module, Any]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _, out: calls.append((mod, out)))
        for m in method.net.modules()
    ]
    try:
        with torch.no_grad():
            method.score(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _has_params(module: nn.Module | None) -> bool:
    return module is not None and next(module.parameters(), None) is not None


def _decoder_stages(decoder: nn.Module, calls: list[tuple[nn.Module, Any]]) -> Layers:
    """The decoder's blocks (smp: ``center``, ``blocks``), output side first."""
    blocks = [("center", getattr(decoder, "center", None))]
    blocks += [(f"block {i}", b) for i, b in enumerate(getattr(decoder, "blocks", [decoder]))]
    shapes = {id(mod): out.shape[-2:] for mod, out in calls if isinstance(out, torch.Tensor)}
    stages = [
        (f"decoder {name} ({shapes[id(b)][0]}x{shapes[id(b)][1]})", [b])
        for name, b in blocks
        if _has_params(b) and id(b) in shapes
    ]
    return stages[::-1]


def _encoder_stages(encoder: nn.Module, calls: list[tuple[nn.Module, Any]]) -> Layers:
    """Modules with parameters between consecutive feature maps of the encoder, deepest first."""
    features = next(out for mod, out in calls if mod is encoder)
    inside = {id(m) for m in encoder.modules()} - {id(encoder)}
    inner = [(mod, out) for mod, out in calls if id(mod) in inside]
    stages, start = [], 0
    for k, feature in enumerate(features):
        end = _producer(inner, feature)
        if end is None or end < start:
            continue
        own = [mod for mod, _ in inner[start : end + 1] if _has_params_of_own(mod)]
        modules = list({id(m): m for m in own}.values())  # first call of each
        start = end + 1
        if modules:
            h, w = feature.shape[-2:]
            stages.append((f"encoder stage {k} ({h}x{w})", modules))
    return stages[::-1]


def _has_params_of_own(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _producer(calls: list[tuple[nn.Module, Any]], feature: torch.Tensor) -> int | None:
    """Index of the last call that output ``feature``; None if none did (the input image).

    The tensor itself is looked for first, then a tensor of its shape (channels-last too).
    """
    hits = [i for i, (_, out) in enumerate(calls) if out is feature]
    if not hits:
        shapes = (feature.shape, feature.permute(0, 2, 3, 1).shape)
        hits = [
            i
            for i, (_, out) in enumerate(calls)
            if isinstance(out, torch.Tensor) and out.shape in shapes
        ]
    return hits[-1] if hits else None


def _randomize(modules: Sequence[nn.Module], seed: int) -> None:
    """Re-initialise every layer in ``modules`` in place, seeded.

    A layer (a module with parameters of its own) is reset by its ``reset_parameters`` (the
    framework's initialisation: random for convolutions and linear layers, identity for batch
    norm, whose running statistics are reset too); other layers get N(0, 0.02) weights.
    """
    layers = [m for module in modules for m in module.modules() if _has_params_of_own(m)]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for layer in layers:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
                continue
            for param in layer.parameters(recurse=False):
                param.normal_(0.0, 0.02)


def cascading_randomization(
    method: nn.Module,
    images: torch.Tensor,
    method_name: str,
    *,
    reference: np.ndarray | None = None,
    settings: AttributionSettings | None = None,
    seed: int = 0,
    per_image: bool = False,
    **overrides: Any,
) -> list[tuple[str, Any]]:
    """Adebayo et al.'s cascading randomization: SSIM to the trained maps, layer by layer.

    On a copy of the model (``method`` is left untouched), the groups of
    :func:`randomization_layers` are re-initialised one after another, cumulatively (module
    ``reset_parameters``, seeded with ``seed + group index``), and the maps recomputed after each
    (post-processed as every map: :func:`~spatialspec.audit.attributions.postprocess`).

    Args:
        method: The trained method.
        images: (N, C, S, S) normalised images.
        method_name: Attribution method, one of
            :data:`~spatialspec.audit.attributions.ATTRIBUTIONS`.
        reference: (N, S, S) post-processed maps of the trained model (computed when None).
        settings: How to run the attribution method (default settings when None).
        seed: Seed of the re-initialisations.
        per_image: Return each step's (N,) per-image SSIM instead of its mean.
        **overrides: Fields of ``settings`` to change (e.g. ``n_steps=8``).

    Returns:
        ``[(layer group, mean SSIM or (N,) SSIM), ...]`` in randomization order; the last step
        has every group randomised.
    """
    check_attribution(method_name)
    settings = settings_with(settings, **overrides)
    model = ScoreModel(method)
    if reference is None:
        reference = compute_maps(model, images, method_name, settings)
    out: list[tuple[str, Any]] = []
    for i, (name, modules) in enumerate(randomization_layers(model.method, images)):
        _randomize(modules, seed + i)
        ssim = ssim_maps(reference, compute_maps(model, images, method_name, settings))  # (N,)
        out.append((name, ssim if per_image else float(ssim.mean())))
    return out
