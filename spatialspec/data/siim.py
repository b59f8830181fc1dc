"""SIIM-ACR pneumothorax: DICOM tree + RLE label file (+ chest-tube labels) -> manifest.

``prepare_siim`` finds every ``.dcm`` under ``root`` (the original tree is
``dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm``; the id is the file stem), joins
the competition's label file (several rows per image are OR-ed), writes one mask PNG per
positive image at the DICOM's own resolution, and assigns patient-level splits:

* with tube labels (Saab et al.): every patient with a tube-labelled image goes to val or
  test, stratified by (label, tube) and split ``val_fraction`` : ``1 - val_fraction``; all
  other patients are train. ``spurious`` = chest tube (empty where unlabelled).
* without tube labels: patients are split ``holdout`` (val, test fractions), stratified by
  label; ``spurious`` is unknown everywhere, so no robust AUROC can be computed.

Negatives get ``mask_available = 1`` and no mask file (their mask is known to be empty).
Anything that cannot be used (unreadable DICOM, duplicate id, image without label row, label
row without image) is skipped and listed in ``summary.json``; ``strict`` makes it an error.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from spatialspec._text import first_few
from spatialspec.data.folders import staged_folder
from spatialspec.data.io import ImageReadError, read_image, write_png
from spatialspec.data.manifest import REQUIRED_COLUMNS, write_manifest
from spatialspec.data.rle import RLERow, decode_rows, read_rle_csv
from spatialspec.data.tubes import load_tube_labels
from spatialspec.runinfo import run_metadata, write_json_atomic

__all__ = ["DicomHeader", "SIIMError", "assign_splits", "find_dicoms", "prepare_siim"]

SUMMARY_FILE = "summary.json"
DEFAULT_HOLDOUT = (0.1, 0.2)


class SIIMError(ValueError):
    """The SIIM inputs cannot be turned into a manifest (or a skip under ``strict``)."""


@dataclass(frozen=True)
class DicomHeader:
    """What the builder needs from a DICOM header."""

    patient_id: str
    rows: int
    columns: int


@dataclass
class _Skips:
    items: list[dict[str, Any]]

    def add(self, item: str, reason: str, **where: Any) -> None:
        self.items.append({"item": item, "reason": reason, **where})

    def counts(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.items))


# --------------------------------------------------------------------------- DICOM discovery


def find_dicoms(root: str | Path) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Every ``*.dcm`` (any case) under ``root``, by file stem, in sorted path order.

    Returns:
        ``(id -> path, skips)``; a second file with an already-seen stem is skipped (listed
        with the path that was kept), never silently replacing the first.

    Raises:
        SIIMError: If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise SIIMError(f"--root {root} is not a folder")
    found: dict[str, Path] = {}
    skips = _Skips([])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(".dcm"):
                continue
            path = Path(dirpath) / name
            stem = name[: -len(".dcm")]
            if stem in found:
                skips.add(stem, "duplicate DICOM id", path=str(path), kept=str(found[stem]))
                continue
            found[stem] = path
    return found, skips.items


def read_header(path: Path, verify: bool = True) -> DicomHeader:
    """PatientID, Rows and Columns of a DICOM; with ``verify`` the pixels are decoded too.

    Raises:
        ImageReadError: If the file is not a readable DICOM image (e.g. a saved HTML page).
    """
    if verify:
        shape = read_image(path).shape  # the exact decode path training uses
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as exc:  # pydicom raises many types on garbage input
        raise ImageReadError(f"cannot read DICOM {path}: {type(exc).__name__}: {exc}") from exc
    if verify and shape[:2] != (rows, columns):
        raise ImageReadError(f"DICOM {path}: pixel data {shape[:2]} != Rows x Columns header")
    patient = str(ds.get("PatientID", "") or "").strip()
    return DicomHeader(patient_id=patient, rows=rows, columns=columns)


def _read_headers(
    dicoms: dict[str, Path], verify: bool, workers: int, progress: bool, skips: _Skips
) -> dict[str, DicomHeader]:
    def one(item: tuple[str, Path]) -> tuple[str, DicomHeader | str]:
        image_id, path = item
        try:
            return image_id, read_header(path, verify=verify)
        except ImageReadError as exc:
            return image_id, str(exc)

    headers: dict[str, DicomHeader] = {}
    results = _pmap(one, dicoms.items(), workers, progress, "reading DICOM headers", len(dicoms))
    for image_id, result in results:
        if isinstance(result, str):
            skips.add(image_id, "unreadable DICOM", path=str(dicoms[image_id]), detail=result)
        else:
            headers[image_id] = result
    return headers


def _pmap(fn: Callable, items: Iterable, workers: int, progress: bool, desc: str, total: int):
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        yield from tqdm(
            pool.map(fn, items), total=total, desc=desc, disable=not progress, unit="img"
        )


# --------------------------------------------------------------------------- splits


def assign_splits(
    frame: pd.DataFrame,
    seed: int,
    val_fraction: float = 0.5,
    holdout: tuple[float, float] = DEFAULT_HOLDOUT,
) -> pd.Series:
    """Patient-level splits (see the module docstring).

    Args:
        frame: Columns ``patient_id``, ``label`` and ``spurious`` (NaN where no tube label).
        seed: Seed of the shuffles.
        val_fraction: Share of the tube-labelled patients that go to val (rest: test).
        holdout: ``(val, test)`` shares used when no image has a tube label.

    Returns:
        Split name per row (same index as ``frame``). All images of a patient share a split.
    """
    rng = np.random.default_rng(seed)
    grouped = frame.groupby("patient_id", sort=True)
    tubed = grouped["spurious"].apply(lambda s: s.notna().any())
    split_of: dict[str, str] = {}
    if tubed.any():
        pool = frame[frame["patient_id"].isin(tubed.index[tubed])]
        strata = pool.groupby("patient_id", sort=True).agg(
            label=("label", "max"), tube=("spurious", "max")
        )
        for _, patients in strata.groupby(["label", "tube"], sort=True):
            ids = rng.permutation(patients.index.to_numpy())
            n_val = round(val_fraction * len(ids))
            split_of.update({p: "val" for p in ids[:n_val]})
            split_of.update({p: "test" for p in ids[n_val:]})
        split_of.update({p: "train" for p in tubed.index[~tubed]})
    else:
        val_share, test_share = holdout
        labels = grouped["label"].max()
        for _, patients in labels.groupby(labels, sort=True):
            ids = rng.permutation(patients.index.to_numpy())
            n_val, n_test = round(val_share * len(ids)), round(test_share * len(ids))
            split_of.update({p: "val" for p in ids[:n_val]})
            split_of.update({p: "test" for p in ids[n_val : n_val + n_test]})
            split_of.update({p: "train" for p in ids[n_val + n_test :]})
    return frame["patient_id"].map(split_of)


# --------------------------------------------------------------------------- masks


def _run_pixels(rows: list[RLERow]) -> int:
    """Pixels summed over the rows' runs; above the OR-ed mask's count iff rows overlap.

    (Runs within one row never overlap: their starts are relative and non-negative.)
    """
    return sum(int(r.runs[:, 1].sum()) for r in rows if r.runs is not None)


def _write_masks(
    positives: list[str],
    labels: dict[str, list[RLERow]],
    headers: dict[str, DicomHeader],
    folder: Path,
    source: str,
    workers: int,
    progress: bool,
) -> dict[str, int]:
    def one(image_id: str) -> tuple[str, int]:
        header = headers[image_id]
        mask = decode_rows(labels[image_id], header.rows, header.columns, source=source)
        write_png(folder / f"{image_id}.png", mask)
        return image_id, int(mask.sum())

    return dict(_pmap(one, positives, workers, progress, "writing masks", len(positives)))


# --------------------------------------------------------------------------- the builder


def prepare_siim(
    root: str | Path,
    rle_csv: str | Path,
    out: str | Path,
    tube_labels: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.5,
    holdout: tuple[float, float] = DEFAULT_HOLDOUT,
    strict: bool = False,
    verify: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Build ``out/manifest.csv``, ``out/masks/*.png`` and ``out/summary.json``.

    Args:
        root: Folder searched recursively for ``*.dcm``.
        rle_csv: The competition's label file (``train-rle.csv``, gzip accepted).
        out: Output folder (built aside and swapped in when complete).
        tube_labels: Chest-tube labels: the public pickle (id -> bool) or a CSV
            ``image_id,tube``.
        seed: Split seed.
        val_fraction: Share of tube-labelled patients sent to val (the rest: test).
        holdout: ``(val, test)`` shares when there are no tube labels.
        strict: Raise instead of skipping anything.
        verify: Decode every image's pixels (catches truncated files); else headers only.
        workers: Threads for reading DICOMs and writing masks.
        progress: Show progress bars.

    Returns:
        The summary (also written to ``out/summary.json``).

    Raises:
        SIIMError: On unusable inputs, or on any skip with ``strict``.
        RLEError / TubeLabelError: On malformed label files (naming file and line).
    """
    if not 0.0 < val_fraction < 1.0:
        raise SIIMError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if min(holdout) < 0 or sum(holdout) >= 1:
        raise SIIMError(f"holdout (val, test) shares must be >= 0 and sum below 1, got {holdout}")
    dicoms, found_skips = find_dicoms(root)
    if not dicoms:
        raise SIIMError(f"no .dcm files found under {root}")
    skips = _Skips(list(found_skips))
    labels = read_rle_csv(rle_csv)
    tubes = load_tube_labels(tube_labels) if tube_labels is not None else {}
    headers = _read_headers(dicoms, verify, workers, progress, skips)
    for image_id in sorted(set(headers) - set(labels)):
        skips.add(image_id, "DICOM without a label row", path=str(dicoms[image_id]))
    for image_id in sorted(set(labels) - set(dicoms)):
        skips.add(image_id, "label row without a DICOM", line=labels[image_id][0].line)
    if strict and skips.items:
        shown = [f"{s['item']} ({s['reason']})" for s in skips.items]
        raise SIIMError(
            f"--strict: {len(shown)} items would be skipped: {first_few(shown, 'items')}"
        )
    ids = sorted(set(headers) & set(labels))
    frame = _frame(ids, dicoms, headers, labels, tubes)
    frame["split"] = assign_splits(frame, seed, val_fraction, holdout)
    positives = frame.loc[frame["label"] == 1, "image_id"].tolist()
    with staged_folder(out, SUMMARY_FILE) as staging:
        pixels = _write_masks(
            positives, labels, headers, staging / "masks", str(rle_csv), workers, progress
        )
        frame["mask_path"] = [
            str(staging / "masks" / f"{i}.png") if i in pixels else "" for i in ids
        ]
        frame["pathology_pixels"] = [pixels.get(i, 0) for i in ids]
        write_manifest(_ordered(frame), staging / "manifest.csv")
        summary = _summary(frame, labels, tubes, dicoms, skips, locals_=dict(
            root=root, rle_csv=rle_csv, tube_labels=tube_labels, seed=seed,
            val_fraction=val_fraction, holdout=list(holdout), strict=strict, verify=verify,
        ))  # fmt: skip
        write_json_atomic(staging / SUMMARY_FILE, summary)
    return summary


def _frame(
    ids: list[str],
    dicoms: dict[str, Path],
    headers: dict[str, DicomHeader],
    labels: dict[str, list[RLERow]],
    tubes: dict[str, bool],
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ids,
            "image_path": [str(dicoms[i].resolve()) for i in ids],
            "label": [int(any(r.runs is not None for r in labels[i])) for i in ids],
            "spurious": [float(tubes[i]) if i in tubes else np.nan for i in ids],
            "mask_available": 1,
            # An empty PatientID keeps the image in a patient group of its own.
            "patient_id": [headers[i].patient_id or f"(none):{i}" for i in ids],
            "height": [headers[i].rows for i in ids],
            "width": [headers[i].columns for i in ids],
            "n_label_rows": [len(labels[i]) for i in ids],
        }
    )


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Contract columns first, then the extras."""
    extras = [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    return frame[[*REQUIRED_COLUMNS, *extras]]


def _split_counts(frame: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        part = frame[frame["split"] == split]
        tube = part["spurious"]
        out[split] = {
            "images": len(part),
            "patients": int(part["patient_id"].nunique()),
            "positive": int((part["label"] == 1).sum()),
            "negative": int((part["label"] == 0).sum()),
            "tube": {
                "yes": int((tube == 1).sum()),
                "no": int((tube == 0).sum()),
                "unknown": int(tube.isna().sum()),
            },
            "by_label_and_tube": {
                f"label={lab},tube={t}": n
                for (lab, t), n in sorted(
                    Counter(
                        zip(part["label"].astype(int), tube.map(_tube_name), strict=True)
                    ).items()
                )
            },
            "robust_subgroups": {
                "positives_without_tube": int(((part["label"] == 1) & (tube == 0)).sum()),
                "negatives_with_tube": int(((part["label"] == 0) & (tube == 1)).sum()),
            },
        }
    return out


def _tube_name(value: float) -> str:
    return "unknown" if pd.isna(value) else str(int(value))


def _summary(
    frame: pd.DataFrame,
    labels: dict[str, list[RLERow]],
    tubes: dict[str, bool],
    dicoms: dict[str, Path],
    skips: _Skips,
    locals_: dict[str, Any],
) -> dict[str, Any]:
    used = set(frame["image_id"])
    several = [i for i in used if len(labels[i]) > 1]
    union = dict(zip(frame["image_id"], frame["pathology_pixels"], strict=True))
    overlapping = sum(_run_pixels(labels[i]) > union[i] for i in several)  # no re-decoding
    per_patient = frame.groupby("patient_id").size()
    has_tubes = bool(tubes)
    return {
        "dataset": "siim",
        "inputs": {k: (str(v) if isinstance(v, Path) else v) for k, v in locals_.items()},
        "n_dicom_files": len(dicoms)
        + sum(s["reason"] == "duplicate DICOM id" for s in skips.items),
        "n_label_images": len(labels),
        "n_images": len(frame),
        "n_patients": len(per_patient),
        "patients_with_several_images": int((per_patient > 1).sum()),
        "images_with_several_label_rows": len(several),
        "images_with_overlapping_label_rows": int(overlapping),
        "tube_labels": {
            "entries": len(tubes),
            "matched": int(frame["spurious"].notna().sum()),
            "without_image": len(set(tubes) - used),
            "with_tube": int(sum(tubes.values())),
        },
        "split_rule": (
            "patient-level; tube-labelled patients -> val/test stratified by (label, tube), "
            "the rest -> train"
            if has_tubes
            else "patient-level; stratified by label into train/val/test (no tube labels)"
        ),
        "spurious_definition": "chest tube present (tube labels)" if has_tubes else "unknown",
        "attribute_columns": ["spurious"] if has_tubes else [],
        "splits": _split_counts(frame),
        "skipped_counts": skips.counts(),
        "skipped": skips.items,
        "run": run_metadata(),
    }
