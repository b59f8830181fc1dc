"""End-to-end tests of the ``spatialspec`` command line (prepare -> fit -> evaluate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from spatialspec.cli import COMMANDS, main
from spatialspec.data import load_manifest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "synthetic"


# ------------------------------------------------------------------------------- prepare


def test_prepare_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    argv = ["prepare", "synthetic", "--out", str(out), "--n-train", "40", "--n-val", "20",
            "--n-test", "40", "--size", "32", "--seed", "9"]  # fmt: skip
    assert main(argv) == 0
    manifest = load_manifest(out / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": 40, "test": 40, "val": 20}
    params = json.loads((out / "synthetic.json").read_text())
    assert (params["n_train"], params["size"], params["seed"]) == (40, 32, 9)
    stdout = capsys.readouterr().out
    assert f"manifest: {out / 'manifest.csv'}" in stdout
    assert "'positives_without_spurious': 2, 'negatives_with_spurious': 2" in stdout

    # a second call with the same parameters reuses the folder
    stamp = (out / "manifest.csv").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "manifest.csv").stat().st_mtime_ns == stamp


def test_prepare_balanced_test_flag(tmp_path: Path) -> None:
    out = tmp_path / "data"
    argv = ["prepare", "synthetic", "--out", str(out), "--n-train", "4", "--n-val", "4",
            "--n-test", "20", "--size", "32", "--balanced-test"]  # fmt: skip
    assert main(argv) == 0
    test = load_manifest(out / "manifest.csv").query("split == 'test'")
    assert test.groupby("label")["spurious"].mean().to_dict() == {0: 0.5, 1: 0.5}


def test_prepare_invalid_parameters_exit_2(tmp_path: Path, capsys) -> None:
    argv = ["prepare", "synthetic", "--out", str(tmp_path / "d"), "--correlation", "1.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "spatialspec prepare: error: correlation must be in [0, 1], got 1.5" in err
    assert not (tmp_path / "d").exists()


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(["train"])
    assert err.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- fit + evaluate


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, quick_fit_args: list[str]) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cli") / "seg"
    rc = main(
        ["fit", "--config", str(CONFIGS / "seg.yaml"), "--out_dir", str(out), *quick_fit_args]
    )
    return {"rc": rc, "out": out}


def test_fit_returns_0_and_writes_the_run(cli_run: dict[str, Any], tiny_synthetic: Path) -> None:
    assert cli_run["rc"] == 0
    out = cli_run["out"]
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "seg"
    assert Path(info["best_checkpoint"]) == out / "checkpoints" / "best.ckpt"
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert info["config"]["data"]["manifest"] == str(tiny_synthetic)


def test_evaluate_checkpoint(
    cli_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "R.json"
    best = cli_run["out"] / "checkpoints" / "best.ckpt"
    argv = ["evaluate", "--checkpoint", str(best), "--out", str(report_path),
            "--n-resamples", "100", "--accelerator", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert report_path.is_file()
    assert (tmp_path / "R.md").is_file()
    assert (tmp_path / "R.predictions.csv").is_file()

    report = json.loads(report_path.read_text())
    assert report["split"] == "test"
    assert report["n"] == 40
    assert report["n_robust"] == 4
    assert report["threshold_source"] == "val, Youden's J (24 images)"
    assert report["metadata"]["method"] == "seg"
    assert report["metadata"]["checkpoint"] == str(best.resolve())
    assert report["metadata"]["pooling"] == "topk"
    lo, hi = report["robust_auroc_ci"]
    assert lo <= report["robust_auroc"] <= hi

    preds = pd.read_csv(tmp_path / "R.predictions.csv")
    assert list(preds.columns) == ["image_id", "split", "score"]
    assert preds["split"].value_counts().to_dict() == {"test": 40, "val": 24}
    assert preds["score"].between(0, 1).all()

    md = (tmp_path / "R.md").read_text()
    assert "robust AUROC" in md
    assert f"{report['robust_auroc']:.3f}" in md
    stdout = capsys.readouterr().out
    assert f"robust AUROC {report['robust_auroc']:.3f}" in stdout
    assert "n=40" in stdout

    # the saved predictions, fed back through --predictions, give the same report
    again = tmp_path / "R2.json"
    manifest = report["metadata"]["manifest"]
    argv = ["evaluate", "--predictions", str(tmp_path / "R.predictions.csv"),
            "--manifest", manifest, "--out", str(again), "--n-resamples", "100"]  # fmt: skip
    assert main(argv) == 0
    report2 = json.loads(again.read_text())
    assert (tmp_path / "R2.md").is_file()
    for key in ("robust_auroc", "robust_auroc_ci", "auroc", "auroc_ci", "accuracy", "n_robust"):
        assert report2[key] == report[key], key
    # the CSV holds float32 scores in their shortest decimal form: equal up to float32 precision
    assert report2["threshold"] == pytest.approx(report["threshold"], rel=1e-6)
    for name, group in report["subgroups"].items():
        assert report2["subgroups"][name]["n"] == group["n"]
        assert report2["subgroups"][name]["accuracy"] == group["accuracy"]


def test_evaluate_predictions(
    tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = load_manifest(tiny_synthetic).query("split == 'test'")
    preds = tmp_path / "P.csv"
    pd.DataFrame({"image_id": test["image_id"], "score": test["label"]}).to_csv(preds, index=False)
    out = tmp_path / "R2.json"
    argv = ["evaluate", "--predictions", str(preds), "--manifest", str(tiny_synthetic),
            "--out", str(out), "--n-resamples", "50"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["robust_auroc"] == 1.0
    assert report["threshold_source"] == "fixed 0.5 (no val predictions)"
    assert (tmp_path / "R2.md").is_file()
    assert "test: robust AUROC 1.000 [1.000, 1.000]" in capsys.readouterr().out


def test_evaluate_bad_predictions_exit_2(
    tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preds = tmp_path / "P.csv"
    preds.write_text("image_id,prob\ntest_00000,0.5\n")
    out = tmp_path / "R.json"
    argv = ["evaluate", "--predictions", str(preds), "--manifest", str(tiny_synthetic),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spatialspec evaluate: error: ")
    assert f"{preds}: missing column(s) ['score']" in err
    assert not out.exists()


def test_evaluate_missing_checkpoint_exit_2(tmp_path: Path, capsys) -> None:
    argv = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "none.ckpt"),
        "--out",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_evaluate_needs_exactly_one_source(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--predictions", "p.csv", "--checkpoint", "c.ckpt", "--out", "r.json"])
    assert err.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_evaluate_predictions_without_manifest_exit_2(tmp_path: Path, capsys) -> None:
    rc = main(["evaluate", "--predictions", "p.csv", "--out", str(tmp_path / "r.json")])
    assert rc == 2
    assert "--manifest is required with --predictions" in capsys.readouterr().err


def test_fit_errors_exit_2(tmp_path: Path, capsys) -> None:
    argv = [
        "fit",
        "--config",
        str(CONFIGS / "seg.yaml"),
        "--method",
        "segg",
        "--out_dir",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "unknown method 'segg'" in capsys.readouterr().err


def test_fit_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(["fit", "--help"])
    assert err.value.code == 0
    assert "--method" in capsys.readouterr().out


# ------------------------------------------------------------------------------- console script


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "spatialspec"
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: spatialspec")
    for command in ("prepare", "fit", "evaluate", "sweep", "compare", "audit", "analyze", "demo"):
        assert command in proc.stdout
    assert set(COMMANDS) == {
        "prepare", "fit", "evaluate", "sweep", "compare", "audit", "analyze", "demo"
    }  # fmt: skip
