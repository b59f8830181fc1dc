"""Tests for spatialspec.evaluation.compare: reports side by side with paired differences."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from spatialspec.data.io import write_png
from spatialspec.data.manifest import write_manifest
from spatialspec.evaluation.compare import (
    CompareError,
    add_compare_parser,
    compare_html,
    compare_markdown,
    compare_reports,
    format_diff,
    load_report,
    run_compare,
    write_compare,
)
from spatialspec.evaluation.report import evaluate_predictions
from spatialspec.metrics import robust_auroc

N_TEST, N_VAL = 400, 40
BOOT = {"n_resamples": 300, "seed": 0}


def _frame(n: int, split: str, prefix: str, rng: np.random.Generator) -> pd.DataFrame:
    labels = np.repeat([1, 0], n // 2)
    agree = rng.random(n) < 0.8  # the spurious attribute agrees with the label 80 % of the time
    return pd.DataFrame({
        "image_id": [f"{prefix}{k:04d}" for k in range(n)],
        "image_path": "img.png",
        "label": labels,
        "split": split,
        "spurious": np.where(agree, labels, 1 - labels),
        "mask_path": "",
        "mask_available": 0,
    })  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A manifest (400 test + 40 val images) and two score sets: informative A, noise B."""
    root = tmp_path_factory.mktemp("compare")
    write_png(root / "img.png", np.zeros((4, 4), np.float32))
    rng = np.random.default_rng(7)
    frame = pd.concat([_frame(N_TEST, "test", "t", rng), _frame(N_VAL, "val", "v", rng)])
    frame = frame.reset_index(drop=True)
    write_manifest(frame, root / "manifest.csv")
    scores = {
        "A": frame["label"].to_numpy() + rng.normal(0.0, 0.55, len(frame)),
        "B": rng.random(len(frame)),
    }
    return {"manifest": root / "manifest.csv", "frame": frame, "scores": scores}


def _report(
    folder: Path, stem: str, bench: dict, scores: np.ndarray, manifest: Path | None = None, **extra
) -> Path:
    """Write ``<stem>.predictions.csv`` and the ``<stem>.json`` evaluate_predictions makes."""
    folder.mkdir(parents=True, exist_ok=True)
    preds = folder / f"{stem}.predictions.csv"
    frame = bench["frame"]
    pd.DataFrame({"image_id": frame["image_id"], "score": scores}).to_csv(preds, index=False)
    out = folder / f"{stem}.json"
    evaluate_predictions(
        manifest or bench["manifest"], preds, "test", out, n_resamples=100, extra=extra or None
    )
    return out


def _test_rows(bench: dict, ids: list[str] | None = None) -> pd.DataFrame:
    frame = bench["frame"].assign(A=bench["scores"]["A"], B=bench["scores"]["B"])
    test = frame[frame["split"] == "test"]
    return test if ids is None else test[test["image_id"].isin(ids)]


@pytest.fixture
def ab(tmp_path: Path, bench: dict) -> tuple[Path, Path]:
    return (
        _report(tmp_path, "a", bench, bench["scores"]["A"]),
        _report(tmp_path, "b", bench, bench["scores"]["B"]),
    )


# ------------------------------------------------------------------------------- differences


def test_difference_matches_metrics_on_shared_images(ab: tuple[Path, Path], bench: dict) -> None:
    result = compare_reports([ab[1], ab[0]], names=["noise", "informative"], **BOOT)
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"]) == ("informative", "noise")  # A − B = later − earlier
    assert (pair["n_shared"], pair["n_only_a"], pair["n_only_b"]) == (N_TEST, 0, 0)
    test = _test_rows(bench)
    y, s = test["label"].to_numpy(), test["spurious"].to_numpy(float)
    expected = {
        "auroc": roc_auc_score(y, test["A"]) - roc_auc_score(y, test["B"]),
        "robust_auroc": robust_auroc(test["A"], y, s) - robust_auroc(test["B"], y, s),
    }
    assert roc_auc_score(y, test["A"]) == pytest.approx(0.9, abs=0.04)
    for metric, value in expected.items():
        entry = pair[metric]
        assert entry["diff"] == pytest.approx(value, abs=1e-12)
        assert entry["ci"][0] < value < entry["ci"][1]
        assert entry["ci"][0] > 0 and entry["excludes_zero"]
    assert pair["robust_auroc"]["n"] == result["reports"][0]["n_robust"]
    assert [r["name"] for r in result["reports"]] == ["noise", "informative"]
    assert result["reports"][1]["auroc"] == pytest.approx(roc_auc_score(y, test["A"]))


def test_identical_scores_give_zero_difference(tmp_path: Path, bench: dict) -> None:
    one = _report(tmp_path / "one", "r", bench, bench["scores"]["A"])
    two = _report(tmp_path / "two", "r", bench, bench["scores"]["A"])
    (pair,) = compare_reports([one, two], **BOOT)["pairs"]
    assert (pair["a"], pair["b"]) == ("two/r", "one/r")  # same stem: folder/stem
    for metric in ("auroc", "robust_auroc"):
        assert pair[metric]["diff"] == 0.0
        assert pair[metric]["ci"] == [0.0, 0.0]
        assert pair[metric]["excludes_zero"] is False
        assert format_diff(pair[metric]) == "+0.000 [0.000, 0.000]"


def test_swapping_the_order_flips_the_sign(ab: tuple[Path, Path]) -> None:
    forward = compare_reports(list(ab), **BOOT)["pairs"][0]
    backward = compare_reports(list(ab[::-1]), **BOOT)["pairs"][0]
    assert (forward["a"], forward["b"]) == (backward["b"], backward["a"]) == ("b", "a")
    for metric in ("auroc", "robust_auroc"):
        f, b = forward[metric], backward[metric]
        assert f["diff"] == pytest.approx(-b["diff"])
        assert f["ci"] == pytest.approx([-b["ci"][1], -b["ci"][0]])
        assert f["diff"] < 0 < b["diff"]


def test_partially_shared_images_edited_predictions(ab: tuple[Path, Path], bench: dict) -> None:
    preds = ab[1].with_name("b.predictions.csv")
    frame = pd.read_csv(preds, dtype={"image_id": str})
    dropped = set(_test_rows(bench)["image_id"][::8])  # 50 test images
    frame[~frame["image_id"].isin(dropped)].to_csv(preds, index=False)
    (pair,) = compare_reports(list(ab), **BOOT)["pairs"]
    assert (pair["n_shared"], pair["n_only_a"], pair["n_only_b"]) == (350, 0, 50)
    shared = _test_rows(bench).query("image_id not in @dropped")
    y = shared["label"].to_numpy()
    expected = roc_auc_score(y, shared["B"]) - roc_auc_score(y, shared["A"])
    assert pair["auroc"]["diff"] == pytest.approx(expected, abs=1e-12)
    assert "| 350 | 0 / 50 |" in compare_markdown(compare_reports(list(ab), **BOOT))


def test_partially_shared_images_manifest_subset(tmp_path: Path, bench: dict) -> None:
    a = _report(tmp_path, "a", bench, bench["scores"]["A"])
    subset = bench["frame"].drop(index=range(0, N_TEST, 4))  # keeps 300 test + all val
    write_manifest(subset, tmp_path / "sub" / "manifest.csv")
    write_png(tmp_path / "sub" / "img.png", np.zeros((4, 4), np.float32))
    b = _report(tmp_path, "b", bench, bench["scores"]["B"], manifest=tmp_path / "sub/manifest.csv")
    (pair,) = compare_reports([a, b], **BOOT)["pairs"]
    assert (pair["n_shared"], pair["n_only_a"], pair["n_only_b"]) == (300, 0, 100)


def test_nothing_shared_is_refused(tmp_path: Path, bench: dict) -> None:
    a = _report(tmp_path, "a", bench, bench["scores"]["A"])
    b = _report(tmp_path, "b", bench, bench["scores"]["B"])
    preds = b.with_name("b.predictions.csv")
    frame = pd.read_csv(preds, dtype={"image_id": str})
    frame[frame["image_id"].str.startswith("v")].to_csv(preds, index=False)  # val rows only
    with pytest.raises(CompareError, match="share no scored images"):
        compare_reports([a, b], **BOOT)


# ------------------------------------------------------------------------------- errors


def test_mismatched_labels_error(tmp_path: Path, bench: dict) -> None:
    a = _report(tmp_path, "a", bench, bench["scores"]["A"])
    flipped = bench["frame"].copy()
    flipped.loc[[0, 1, 2], "label"] = 1 - flipped.loc[[0, 1, 2], "label"]
    write_manifest(flipped, tmp_path / "flip" / "manifest.csv")
    write_png(tmp_path / "flip" / "img.png", np.zeros((4, 4), np.float32))
    b = _report(tmp_path, "b", bench, bench["scores"]["B"], manifest=tmp_path / "flip/manifest.csv")
    with pytest.raises(CompareError, match=r"disagree on label for 3 shared image\(s\): t0000"):
        compare_reports([a, b], **BOOT)


def test_fewer_than_two_reports_error(ab: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"at least 2 reports.*got 1"):
        compare_reports([ab[0]])
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", str(ab[0]), "--out", str(tmp_path / "c.md")])


def test_missing_predictions_file_error_names_it(ab: tuple[Path, Path]) -> None:
    preds = ab[1].with_name("b.predictions.csv")
    preds.unlink()
    with pytest.raises(CompareError, match="predictions file not found") as err:
        compare_reports(list(ab))
    assert str(preds) in str(err.value) and str(ab[1]) in str(err.value)


def test_predictions_found_beside_the_report(ab: tuple[Path, Path]) -> None:
    report = json.loads(ab[0].read_text())
    report["metadata"]["predictions"] = "/nowhere/moved.csv"
    ab[0].write_text(json.dumps(report))
    loaded = load_report(ab[0])
    assert loaded["predictions_path"] == ab[0].with_name("a.predictions.csv")
    assert len(loaded["predictions"]) == N_TEST + N_VAL


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "report not found"), ("{not json", "not a readable JSON report"),
     ('{"split": "test"}', "missing field(s)")],
    ids=["missing", "malformed", "not-a-report"],
)  # fmt: skip
def test_bad_report_errors_name_the_file(
    ab: tuple[Path, Path], tmp_path: Path, content: str | None, fragment: str
) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(CompareError) as err:
        compare_reports([ab[0], bad])
    assert fragment in str(err.value) and str(bad) in str(err.value)


def test_malformed_predictions_error_names_the_file(ab: tuple[Path, Path]) -> None:
    preds = ab[0].with_name("a.predictions.csv")
    preds.write_text("image_id,prob\nt0000,0.5\n")
    with pytest.raises(CompareError, match="missing column") as err:
        load_report(ab[0])
    assert str(preds) in str(err.value)


def test_bad_names_error(ab: tuple[Path, Path]) -> None:
    with pytest.raises(CompareError, match="1 name"):
        compare_reports(list(ab), names=["x"])
    with pytest.raises(CompareError, match="unique"):
        compare_reports(list(ab), names=["x", "x"])


# ------------------------------------------------------------------------------- names + output


def test_default_names_method_then_seed(tmp_path: Path, bench: dict) -> None:
    scores = bench["scores"]
    seg = _report(tmp_path, "r1", bench, scores["A"], method="seg", seed=0)
    binary = _report(tmp_path, "r2", bench, scores["B"], method="binary", seed=0)
    seg1 = _report(tmp_path, "r3", bench, scores["B"], method="seg", seed=1)
    names = lambda paths: [r["name"] for r in compare_reports(paths, **BOOT)["reports"]]  # noqa: E731
    assert names([binary, seg]) == ["binary", "seg"]
    assert names([seg, seg1]) == ["seg (seed 0)", "seg (seed 1)"]


def test_markdown_html_and_written_files(ab: tuple[Path, Path], tmp_path: Path) -> None:
    result = compare_reports(list(ab[::-1]), names=["binary", "<b>x</b>"], **BOOT)
    pair = result["pairs"][0]
    diff = format_diff(pair["robust_auroc"])
    assert diff.startswith("+0.") and diff.endswith(" *")
    md = compare_markdown(result)
    assert f"| <b>x</b> − binary | {diff} | {format_diff(pair['auroc'])} | 400 | 0 / 0 |" in md
    assert "| binary | test | 400 |" in md and "paired bootstrap" in md
    page = compare_html(result)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "&lt;b&gt;x&lt;/b&gt; − binary" in page and "<b>x</b>" not in page
    assert diff in page and "binary" in page
    assert "http" not in page  # standalone: no external assets
    paths = write_compare(result, tmp_path / "out" / "compare.md")
    assert [p.name for p in paths] == ["compare.md", "compare.html", "compare.json"]
    assert paths[0].read_text(encoding="utf-8") == md
    saved = json.loads(paths[2].read_text())
    assert saved["pairs"][0]["auroc"]["diff"] == pytest.approx(pair["auroc"]["diff"])


def test_run_compare_prints_pairs_and_paths(
    ab: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cmp.md"
    args = parser.parse_args(
        ["compare", *map(str, ab), "--out", str(out), "--names", "x, y", "--n-resamples", "200"]
    )
    run_compare(args)
    printed = capsys.readouterr().out
    assert "y − x: robust AUROC -0." in printed and "AUROC -0." in printed
    assert "(n shared 400)" in printed and str(out) in printed
    assert out.with_suffix(".html").is_file() and out.with_suffix(".json").is_file()


# ------------------------------------------------------------------------------- seed groups


def _seed_runs(root: Path, bench: dict, method: str, effect: float, seeds=(0, 1, 2)) -> None:
    """Reports ``root/<method>/seed-<s>/report.json`` whose scores vary with the seed."""
    labels = bench["frame"]["label"].to_numpy()
    for s in seeds:
        rng = np.random.default_rng(100 + s + 10 * len(method))
        scores = (effect + 0.3 * s) * labels + rng.normal(0.0, 1.0, labels.size)
        folder = root / method / f"seed-{s}"
        out = _report(folder, "report", bench, scores, method=method, seed=s)
        assert out.is_file()


def test_name_glob_groups_give_seed_aware_pairs(
    tmp_path: Path, bench: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_runs(tmp_path, bench, "seg", 1.5)
    _seed_runs(tmp_path, bench, "bbox", 0.5)
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cmp.md"
    args = parser.parse_args([
        "compare", f"bbox={tmp_path}/bbox/seed-*/report.json",
        f"seg={tmp_path}/seg/seed-*/report.json", "--out", str(out), "--n-resamples", "300",
    ])  # fmt: skip
    run_compare(args)
    printed = capsys.readouterr().out
    assert "seg − bbox: robust AUROC +" in printed and "A>B in 3/3 seed pairs" in printed
    saved = json.loads(out.with_suffix(".json").read_text())
    pair = saved["pairs"][0]
    assert (pair["a"], pair["b"]) == ("seg", "bbox")
    test = bench["frame"]["split"].to_numpy() == "test"
    labels, spurious = bench["frame"]["label"].to_numpy()[test], bench["frame"]["spurious"][test]

    def values(method: str) -> list[float]:
        out = []
        for s in (0, 1, 2):
            pred = pd.read_csv(tmp_path / method / f"seed-{s}" / "report.predictions.csv")
            out.append(robust_auroc(pred["score"].to_numpy()[test], labels, spurious))
        return out

    seg, bbox = values("seg"), values("bbox")
    rob = pair["robust_auroc"]
    assert rob["n_runs_a"] == rob["n_runs_b"] == 3 and rob["seed_pairing"] == "matched"
    assert rob["per_seed_diffs"] == pytest.approx([a - b for a, b in zip(seg, bbox, strict=True)])
    assert rob["diff"] == pytest.approx(np.mean(seg) - np.mean(bbox))
    assert rob["a_wins"] == 3 and rob["excludes_zero"] is True
    assert rob["ci"][0] <= rob["diff"] <= rob["ci"][1]
    row = {r["name"]: r for r in saved["reports"]}["seg"]
    assert row["n_runs"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["robust_auroc"] == pytest.approx(np.mean(seg))
    assert row["robust_auroc_runs"] == pytest.approx(seg)
    md = out.read_text()
    assert "two-level bootstrap" in md and "| seg − bbox |" in md and "3/3" in md


def test_seed_groups_widen_the_interval(tmp_path: Path, bench: dict) -> None:
    """The same seed-0 pair, alone and inside 3-seed groups whose seeds disagree."""
    _seed_runs(tmp_path, bench, "seg", 1.0)
    _seed_runs(tmp_path, bench, "bbox", 1.0)
    single = compare_reports([tmp_path / "bbox/seed-0/report.json",
                              tmp_path / "seg/seed-0/report.json"], **BOOT)  # fmt: skip
    groups = [sorted((tmp_path / m).glob("seed-*/report.json")) for m in ("bbox", "seg")]
    grouped = compare_reports(groups, names=["bbox", "seg"], **BOOT)
    width = lambda r: np.diff(r["pairs"][0]["auroc"]["ci"])[0]  # noqa: E731
    assert grouped["bootstrap"]["seed_level"] and not single["bootstrap"]["seed_level"]
    assert width(grouped) > width(single)


def test_name_glob_that_matches_nothing_is_named(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["compare", f"seg={tmp_path}/nope/*.json", f"x={tmp_path}/*.json", "--out", "x.md"]
    )
    with pytest.raises(CompareError, match=r"seg=.*nope.*no report file matches"):
        run_compare(args)
