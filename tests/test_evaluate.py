"""Tests for spatialspec.evaluation.report: predictions CSV -> robust-AUROC report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from spatialspec.data import load_manifest
from spatialspec.evaluation import choose_threshold, evaluate_predictions, read_predictions
from spatialspec.evaluation.report import PredictionsError

REQUIRED_KEYS = {
    "split", "n", "n_positive", "n_negative", "auroc", "auroc_ci", "n_robust", "robust_auroc",
    "robust_auroc_ci", "threshold", "threshold_source", "accuracy", "worst_group_accuracy",
    "subgroups", "bootstrap", "metadata",
}  # fmt: skip
SUBGROUP_CELLS = {
    "positive_with_spurious": (1, 1),
    "positive_without_spurious": (1, 0),
    "negative_with_spurious": (0, 1),
    "negative_without_spurious": (0, 0),
}


@pytest.fixture(scope="module")
def manifest(tiny_synthetic: Path) -> pd.DataFrame:
    return load_manifest(tiny_synthetic)


def _write_predictions(path: Path, frame: pd.DataFrame, scores) -> Path:
    pd.DataFrame({"image_id": frame["image_id"], "score": scores}).to_csv(path, index=False)
    return path


def _evaluate(manifest_path: Path, preds: Path, out: Path | None = None, **kw) -> dict:
    return evaluate_predictions(manifest_path, preds, "test", out, n_resamples=200, **kw)


# ------------------------------------------------------------------------------- read_predictions


def test_read_predictions_keeps_extra_columns_and_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("image_id,score,split\n007,0.25,test\n8,1e-3,val\n")
    frame = read_predictions(path)
    assert frame["image_id"].tolist() == ["007", "8"]
    assert frame["score"].tolist() == [0.25, 0.001]
    assert frame["score"].dtype == float
    assert frame["split"].tolist() == ["test", "val"]


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("image_id,prob\na,0.5\n",
         ["missing column(s) ['score']", "found ['image_id', 'prob']"]),
        *[(f"image_id,score\na,0.1\nb,0.2\nc,{bad}\nd,0.4\n",
           ["score is not a finite number on line 4 (c)"]) for bad in ("abc", "NaN", "inf", "")],
        ("image_id,score\na,0.1\nb,0.2\na,0.3\n",
         ["duplicate image_id on line 2 (a), line 4 (a)"]),
    ],
    ids=["missing-column", "abc", "nan", "inf", "empty", "duplicate-ids"],
)  # fmt: skip
def test_read_predictions_errors_name_file_and_lines(
    tmp_path: Path, content: str, fragments: list[str]
) -> None:
    path = tmp_path / "preds.csv"
    path.write_text(content)
    with pytest.raises(PredictionsError) as err:
        read_predictions(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_read_predictions_lists_at_most_five_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "preds.csv"
    path.write_text("image_id,score\n" + "".join(f"x{i},abc\n" for i in range(7)))
    with pytest.raises(PredictionsError, match=re.escape("... and 2 more (7 rows in total)")):
        read_predictions(path)


def test_read_predictions_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PredictionsError, match=r"predictions file not found: .*nope\.csv"):
        read_predictions(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------- reports


def test_pure_shortcut_model_has_robust_auroc_zero(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    preds = _write_predictions(tmp_path / "p.csv", test, test["spurious"])
    report = _evaluate(tiny_synthetic, preds)
    assert report["robust_auroc"] == 0.0
    assert report["auroc"] == pytest.approx(roc_auc_score(test["label"], test["spurious"]))
    assert report["auroc"] == pytest.approx(0.9)  # 18/20 vs 2/20 spurious, ties count 1/2
    assert report["robust_auroc_ci"] == [0.0, 0.0]
    assert report["worst_group_accuracy"] == 0.0  # positives without the tube are all missed


def test_oracle_model_has_robust_auroc_one(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    preds = _write_predictions(tmp_path / "p.csv", test, test["label"].astype(float))
    report = _evaluate(tiny_synthetic, preds)
    assert report["robust_auroc"] == 1.0
    assert report["auroc"] == 1.0
    assert report["robust_auroc_ci"] == [1.0, 1.0]
    assert report["accuracy"] == 1.0


def test_robust_auroc_matches_sklearn_on_the_robust_subset(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    scores = np.random.default_rng(1).random(len(test)) + 0.3 * test["label"].to_numpy()
    preds = _write_predictions(tmp_path / "p.csv", test, scores)
    report = _evaluate(tiny_synthetic, preds)
    y, s = test["label"].to_numpy(), test["spurious"].to_numpy()
    robust = ((y == 1) & (s == 0)) | ((y == 0) & (s == 1))
    assert robust.sum() == report["n_robust"] == 4
    assert report["robust_auroc"] == pytest.approx(roc_auc_score(y[robust], scores[robust]))
    assert report["auroc"] == pytest.approx(roc_auc_score(y, scores))
    for key in ("robust_auroc", "auroc"):
        lo, hi = report[f"{key}_ci"]
        assert isinstance(lo, float) and isinstance(hi, float)
        assert lo <= report[key] <= hi


def test_subgroup_counts_equal_manifest_counts(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    scores = np.linspace(0, 1, len(test))
    report = _evaluate(tiny_synthetic, _write_predictions(tmp_path / "p.csv", test, scores))
    assert report["n"] == 40
    assert report["n_positive"] == int(test["label"].sum()) == 20
    assert report["n_negative"] == 20
    assert set(report["subgroups"]) == set(SUBGROUP_CELLS)
    for name, (y, s) in SUBGROUP_CELLS.items():
        cell = (test["label"] == y) & (test["spurious"] == s)
        group = report["subgroups"][name]
        assert group["n"] == int(cell.sum()), name
        assert (group["label"], group["spurious"]) == (y, s)
        assert group["mean_score"] == pytest.approx(scores[cell.to_numpy()].mean())
    assert sum(g["n"] for g in report["subgroups"].values()) == 40


def test_threshold_from_val_youden(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    val = manifest[manifest["split"] == "val"]
    test = manifest[manifest["split"] == "test"]
    rng = np.random.default_rng(2)
    # val is separable: every threshold in (0.4, 0.6] has J = 1; the first is the lowest positive
    val_scores = np.where(
        val["label"] == 1, rng.uniform(0.6, 0.9, len(val)), rng.uniform(0.1, 0.4, len(val))
    )
    test_scores = rng.random(len(test))
    frame = pd.concat(
        [
            pd.DataFrame({"image_id": val["image_id"], "score": val_scores}),
            pd.DataFrame({"image_id": test["image_id"], "score": test_scores}),
        ]
    )
    preds = tmp_path / "p.csv"
    frame.to_csv(preds, index=False)
    report = _evaluate(tiny_synthetic, preds)
    expected = val_scores[val["label"].to_numpy() == 1].min()
    assert report["threshold"] == pytest.approx(expected)
    assert report["threshold"] == pytest.approx(choose_threshold(val_scores, val["label"]))
    assert report["threshold_source"] == "val, Youden's J (24 images)"
    predicted = (test_scores >= report["threshold"]).astype(int)
    assert report["accuracy"] == pytest.approx((predicted == test["label"].to_numpy()).mean())


def test_choose_threshold_youden_on_overlapping_scores() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 1, 0, 0, 1, 1, 1])
    # J at >= 0.6: TPR 3/4, FPR 0 -> 0.75; at >= 0.3: TPR 1, FPR 2/4 -> 0.5
    assert choose_threshold(scores, labels) == 0.6


def test_fixed_threshold_without_val_rows(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    scores = np.linspace(0.01, 0.99, len(test))
    report = _evaluate(tiny_synthetic, _write_predictions(tmp_path / "p.csv", test, scores))
    assert report["threshold"] == 0.5
    assert report["threshold_source"] == "fixed 0.5 (no val predictions)"
    predicted = (scores >= 0.5).astype(int)
    assert report["accuracy"] == pytest.approx((predicted == test["label"].to_numpy()).mean())


def test_missing_test_predictions_are_listed(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    partial = test.iloc[3:]
    preds = _write_predictions(tmp_path / "p.csv", partial, np.zeros(len(partial)))
    with pytest.raises(PredictionsError) as err:
        _evaluate(tiny_synthetic, preds)
    message = str(err.value)
    assert str(preds) in message
    missing = ", ".join(test["image_id"].iloc[:3])
    assert f"3 of 40 test images have no prediction: {missing}" in message


def test_report_json_is_written_atomically_with_required_keys(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    preds = _write_predictions(tmp_path / "p.csv", test, np.linspace(0, 1, len(test)))
    out = tmp_path / "reports" / "report.json"
    report = _evaluate(tiny_synthetic, preds, out, extra={"note": "unit test"})
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]  # no temp files left
    saved = json.loads(out.read_text())
    assert set(saved) >= REQUIRED_KEYS
    assert saved["robust_auroc"] == report["robust_auroc"]
    for key in ("robust_auroc", "auroc"):
        ci = saved[f"{key}_ci"]
        assert len(ci) == 2 and all(isinstance(v, float) for v in ci)
        assert ci[0] <= saved[key] <= ci[1]
    assert saved["n"] == 40
    assert saved["split"] == "test"
    assert set(saved["subgroups"]) == set(SUBGROUP_CELLS)
    assert isinstance(saved["threshold"], float)
    assert saved["bootstrap"]["n_resamples"] == 200
    meta = saved["metadata"]
    assert "git_commit" in meta
    assert meta["versions"]["torch"]
    assert meta["versions"]["numpy"]
    assert meta["manifest"] == str(tiny_synthetic.resolve())
    assert meta["predictions"] == str(preds.resolve())
    assert meta["note"] == "unit test"


def test_bootstrap_seed_is_reproducible(
    tiny_synthetic: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    test = manifest[manifest["split"] == "test"]
    scores = np.random.default_rng(3).random(len(test))
    preds = _write_predictions(tmp_path / "p.csv", test, scores)
    a = _evaluate(tiny_synthetic, preds, seed=4)
    b = _evaluate(tiny_synthetic, preds, seed=4)
    assert a["auroc_ci"] == b["auroc_ci"]
    assert a["robust_auroc_ci"] == b["robust_auroc_ci"]
