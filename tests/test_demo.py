"""``spatialspec demo`` end to end on a tiny draw: 2 methods × 2 seeds, seed-aware summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialspec.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:Experiment logs directory")


def test_tiny_demo_writes_seed_aware_summary(
    tmp_path: Path, fast_backbone_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    fast = [
        f"{k.removeprefix('--')}={v}"
        for k, v in zip(fast_backbone_args[::2], fast_backbone_args[1::2], strict=True)
    ]
    rc = main([
        "demo", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
        "--out", str(tmp_path / "out"), "--n-train", "48", "--n-val", "24", "--n-test", "60",
        "--methods", "binary,seg", "--seeds", "0,1", "--epochs", "1", "--jobs", "1",
        "--set", "trainer.accelerator=cpu", "trainer.limit_train_batches=2", *fast,
    ])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "seg − binary: robust AUROC" in printed and "seed pairs" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary) == ["binary", "seg"]
    seg = summary["seg"]
    assert seg["seeds"] == [0, 1]
    assert len(seg["per_seed"]["robust_auroc"]) == 2
    assert seg["robust_auroc"] == pytest.approx(sum(seg["per_seed"]["robust_auroc"]) / 2)
    assert seg["auroc"] == pytest.approx(sum(seg["per_seed"]["auroc"]) / 2)
    lo, hi = seg["robust_auroc_ci"]
    assert 0.0 <= lo <= hi <= 1.0
    assert all(Path(c).is_file() for c in seg["checkpoints"])
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    pair = comparison["pairs"][0]
    assert (pair["a"], pair["b"]) == ("seg", "binary")
    assert (
        pair["robust_auroc"]["n_runs_a"] == 2 and len(pair["robust_auroc"]["per_seed_diffs"]) == 2
    )
    for name in ("report.md", "robust_auroc.png", "run.json", "comparison.md"):
        assert (tmp_path / "out" / name).is_file(), name
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["epochs"] == 1 and run["data"]["n_train"] == 48
