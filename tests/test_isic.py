"""Tests for the ISIC 2018 + trap-set builder (spatialspec.data.isic)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from isic_fakes import (
    CAPITAL_MASK_INDEX,
    EXPECTED_SPURIOUS,
    image_ids,
    image_size,
    make_isic_tree,
    write_image,
)
from PIL import Image

from spatialspec.data.isic import (
    ARTIFACTS,
    IMAGE_DIR,
    MASK_DIR,
    ISICError,
    artifact_association,
    prepare_isic,
    read_trap_sets,
    select_spurious,
)
from spatialspec.data.manifest import REQUIRED_COLUMNS, load_manifest

N = 40
#: Rows per split of seed 1 on the default tree (10 test images, 6 of the 30 others in val).
SPLIT_SIZES = {"train": 24, "val": 6, "test": 10}
IDS = image_ids(N)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh fake tree per test (about 30 ms), so tests may damage it."""
    return make_isic_tree(tmp_path, n=N)


def _prepare(tree: tuple[Path, Path], out: Path, **kwargs) -> dict:
    root, trap_dir = tree
    return prepare_isic(root, trap_dir, kwargs.pop("seed", 1), out, progress=False, **kwargs)


def _edit_csv(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite a trap-set CSV (as strings), keeping its unnamed index column."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).rename(columns={"Unnamed: 0": ""}).to_csv(path, index=False)


# --------------------------------------------------------------------------- happy path


def test_prepare_writes_a_valid_manifest(tree: tuple[Path, Path], tmp_path: Path) -> None:
    summary = _prepare(tree, tmp_path / "out")
    manifest = load_manifest(tmp_path / "out" / "manifest.csv")
    assert list(manifest.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert {*ARTIFACTS, "label_string", "source_id"} <= set(manifest.columns)
    assert manifest["split"].value_counts().to_dict() == SPLIT_SIZES
    assert manifest["image_id"].is_unique and len(manifest) == N == summary["n_images"]
    assert (manifest["image_id"] == manifest["source_id"]).all()
    assert all(Path(p).is_absolute() and p.endswith(".jpg") for p in manifest["image_path"])
    assert all(Path(p).name.lower().endswith("_segmentation.png") for p in manifest["mask_path"])
    assert (manifest["mask_available"] == 1).all()
    names = manifest["label_string"].map({"benign": 0, "malignant": 1})
    assert (names == manifest["label"]).all()
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(
        json.dumps(summary)
    )


def test_summary_contents(tree: tuple[Path, Path], tmp_path: Path) -> None:
    summary = _prepare(tree, tmp_path / "out")
    assert summary["dataset"] == "isic" and summary["seed"] == 1
    assert summary["attribute_columns"] == [*ARTIFACTS, "spurious"]
    assert summary["skipped"] == [] and summary["skipped_counts"] == {}
    assert summary["unlisted_images"] == 0  # LICENSE.txt / ATTRIBUTION.txt are not images
    assert summary["empty_masks"] == 0
    assert "positively associated" in summary["definition"]
    assert summary["inputs"]["image_dir"] == str(tree[0] / IMAGE_DIR)
    assert summary["inputs"]["trap_set_files"]["val"].endswith("isic_annotated_val1.csv")
    counts = summary["splits"]
    assert {split: cells["images"] for split, cells in counts.items()} == SPLIT_SIZES
    manifest = load_manifest(tmp_path / "out" / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    robust = ((test["label"] == 1) & (test["spurious"] == 0)).sum()
    assert counts["test"]["label1_spurious0"] == robust > 0


def test_capital_segmentation_mask_is_found(tree: tuple[Path, Path], tmp_path: Path) -> None:
    _prepare(tree, tmp_path / "out")
    manifest = load_manifest(tmp_path / "out" / "manifest.csv").set_index("image_id")
    assert manifest.loc[IDS[CAPITAL_MASK_INDEX], "mask_path"].endswith("_Segmentation.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ""])
def test_csv_image_names_match_jpg_files(
    tree: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    for path in tree[1].glob("*.csv"):
        _edit_csv(path, lambda f: f.assign(image=f["image"].str.replace(".png", suffix)))
    summary = _prepare(tree, tmp_path / "out")
    assert summary["n_images"] == N and summary["skipped"] == []


def test_unlisted_and_non_image_files_are_only_counted(
    tree: tuple[Path, Path], tmp_path: Path
) -> None:
    image_dir = tree[0] / IMAGE_DIR
    write_image(image_dir / "ISIC_9999999.jpg", (40, 30), np.random.default_rng(0))
    (image_dir / "._ISIC_0000000.jpg").write_bytes(b"macOS resource fork")
    (image_dir / "notes.md").write_text("not an image")
    summary = _prepare(tree, tmp_path / "out")
    assert summary["unlisted_images"] == 1 and summary["n_images"] == N


def test_progress_bar_and_rerun_into_existing_folder(
    tree: tuple[Path, Path], tmp_path: Path
) -> None:
    root, trap_dir = tree
    first = prepare_isic(root, trap_dir, 2, tmp_path / "out", progress=True)
    second = prepare_isic(root, trap_dir, 2, tmp_path / "out", progress=False)
    assert first == second
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.csv", "summary.json"]


# --------------------------------------------------------------------------- splits


def test_disjoint_splits_remove_val_from_train(tree: tuple[Path, Path], tmp_path: Path) -> None:
    summary = _prepare(tree, tmp_path / "out")
    manifest = load_manifest(tmp_path / "out" / "manifest.csv")
    ids = {s: set(manifest.loc[manifest["split"] == s, "source_id"]) for s in SPLIT_SIZES}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert summary["split_mode"] == "disjoint"
    assert summary["val_removed_from_train"] == 6 and summary["val_duplicated_in_train"] == 0


def test_paper_splits_keep_val_in_train(tree: tuple[Path, Path], tmp_path: Path) -> None:
    summary = _prepare(tree, tmp_path / "out", paper_splits=True)
    manifest = load_manifest(tmp_path / "out" / "manifest.csv")
    assert manifest["split"].value_counts().to_dict() == {"train": 30, "val": 6, "test": 10}
    val = manifest[manifest["split"] == "val"]
    assert (val["image_id"] == val["source_id"] + "@val").all()
    train_ids = set(manifest.loc[manifest["split"] == "train", "image_id"])
    assert set(val["source_id"]) <= train_ids
    assert summary["split_mode"] == "paper" and summary["n_images"] == 46
    assert summary["n_source_images"] == N
    assert summary["val_duplicated_in_train"] == 6 and summary["val_removed_from_train"] == 0


def test_val_image_not_in_train_is_counted(tree: tuple[Path, Path], tmp_path: Path) -> None:
    val_ids = pd.read_csv(tree[1] / "isic_annotated_val1.csv")["image"]
    _edit_csv(tree[1] / "isic_annotated_train1.csv", lambda f: f[f["image"] != val_ids[0]])
    summary = _prepare(tree, tmp_path / "out")
    assert summary["val_not_in_train"] == 1 and summary["val_removed_from_train"] == 5


# --------------------------------------------------------------------------- spurious artifacts


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("paper", [False, True])
def test_spurious_selection_on_the_fixture(tmp_path: Path, seed: int, paper: bool) -> None:
    _, trap_dir = make_isic_tree(tmp_path, n=N, seeds=(seed,))
    frame = read_trap_sets(trap_dir, seed, paper_splits=paper)
    association = artifact_association(frame)
    assert select_spurious(association) == list(EXPECTED_SPURIOUS)
    assert association["patches"]["p_malignant_with"] == 1.0  # positive, but < 10 images
    assert association["patches"]["n_train_with"] < 10
    for name in EXPECTED_SPURIOUS:  # reversed in test, as in a trap set
        stats = association[name]
        assert stats["p_malignant_with_test"] < stats["p_malignant_without_test"]


def test_spurious_column_marks_any_spurious_artifact(
    tree: tuple[Path, Path], tmp_path: Path
) -> None:
    summary = _prepare(tree, tmp_path / "out")
    manifest = load_manifest(tmp_path / "out" / "manifest.csv")
    expected = manifest[list(EXPECTED_SPURIOUS)].to_numpy().any(axis=1).astype(float)
    assert summary["spurious_artifacts"] == list(EXPECTED_SPURIOUS)
    np.testing.assert_array_equal(manifest["spurious"].to_numpy(), expected)
    train = manifest[manifest["split"] == "train"]
    stats = summary["artifact_association"]["ruler"]
    assert stats["n_train_with"] == int(train["ruler"].sum())
    assert stats["p_malignant_with"] == pytest.approx(
        train.loc[train["ruler"] == 1, "label"].mean()
    )


def _frame(columns: dict[str, list[int]], labels: list[int]) -> pd.DataFrame:
    data = {name: columns.get(name, [0] * len(labels)) for name in ARTIFACTS}
    return pd.DataFrame({"split": "train", "label": labels, **data})


def test_select_spurious_rules() -> None:
    labels = [1] * 6 + [0] * 14  # 20 train images
    frame = _frame(
        {
            "ruler": [1] * 6 + [1] * 4 + [0] * 10,  # 10 images, 0.6 vs 0.0: selected
            "ink": [1] * 6 + [1] * 3 + [0] * 11,  # 9 images: too few
            "hair": [0] * 6 + [1] * 14,  # negative
            "vasc": [1] * 20,  # on every image: no contrast
            "patches": [1, 1, 1, 0, 0, 0] + [1] * 7 + [0] * 7,  # 3/10 vs 3/10: not greater
        },
        labels,
    )
    association = artifact_association(frame)
    assert association["vasc"]["p_malignant_without"] is None
    assert select_spurious(association) == ["ruler"]
    assert select_spurious(association, min_images=9) == ["ruler", "ink"]
    assert select_spurious(association, candidates=("ink",), min_images=1) == ["ink"]


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("seed", [0, 6, 7])
def test_bad_seed(tree: tuple[Path, Path], tmp_path: Path, seed: int) -> None:
    message = f"--seed must be 1..5 (the five trap-set splits), got {seed}"
    with pytest.raises(ISICError, match=re.escape(message)):
        _prepare(tree, tmp_path / "out", seed=seed)


@pytest.mark.parametrize("folder", [IMAGE_DIR, MASK_DIR])
def test_missing_folder(tree: tuple[Path, Path], tmp_path: Path, folder: str) -> None:
    (tree[0] / folder).rename(tree[0] / "elsewhere")
    with pytest.raises(ISICError, match=re.escape(str(tree[0] / folder))):
        _prepare(tree, tmp_path / "out")


def test_missing_trap_csv(tree: tuple[Path, Path], tmp_path: Path) -> None:
    (tree[1] / "isic_annotated_test1.csv").unlink()
    with pytest.raises(ISICError, match=r"not found.*isic_annotated_test1\.csv"):
        _prepare(tree, tmp_path / "out")


Edit = Callable[[pd.DataFrame, Path], pd.DataFrame]


def _set(row: int, column: str, value: str) -> Edit:
    def edit(frame: pd.DataFrame, _: Path) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return edit


def _flip(row: int, column: str) -> Edit:
    """Swap 0/1 (or benign/malignant) in one cell."""
    swap = {"0": "1", "1": "0", "benign": "malignant", "malignant": "benign"}
    return lambda frame, trap_dir: _set(row, column, swap[frame.loc[row, column]])(frame, trap_dir)


def _append_first_row_of(source: str) -> Edit:
    def edit(frame: pd.DataFrame, trap_dir: Path) -> pd.DataFrame:
        row = pd.read_csv(trap_dir / source, dtype=str, keep_default_na=False).iloc[:1]
        return pd.concat([frame, row], ignore_index=True)

    return edit


#: case -> (CSV of seed 1 to edit, edit, expected message); train1 has 30 rows (lines 2-31).
BAD_CSVS: dict[str, tuple[str, Edit, str]] = {
    "missing column": (
        "train",
        lambda f, _: f.drop(columns=["ruler"]),
        r"train1\.csv: missing column\(s\) ruler; found \(unnamed\), image, dark_corner",
    ),
    "bad label": ("train", _set(0, "label", "2"), r"train1\.csv line 2: label must be 0 or 1"),
    "label_string mismatch": (
        "test",
        _flip(1, "label_string"),
        r"test1\.csv line 3: label_string '\w+' does not match label \d \(expected '\w+'\)",
    ),
    "bad artifact": ("val", _set(0, "hair", "yes"), r"val1\.csv line 2: hair must be 0 or 1"),
    "duplicate row": (
        "train",
        _append_first_row_of("isic_annotated_train1.csv"),
        r"train1\.csv line 32: duplicate image ISIC_0000000 \(first listed at line 2\)",
    ),
    "train and test overlap": (
        "train",
        _append_first_row_of("isic_annotated_test1.csv"),
        r"test1\.csv line 2: image ISIC_\d+ is also in \S+train1\.csv line 32",
    ),
    "val disagrees with train": (
        "val",
        _flip(0, "ruler"),
        r"val1\.csv line 2: image ISIC_\d+ has different ruler than in \S+train1\.csv line",
    ),
}


@pytest.mark.parametrize("case", BAD_CSVS, ids=list(BAD_CSVS))
def test_bad_trap_csv(tree: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    split, edit, pattern = BAD_CSVS[case]
    _edit_csv(tree[1] / f"isic_annotated_{split}1.csv", lambda f: edit(f, tree[1]))
    with pytest.raises(ISICError, match=pattern):
        _prepare(tree, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_many_problems_show_first_five_and_count(tree: tuple[Path, Path], tmp_path: Path) -> None:
    _edit_csv(tree[1] / "isic_annotated_train1.csv", lambda f: f.assign(label="x"))
    with pytest.raises(ISICError) as info:
        _prepare(tree, tmp_path / "out")
    assert len(info.value.problems) == 30
    assert str(info.value).count("label must be 0 or 1") == 5
    assert "... and 25 more (30 problems in total)" in str(info.value)


@pytest.mark.parametrize(("kind", "reason"), [("image", "missing_image"), ("mask", "missing_mask")])
def test_missing_file_is_skipped_or_strict(
    tree: tuple[Path, Path], tmp_path: Path, kind: str, reason: str
) -> None:
    folder, name = (IMAGE_DIR, f"{IDS[4]}.jpg") if kind == "image" else (MASK_DIR, None)
    (tree[0] / folder / (name or f"{IDS[4]}_segmentation.png")).unlink()
    summary = _prepare(tree, tmp_path / "out")
    assert summary["skipped"] == [{"image_id": IDS[4], "reason": reason}]
    assert summary["skipped_counts"] == {reason: 1} and summary["n_images"] == N - 1
    assert IDS[4] not in set(load_manifest(tmp_path / "out" / "manifest.csv")["image_id"])
    with pytest.raises(ISICError, match=f"(?s)would be skipped.*{IDS[4]}: {reason}"):
        _prepare(tree, tmp_path / "strict", strict=True)


def test_mask_of_the_wrong_size(tree: tuple[Path, Path], tmp_path: Path) -> None:
    mask = tree[0] / MASK_DIR / f"{IDS[2]}_segmentation.png"
    width, height = image_size(2)
    Image.new("L", (height, width), 255).save(mask)
    pattern = (
        rf"mask \S+{IDS[2]}_segmentation\.png is {height}x{width} \(width x height\) "
        rf"but image \S+{IDS[2]}\.jpg is {width}x{height}"
    )
    with pytest.raises(ISICError, match=pattern):
        _prepare(tree, tmp_path / "out")


@pytest.mark.parametrize(("values", "ok"), [((0, 128, 255), False), ((0, 1), True)])
def test_mask_values(tree: tuple[Path, Path], tmp_path: Path, values: tuple, ok: bool) -> None:
    mask = tree[0] / MASK_DIR / f"{IDS[3]}_segmentation.png"
    width, height = image_size(3)
    pixels = np.resize(np.array(values, np.uint8), (height, width))
    Image.fromarray(pixels).save(mask)
    if ok:
        assert _prepare(tree, tmp_path / "out")["n_images"] == N
        return
    with pytest.raises(
        ISICError, match=rf"(?s)invalid ISIC masks.*{IDS[3]}.*unexpected values 128"
    ):
        _prepare(tree, tmp_path / "out")


# --------------------------------------------------------------------------- real trap sets

SHARED = os.environ.get("SPATIALSPEC_SHARED_DATA")


@pytest.mark.integration
@pytest.mark.skipif(not SHARED, reason="SPATIALSPEC_SHARED_DATA is not set")
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_real_trap_sets(seed: int) -> None:
    trap_dir = Path(str(SHARED), "isic_trap_sets")
    frame = read_trap_sets(trap_dir, seed)
    assert len(frame) == frame["source_id"].nunique() == 2594
    assert frame["split"].value_counts().to_dict() == {"train": 1563, "val": 259, "test": 772}
    assert frame.attrs["split_stats"]["val_not_in_train"] == 0
    paper = read_trap_sets(trap_dir, seed, paper_splits=True)
    train = set(paper.loc[paper["split"] == "train", "source_id"])
    assert set(paper.loc[paper["split"] == "val", "source_id"]) <= train
    selected = set(select_spurious(artifact_association(frame)))
    assert selected == {"dark_corner", "ruler", "gel_border", "ink"}  # never vasc, hair, ...
