"""Chest-tube labels for SIIM-ACR images (Saab et al., MLHC 2022).

The public file ``cxr_tube_dict.pkl`` is a pickled ``dict`` SOPInstanceUID -> bool. A pickle
from the internet can run arbitrary code when loaded, so it is read with an unpickler that
refuses every global reference: a plain dict of str -> bool needs none. A CSV with the columns
``image_id,tube`` (values 0/1, true/false or yes/no) is accepted as well.
"""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Iterator
from typing import IO, Any, NoReturn

from spatialspec._text import MAX_SHOWN

__all__ = ["TubeLabelError", "load_tube_labels"]

_PICKLE_PROTO = 0x80
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_ENCODING = "utf-8-sig"
_COLUMNS = ("image_id", "tube")
_ALLOWED = "only a plain dict of str -> bool is accepted"
_VALUES = {
    **dict.fromkeys(("1", "1.0", "true", "yes"), True),
    **dict.fromkeys(("0", "0.0", "false", "no"), False),
}
_VALUE_NAMES = "0/1, true/false or yes/no"


class TubeLabelError(ValueError):
    """A chest-tube label file is unreadable, unsafe or malformed."""


def load_tube_labels(path: str | os.PathLike[str]) -> dict[str, bool]:
    """Read chest-tube labels from a pickle (safely) or a CSV file.

    A file whose first byte is the pickle protocol marker ``0x80``, or named ``*.pkl`` /
    ``*.pickle``, is read as a pickle; anything else as a CSV with a header ``image_id,tube``
    (extra columns are ignored; values 0/1, true/false, yes/no, case-insensitive).

    Args:
        path: The label file.

    Returns:
        Image id (SOPInstanceUID) -> whether the image shows a chest tube.

    Raises:
        TubeLabelError: If the file cannot be read; if the pickle references any class or
            function (it is never called), is corrupt, or is not a dict of non-empty str ->
            bool (or int 0/1); or listing the bad rows of a CSV as ``path:line``.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            is_pickle = fh.read(1) == bytes([_PICKLE_PROTO])
            fh.seek(0)
            if is_pickle or name.lower().endswith(_PICKLE_SUFFIXES):
                return _validate(name, _load_pickle(name, fh))
        return _load_csv(name)
    except OSError as exc:
        raise TubeLabelError(f"{name}: cannot read tube labels: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- pickle


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler for plain containers: every global (class, function) is refused."""

    def __init__(self, fh: IO[bytes], name: str) -> None:
        super().__init__(fh)
        self.name = name

    def find_class(self, module: str, name: str) -> NoReturn:
        raise TubeLabelError(
            f"{self.name}: the pickle references {module}.{name}, which is not allowed "
            f"({_ALLOWED}); nothing was executed"
        )

    def persistent_load(self, pid: Any) -> NoReturn:
        raise TubeLabelError(
            f"{self.name}: the pickle holds a persistent id, which is not allowed ({_ALLOWED})"
        )


def _load_pickle(name: str, fh: IO[bytes]) -> Any:
    try:
        data = _NoGlobalsUnpickler(fh, name).load()
    except TubeLabelError:
        raise
    except Exception as exc:  # corrupt pickles raise many types (EOFError, KeyError, ...)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise TubeLabelError(f"{name}: not a readable pickle ({detail})") from exc
    if fh.read(1):
        raise TubeLabelError(f"{name}: unexpected data after the end of the pickle")
    return data


def _validate(name: str, data: Any) -> dict[str, bool]:
    if not isinstance(data, dict):
        raise TubeLabelError(
            f"{name}: the pickle holds a {type(data).__name__}, expected a dict ({_ALLOWED})"
        )
    labels: dict[str, bool] = {}
    problems: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip():
            problems.append(f"key {key!r} ({type(key).__name__}) is not a non-empty str")
        elif isinstance(value, bool) or (type(value) is int and value in (0, 1)):
            labels[key] = bool(value)
        else:
            problems.append(f"key {key!r}: value {value!r} ({type(value).__name__}) is not bool")
    if problems:
        _raise(f"invalid tube label pickle {name}", problems)
    return labels


# --------------------------------------------------------------------------- CSV


def _records(fh: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (first physical line, stripped fields) for every non-blank CSV record."""
    reader = csv.reader(fh)
    previous = 0
    for record in reader:
        fields = [field.strip() for field in record]
        if any(fields) or len(fields) > 1:
            yield previous + 1, fields
        previous = reader.line_num


def _load_csv(name: str) -> dict[str, bool]:
    try:
        with open(name, encoding=_ENCODING, newline="") as fh:
            records = list(_records(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TubeLabelError(f"{name}: not a readable CSV file: {exc}") from exc
    if not records:
        raise TubeLabelError(f"{name}: the file is empty (expected a header image_id,tube)")
    header = [field.lower() for field in records[0][1]]
    missing = [col for col in _COLUMNS if col not in header]
    if missing:
        raise TubeLabelError(
            f"{name}:{records[0][0]}: missing column(s) {', '.join(missing)}; "
            f"found columns {', '.join(records[0][1]) or '(none)'}"
        )
    return _parse_rows(name, records[1:], [header.index(col) for col in _COLUMNS])


def _parse_rows(
    name: str, records: list[tuple[int, list[str]]], cols: list[int]
) -> dict[str, bool]:
    labels: dict[str, bool] = {}
    seen: dict[str, int] = {}
    problems: list[str] = []
    for line, fields in records:
        image_id, raw = (fields[i] if i < len(fields) else "" for i in cols)
        value = _VALUES.get(raw.lower())
        where = f"{name}:{line}"
        if not image_id:
            problems.append(f"{where}: image_id is empty")
        elif value is None:
            problems.append(f"{where}: image {image_id!r}: tube {raw!r} is not {_VALUE_NAMES}")
        elif image_id in labels and labels[image_id] != value:
            problems.append(
                f"{where}: image {image_id!r} has tube={value} here but "
                f"tube={labels[image_id]} at line {seen[image_id]} (contradictory rows)"
            )
        elif image_id not in labels:
            labels[image_id], seen[image_id] = value, line
    if problems:
        _raise(f"invalid tube label file {name}", problems)
    return labels


def _raise(header: str, problems: list[str]) -> NoReturn:
    """Raise one TubeLabelError listing the first few problems and ``... and N more``."""
    count = len(problems)
    lines = [f"{header}: {count} problem{'s' * (count != 1)}", *problems[:MAX_SHOWN]]
    if count > MAX_SHOWN:
        lines.append(f"... and {count - MAX_SHOWN} more")
    raise TubeLabelError("\n  - ".join(lines))
