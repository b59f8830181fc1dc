"""``spatialspec evaluate --checkpoint CKPT --pooling LIST``: other poolings, no retraining."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from spatialspec.cli import main
from spatialspec.evaluation.predict import datamodule_for, load_checkpoint
from spatialspec.evaluation.render import report_markdown
from spatialspec.evaluation.runner import POOLING_FIELDS, evaluate_checkpoint
from spatialspec.metrics import auroc, bootstrap_ci, robust_auroc
from spatialspec.models import SpatialNet
from spatialspec.models.pooling import POOLING_FORMS, Pooling, parse_poolings

POOLING_LIST = "max,mean,topk:16,topk:256"
N_RESAMPLES = 200


# ------------------------------------------------------------------------------- parsing


def test_parse_poolings_keeps_the_names_as_written() -> None:
    poolings = parse_poolings(" max, mean ,topk:16,topk:256")
    assert list(poolings) == ["max", "mean", "topk:16", "topk:256"]
    assert poolings["max"] == Pooling("max")
    assert poolings["topk:256"] == Pooling("topk", 256)
    assert [p.name for p in poolings.values()] == ["max", "mean", "topk:16", "topk:256"]
    # a max pooling is a max pooling whatever k a model was configured with
    assert Pooling("max", 16) == Pooling("max")


def test_pooling_applies_the_models_pooling_function() -> None:
    probs = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flat = probs.reshape(3, -1)
    torch.testing.assert_close(Pooling("max")(probs), flat.amax(1))
    torch.testing.assert_close(Pooling("mean")(probs), flat.mean(1))
    torch.testing.assert_close(Pooling("topk", 5)(probs), flat.topk(5, 1).values.mean(1))


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("max,median", "'median'"),
        ("topk", "'topk' (give k: topk:16)"),
        ("topk:0", "'topk:0'"),
        ("topk:-3", "'topk:-3'"),
        ("topk:1.5", "'topk:1.5'"),
        ("max:3", "'max:3'"),
        ("MAX", "'MAX'"),
    ],
)
def test_bad_pooling_names_the_entry_and_the_valid_forms(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad pooling {bad}; valid forms: ")) as err:
        parse_poolings(text)
    assert POOLING_FORMS in str(err.value)


@pytest.mark.parametrize("text", ["", "max,,mean", "max,"])
def test_empty_pooling_entries_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"empty entry in pooling list .*max, mean, topk:K"):
        parse_poolings(text)


def test_a_pooling_listed_twice_is_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("pooling 'topk:016' is listed twice")):
        parse_poolings("topk:16,max,topk:016")


# ------------------------------------------------------------------- dense checkpoint


@pytest.fixture(scope="module")
def pooled(tiny_checkpoints: dict[str, Path], tmp_path_factory) -> dict[str, Any]:
    """One seg checkpoint evaluated without and with ``--pooling``, counting network passes."""
    out = tmp_path_factory.mktemp("pooling")
    calls = {"n": 0}
    original = SpatialNet.pixel_logits

    def counted(self, x):
        calls["n"] += 1
        return original(self, x)

    kw = {"n_resamples": N_RESAMPLES, "accelerator": "cpu", "progress": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SpatialNet, "pixel_logits", counted)
        plain = evaluate_checkpoint(tiny_checkpoints["seg"], out / "plain.json", **kw)
        plain_calls, calls["n"] = calls["n"], 0
        report = evaluate_checkpoint(
            tiny_checkpoints["seg"], out / "pooled.json", pooling=POOLING_LIST, **kw
        )
    return {
        "plain": plain,
        "report": report,
        "out": out,
        "calls": (plain_calls, calls["n"]),
        "ckpt": tiny_checkpoints["seg"],
    }


def test_trained_pooling_entry_equals_the_top_level_numbers(pooled: dict[str, Any]) -> None:
    report = pooled["report"]
    assert report["metadata"]["pooling"] == "topk"
    assert report["metadata"]["topk"] == 16
    assert report["trained_pooling"] == "topk:16"
    assert list(report["poolings"]) == POOLING_LIST.split(",")
    entry = report["poolings"]["topk:16"]
    assert set(entry) == set(POOLING_FIELDS)
    for key in POOLING_FIELDS:
        assert entry[key] == report[key], key
    assert report["robust_auroc"] is not None


def test_top_level_numbers_and_predictions_are_unchanged_by_pooling(
    pooled: dict[str, Any],
) -> None:
    plain, report, out = pooled["plain"], pooled["report"], pooled["out"]
    for key in ("robust_auroc", "robust_auroc_ci", "auroc", "auroc_ci", "threshold",
                "accuracy", "worst_group_accuracy", "subgroups", "n", "n_robust"):  # fmt: skip
        assert report[key] == plain[key], key
    assert "poolings" not in plain and "trained_pooling" not in plain
    csv = (out / "pooled.predictions.csv").read_text()
    assert csv == (out / "plain.predictions.csv").read_text()
    assert csv.splitlines()[0] == "image_id,split,score"
    assert json.loads((out / "pooled.json").read_text())["poolings"] == report["poolings"]


def test_the_network_runs_once_per_image_for_all_poolings(pooled: dict[str, Any]) -> None:
    plain_calls, pooled_calls = pooled["calls"]
    assert plain_calls > 0
    assert pooled_calls == plain_calls


def test_max_pooling_equals_an_independent_computation(pooled: dict[str, Any]) -> None:
    method, config = load_checkpoint(pooled["ckpt"])
    data = datamodule_for(method, config)
    ids, scores = [], []
    with torch.no_grad():
        for batch in data.predict_loader("test"):
            logits = method.net.pixel_logits(batch["image"])  # (B, 1, H, W)
            scores.append(torch.sigmoid(logits).flatten(1).max(dim=1).values)
            ids += list(batch["image_id"])
    frame = pd.DataFrame({"image_id": ids, "score": torch.cat(scores).double().numpy()})
    test = data.frame[data.frame["split"] == "test"].merge(frame, on="image_id")
    assert len(test) == pooled["report"]["n"]
    s, y = test["score"].to_numpy(), test["label"].to_numpy(int)
    a = test["spurious"].to_numpy(float)
    boot = {"n_resamples": N_RESAMPLES, "seed": 0}
    got = pooled["report"]["poolings"]["max"]
    assert got["robust_auroc"] == pytest.approx(robust_auroc(s, y, a))
    assert got["auroc"] == pytest.approx(auroc(s, y))
    ci = bootstrap_ci(s, y, a, metric="robust_auroc", **boot)
    assert got["robust_auroc_ci"] == pytest.approx(list(ci))
    assert got["auroc_ci"] == pytest.approx(list(bootstrap_ci(s, y, metric="auroc", **boot)))
    assert not np.allclose(s, s[0]), "equal scores everywhere would prove nothing"


def test_markdown_has_one_row_per_pooling(pooled: dict[str, Any]) -> None:
    md = report_markdown(pooled["report"])
    assert "| pooling | robust AUROC [95 % CI] | AUROC [95 % CI] |" in md
    for name, m in pooled["report"]["poolings"].items():
        trained = " (trained)" if name == "topk:16" else ""
        assert f"| `{name}`{trained} | {m['robust_auroc']:.3f} [" in md
    assert "| pooling |" not in report_markdown(pooled["plain"])


def test_the_trained_pooling_is_added_when_not_listed(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "R.json"
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoints["seg"]), "--out", str(out),
            "--n-resamples", "20", "--accelerator", "cpu", "--pooling", "max"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["trained_pooling"] == "topk:16"
    assert list(report["poolings"]) == ["topk:16", "max"]
    assert report["poolings"]["topk:16"]["robust_auroc"] == report["robust_auroc"]
    stdout = capsys.readouterr().out
    assert "pooling topk:16: robust AUROC" in stdout and "(trained)" in stdout
    assert "pooling max: robust AUROC" in stdout
    assert "`max`" in (tmp_path / "R.md").read_text()


# ------------------------------------------------------------------------------ errors


def test_binary_checkpoint_with_pooling_is_an_error(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"pixel head \(bbox, seg, seg_spl, seg_ssl\); a 'binary'"):
        evaluate_checkpoint(tiny_checkpoints["binary"], tmp_path / "R.json", pooling="max")
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoints["binary"]),
            "--out", str(tmp_path / "R.json"), "--pooling", "max"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "spatialspec evaluate: error: pooling needs a model with a pixel head" in err
    assert "no pixel map to pool" in err
    assert not (tmp_path / "R.json").exists()


def test_bad_pooling_fails_before_the_checkpoint_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--checkpoint", str(tmp_path / "missing.ckpt"),
            "--out", str(tmp_path / "R.json"), "--pooling", "max,median"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bad pooling 'median'; valid forms: max, mean, topk:K" in err


def test_pooling_with_predictions_is_an_error(
    tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preds = tmp_path / "p.csv"
    preds.write_text("image_id,score\n")
    argv = ["evaluate", "--predictions", str(preds), "--manifest", str(tiny_synthetic),
            "--out", str(tmp_path / "R.json"), "--pooling", "max"]  # fmt: skip
    assert main(argv) == 2
    assert "--pooling works only with --checkpoint" in capsys.readouterr().err
