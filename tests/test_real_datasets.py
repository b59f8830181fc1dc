"""Shipped SIIM / ISIC configs train on fixture-built datasets; ISIC reports per artifact."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spatialspec.data.isic import prepare_isic
from spatialspec.data.manifest import load_manifest
from spatialspec.data.siim import prepare_siim
from spatialspec.evaluation.render import report_markdown
from spatialspec.evaluation.report import evaluate_predictions
from spatialspec.methods import METHODS as REGISTERED
from spatialspec.testing import make_siim_tree
from spatialspec.training import fit
from tests.conftest import REPO_ROOT, SMALL_BACKBONE
from tests.isic_fakes import make_isic_tree

METHODS = tuple(REGISTERED.names())  # every registered method


@pytest.fixture(scope="module")
def siim_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fake = make_siim_tree(tmp_path_factory.mktemp("siim"), n=24, size=48, seed=2)
    out = tmp_path_factory.mktemp("siim_prepared") / "siim"
    prepare_siim(fake.root, fake.rle_csv, out, fake.tube_pkl, progress=False)
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def isic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, traps = make_isic_tree(tmp_path_factory.mktemp("isic"))
    out = tmp_path_factory.mktemp("isic_prepared") / "isic"
    prepare_isic(root, traps, 1, out, progress=False)
    return out / "manifest.csv"


def _fast_args(manifest: Path, out: Path, channels: int) -> list[str]:
    b = SMALL_BACKBONE
    return [
        "--out_dir", str(out),
        "--data.manifest", str(manifest),
        "--data.image_size", "64",
        "--data.batch_size", "4",
        "--data.num_workers", "0",
        "--model.backbone.encoder_name", b["encoder_name"],
        "--model.backbone.in_channels", str(channels),
        "--model.backbone.encoder_depth", str(b["encoder_depth"]),
        "--model.backbone.decoder_channels", str(list(b["decoder_channels"])),
        "--trainer.fast_dev_run", "true",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", ["siim", "isic"])
def test_shipped_config_fits_fixture_dataset(
    dataset: str, method: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    manifest = request.getfixturevalue(f"{dataset}_manifest")
    config = REPO_ROOT / "configs" / dataset / f"{method}.yaml"
    channels = 1 if dataset == "siim" else 3
    argv = ["--config", str(config), *_fast_args(manifest, tmp_path / "run", channels)]
    if "topk" in inspect.signature(REGISTERED.get(method).__init__).parameters:
        argv += ["--model.topk", "4"]  # 256 of the paper's 512 px is too many for 64 px
    if method == "seg":
        argv += ["--data.undersample_negatives", "1.0"]
    fit(argv)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["method"] == method
    assert resolved["model"]["lr"] == 0.0005  # the paper's Adam learning rate
    assert resolved["data"]["image_size"] == 64 and resolved["data"]["batch_size"] == 4


def test_shipped_configs_carry_the_paper_settings() -> None:
    for dataset, channels in (("siim", 1), ("isic", 3)):
        base = yaml.safe_load((REPO_ROOT / "configs" / dataset / "base.yaml").read_text())
        assert base["data"]["image_size"] == 512
        assert base["data"]["batch_size"] == 16
        assert base["model"]["lr"] == 0.0005
        assert base["model"]["backbone"]["encoder_name"] == "resnet50"
        assert base["model"]["backbone"]["in_channels"] == channels
        assert base["model"]["backbone"]["encoder_weights"] is None  # no downloads by default


def test_isic_report_has_trap_test_auroc_and_robust_auroc_per_artifact(
    isic_manifest: Path, tmp_path: Path
) -> None:
    frame = load_manifest(isic_manifest)
    rng = np.random.default_rng(0)
    scores = np.clip(frame["label"] * 0.3 + rng.random(len(frame)) * 0.7, 0, 1)
    preds = tmp_path / "preds.csv"
    pd.DataFrame({"image_id": frame["image_id"], "score": scores}).to_csv(preds, index=False)
    report = evaluate_predictions(isic_manifest, preds, "test", tmp_path / "r.json", n_resamples=50)
    assert report["dataset"] == "isic"
    artifacts = report["attributes"]
    assert "spurious" not in artifacts and {"ruler", "ink", "hair"} <= set(artifacts)
    test = frame[frame["split"] == "test"]
    for name, entry in artifacts.items():
        assert entry["n_with"] == int((test[name] == 1).sum())
        assert entry["negatives_with"] == int(((test.label == 0) & (test[name] == 1)).sum())
        if entry["robust_auroc"] is not None:
            assert 0.0 <= entry["robust_auroc"] <= 1.0
    text = report_markdown(report)
    assert "trap-test AUROC" in text and "| ruler |" in text
