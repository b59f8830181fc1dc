"""Saliency audit end to end on tiny trained models: criteria, baselines, verdicts, files, CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialspec.audit.attributions import XRAI_HINT, attribution_maps
from spatialspec.audit.base import AuditResult
from spatialspec.audit.common import load_audit_set, load_model
from spatialspec.audit.saliency import (
    SaliencyAudit,
    ScoreModel,
    add_saliency_parser,
    audit_saliency,
    cascading_randomization,
    figure_rows,
    localization_auprc,
    randomization_layers,
    run_saliency,
    spurious_attribution_share,
    write_saliency,
)
from spatialspec.audit.saliency_metrics import average_mask
from spatialspec.evaluation.predict import load_checkpoint

#: Cheap settings for the audit on tiny models.
FAST = {"n_steps": 4, "nt_samples": 4, "smooth_ig_samples": 2, "batch_size": 4}
#: Every method but the ones that take seconds even on tiny models.
CHEAP = ["gradient", "gradcam", "guided_backprop"]


@pytest.fixture(scope="module")
def resnet_seg(tmp_path_factory: pytest.TempPathFactory, quick_fit_args: list[str]) -> Path:
    """A seconds-long ``seg`` fit with a resnet18 encoder on the tiny benchmark."""
    from spatialspec.training import fit

    out = tmp_path_factory.mktemp("resnet_seg")
    info = fit(
        [
            "--method",
            "seg",
            "--out_dir",
            str(out),
            "--seed",
            "0",
            *quick_fit_args,
            "--model.backbone.encoder_name",
            "resnet18",
        ]
    )
    return Path(info["best_checkpoint"] or info["last_checkpoint"])


def test_figure_rows_start_with_positives_with_the_spurious_feature() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    spur = np.array([0, 1, 0, 1, 1, 1, 1, 0], dtype=bool)
    rows = figure_rows(labels, spur, rows=6)
    assert rows.tolist() == [3, 4, 1, 5, 2, 0]  # 2 pos+tube, 2 neg+tube, pos, neg
    assert figure_rows(labels[:2], spur[:2], rows=6).tolist() == [1, 0]


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
    per_image = cascading_randomization(method, images, "gradcam", batch_size=2, per_image=True)
    assert [float(s.mean()) for _, s in per_image] == pytest.approx([s for _, s in steps])


def test_audit_saliency_seg_criteria_baselines_and_files(
    tiny_checkpoints: dict[str, Path], resnet_seg: Path, tmp_path: Path
) -> None:
    ckpt = tiny_checkpoints["seg"]
    result = audit_saliency(
        ckpt,
        n_images=8,
        methods=[*CHEAP, "smooth_ig"],
        replicates=[ckpt],
        other_architectures=[resnet_seg],
        expensive_images=4,
        randomization_images=3,
        **FAST,
    )
    assert set(result["attributions"]) == {*CHEAP, "smooth_ig"}
    for name, r in result["attributions"].items():
        assert r["n_images"] == (4 if name == "smooth_ig" else 8)
        base = r["localization_baselines"]
        assert base["average_training_mask"]["n"] == r["localization_auprc"]["n"]
        assert base["pixel_probabilities"] is not None  # a dense model
        assert r["repeatability"]["ssim"] == pytest.approx(1.0, abs=1e-5)  # itself as replicate
        assert r["repeatability"]["passed"] in (True, None)
        assert r["reproducibility"]["n_pairs"] == 2  # {model, replicate} x {resnet18}
        assert r["randomization"][0]["layer"] == "pixel_head"
        assert r["randomization_test"]["layer"] == r["randomization"][-1]["layer"]
        assert -1 <= r["similarity_floor"]["mean"] <= 1 and r["seconds"] > 0
    assert result["verdicts"]["gradient"].keys() == {
        "localization",
        "localization_pixels",
        "randomization",
        "repeatability",
        "reproducibility",
    }
    paths = write_saliency(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "saliency.json",
        "saliency.md",
        "saliency_grid.png",
    }
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(paths["json"].read_text())
    assert saved["n_images"] == 8 and "figure" not in saved
    assert saved["metadata"]["method"] == "seg" and saved["metadata"]["encoder"].startswith("tu-")
    assert saved["metadata"]["activations"]["Hardswish"] > 0
    text = paths["markdown"].read_text()
    assert "Method × criterion" in text and "99th percentile" in text and "Hardswish" in text


def test_audit_saliency_numbers_match_the_metrics(tiny_checkpoints: dict[str, Path]) -> None:
    ckpt = tiny_checkpoints["seg"]
    method, _, data = load_model(ckpt)
    audit = load_audit_set(data, "test", limit=6, seed=0)
    maps = attribution_maps(method, audit.images, "gradient")
    result = audit_saliency(ckpt, n_images=6, methods=["gradient"], randomization=False)
    r = result["attributions"]["gradient"]
    share = spurious_attribution_share(
        maps, audit.spurious_masks, audit.has_spurious_mask, roi_masks=audit.roi_masks
    )
    assert r["spurious_attribution_share"]["n"] == share["n"] > 0
    assert r["spurious_attribution_share"]["mean"] == pytest.approx(share["mean"])
    assert r["spurious_attribution_share"]["lift"] == pytest.approx(share["lift"])
    loc = localization_auprc(maps, audit.roi_masks, audit.labels)
    assert r["localization_auprc"]["mean"] == pytest.approx(loc["mean"])
    train = data.split_frame("train")
    from spatialspec.audit.saliency_criteria import training_mask_paths, training_masks

    assert len(training_mask_paths(data)) == (train["mask_path"].fillna("") != "").sum() > 0
    base_map = average_mask(training_masks(data, data.image_size))
    np.testing.assert_array_equal(
        base_map, average_mask(np.stack(list(training_masks(data, data.image_size))))
    )
    base = localization_auprc(base_map, audit.roi_masks, audit.labels)
    assert r["localization_baselines"]["average_training_mask"]["mean"] == pytest.approx(
        base["mean"]
    )
    with torch.no_grad():
        probs = torch.sigmoid(method(audit.images))[:, 0].numpy()
    own = localization_auprc(probs, audit.roi_masks, audit.labels)
    assert r["localization_baselines"]["pixel_probabilities"]["mean"] == pytest.approx(
        own["mean"], rel=1e-5
    )
    assert r["repeatability"] is None and r["reproducibility"] is None
    assert r["randomization"] is None and "randomization" not in result["verdicts"]["gradient"]


def test_audit_saliency_checks_the_other_models(
    tiny_checkpoints: dict[str, Path], resnet_seg: Path
) -> None:
    seg, binary = tiny_checkpoints["seg"], tiny_checkpoints["binary"]
    with pytest.raises(ValueError, match="must have the audited model's encoder"):
        audit_saliency(seg, n_images=4, methods=["gradient"], replicates=[resnet_seg])
    with pytest.raises(ValueError, match="must not have"):
        audit_saliency(seg, n_images=4, methods=["gradient"], other_architectures=[seg])
    with pytest.raises(ValueError, match="'binary' model"):
        audit_saliency(seg, n_images=4, methods=["gradient"], replicates=[binary])
    with pytest.raises(ValueError, match="lime"):
        audit_saliency(seg, n_images=4, methods=["lime"])


def test_xrai_is_skipped_with_a_message_without_its_package(
    tiny_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "saliency", None)
    monkeypatch.setitem(sys.modules, "saliency.core", None)
    result = audit_saliency(
        tiny_checkpoints["binary"], n_images=4, methods=["gradient", "xrai"], randomization=False
    )
    assert result["skipped"] == {"xrai": XRAI_HINT}
    assert list(result["attributions"]) == ["gradient"]
    assert result["settings"]["methods"] == ["gradient"]
    headline = SaliencyAudit().headline(AuditResult("saliency", result))
    assert headline["saliency_skipped"] == {"xrai": XRAI_HINT}
    assert headline["attribution_method"] == "gradient"  # integrated gradients did not run


def test_headline_keys(tiny_checkpoints: dict[str, Path]) -> None:
    ckpt = tiny_checkpoints["binary"]
    result = audit_saliency(
        ckpt,
        n_images=6,
        methods=["integrated_gradients", "gradcam"],
        second_checkpoint=ckpt,
        randomization_images=2,
        **FAST,
    )
    headline = SaliencyAudit().headline(AuditResult("saliency", result))
    ig = result["attributions"]["integrated_gradients"]
    assert headline["localization_auprc"] == ig["localization_auprc"]["mean"]
    assert headline["saliency_repeatability_ssim"] == ig["repeatability"]["ssim"]
    assert list(headline["randomization_ssim"]) == [s["layer"] for s in ig["randomization"]]
    methods = headline["saliency_methods"]
    assert set(methods) == {"integrated_gradients", "gradcam"}
    for name, m in methods.items():
        r = result["attributions"][name]
        assert m["randomization_ssim"] == r["randomization_test"]["ssim"]
        assert m["similarity_floor"] == r["similarity_floor"]["mean"]
        assert m["reproducibility_ssim"] is None and m["pixel_probability_auprc"] is None
        assert m["baseline_auprc"] == r["localization_baselines"]["average_training_mask"]["mean"]
        assert m["passes"] == result["verdicts"][name]
    assert {
        "localization_auprc",
        "baseline_auprc",
        "randomization_ssim",
        "similarity_floor",
        "repeatability_ssim",
        "reproducibility_ssim",
        "spurious_attribution_share",
    } <= set(methods["gradcam"])
    json.dumps(headline)  # JSON-ready


def test_cli_saliency_binary(tiny_checkpoints: dict[str, Path], tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    audit = parser.add_subparsers(dest="command").add_parser("audit")
    add_saliency_parser(audit.add_subparsers(dest="audit_command"))
    ckpt = str(tiny_checkpoints["binary"])
    args = parser.parse_args([
        "audit", "saliency", "--checkpoint", ckpt, "--second-checkpoint", ckpt, "--limit", "6",
        "--methods", "gradient,smooth_ig", "--n-steps", "4",
        "--nt-samples", "4", "--smooth-ig-samples", "2", "--expensive-images", "3",
        "--no-randomization", "--out", str(tmp_path / "sal"),
    ])  # fmt: skip
    assert args.n_images == 6  # --limit is --n-images
    result = run_saliency(args)
    assert set(result["attributions"]) == {"gradient", "smooth_ig"}
    assert all(r["randomization"] is None for r in result["attributions"].values())
    assert result["attributions"]["smooth_ig"]["n_images"] == 3
    assert (tmp_path / "sal" / "saliency_grid.png").is_file()
    assert "localization AUPRC" in capsys.readouterr().out
