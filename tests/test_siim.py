"""``prepare siim``: DICOM discovery, label joins, masks, skips, patient-level splits."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatialspec.cli import main
from spatialspec.data.io import read_mask
from spatialspec.data.manifest import load_manifest
from spatialspec.data.rle import RLEError
from spatialspec.data.siim import SIIMError, assign_splits, find_dicoms, prepare_siim
from spatialspec.data.tubes import TubeLabelError
from spatialspec.testing import FakeSIIM, make_siim_tree

SHARED = os.environ.get("SPATIALSPEC_SHARED_DATA")
needs_shared = pytest.mark.skipif(not SHARED, reason="SPATIALSPEC_SHARED_DATA is not set")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeSIIM:
    return make_siim_tree(tmp_path_factory.mktemp("siim"), n=24, size=48, seed=1)


@pytest.fixture(scope="module")
def prepared(fake: FakeSIIM, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "siim"
    summary = prepare_siim(fake.root, fake.rle_csv, out, fake.tube_pkl, seed=0, progress=False)
    return out, summary


def _prepare(fake: FakeSIIM, out: Path, **kwargs) -> dict:
    kwargs.setdefault("tube_labels", fake.tube_pkl)
    return prepare_siim(fake.root, kwargs.pop("rle_csv", fake.rle_csv), out, progress=False,
                        **kwargs)  # fmt: skip


def _copy_tree(fake: FakeSIIM, tmp_path: Path) -> FakeSIIM:
    root = tmp_path / "download"
    shutil.copytree(fake.root, root)
    return FakeSIIM(root, fake.rle_csv, fake.tube_pkl, fake.masks, fake.tubes, fake.patients)


# --------------------------------------------------------------------------- the happy path


def test_manifest_follows_the_contract(prepared: tuple[Path, dict], fake: FakeSIIM) -> None:
    out, summary = prepared
    frame = load_manifest(out / "manifest.csv")  # validates columns, values and files
    assert len(frame) == len(fake.masks) == summary["n_images"]
    assert set(frame.split) <= {"train", "val", "test"}
    assert list(frame.columns[:7]) == [
        "image_id", "image_path", "label", "split", "spurious", "mask_path", "mask_available",
    ]  # fmt: skip
    assert (frame.mask_available == 1).all()
    for row in frame.itertuples():
        truth = fake.masks[row.image_id]
        assert row.label == int(truth.any())
        if row.label:
            assert np.array_equal(read_mask(row.mask_path), truth)
            assert row.pathology_pixels == truth.sum()
        else:
            assert row.mask_path == ""


def test_overlapping_rows_are_ored(prepared: tuple[Path, dict], fake: FakeSIIM) -> None:
    _, summary = prepared
    several = sum(1 for line in fake.rle_csv.read_text().splitlines()[1:]) - len(fake.masks)
    assert summary["images_with_several_label_rows"] == several > 0
    assert summary["images_with_overlapping_label_rows"] == several


def test_spurious_is_the_tube_label(prepared: tuple[Path, dict], fake: FakeSIIM) -> None:
    out, summary = prepared
    frame = load_manifest(out / "manifest.csv")
    for row in frame.itertuples():
        expected = float(fake.tubes[row.image_id]) if row.image_id in fake.tubes else np.nan
        assert row.spurious == expected or (np.isnan(expected) and np.isnan(row.spurious))
    assert summary["tube_labels"]["matched"] == len(fake.tubes)
    assert summary["attribute_columns"] == ["spurious"]


def test_splits_are_patient_level_and_tube_labelled_patients_are_held_out(
    prepared: tuple[Path, dict], fake: FakeSIIM
) -> None:
    out, _ = prepared
    frame = load_manifest(out / "manifest.csv")
    assert frame.groupby("patient_id")["split"].nunique().max() == 1
    tubed_patients = {fake.patients[i] for i in fake.tubes}
    held_out = frame.patient_id.isin(tubed_patients)
    assert set(frame.split[held_out]) == {"val", "test"}
    assert set(frame.split[~held_out]) == {"train"}


def test_summary_counts_add_up(prepared: tuple[Path, dict]) -> None:
    out, summary = prepared
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    splits = summary["splits"]
    assert sum(s["images"] for s in splits.values()) == summary["n_images"]
    for s in splits.values():
        assert s["positive"] + s["negative"] == s["images"]
        assert sum(s["tube"].values()) == s["images"]
        assert sum(s["by_label_and_tube"].values()) == s["images"]
    assert summary["skipped"] == [] and summary["skipped_counts"] == {}
    assert summary["run"]["versions"]["pydicom"]


def test_stratified_split_keeps_every_stratum_in_val_and_test() -> None:
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(n)],
        "label": rng.integers(0, 2, n),
        "spurious": np.where(rng.random(n) < 0.5, rng.integers(0, 2, n).astype(float), np.nan),
    })  # fmt: skip
    splits = assign_splits(frame, seed=0, val_fraction=0.5)
    held = frame.spurious.notna()
    assert set(splits[~held]) == {"train"}
    for (_, _), cell in frame[held].groupby(["label", "spurious"]):
        n_val = (splits[cell.index] == "val").sum()
        assert abs(n_val - len(cell) / 2) <= 0.5
    assert not splits.equals(assign_splits(frame, seed=1, val_fraction=0.5))
    assert splits.equals(assign_splits(frame, seed=0, val_fraction=0.5))


def test_without_tube_labels_splits_by_label_and_spurious_is_unknown(
    fake: FakeSIIM, tmp_path: Path
) -> None:
    summary = _prepare(fake, tmp_path / "out", tube_labels=None)
    frame = load_manifest(tmp_path / "out" / "manifest.csv")
    assert frame.spurious.isna().all()
    assert summary["attribute_columns"] == []
    assert set(frame.split) == {"train", "val", "test"}
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


# --------------------------------------------------------------------------- label-file formats


def _sample_format(fake: FakeSIIM, path: Path) -> Path:
    """The competition's sample file: no header, BOM, CRLF, leading-space values."""
    rows = fake.rle_csv.read_text().splitlines()[1:]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    return path


@pytest.mark.parametrize("variant", ["sample", "gzip", "no-space-header"])
def test_label_file_variants_give_the_same_manifest(
    variant: str, fake: FakeSIIM, prepared: tuple[Path, dict], tmp_path: Path
) -> None:
    if variant == "sample":
        csv = _sample_format(fake, tmp_path / "train-rle-sample.csv")
    elif variant == "gzip":
        csv = tmp_path / "labels.csv.gz"
        csv.write_bytes(gzip.compress(fake.rle_csv.read_bytes()))
    else:
        text = fake.rle_csv.read_text().replace("ImageId, EncodedPixels", "ImageId,EncodedPixels")
        csv = tmp_path / "labels.csv"
        csv.write_text(text.replace(", ", ","))
    _prepare(fake, tmp_path / "out", rle_csv=csv)
    got = pd.read_csv(tmp_path / "out" / "manifest.csv")
    want = pd.read_csv(prepared[0] / "manifest.csv")
    pd.testing.assert_frame_equal(got, want)


def test_tube_labels_from_csv(fake: FakeSIIM, prepared: tuple[Path, dict], tmp_path: Path) -> None:
    csv = tmp_path / "tubes.csv"
    csv.write_text("image_id,tube\n" + "".join(f"{k},{int(v)}\n" for k, v in fake.tubes.items()))
    _prepare(fake, tmp_path / "out", tube_labels=csv)
    got = pd.read_csv(tmp_path / "out" / "manifest.csv")
    pd.testing.assert_frame_equal(got, pd.read_csv(prepared[0] / "manifest.csv"))


# --------------------------------------------------------------------------- bad input


def test_html_error_page_saved_as_dcm_is_skipped(fake: FakeSIIM, tmp_path: Path) -> None:
    tree = _copy_tree(fake, tmp_path)
    victim = sorted(tree.root.rglob("*.dcm"))[3]
    victim.write_text("<!DOCTYPE html><html><body>503 Service Unavailable</body></html>")
    summary = _prepare(tree, tmp_path / "out")
    (skip,) = summary["skipped"]
    assert skip["item"] == victim.stem and skip["reason"] == "unreadable DICOM"
    assert "HTML" in skip["detail"]
    assert summary["n_images"] == len(fake.masks) - 1
    with pytest.raises(SIIMError, match=r"--strict: 1 items .*unreadable DICOM"):
        _prepare(tree, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_pixel_data_is_caught_only_when_verifying(fake: FakeSIIM, tmp_path: Path) -> None:
    tree = _copy_tree(fake, tmp_path)
    victim = sorted(tree.root.rglob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-400])
    verified = _prepare(tree, tmp_path / "a")
    assert [s["item"] for s in verified["skipped"]] == [victim.stem]
    assert _prepare(tree, tmp_path / "b", verify=False)["skipped"] == []


def test_unmatched_dicoms_and_label_rows_are_skipped_and_counted(
    fake: FakeSIIM, tmp_path: Path
) -> None:
    tree = _copy_tree(fake, tmp_path)
    lines = fake.rle_csv.read_text().splitlines()
    dropped = lines[1].split(",")[0]
    kept = [ln for ln in lines if not ln.startswith(dropped)]
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join([*kept, "1.2.3.4.no.such.dicom, -1"]) + "\n")
    summary = _prepare(tree, tmp_path / "out", rle_csv=csv)
    assert summary["skipped_counts"] == {
        "DICOM without a label row": 1, "label row without a DICOM": 1,
    }  # fmt: skip
    by_reason = {s["reason"]: s for s in summary["skipped"]}
    assert by_reason["DICOM without a label row"]["item"] == dropped
    assert by_reason["label row without a DICOM"]["line"] == len(kept) + 1


def test_duplicate_dicom_ids_keep_the_first_and_report_the_second(
    fake: FakeSIIM, tmp_path: Path
) -> None:
    tree = _copy_tree(fake, tmp_path)
    first = sorted(tree.root.rglob("*.dcm"))[0]
    copy = tree.root / "zz-extra" / first.name
    copy.parent.mkdir()
    shutil.copy(first, copy)
    found, skips = find_dicoms(tree.root)
    assert found[first.stem] == first
    assert skips == [{"item": first.stem, "reason": "duplicate DICOM id", "path": str(copy),
                      "kept": str(first)}]  # fmt: skip
    summary = _prepare(tree, tmp_path / "out")
    assert summary["skipped_counts"] == {"duplicate DICOM id": 1}
    assert summary["n_dicom_files"] == len(fake.masks) + 1


def test_run_past_the_image_names_the_csv_line(fake: FakeSIIM, tmp_path: Path) -> None:
    lines = fake.rle_csv.read_text().splitlines()
    image_id = lines[1].split(",")[0]
    lines = [ln for ln in lines if not ln.startswith(image_id)]
    lines.append(f"{image_id}, {48 * 48 - 3} 10")  # 7 pixels past a 48 x 48 image
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(RLEError, match=rf"labels.csv:{len(lines)}\b"):
        _prepare(fake, tmp_path / "out", rle_csv=csv)
    assert not (tmp_path / "out").exists()


def test_malicious_tube_pickle_is_refused_without_running_it(
    fake: FakeSIIM, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {pwned}",))

    evil = tmp_path / "cxr_tube_dict.pkl"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(TubeLabelError, match="not allowed"):
        _prepare(fake, tmp_path / "out", tube_labels=evil)
    assert not pwned.exists()


def test_bad_arguments(fake: FakeSIIM, tmp_path: Path) -> None:
    with pytest.raises(SIIMError, match="is not a folder"):
        prepare_siim(tmp_path / "nope", fake.rle_csv, tmp_path / "o", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SIIMError, match=r"no \.dcm files"):
        prepare_siim(tmp_path / "empty", fake.rle_csv, tmp_path / "o", progress=False)
    with pytest.raises(SIIMError, match="val_fraction"):
        _prepare(fake, tmp_path / "o", val_fraction=1.0)


def test_refuses_to_replace_a_foreign_folder(fake: FakeSIIM, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        _prepare(fake, out)
    assert (out / "thesis.tex").read_text() == "precious"


def test_rebuild_replaces_stale_masks(fake: FakeSIIM, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _prepare(fake, out)
    stale = out / "masks" / "stale.png"
    stale.write_bytes(b"old")
    _prepare(fake, out)
    assert not stale.exists()
    load_manifest(out / "manifest.csv")


def test_cli_prepare_siim(fake: FakeSIIM, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["prepare", "siim", "--root", str(fake.root), "--rle-csv", str(fake.rle_csv),
            "--tube-labels", str(fake.tube_pkl), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "manifest:" in out and "negatives_with_tube=" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId, EncodedPixels\nabc, 1 2 3\n")
    argv[argv.index("--rle-csv") + 1] = str(bad)
    assert main(argv) == 2
    assert "bad.csv:2" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real files


@needs_shared
def test_real_sample_files(tmp_path: Path) -> None:
    siim = Path(SHARED) / "siim"
    summary = prepare_siim(
        siim / "sample_images", siim / "train-rle-sample.csv", tmp_path / "out",
        tube_labels=siim / "cxr_tube_dict.pkl", progress=False,
    )  # fmt: skip
    frame = load_manifest(tmp_path / "out" / "manifest.csv")
    assert len(frame) == summary["n_images"] == 10
    assert summary["skipped"] == []
    assert summary["tube_labels"] == {
        "entries": 1951, "matched": int(frame.spurious.notna().sum()), "without_image": 1951
        - int(frame.spurious.notna().sum()), "with_tube": 525,
    }  # fmt: skip
    positives = frame[frame.label == 1]
    assert len(positives) == 5 and (frame.height == 1024).all()
    for row in positives.itertuples():
        assert read_mask(row.mask_path).sum() == row.pathology_pixels > 0


@needs_shared
def test_real_full_label_file_with_the_sample_images(tmp_path: Path) -> None:
    siim = Path(SHARED) / "siim"
    labels = siim / "siim-pneumothorax-train-rle.csv.gz"
    summary = prepare_siim(siim / "sample_images", labels, tmp_path / "out", progress=False,
                           verify=False)  # fmt: skip
    assert summary["n_label_images"] == 12047
    assert summary["skipped_counts"] == {"label row without a DICOM": 12047 - 10}
    with pytest.raises(SIIMError, match="--strict: 12037 items"):
        prepare_siim(siim / "sample_images", labels, tmp_path / "s", progress=False, strict=True)


def test_jpeg_baseline_decoding_plugin_is_installed() -> None:
    """pydicom decodes JPEG Baseline only through a plugin: Pillow, a declared dependency."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    decoder = get_decoder(JPEGBaseline8Bit)
    assert decoder.is_available
    assert "pillow" in decoder.available_plugins
