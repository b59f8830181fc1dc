"""Saliency audit: metrics on hand-made maps, attributions of a stub model, the audit end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from spatialspec.audit.common import load_audit_set, load_model
from spatialspec.audit.saliency import (
    ATTRIBUTIONS,
    ScoreModel,
    add_saliency_parser,
    attribution_maps,
    audit_saliency,
    cascading_randomization,
    figure_rows,
    localization_auprc,
    randomization_layers,
    repeatability,
    run_saliency,
    spurious_attribution_share,
    ssim_maps,
    write_saliency,
)
from spatialspec.evaluation.predict import load_checkpoint

S = 32


def _square(n: int, top: int, left: int, side: int) -> np.ndarray:
    """(n, S, S) bool masks, each a ``side``-pixel square at (top, left)."""
    masks = np.zeros((n, S, S), dtype=bool)
    masks[:, top : top + side, left : left + side] = True
    return masks


def _smooth_maps(n: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=(n, S, S))
    return np.stack([ndimage.gaussian_filter(m, 2.0) for m in noise])  # (n, S, S)


# --------------------------------------------------------------------------- localization


def test_localization_auprc_is_one_for_the_mask_and_chance_for_a_constant_map() -> None:
    roi = _square(2, 4, 4, 8)  # area 64 / 1024
    labels = np.array([1, 1])
    perfect = localization_auprc(roi.astype(float), roi, labels)
    constant = localization_auprc(np.ones((2, S, S)), roi, labels)
    assert perfect["mean"] == pytest.approx(1.0)
    assert perfect["n"] == 2
    assert constant["mean"] == pytest.approx(64 / 1024)
    assert constant["chance"] == pytest.approx(64 / 1024)


def test_localization_auprc_of_a_random_map_is_near_the_area_fraction() -> None:
    roi = _square(20, 0, 0, 16)  # a quarter of the image
    noise = np.random.default_rng(0).random((20, S, S))
    result = localization_auprc(noise, roi, np.ones(20, dtype=int))
    assert result["mean"] == pytest.approx(0.25, abs=0.02)


def test_localization_auprc_per_image_and_ignored_images() -> None:
    roi = np.zeros((4, 2, 2), dtype=bool)
    roi[:, 0, 0] = roi[:, 1, 0] = True  # pixels (row-major) 0 and 2 are the ROI
    maps = np.zeros((4, 2, 2))
    maps[0] = [[0.9, 0.8], [0.7, 0.1]]  # ranks P, N, P, N: AP = 0.5 * 1 + 0.5 * 2 / 3
    maps[1] = [[1.0, 0.0], [1.0, 0.0]]  # perfect
    maps[2] = [[0.0, 1.0], [0.0, 1.0]]  # a negative with a mask: ignored
    roi[3] = False  # a positive without ROI: ignored
    result = localization_auprc(maps, roi, np.array([1, 1, 0, 1]))
    np.testing.assert_allclose(result["per_image"][:2], [5 / 6, 1.0])
    assert np.isnan(result["per_image"][2:]).all()
    assert result["mean"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert result["n"] == 2


def test_localization_auprc_without_counted_images_is_none() -> None:
    result = localization_auprc(np.ones((1, S, S)), _square(1, 0, 0, 4), np.array([0]))
    assert result["mean"] is None and result["chance"] is None and result["n"] == 0


# --------------------------------------------------------------------------- spurious share


def test_spurious_share_all_inside_uniform_and_missing_masks() -> None:
    spur = _square(3, 8, 8, 8)  # 64 px of 1024
    maps = np.stack([spur[0] * 5.0, np.ones((S, S)), np.ones((S, S))])
    result = spurious_attribution_share(maps, spur, np.array([True, True, False]), dilate=0)
    np.testing.assert_allclose(result["per_image"][:2], [1.0, 64 / 1024])
    assert np.isnan(result["per_image"][2])  # no spurious mask: excluded
    assert result["n"] == 2
    assert result["mean"] == pytest.approx((1.0 + 64 / 1024) / 2)
    assert result["uniform"] == pytest.approx(64 / 1024)
    assert result["ratio"] == pytest.approx(result["mean"] / (64 / 1024))


def test_spurious_share_of_a_uniform_map_has_ratio_one() -> None:
    spur = _square(2, 0, 0, 4)
    result = spurious_attribution_share(np.full((2, S, S), 0.3), spur, np.ones(2, bool), dilate=0)
    assert result["mean"] == pytest.approx(16 / 1024)
    assert result["ratio"] == pytest.approx(1.0)


def test_spurious_share_dilation_grows_the_region_by_square_steps() -> None:
    spur = np.zeros((1, S, S), dtype=bool)
    spur[0, 16, 16] = True
    maps = np.zeros((1, S, S))
    maps[0, 18, 18] = 1.0  # two pixels away diagonally
    has = np.array([True])
    for dilate, share, area in ((0, 0.0, 1), (1, 0.0, 9), (2, 1.0, 25)):
        result = spurious_attribution_share(maps, spur, has, dilate=dilate)
        assert result["mean"] == pytest.approx(share)
        assert result["uniform"] == pytest.approx(area / S**2)


def test_spurious_share_leaves_out_pixels_next_to_the_roi() -> None:
    spur = np.zeros((1, S, S), dtype=bool)
    spur[0, 10, 4:20] = True  # a horizontal tube
    roi = _square(1, 12, 4, 4)  # two rows below the tube's left end
    maps = roi.astype(float)
    maps[0, 11, 4:8] = 1.0  # the ROI's border: mass on 16 + 4 pixels
    has = np.array([True])
    plain = spurious_attribution_share(maps, spur, has, dilate=2)
    assert plain["mean"] == pytest.approx(8 / 20)  # the border + ROI row 12 (within 2 px)
    excluded = spurious_attribution_share(maps, spur, has, dilate=2, roi_masks=roi)
    assert excluded["mean"] == pytest.approx(0.0)
    region = 20 * 5 - 8 * 3  # the grown tube (rows 8-12, cols 2-21) less the grown ROI's rows 10-12
    assert excluded["uniform"] == pytest.approx(region / S**2)


def test_spurious_share_ignores_all_zero_maps_and_negative_values() -> None:
    spur = _square(2, 0, 0, 4)
    maps = np.zeros((2, S, S))
    maps[1] = -1.0  # negative mass is clipped: an all-zero map has no share
    maps[1, 0, 0] = 2.0
    result = spurious_attribution_share(maps, spur, np.ones(2, bool), dilate=0)
    assert np.isnan(result["per_image"][0])
    assert result["per_image"][1] == pytest.approx(1.0)
    assert result["n"] == 1


# --------------------------------------------------------------------------- SSIM


def test_ssim_of_identical_maps_is_one_and_ignores_scale() -> None:
    maps = _smooth_maps(4)
    np.testing.assert_allclose(ssim_maps(maps, maps), 1.0, atol=1e-5)
    np.testing.assert_allclose(ssim_maps(maps, 3.0 * maps + 1.0), 1.0, atol=1e-5)
    assert repeatability(maps, maps) == pytest.approx(1.0, abs=1e-5)


def test_ssim_of_a_negated_or_shuffled_map_is_much_lower() -> None:
    maps = _smooth_maps(4)
    shuffled = np.random.default_rng(1).permutation(maps.reshape(4, -1), axis=1).reshape(maps.shape)
    assert ssim_maps(maps, -maps).max() < 0.0
    assert ssim_maps(maps, shuffled).max() < 0.3
    assert repeatability(maps, _smooth_maps(4, seed=1)) < 0.3


def test_ssim_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        ssim_maps(np.zeros((2, S, S)), np.zeros((3, S, S)))


# --------------------------------------------------------------------------- a stub model


class _StubEncoder(nn.Module):
    """Feature maps as an smp encoder returns them: the input, then coarser and coarser maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 9)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = torch.relu(self.conv(x))  # (B, 4, S, S)
        return [x, f1, F.avg_pool2d(f1, 4)]  # deepest: (B, 4, S/4, S/4)


class RegionStub(nn.Module):
    """Scores an image by its pixels inside ``region`` only (like a method: ``net``, ``score``)."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.encoder = _StubEncoder()
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))

    def score(self, images: torch.Tensor) -> torch.Tensor:
        deepest = self.net.encoder(images * self.region)[-1]
        return torch.sigmoid(deepest.mean(dim=(1, 2, 3)) - 1.0)  # (B,)


@pytest.mark.parametrize(("name", "least"), [("integrated_gradients", 0.999),
                                             ("saliency", 0.999), ("gradcam", 0.9)])  # fmt: skip
def test_attribution_falls_on_the_only_region_the_score_reads(name: str, least: float) -> None:
    region = _square(1, 8, 12, 8)[0]  # (S, S)
    images = torch.rand(6, 1, S, S) + 0.5  # positive everywhere, baseline 0
    maps = attribution_maps(RegionStub(region), images, name, batch_size=4, n_steps=16)
    assert maps.shape == (6, S, S) and (maps >= 0).all()
    share = spurious_attribution_share(maps, np.repeat(region[None], 6, 0), np.ones(6, bool))
    assert share["mean"] > least
    assert share["ratio"] > 3.0  # uniform: the dilated 12x12 region, 0.14
    loc = localization_auprc(maps, np.repeat(region[None], 6, 0), np.ones(6, int))
    assert loc["mean"] > 0.8 > loc["chance"]


def test_score_model_leaves_the_method_untouched_and_taps_the_deepest_map() -> None:
    stub = RegionStub(np.ones((S, S)))
    model = ScoreModel(stub)
    seen = []
    model.deepest.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    x = torch.rand(2, 1, S, S)
    torch.testing.assert_close(model(x), stub.score(x))
    assert seen == [torch.Size([2, 4, S // 4, S // 4])]
    assert not stub.net.encoder._forward_hooks  # the hook lives on the copy


def test_unknown_attribution_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="integrated_gradients"):
        attribution_maps(RegionStub(np.ones((S, S))), torch.rand(1, 1, S, S), "lime")


def test_figure_rows_start_with_positives_with_the_spurious_feature() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    spur = np.array([0, 1, 0, 1, 1, 1, 1, 0], dtype=bool)
    rows = figure_rows(labels, spur, rows=6)
    assert rows.tolist() == [3, 4, 1, 5, 2, 0]  # 2 pos+tube, 2 neg+tube, pos, neg
    assert figure_rows(labels[:2], spur[:2], rows=6).tolist() == [1, 0]


# --------------------------------------------------------------------------- trained models


@pytest.mark.parametrize("kind", ["binary", "seg"])
def test_cascading_randomization_order_and_original_untouched(
    tiny_checkpoints: dict[str, Path], kind: str
) -> None:
    method, _ = load_checkpoint(tiny_checkpoints[kind])
    images = torch.randn(2, 1, 64, 64)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    steps = cascading_randomization(method, images, "gradcam", batch_size=2)
    layers = [name for name, _ in randomization_layers(ScoreModel(method).method, images)]
    assert [name for name, _ in steps] == layers
    assert layers[0] == ("image_head" if kind == "binary" else "pixel_head")
    decoder = [n for n in layers if n.startswith("decoder")]
    encoder = [n for n in layers if n.startswith("encoder")]
    assert layers == [layers[0], *decoder, *encoder]
    assert bool(decoder) == (kind == "seg")
    stages = [int(n.split()[2]) for n in encoder]
    assert len(stages) >= 3 and stages == sorted(stages, reverse=True)  # deepest first
    assert all(-1.0 <= s <= 1.0 for _, s in steps)
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert cascading_randomization(method, images, "gradcam", batch_size=2) == steps  # seeded


def test_audit_saliency_seg_writes_its_files(tiny_checkpoints: dict[str, Path], tmp_path) -> None:
    ckpt = tiny_checkpoints["seg"]
    result = audit_saliency(ckpt, limit=8, second_checkpoint=ckpt, n_steps=4,
                            randomization_images=2, batch_size=4)  # fmt: skip
    paths = write_saliency(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "saliency.json", "saliency.md", "saliency_grid.png"
    }  # fmt: skip
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(paths["json"].read_text())
    assert saved["n_images"] == 8 and "figure" not in saved
    assert set(saved["attributions"]) == {"gradcam", "integrated_gradients"}
    for r in saved["attributions"].values():
        assert {"mean", "n", "chance", "per_image"} <= set(r["localization_auprc"])
        assert {"mean", "uniform", "ratio", "n"} <= set(r["spurious_attribution_share"])
        assert r["repeatability"]["ssim"] == pytest.approx(1.0, abs=1e-5)
        assert r["randomization"][0]["layer"] == "pixel_head"
    assert saved["metadata"]["method"] == "seg"
    assert "integrated_gradients" in paths["markdown"].read_text()


def test_audit_saliency_maps_match_the_audit_set(tiny_checkpoints: dict[str, Path]) -> None:
    ckpt = tiny_checkpoints["seg"]
    method, _, data = load_model(ckpt)
    audit = load_audit_set(data, "test", limit=6, seed=0)
    maps = attribution_maps(method, audit.images, "saliency")
    result = audit_saliency(ckpt, limit=6, methods=["saliency"], randomization=False)
    expected = spurious_attribution_share(
        maps, audit.spurious_masks, audit.has_spurious_mask, roi_masks=audit.roi_masks
    )
    got = result["attributions"]["saliency"]["spurious_attribution_share"]
    assert got["n"] == expected["n"] > 0
    assert got["mean"] == pytest.approx(expected["mean"])
    loc = localization_auprc(maps, audit.roi_masks, audit.labels)
    assert result["attributions"]["saliency"]["localization_auprc"]["mean"] == loc["mean"]


def test_cli_saliency_binary(tiny_checkpoints: dict[str, Path], tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    audit = parser.add_subparsers(dest="command").add_parser("audit")
    add_saliency_parser(audit.add_subparsers(dest="audit_command"))
    ckpt = str(tiny_checkpoints["binary"])
    args = parser.parse_args([
        "audit", "saliency", "--checkpoint", ckpt, "--second-checkpoint", ckpt, "--limit", "6",
        "--methods", ",".join(ATTRIBUTIONS), "--n-steps", "4", "--no-randomization",
        "--out", str(tmp_path / "sal"),
    ])  # fmt: skip
    result = run_saliency(args)
    assert set(result["attributions"]) == set(ATTRIBUTIONS)
    assert all(r["randomization"] is None for r in result["attributions"].values())
    assert (tmp_path / "sal" / "saliency_grid.png").is_file()
    assert "localization AUPRC" in capsys.readouterr().out
