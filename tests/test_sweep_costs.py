"""Robust AUROC per annotation hour: costs, the counts a fit records, the summary and its chart."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from spatialspec.annotations import count_annotations, pixel_kind
from spatialspec.sweep import add_sweep_parser, run_sweep, run_sweep_cli
from spatialspec.sweep.config import SweepConfig, load_config, merge
from spatialspec.sweep.costs import (
    DEFAULT_COSTS,
    annotation_seconds,
    parse_costs,
    resolve_costs,
    run_annotations,
)
from spatialspec.sweep.folder import planned_runs, read_sweep
from spatialspec.sweep.plot_cost import COST_CHART, plot_cost
from spatialspec.sweep.summary import collect_summary, summary_markdown

SEG = Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "seg.yaml"
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.filterwarnings("ignore:Experiment logs directory")


# ------------------------------------------------------------------------------------- costs


def test_costs_parse_merge_with_defaults_and_price_counts() -> None:
    assert parse_costs("mask=60, box=7.5,attribute=2,label=1") == {
        "mask": 60.0, "box": 7.5, "attribute": 2.0, "label": 1.0,
    }  # fmt: skip
    assert parse_costs({"mask": 120}) == {"mask": 120.0}
    assert parse_costs(None) == {} and parse_costs("") == {}
    assert resolve_costs({"mask": 60}, {"box": 0}) == {**DEFAULT_COSTS, "mask": 60.0, "box": 0.0}
    counts = {"label": 72, "mask": 6, "box": 0, "attribute": 3}
    costs = {"label": 1.0, "mask": 60.0, "box": 7.0, "attribute": 2.0}
    assert annotation_seconds(counts, costs) == 72 + 6 * 60 + 3 * 2
    assert np.isnan(annotation_seconds(None, costs))
    assert np.isnan(annotation_seconds({"label": 3}, costs))  # a missing kind is unknown, not 0


@pytest.mark.parametrize(
    ("text", "message"),
    [("mask=abc", r"'mask=abc': seconds must be a number"),
     ("polygon=5", r"'polygon=5': unknown annotation kind 'polygon'"),
     ("mask=60,box", r"'box': expected KIND=SECONDS"),
     ("box=-1", r"'box=-1': seconds must be a finite number >= 0"),
     ("label=inf", r"'label=inf': seconds must be a finite")],
)  # fmt: skip
def test_bad_costs_name_the_item(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^--costs: {message}"):
        parse_costs(text)


def test_costs_from_a_sweep_config_then_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("fit_config: fit.yaml\ncosts: {mask: 300, box: 20}\n")
    config = load_config(path)
    assert config.costs == {"mask": 300.0, "box": 20.0}
    config = merge(config, {"costs": "box=9"}, "command line")
    assert config.costs == {"mask": 300.0, "box": 9.0}  # the flag adds to the file, kind by kind
    path.write_text("fit_config: fit.yaml\ncosts: {mask: lots}\n")
    with pytest.raises(ValueError, match=rf"{path}: costs: 'mask: lots': seconds must be"):
        load_config(path)
    with pytest.raises(ValueError, match=r"--costs: 'pixel=1': unknown annotation kind"):
        merge(SweepConfig(), {"costs": "pixel=1"}, "command line")


# ------------------------------------------------------------------------ counting (no fits)


def _frame() -> pd.DataFrame:
    """8 train rows (4 positives, 3 with a mask; 2 negatives with a known-empty one; 5 with a
    known attribute), 4 val rows (2 positives with masks; 3 known attributes), 2 test rows."""
    nan = np.nan
    rows = [
        ("train", 1, 1, 1.0), ("train", 1, 1, 0.0), ("train", 1, 1, nan), ("train", 1, 0, 1.0),
        ("train", 0, 1, 0.0), ("train", 0, 1, nan), ("train", 0, 0, 1.0), ("train", 0, 0, nan),
        ("val", 1, 1, 1.0), ("val", 1, 1, nan), ("val", 0, 1, 0.0), ("val", 0, 0, 1.0),
        ("test", 1, 1, 1.0), ("test", 0, 1, 0.0),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["split", "label", "mask_available", "spurious"])


def test_counts_per_kind_follow_level_attributes_and_monitor() -> None:
    frame = _frame()
    seg = count_annotations(frame, specificity="mask")
    assert {k: seg[k] for k in ("label", "mask", "box", "attribute")} == {
        "label": 12, "mask": 3, "box": 0, "attribute": 0,
    }  # fmt: skip
    assert seg["train"]["empty_targets"] == 2 and seg["val"] == {
        "label": 4, "mask": 0, "box": 0, "attribute": 0,
    }  # fmt: skip
    binary = count_annotations(frame, specificity=None)
    assert (binary["mask"], binary["box"], binary["train"]["empty_targets"]) == (0, 0, 0)
    assert count_annotations(frame, specificity="box")["box"] == 3
    assert [pixel_kind(s) for s in ("dilate:4", "grid:2", "image", None)] == [
        "mask", "box", None, None,
    ]  # fmt: skip
    image = count_annotations(frame, specificity="image")
    assert (image["mask"], image["box"]) == (0, 0)
    assert count_annotations(frame, specificity=None, attribute_split="train")["attribute"] == 5
    dfr = count_annotations(frame, specificity=None, attribute_split="val")
    assert (dfr["attribute"], dfr["train"]["attribute"], dfr["val"]["attribute"]) == (3, 0, 3)
    robust = count_annotations(frame, specificity="mask", monitor="val/robust_auroc")
    assert (robust["attribute"], robust["mask"]) == (3, 3)
    budgeted = frame.copy()  # dfr's attribute budget kept 1 of val's 3; selection reads all 3
    budgeted.loc[[8, 10], "spurious"] = np.nan
    dfr = count_annotations(budgeted, specificity=None, attribute_split="val", metric_frame=frame)
    assert dfr["val"]["attribute"] == 1
    dfr = count_annotations(budgeted, specificity=None, attribute_split="val",
                            monitor="val/robust_auroc", metric_frame=frame)  # fmt: skip
    assert dfr["val"]["attribute"] == 3
    loss = count_annotations(frame, specificity="mask", monitor="val/loss")
    assert (loss["mask"], loss["val"]["mask"], loss["attribute"]) == (5, 2, 0)


# --------------------------------------------------------------------- a tiny real sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, quick_fit_args: list[str]) -> dict[str, Any]:
    """binary, seg at a 25 % mask budget and groupdro at a 25 % attribute budget, seed 1,
    priced at mask=60 s (3 fits)."""
    out = tmp_path_factory.mktemp("costs")
    frame = run_sweep(SEG, "25%", "binary,seg,groupdro", "1", out, overrides=quick_fit_args,
                      progress=False, n_resamples=50, costs={"mask": 60})  # fmt: skip
    return {"out": out, "frame": frame, "args": quick_fit_args}


def test_run_json_records_what_training_consumed(swept: dict[str, Any]) -> None:
    """Tiny benchmark: 48 train rows (24 positives, 24 negatives, all with known pixel
    annotations), 24 val rows; 25 % of 24 positives = 6 masks, and 6 negatives keep theirs."""
    runs = swept["out"] / "runs"
    seg = json.loads((runs / "seg/budget-0.25/seed-1/run.json").read_text())["annotations"]
    assert {k: seg[k] for k in ("label", "mask", "box", "attribute")} == {
        "label": 48 + 24, "mask": 6, "box": 0, "attribute": 0,
    }  # fmt: skip
    assert seg["train"]["empty_targets"] == 6 and seg["val"]["label"] == 24
    assert (seg["pixel_kind"], seg["attribute_split"], seg["monitor"]) == (
        "mask",
        None,
        "val/auroc",
    )
    binary = json.loads((runs / "binary/seed-1/run.json").read_text())["annotations"]
    assert (binary["label"], binary["mask"], binary["train"]["empty_targets"]) == (72, 0, 0)
    assert binary["pixel_kind"] is None
    # groupdro: 25 % of the 48 known train attributes (the synthetic benchmark knows them all)
    dro = json.loads((runs / "groupdro/budget-0.25/seed-1/run.json").read_text())["annotations"]
    assert (dro["label"], dro["mask"], dro["attribute"], dro["val"]["attribute"]) == (72, 0, 12, 0)
    assert dro["attribute_split"] == "train"


def test_summary_csv_md_and_chart_price_the_counts(swept: dict[str, Any]) -> None:
    out = swept["out"]
    csv = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""]).set_index(
        "method"
    )
    assert csv.loc["seg", "annotation_seconds"] == pytest.approx(72 * 1 + 6 * 60)
    assert csv.loc["binary", "annotation_seconds"] == pytest.approx(72)
    assert csv.loc["groupdro", "annotation_seconds"] == pytest.approx(72 + 12 * 1)
    assert (csv.loc["groupdro", "n_masks"], csv.loc["groupdro", "attribute_images"]) == (0, 12)
    assert (csv.loc["seg", "mask_images"], csv.loc["seg", "label_images"]) == (6, 72)
    assert set(csv["annotation_source"]) == {"run.json"}
    assert json.loads((out / "sweep.json").read_text())["costs"] == {**DEFAULT_COSTS, "mask": 60}
    md = (out / "summary.md").read_text()
    assert "## Robust AUROC per annotation hour" in md and "mask 60 s" in md
    assert "| seg | 0.25 | 72 | 6 | 0 | 0 | 0.12 |" in md  # (72 + 360) s = 0.12 h
    assert "| binary | - | 72 | 0 | 0 | 0 | 0.02 |" in md
    assert "- `mask`: set for this sweep." in md and "Extreme Clicking" in md
    assert (out / COST_CHART).read_bytes()[:8] == PNG


def test_collect_reprices_a_finished_sweep(swept: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(swept["out"], out)
    parser = argparse.ArgumentParser()
    add_sweep_parser(parser.add_subparsers(dest="command"))
    assert run_sweep_cli(parser.parse_args(["sweep", "--out", str(out), "--collect",
                                            "--costs", "label=2"])) == 0  # fmt: skip
    csv = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("method")
    assert csv.loc["seg", "annotation_seconds"] == pytest.approx(72 * 2 + 6 * 60)  # mask kept
    costs = json.loads((out / "sweep.json").read_text())["costs"]
    assert (costs["label"], costs["mask"]) == (2.0, 60.0)
    bad = parser.parse_args(["sweep", "--out", str(out), "--collect", "--costs", "mask=abc"])
    assert run_sweep_cli(bad) == 2
    # other costs do not refuse the folder (they are no fit setting); nothing is refitted
    frame = run_sweep(SEG, "25%", "binary,seg,groupdro", "1", out, overrides=swept["args"],
                      progress=False, n_resamples=50, costs={"box": 1})  # fmt: skip
    assert frame.set_index("method").loc["seg", "annotation_seconds"] == pytest.approx(144 + 360)
    history = json.loads((out / "sweep.json").read_text())["invocations"]
    assert [h["runs_run"] for h in history] == [3, 0]


def test_old_runs_are_rebuilt_from_their_config_or_marked_unknown(
    swept: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(swept["out"], out)
    for run in ("seg/budget-0.25/seed-1", "binary/seed-1"):  # as written before this change
        path = out / "runs" / run / "run.json"
        info = json.loads(path.read_text())
        del info["annotations"]
        path.write_text(json.dumps(info))
    seg_dir = out / "runs/seg/budget-0.25/seed-1"
    counts, source = run_annotations(seg_dir)
    assert source == "reconstructed" and (counts["label"], counts["mask"]) == (72, 6)
    config = yaml.safe_load((out / "runs/binary/seed-1/config.yaml").read_text())
    config["data"]["manifest"] = str(tmp_path / "moved" / "manifest.csv")
    (out / "runs/binary/seed-1/config.yaml").write_text(yaml.safe_dump(config))
    info = read_sweep(out)
    frame = collect_summary(out, planned_runs(info), {"mask": 60}).set_index("method")
    assert frame.loc["seg", "annotation_source"] == "reconstructed"
    assert frame.loc["seg", "annotation_seconds"] == pytest.approx(72 + 6 * 60)
    assert frame.loc["binary", "annotation_source"].startswith("unknown: FileNotFoundError")
    assert np.isnan(frame.loc["binary", "annotation_seconds"])
    assert pd.isna(frame.loc["binary", "label_images"])  # never a silent 0
    md = summary_markdown(frame.reset_index(), {**info, "costs": {"mask": 60}})
    assert "1 run(s) predate `run.json`'s `annotations`" in md
    assert "**1 run(s) with unknown annotation counts**" in md and "binary/seed-1" in md


def test_chart_with_a_group_that_consumed_nothing(tmp_path: Path) -> None:
    table = pd.DataFrame({
        "method": ["binary", "seg", "seg"], "budget": ["-", "0", "all"],
        "annotation_seconds": [0.0, 0.0, 7200.0], "robust_auroc_mean": [0.1, 0.2, 0.8],
        "robust_auroc_lo": [0.0, 0.1, np.nan], "robust_auroc_hi": [0.2, 0.3, np.nan],
    })  # fmt: skip
    assert plot_cost(table, tmp_path / "c.png").read_bytes()[:8] == PNG  # symlog: 0 hours
    assert plot_cost(table.iloc[:0], tmp_path / "e.png").read_bytes()[:8] == PNG
