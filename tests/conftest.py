"""Shared fixtures: one tiny synthetic benchmark per session and a fast backbone for fits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from spatialspec.data.synthetic import SyntheticConfig, generate
from spatialspec.models import BackboneConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs" / "synthetic"

#: The tiny benchmark: per split, (1,1)/(1,0)/(0,1)/(0,0) cells hold 22/2/2/22 (train),
#: 11/1/1/11 (val) and 18/2/2/18 (test) images (correlation 0.9, prevalence 0.5).
TINY = SyntheticConfig(n_train=48, n_val=24, n_test=40, size=64, seed=3)

#: Small, fast network (as configs/synthetic/base.yaml, with narrower decoder stages).
SMALL_BACKBONE = {
    "encoder_name": "tu-mobilenetv3_small_100",
    "in_channels": 1,
    "encoder_weights": None,
    "encoder_depth": 4,
    "decoder_channels": (16, 16, 8, 8),
}


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the manifest of a tiny synthetic benchmark (generated once per session)."""
    out = tmp_path_factory.mktemp("tiny_synthetic")
    generate(TINY, out, progress=False)
    return out / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_config() -> SyntheticConfig:
    """The parameters of :func:`tiny_synthetic`."""
    return TINY


@pytest.fixture
def small_backbone() -> BackboneConfig:
    """The fast backbone as a config object (for building methods directly)."""
    return BackboneConfig(**SMALL_BACKBONE)


@pytest.fixture(scope="session")
def fast_backbone_args() -> list[str]:
    """``spatialspec fit`` overrides selecting the fast backbone."""
    b = SMALL_BACKBONE
    return [
        "--model.backbone.encoder_name", b["encoder_name"],
        "--model.backbone.in_channels", str(b["in_channels"]),
        "--model.backbone.encoder_weights", "null",
        "--model.backbone.encoder_depth", str(b["encoder_depth"]),
        "--model.backbone.decoder_channels", str(list(b["decoder_channels"])),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def quick_fit_args(tiny_synthetic: Path, fast_backbone_args: list[str]) -> list[str]:
    """Overrides for a seconds-long fit on the tiny benchmark (add --method/--config, --out_dir)."""
    return [
        "--data.manifest", str(tiny_synthetic),
        "--data.batch_size", "8",
        "--data.num_workers", "0",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "2",
        "--trainer.accelerator", "cpu",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *fast_backbone_args,
    ]  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    # The test networks are tiny: one intra-op thread is as fast as two, and it avoids
    # OpenMP spin-waiting, which makes fits ~8x slower when other processes share the cores.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    # Lightning 2.6 calls a torch pytree API that torch 2.15 deprecates (not our code).
    config.addinivalue_line("filterwarnings", r"ignore:`isinstance\(treespec, LeafSpec\)`")


@pytest.fixture(scope="session")
def tiny_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, quick_fit_args: list[str]
) -> dict[str, Path]:
    """Best checkpoints of seconds-long ``binary`` and ``seg`` fits on the tiny benchmark.

    Barely trained: good for exercising audits and evaluation end to end, not for their numbers.
    """
    from spatialspec.training import fit

    out = tmp_path_factory.mktemp("tiny_runs")
    paths = {}
    for method in ("binary", "seg"):
        info = fit(["--method", method, "--out_dir", str(out / method), "--seed", "0",
                    "--model.lr", "0.01", *quick_fit_args])  # fmt: skip
        paths[method] = Path(info["best_checkpoint"] or info["last_checkpoint"])
    return paths
