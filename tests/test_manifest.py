"""Tests for the manifest contract: loading, validation messages and atomic writing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatialspec.data import ManifestError, load_manifest, write_manifest
from spatialspec.data.manifest import REQUIRED_COLUMNS, SPLITS

HEADER = ",".join(REQUIRED_COLUMNS)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG placeholder")
    return path


def _write(folder: Path, rows: list[str], header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder with 4 images and 2 masks referenced by a valid manifest."""
    root = tmp_path / "ds"
    for name in ("a", "b", "c", "d"):
        _touch(root / "images" / f"{name}.png")
    _touch(root / "masks" / "a.png")
    _touch(root / "masks" / "c.png")
    return root


def _valid_rows() -> list[str]:
    return [
        "a,images/a.png,1,train,1,masks/a.png,1",
        "b,images/b.png,0,train,,,1",
        "c,images/c.png,1,val,0,masks/c.png,1",
        "d,images/d.png,0,test,,,0",
    ]


def _error(path: Path, **kwargs: bool) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    return info.value


# --------------------------------------------------------------------------- valid manifests


def test_constants() -> None:
    assert SPLITS == ("train", "val", "test")
    assert REQUIRED_COLUMNS == (
        "image_id",
        "image_path",
        "label",
        "split",
        "spurious",
        "mask_path",
        "mask_available",
    )
    assert issubclass(ManifestError, ValueError)


def test_valid_manifest_dtypes_and_paths(dataset: Path) -> None:
    path = _write(dataset, _valid_rows())
    df = load_manifest(path)
    assert list(df.columns) == list(REQUIRED_COLUMNS)
    assert df["image_id"].tolist() == ["a", "b", "c", "d"]
    assert df["label"].dtype == np.int64 and df["label"].tolist() == [1, 0, 1, 0]
    assert df["mask_available"].dtype == np.int64
    assert df["mask_available"].tolist() == [1, 1, 1, 0]
    assert df["spurious"].dtype == np.float64
    np.testing.assert_array_equal(df["spurious"].to_numpy(), [1.0, np.nan, 0.0, np.nan])
    assert df["split"].tolist() == ["train", "train", "val", "test"]
    assert all(isinstance(v, str) for v in df["split"])
    assert df["image_path"].tolist() == [str(dataset / "images" / f"{n}.png") for n in "abcd"]
    assert df["mask_path"].tolist() == [
        str(dataset / "masks" / "a.png"),
        "",
        str(dataset / "masks" / "c.png"),
        "",
    ]
    assert all(os.path.isabs(p) for p in df["image_path"])
    assert df.attrs["manifest_path"] == str(path)


def test_absolute_and_relative_paths(dataset: Path, tmp_path: Path) -> None:
    outside = _touch(tmp_path / "elsewhere" / "x.png")
    rows = [
        f"x,{outside},0,train,,,0",
        "y,./images/../images/a.png,0,val,,,0",
    ]
    df = load_manifest(_write(dataset, rows))
    assert df["image_path"].tolist() == [str(outside), str(dataset / "images" / "a.png")]


def test_relative_paths_resolve_against_manifest_folder_not_cwd(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(dataset, _valid_rows())
    monkeypatch.chdir(tmp_path)
    df = load_manifest(Path("ds") / "manifest.csv")
    assert df["image_path"].iloc[0] == str(dataset / "images" / "a.png")
    assert df.attrs["manifest_path"] == str(path)


def test_extra_columns_kept(dataset: Path) -> None:
    header = HEADER + ",patient_id,spurious_mask_path,chest_drain_score"
    rows = [
        "a,images/a.png,1,train,1,masks/a.png,1,007,masks/c.png,0.5",
        "b,images/b.png,0,val,,,1,008,,1.5",
    ]
    df = load_manifest(_write(dataset, rows, header))
    assert df["patient_id"].tolist() == ["007", "008"]
    assert df["spurious_mask_path"].tolist() == [str(dataset / "masks" / "c.png"), ""]
    assert df["chest_drain_score"].dtype == np.float64
    assert df["chest_drain_score"].tolist() == [0.5, 1.5]


def test_whitespace_blank_lines_and_float_flags(dataset: Path) -> None:
    rows = [
        " a , images/a.png , 1.0 , train , 1.0 , masks/a.png , 1 ",
        "",
        "b,images/b.png,0,val,,,0",
    ]
    df = load_manifest(_write(dataset, rows))
    assert df["image_id"].tolist() == ["a", "b"]
    assert df["label"].tolist() == [1, 0]
    assert df["spurious"].iloc[0] == 1.0


def test_empty_manifest_with_header_loads(dataset: Path) -> None:
    df = load_manifest(_write(dataset, []))
    assert len(df) == 0
    assert list(df.columns) == list(REQUIRED_COLUMNS)


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        load_manifest(tmp_path / "manifest.csv")


# --------------------------------------------------------------------------- errors


def test_missing_columns(dataset: Path) -> None:
    path = _write(dataset, ["a,images/a.png,train"], header="image_id,image_path,split")
    err = _error(path)
    message = str(err)
    assert str(path) in message
    assert "missing required column(s) label, spurious, mask_path, mask_available" in message
    assert "found columns image_id, image_path, split" in message
    assert len(err.problems) == 1


def test_duplicate_image_id(dataset: Path) -> None:
    rows = [*_valid_rows(), "a,images/b.png,0,test,,,0"]
    message = str(_error(_write(dataset, rows)))
    assert "duplicate image_id value(s) 'a'" in message
    assert "line 2 (image_id 'a')" in message and "line 6 (image_id 'a')" in message
    assert "line 3" not in message


@pytest.mark.parametrize("value", ["yes", "2", "", "-1"])
def test_bad_label(dataset: Path, value: str) -> None:
    rows = _valid_rows()
    rows[2] = f"c,images/c.png,{value},val,0,masks/c.png,1"
    err = _error(_write(dataset, rows))
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith(f"{dataset / 'manifest.csv'}: label must be 0 or 1")
    assert f"line 4 (image_id 'c', label {value!r})" in problem


def test_bad_split_lists_values_and_valid_ones(dataset: Path) -> None:
    rows = _valid_rows()
    rows[0] = rows[0].replace("train", "training")
    rows[3] = rows[3].replace("test", "Test")
    err = _error(_write(dataset, rows))
    problem = err.problems[0]
    assert "split must be one of 'train', 'val', 'test'" in problem
    assert "found invalid value(s) 'training', 'Test'" in problem
    assert "line 2 (image_id 'a', split 'training')" in problem
    assert "line 5 (image_id 'd', split 'Test')" in problem


def test_bad_spurious_and_mask_available(dataset: Path) -> None:
    rows = _valid_rows()
    rows[1] = "b,images/b.png,0,train,maybe,,1"
    rows[3] = "d,images/d.png,0,test,,,"
    err = _error(_write(dataset, rows))
    assert len(err.problems) == 2
    assert "spurious must be 0, 1 or empty at line 3 (image_id 'b', spurious 'maybe')" in str(err)
    assert "mask_available must be 0 or 1 at line 5 (image_id 'd', mask_available '')" in str(err)


def test_positive_with_available_mask_needs_mask_path(dataset: Path) -> None:
    rows = _valid_rows()
    rows[2] = "c,images/c.png,1,val,0,,1"
    err = _error(_write(dataset, rows))
    assert err.problems == [
        f"{dataset / 'manifest.csv'}: mask_available=1 and label=1 but mask_path is empty "
        "at line 4 (image_id 'c')"
    ]


def test_truncation_with_eight_bad_rows(dataset: Path) -> None:
    rows = [f"id{i},images/a.png,{'yes' if i < 8 else 0},train,,,0" for i in range(10)]
    err = _error(_write(dataset, rows))
    problem = err.problems[0]
    for line, i in zip(range(2, 7), range(5), strict=True):
        assert f"line {line} (image_id 'id{i}', label 'yes')" in problem
    assert "id5" not in problem and "line 7" not in problem
    assert problem.endswith("... and 3 more (8 rows in total)")


def test_several_problems_reported_together(dataset: Path) -> None:
    rows = [
        "a,images/a.png,1,train,1,masks/a.png,1",
        "a,images/b.png,7,train,,,1",
        "c,images/missing.png,0,dev,,,0",
        "d,images/d.png,1,test,,masks/gone.png,1",
        ",images/d.png,0,test,,,0",
    ]
    err = _error(_write(dataset, rows))
    text = str(err)
    assert text.startswith(f"invalid manifest {dataset / 'manifest.csv'}: 6 problems")
    assert len(err.problems) == 6
    assert all(p.startswith(str(dataset / "manifest.csv")) for p in err.problems)
    expected_fragments = [
        "image_id is empty at line 6",
        "duplicate image_id value(s) 'a' at line 2 (image_id 'a'), line 3 (image_id 'a')",
        "label must be 0 or 1 at line 3 (image_id 'a', label '7')",
        "split must be one of 'train', 'val', 'test'; found invalid value(s) 'dev'",
        "image file not found at line 4 (image_id 'c', image_path 'images/missing.png')",
        "mask file not found at line 5 (image_id 'd', mask_path 'masks/gone.png')",
    ]
    for fragment in expected_fragments:
        assert sum(fragment in p for p in err.problems) == 1, fragment


def test_check_files_false_skips_existence(dataset: Path) -> None:
    rows = ["z,images/nothing.png,1,train,,masks/nothing.png,1"]
    path = _write(dataset, rows)
    assert "image file not found" in str(_error(path))
    df = load_manifest(path, check_files=False)
    assert df["image_path"].iloc[0] == str(dataset / "images" / "nothing.png")


def test_missing_spurious_mask_file_reported(dataset: Path) -> None:
    header = HEADER + ",spurious_mask_path"
    path = _write(dataset, ["a,images/a.png,0,train,1,,0,sm/a.png"], header)
    assert "spurious mask file not found at line 2" in str(_error(path))


def test_empty_image_path(dataset: Path) -> None:
    path = _write(dataset, ["a,,0,train,,,0"])
    err = _error(path, check_files=False)
    assert err.problems == [f"{path}: image_path is empty at line 2 (image_id 'a', image_path '')"]


def test_empty_file(dataset: Path) -> None:
    path = dataset / "manifest.csv"
    path.write_text("")
    assert "the file is empty" in str(_error(path))


# --------------------------------------------------------------------------- writing


def test_write_manifest_round_trip(dataset: Path, tmp_path: Path) -> None:
    outside = _touch(tmp_path / "elsewhere" / "x.png")
    rows = [*_valid_rows(), f"x,{outside},0,val,,,0"]
    header = HEADER + ",patient_id"
    rows = [f"{row},p{i:03d}" for i, row in enumerate(rows)]
    original = load_manifest(_write(dataset, rows, header))

    target = dataset / "manifest_copy.csv"
    write_manifest(original, target)
    text = target.read_text().splitlines()
    assert text[0] == HEADER + ",patient_id"
    assert text[1] == "a,images/a.png,1,train,1,masks/a.png,1,p000"
    assert text[2] == "b,images/b.png,0,train,,,1,p001"
    assert text[5] == f"x,{outside},0,val,,,0,p004"

    again = load_manifest(target)
    pd.testing.assert_frame_equal(again, original)
    assert again.attrs["manifest_path"] == str(target)


def test_write_manifest_to_other_folder_keeps_absolute_paths(dataset: Path, tmp_path: Path) -> None:
    original = load_manifest(_write(dataset, _valid_rows()))
    target = tmp_path / "other" / "nested" / "manifest.csv"
    write_manifest(original, target)
    assert f"a,{dataset / 'images' / 'a.png'}," in target.read_text()
    pd.testing.assert_frame_equal(load_manifest(target), original)


def test_write_manifest_is_atomic(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_manifest(_write(dataset, _valid_rows()))
    target = dataset / "out" / "manifest.csv"
    write_manifest(original, target)
    before = target.read_bytes()
    assert sorted(os.listdir(target.parent)) == ["manifest.csv"]

    def explode(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_manifest(original.iloc[:1], target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(target.parent)) == ["manifest.csv"]


def test_write_manifest_integer_columns(tmp_path: Path) -> None:
    _touch(tmp_path / "i.png")
    df = pd.DataFrame(
        {
            "image_id": ["i"],
            "image_path": [str(tmp_path / "i.png")],
            "label": [1.0],
            "split": ["test"],
            "spurious": [np.nan],
            "mask_path": [None],
            "mask_available": [0],
        }
    )
    write_manifest(df, tmp_path / "manifest.csv")
    assert (tmp_path / "manifest.csv").read_text().splitlines()[1] == "i,i.png,1,test,,,0"
    loaded = load_manifest(tmp_path / "manifest.csv")
    assert loaded["label"].tolist() == [1] and np.isnan(loaded["spurious"].iloc[0])
