"""The manifest contract: one ``manifest.csv`` describing every image of a dataset.

Columns (extra columns are allowed and kept):

* ``image_id`` -- unique, non-empty string.
* ``image_path`` -- relative to the manifest's folder, or absolute.
* ``label`` -- 0 or 1.
* ``split`` -- one of :data:`SPLITS`.
* ``spurious`` -- 0 or 1, empty where unknown.
* ``mask_path`` -- PNG (uint8, 0/255, same size as the image); empty where there is no file.
* ``mask_available`` -- 1 where the pixel annotation is known (a negative with a known-empty
  mask counts, so ``mask_available=1`` with an empty ``mask_path`` is fine for label 0),
  else 0.

Values are compared after stripping surrounding whitespace; ``0.0``/``1.0`` are accepted
for the 0/1 columns. Extra columns named ``*_id`` or ``*_path`` are read as strings (so
``patient_id`` keeps leading zeros); other extra columns use pandas' type inference.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec._text import first_few
from spatialspec.data.io import atomic_open

__all__ = [
    "PATH_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "ManifestError",
    "load_manifest",
    "write_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "image_id",
    "image_path",
    "label",
    "split",
    "spurious",
    "mask_path",
    "mask_available",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
PATH_COLUMNS: tuple[str, ...] = ("image_path", "mask_path", "spurious_mask_path", "roi_mask_path")

_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_INT_COLUMNS = ("label", "spurious", "mask_available")
_ENCODING = "utf-8-sig"


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` lists every problem found."""

    def __init__(self, path: str | os.PathLike[str], problems: Sequence[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        count = len(self.problems)
        header = f"invalid manifest {self.path}: {count} problem{'s' * (count != 1)}"
        super().__init__("\n  - ".join([header, *self.problems]))


# --------------------------------------------------------------------------- loading


def load_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest CSV.

    Args:
        path: The ``manifest.csv`` file.
        check_files: Also check that every image, mask and spurious-mask file exists.

    Returns:
        The manifest in file row order, with path columns resolved to absolute path strings
        (``""`` stays ``""``), ``label``/``mask_available`` as int64, ``spurious`` as float64
        (NaN where unknown) and ``split`` as str. ``df.attrs["manifest_path"]`` holds the
        absolute manifest path.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ManifestError: Listing every problem, each with the manifest path, CSV line numbers
            (header = line 1) and image ids of the offending rows.
    """
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    raw, header, lines = _read_raw(path)
    problems = _Validator(path, raw, lines).run(header, check_files)
    if problems:
        raise ManifestError(path, problems)
    return _convert(path, raw)


def _read_raw(path: Path) -> tuple[pd.DataFrame, list[str], list[int]]:
    """Read every cell as a stripped string ("" for empty) plus the header and line numbers."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=_ENCODING)
        header, lines = _scan_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise ManifestError(path, [f"{path}: the file is empty (no header line)"]) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(path, [f"{path}: not a readable CSV file: {exc}"]) from exc
    raw.columns = [str(name).strip() for name in raw.columns]
    raw = raw.apply(lambda col: col.str.strip())
    if len(lines) != len(raw):
        lines = list(range(2, len(raw) + 2))
    return raw, header, lines


def _scan_csv(path: Path) -> tuple[list[str], list[int]]:
    """Return the header and the first physical line number of every non-blank record."""
    with open(path, newline="", encoding=_ENCODING) as fh:
        reader = csv.reader(fh)
        header = [name.strip() for name in next(reader, [])]
        lines: list[int] = []
        previous = reader.line_num
        for record in reader:
            if record:
                lines.append(previous + 1)
            previous = reader.line_num
    return header, lines


def _convert(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    base = path.parent
    out = raw.copy()
    for col in PATH_COLUMNS:
        if col in out.columns:
            out[col] = [_resolve(value, base) for value in raw[col]]
    out["label"] = raw["label"].map(_BINARY).astype(np.int64)
    out["mask_available"] = raw["mask_available"].map(_BINARY).astype(np.int64)
    out["spurious"] = raw["spurious"].map(_BINARY).astype(np.float64)
    out["split"] = raw["split"].astype(str)
    inferred = [
        i
        for i, col in enumerate(raw.columns)
        if col not in REQUIRED_COLUMNS and not col.endswith(("_id", "_path"))
    ]
    if inferred:
        typed = pd.read_csv(path, encoding=_ENCODING)
        for i in inferred:
            out[raw.columns[i]] = typed.iloc[:, i].to_numpy()
    out.attrs["manifest_path"] = str(path)
    return out


def _resolve(value: str, base: Path) -> str:
    if not value:
        return ""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


# --------------------------------------------------------------------------- validation


class _Validator:
    """Collects human-readable problems about one raw (all-string) manifest frame."""

    def __init__(self, path: Path, raw: pd.DataFrame, lines: list[int]) -> None:
        self.path = path
        self.raw = raw
        self.lines = lines
        self.problems: list[str] = []

    def run(self, header: list[str], check_files: bool) -> list[str]:
        self._check_columns(header)
        cols = set(self.raw.columns)
        if "image_id" in cols:
            self._check_ids()
        self._check_binary("label", allow_empty=False)
        self._check_split()
        self._check_binary("spurious", allow_empty=True)
        self._check_binary("mask_available", allow_empty=False)
        if {"label", "mask_available", "mask_path"} <= cols:
            self._check_mask_consistency()
        if "image_path" in cols:
            self._flag(self.raw["image_path"] == "", "image_path is empty", "image_path")
        if check_files:
            for col in PATH_COLUMNS:
                if col in cols:
                    self._check_files_exist(col)
        return self.problems

    # -- helpers

    def _flag(self, bad: Any, what: str, show: str | None = None, note: str = "") -> None:
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            self.problems.append(f"{self.path}: {what} at {self._rows(bad, show)}{note}")

    def _rows(self, bad: np.ndarray, show: str | None) -> str:
        return first_few([self._row(i, show) for i in np.flatnonzero(bad)])

    def _row(self, i: int, show: str | None) -> str:
        details = []
        if "image_id" in self.raw.columns:
            details.append(f"image_id {self.raw['image_id'].iat[i]!r}")
        if show is not None:
            details.append(f"{show} {self.raw[show].iat[i]!r}")
        suffix = f" ({', '.join(details)})" if details else ""
        return f"line {self.lines[i]}{suffix}"

    # -- checks

    def _check_columns(self, header: list[str]) -> None:
        found = header or list(self.raw.columns)
        missing = [col for col in REQUIRED_COLUMNS if col not in self.raw.columns]
        if missing:
            self.problems.append(
                f"{self.path}: missing required column(s) {', '.join(missing)}; "
                f"found columns {', '.join(found) or '(none)'}"
            )
        duplicated = sorted({name for name in found if found.count(name) > 1})
        if duplicated:
            self.problems.append(
                f"{self.path}: duplicate column name(s) {', '.join(duplicated)} in the header"
            )

    def _check_ids(self) -> None:
        ids = self.raw["image_id"]
        self._flag(ids == "", "image_id is empty")
        dup = ids.duplicated(keep=False).to_numpy() & (ids != "").to_numpy()
        if dup.any():
            values = [repr(v) for v in dict.fromkeys(ids[dup])]
            self._flag(dup, f"duplicate image_id value(s) {first_few(values, 'values')}")

    def _check_binary(self, col: str, *, allow_empty: bool) -> None:
        if col not in self.raw.columns:
            return
        valid = set(_BINARY) | ({""} if allow_empty else set())
        rule = "0, 1 or empty" if allow_empty else "0 or 1"
        self._flag(~self.raw[col].isin(valid), f"{col} must be {rule}", col)

    def _check_split(self) -> None:
        if "split" not in self.raw.columns:
            return
        bad = ~self.raw["split"].isin(SPLITS)
        values = ", ".join(repr(v) for v in dict.fromkeys(self.raw["split"][bad]))
        valid = ", ".join(repr(v) for v in SPLITS)
        self._flag(bad, f"split must be one of {valid}; found invalid value(s) {values}", "split")

    def _check_mask_consistency(self) -> None:
        raw = self.raw
        bad = (
            (raw["label"].map(_BINARY) == 1)
            & (raw["mask_available"].map(_BINARY) == 1)
            & (raw["mask_path"] == "")
        )
        self._flag(bad, "mask_available=1 and label=1 but mask_path is empty")

    def _check_files_exist(self, col: str) -> None:
        base = self.path.parent
        paths = self.raw[col]
        exists = [not value or os.path.isfile(_resolve(value, base)) for value in paths]
        kind = col.removesuffix("_path").replace("_", " ")
        note = f"; relative paths are resolved against {base}"
        self._flag(~np.asarray(exists, dtype=bool), f"{kind} file not found", col, note)


# --------------------------------------------------------------------------- writing


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Atomically write ``df`` as a manifest CSV (temp file in the same folder + os.replace).

    Absolute paths that lie under the manifest's folder are written relative to it; other
    paths are written unchanged. ``label``, ``spurious`` and ``mask_available`` are written
    as integers (NaN/None as empty). The frame is not validated: :func:`load_manifest` does.

    Args:
        df: Manifest frame, e.g. as returned by :func:`load_manifest`.
        path: Destination ``manifest.csv``; parent folders are created.
    """
    path = Path(os.path.abspath(path))
    out = df.copy()
    for col in PATH_COLUMNS:
        if col in out.columns:
            out[col] = [_relativise(value, path.parent) for value in out[col]]
    for col in _INT_COLUMNS:
        if col in out.columns:
            out[col] = [_format_int(value) for value in out[col]]
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        out.to_csv(fh, index=False)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _relativise(value: Any, base: Path) -> str:
    if _is_missing(value) or str(value) == "":
        return ""
    text = str(value)
    if not os.path.isabs(text):
        return text
    normalised = Path(os.path.normpath(text))
    if normalised.is_relative_to(base):
        return normalised.relative_to(base).as_posix()
    return text


def _format_int(value: Any) -> str:
    if _is_missing(value) or (isinstance(value, str) and value.strip() == ""):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else str(value)
