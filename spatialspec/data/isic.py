"""ISIC 2018 Task 1/2 lesions with the trap-set splits of Bissoto et al. (CVPR-W 2020).

Inputs: the unzipped ISIC 2018 training images (``ISIC2018_Task1-2_Training_Input/*.jpg``), their
lesion masks (``ISIC2018_Task1_Training_GroundTruth/*_segmentation.png``) and the trap-set CSVs
``isic_annotated_{train,val,test}{K}.csv`` for one split seed ``K`` in 1..5. The CSVs name images
``ISIC_xxxxxxx.png`` although the files are ``.jpg``; the suffix is ignored when matching.

Splits: every val image of a trap set is also in its train set. By default (``disjoint``) val
images are removed from train. ``paper_splits=True`` keeps the original overlap: the val copy
of such an image gets the image_id ``<id>@val``; the column ``source_id`` holds ``<id>`` for
every row.

Spurious artifacts (:data:`SPURIOUS_DEFINITION`): an acquisition artifact (every annotated column
but ``vasc``, vascular structures, which belong to the lesion) is *spurious* when it is
positively associated with malignancy in the train split of the chosen seed, i.e.
P(malignant | artifact) > P(malignant | no artifact) among the train rows of the trap-set CSVs
(after the disjoint/paper split handling, before images missing on disk are skipped), and it is
present in at least :data:`MIN_SPURIOUS_IMAGES` train images. The manifest's ``spurious`` column
is 1 when an image shows any spurious artifact, else 0.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from spatialspec._text import MAX_SHOWN
from spatialspec.data.io import ImageReadError, read_mask
from spatialspec.data.manifest import write_manifest
from spatialspec.runinfo import write_json_atomic

__all__ = [
    "ARTIFACTS",
    "IMAGE_DIR",
    "MASK_DIR",
    "MIN_SPURIOUS_IMAGES",
    "SEEDS",
    "SPURIOUS_CANDIDATES",
    "SPURIOUS_DEFINITION",
    "ISICError",
    "artifact_association",
    "check_masks",
    "check_seed",
    "find_images",
    "find_masks",
    "prepare_isic",
    "read_trap_sets",
    "select_spurious",
    "trap_set_paths",
]

ARTIFACTS: tuple[str, ...] = (
    "dark_corner", "hair", "gel_border", "gel_bubble", "ruler", "ink", "patches", "vasc",
)  # fmt: skip
#: Columns that may be selected as spurious: the acquisition artifacts. ``vasc`` (vascular
#: structures) is a dermoscopic feature of the lesion itself -- a legitimate sign of malignancy,
#: positively associated in test as much as in train -- so it is reported but never "spurious".
SPURIOUS_CANDIDATES: tuple[str, ...] = tuple(a for a in ARTIFACTS if a != "vasc")
MIN_SPURIOUS_IMAGES = 10
SEEDS: tuple[int, ...] = (1, 2, 3, 4, 5)
IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
MASK_SUFFIX = "_segmentation.png"
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
VAL_COPY_SUFFIX = "@val"
CSV_COLUMNS: tuple[str, ...] = ("image", *ARTIFACTS, "label", "label_string")
LABEL_STRINGS = {0: "benign", 1: "malignant"}
SPURIOUS_DEFINITION = (
    "An acquisition artifact (any annotated column except vasc, vascular structures, which is a "
    "feature of the lesion itself) is spurious when it is positively associated with "
    "malignancy in the train split of this seed: P(malignant | artifact) > "
    "P(malignant | no artifact) over the train rows of the trap-set CSVs (after the "
    "disjoint/paper split handling), and it is present in at least "
    f"{MIN_SPURIOUS_IMAGES} train images. spurious = 1 when an image shows any spurious "
    "artifact, else 0."
)

_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_SPLIT_ORDER = ("train", "val", "test")
_MASK_WORKERS = 2


class ISICError(ValueError):
    """Bad ISIC inputs; ``problems`` lists every problem found (the message shows the first 5)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        lines = [message, *self.problems[:MAX_SHOWN]]
        extra = len(self.problems) - MAX_SHOWN
        if extra > 0:
            lines.append(f"... and {extra} more ({len(self.problems)} problems in total)")
        super().__init__("\n  - ".join(lines))


def _problems_error(what: str, problems: Sequence[str]) -> ISICError:
    count = len(problems)
    return ISICError(f"{what}: {count} problem{'s' * (count != 1)}", problems)


# --------------------------------------------------------------------------- trap-set CSVs


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it names one of the five trap-set splits, else raise ISICError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed not in SEEDS:
        raise ISICError(f"--seed must be 1..5 (the five trap-set splits), got {seed}")
    return int(seed)


def trap_set_paths(trap_dir: str | os.PathLike[str], seed: int) -> dict[str, Path]:
    """Paths of the train/val/test trap-set CSVs of ``seed`` (not checked for existence)."""
    seed = check_seed(seed)
    base = Path(os.path.abspath(trap_dir))
    return {split: base / f"isic_annotated_{split}{seed}.csv" for split in _SPLIT_ORDER}


def read_trap_sets(
    trap_dir: str | os.PathLike[str], seed: int, *, paper_splits: bool = False
) -> pd.DataFrame:
    """Read, validate and combine the three trap-set CSVs of one seed.

    Args:
        trap_dir: Folder holding ``isic_annotated_{train,val,test}{seed}.csv``.
        seed: Trap-set split, 1..5.
        paper_splits: Keep val images in train too (val copies get image_id ``<id>@val``);
            by default val images are removed from train.

    Returns:
        One row per manifest row with columns ``image_id``, ``source_id``, ``split``,
        ``label``, ``label_string`` and the :data:`ARTIFACTS` (int 0/1), in split order
        train, val, test and file order within a split. ``df.attrs["split_stats"]`` holds
        ``val_in_train``, ``val_not_in_train``, ``val_removed_from_train`` and
        ``val_duplicated_in_train``.

    Raises:
        ISICError: On a bad seed, missing files, or (listing every problem with file and line)
            missing columns, non-binary labels/artifacts, label_string inconsistent with label,
            duplicate images, images in both train and test (or val and test), and val rows
            that disagree with the train row of the same image.
    """
    paths = trap_set_paths(trap_dir, seed)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ISICError(f"trap-set CSV(s) not found for seed {seed}: {', '.join(missing)}")
    frames, problems = {}, []
    for split, path in paths.items():
        frames[split], found = _read_trap_csv(path)
        problems += found
    if not problems:
        problems += _cross_check(frames, paths)
    if problems:
        raise _problems_error(f"invalid trap-set CSVs for seed {seed}", problems)
    return _combine(frames, paper_splits)


def _read_trap_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read one CSV as stripped strings plus a ``line`` column; return it and its problems."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header, records, problems = _scan(path, csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        return pd.DataFrame(), [f"{path}: not a readable CSV file: {exc}"]
    missing = [col for col in CSV_COLUMNS if col not in header]
    if missing:
        found = ", ".join(name or "(unnamed)" for name in header) or "(none)"
        return pd.DataFrame(), [f"{path}: missing column(s) {', '.join(missing)}; found {found}"]
    index = {name: header.index(name) for name in CSV_COLUMNS}
    rows = [{col: rec[i] for col, i in index.items()} | {"line": line} for line, rec in records]
    frame = pd.DataFrame(rows, columns=[*CSV_COLUMNS, "line"])
    frame["source_id"] = [_image_id(name) for name in frame["image"]]
    return frame, problems + _check_rows(path, frame)


def _scan(path: Path, reader: Any) -> tuple[list[str], list, list[str]]:
    """Header, (line, cells) of the non-blank records of the right width, and problems."""
    header: list[str] | None = None
    records, problems = [], []
    previous = reader.line_num
    for record in reader:
        start, previous = previous + 1, reader.line_num
        cells = [cell.strip() for cell in record]
        if not any(cells):
            continue
        if header is None:
            header = cells
        elif len(cells) != len(header):
            problems.append(f"{path} line {start}: {len(cells)} fields, expected {len(header)}")
        else:
            records.append((start, cells))
    return header or [], records, problems


def _image_id(name: str) -> str:
    """``ISIC_0000000.png`` -> ``ISIC_0000000`` (the CSVs say .png, the files are .jpg)."""
    stem, suffix = os.path.splitext(os.path.basename(name))
    return stem if suffix.lower() in IMAGE_SUFFIXES else os.path.basename(name)


def _check_rows(path: Path, frame: pd.DataFrame) -> list[str]:
    problems = []
    first_line: dict[str, int] = {}
    for row in frame.itertuples(index=False):
        where = f"{path} line {row.line}"
        problems += [f"{where}: {msg}" for msg in _row_problems(row)]
        if row.source_id in first_line:
            problems.append(
                f"{where}: duplicate image {row.source_id} (first listed at line "
                f"{first_line[row.source_id]})"
            )
        elif row.source_id:
            first_line[row.source_id] = row.line
    return problems


def _row_problems(row: Any) -> list[str]:
    problems = [] if row.source_id else ["the image name is empty"]
    label = _BINARY.get(row.label)
    if label is None:
        problems.append(f"label must be 0 or 1, got {row.label!r}")
    elif row.label_string.lower() != LABEL_STRINGS[label]:
        problems.append(
            f"label_string {row.label_string!r} does not match label {label} "
            f"(expected {LABEL_STRINGS[label]!r})"
        )
    for name in ARTIFACTS:
        value = getattr(row, name)
        if value not in _BINARY:
            problems.append(f"{name} must be 0 or 1, got {value!r}")
    return problems


def _cross_check(frames: Mapping[str, pd.DataFrame], paths: Mapping[str, Path]) -> list[str]:
    """Train/test and val/test must be disjoint; val rows must agree with their train rows."""
    lines = {split: dict(zip(f.source_id, f.line, strict=True)) for split, f in frames.items()}
    problems = []
    for split in ("train", "val"):
        for image_id, line in lines["test"].items():
            if image_id in lines[split]:
                problems.append(
                    f"{paths['test']} line {line}: image {image_id} is also in {paths[split]} "
                    f"line {lines[split][image_id]} ({split} and test must be disjoint)"
                )
    train = frames["train"].set_index("source_id")
    for row in frames["val"].itertuples(index=False):
        if row.source_id not in train.index:
            continue
        other = train.loc[row.source_id]
        differ = [c for c in ("label", *ARTIFACTS) if _BINARY[getattr(row, c)] != _BINARY[other[c]]]
        if differ:
            problems.append(
                f"{paths['val']} line {row.line}: image {row.source_id} has different "
                f"{', '.join(differ)} than in {paths['train']} line {other['line']}"
            )
    return problems


def _combine(frames: Mapping[str, pd.DataFrame], paper_splits: bool) -> pd.DataFrame:
    train, val, test = (frames[split].copy() for split in _SPLIT_ORDER)
    in_val = train["source_id"].isin(set(val["source_id"]))
    n_val_in_train = int(in_val.sum())
    if not paper_splits:
        train = train[~in_val].copy()
    for split, part in (("train", train), ("val", val), ("test", test)):
        part["split"] = split
        part["image_id"] = part["source_id"]
    if paper_splits:
        val["image_id"] = val["source_id"] + VAL_COPY_SUFFIX
    out = pd.concat([train, val, test], ignore_index=True)
    for col in ("label", *ARTIFACTS):
        out[col] = out[col].map(_BINARY).astype(np.int64)
    out["label_string"] = out["label_string"].str.lower()
    out = out[["image_id", "source_id", "split", "label", "label_string", *ARTIFACTS]]
    out.attrs["split_stats"] = {
        "val_in_train": n_val_in_train,
        "val_not_in_train": len(val) - n_val_in_train,
        "val_removed_from_train": 0 if paper_splits else n_val_in_train,
        "val_duplicated_in_train": n_val_in_train if paper_splits else 0,
    }
    return out


# --------------------------------------------------------------------------- spurious artifacts


def artifact_association(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """P(malignant | artifact present / absent) per artifact in the train and test splits.

    Args:
        frame: Rows with ``split``, ``label`` and the :data:`ARTIFACTS` columns (0/1), e.g.
            from :func:`read_trap_sets`.

    Returns:
        Per artifact: ``n_train_with``, ``p_malignant_with``, ``p_malignant_without`` (train),
        ``n_test_with``, ``p_malignant_with_test``, ``p_malignant_without_test`` (test);
        probabilities are None where no row qualifies.
    """
    train = frame[frame["split"] == "train"]
    test = frame[frame["split"] == "test"]
    out = {}
    for name in ARTIFACTS:
        with_train, with_test = train[name] == 1, test[name] == 1
        out[name] = {
            "n_train_with": int(with_train.sum()),
            "p_malignant_with": _rate(train["label"][with_train]),
            "p_malignant_without": _rate(train["label"][~with_train]),
            "n_test_with": int(with_test.sum()),
            "p_malignant_with_test": _rate(test["label"][with_test]),
            "p_malignant_without_test": _rate(test["label"][~with_test]),
        }
    return out


def _rate(labels: pd.Series) -> float | None:
    return float(labels.mean()) if len(labels) else None


def select_spurious(
    association: Mapping[str, Mapping[str, Any]],
    candidates: Sequence[str] = SPURIOUS_CANDIDATES,
    min_images: int = MIN_SPURIOUS_IMAGES,
) -> list[str]:
    """Artifacts positively associated with malignancy in train (see the module docstring).

    Args:
        association: Output of :func:`artifact_association`.
        candidates: Artifacts that may be selected.
        min_images: Minimum number of train images showing the artifact.

    Returns:
        The selected artifacts in :data:`ARTIFACTS` order.
    """
    selected = []
    for name in ARTIFACTS:
        stats = association[name]
        p_with, p_without = stats["p_malignant_with"], stats["p_malignant_without"]
        if name not in candidates or stats["n_train_with"] < min_images:
            continue
        if p_with is not None and p_without is not None and p_with > p_without:
            selected.append(name)
    return selected


# --------------------------------------------------------------------------- files on disk


def find_images(image_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Map image id -> image file (.jpg preferred over .jpeg/.png; other files ignored)."""
    found = [p for p in Path(image_dir).iterdir() if _is_listed_file(p, IMAGE_SUFFIXES)]
    found.sort(key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.name))
    images: dict[str, Path] = {}
    for path in found:
        images.setdefault(path.stem, path)
    return images


def find_masks(mask_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Map image id -> ``<id>_segmentation.png`` (``_Segmentation.png`` is accepted too)."""
    found = [p for p in Path(mask_dir).iterdir() if _is_listed_file(p, (MASK_SUFFIX,))]
    found.sort(key=lambda p: (not p.name.endswith(MASK_SUFFIX), p.name))
    masks: dict[str, Path] = {}
    for path in found:
        masks.setdefault(path.name[: -len(MASK_SUFFIX)], path)
    return masks


def _is_listed_file(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(tuple(suffixes)) and path.is_file()


def _attach_files(
    frame: pd.DataFrame, images: Mapping[str, Path], masks: Mapping[str, Path]
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Add absolute image/mask paths; drop (and report) rows whose files are missing."""
    skipped = []
    for image_id in dict.fromkeys(frame["source_id"]):
        if image_id not in images:
            skipped.append({"image_id": image_id, "reason": "missing_image"})
        elif image_id not in masks:
            skipped.append({"image_id": image_id, "reason": "missing_mask"})
    gone = {item["image_id"] for item in skipped}
    kept = frame[~frame["source_id"].isin(gone)].copy()
    kept["image_path"] = [os.path.abspath(images[i]) for i in kept["source_id"]]
    kept["mask_path"] = [os.path.abspath(masks[i]) for i in kept["source_id"]]
    return kept, skipped


def _check_pair(image_path: str, mask_path: str) -> tuple[str | None, bool]:
    """Return (problem or None, mask is empty) for one image and its mask."""
    try:
        with Image.open(image_path) as img:
            width, height = img.size
    except Exception as exc:
        return f"cannot read image {image_path}: {type(exc).__name__}: {exc}", False
    try:
        mask = read_mask(mask_path)
    except ImageReadError as exc:
        return f"{exc} (image {image_path})", False
    if mask.shape != (height, width):
        size = f"{mask.shape[1]}x{mask.shape[0]}"
        return (
            f"mask {mask_path} is {size} (width x height) but image {image_path} is "
            f"{width}x{height}"
        ), False
    return None, not mask.any()


def check_masks(pairs: Sequence[tuple[str, str]], progress: bool = True) -> tuple[list[str], int]:
    """Check every (image, mask) pair: mask readable, binary and the image's size.

    Masks are decoded one at a time per worker (two threads) and never kept.

    Returns:
        The problems found and the number of empty (all-zero) masks.
    """
    from tqdm.auto import tqdm

    problems, empty = [], 0
    with ThreadPoolExecutor(max_workers=_MASK_WORKERS) as pool:
        results = pool.map(lambda pair: _check_pair(*pair), pairs)
        bar = tqdm(results, total=len(pairs), desc="ISIC masks", disable=not progress)
        for problem, is_empty in bar:
            if problem:
                problems.append(problem)
            empty += is_empty
    return problems, empty


# --------------------------------------------------------------------------- prepare


def _input_dirs(root: str | os.PathLike[str], trap_sets: str | os.PathLike[str]) -> dict:
    root = Path(os.path.abspath(root))
    dirs = {"root": root, "image_dir": root / IMAGE_DIR, "mask_dir": root / MASK_DIR}
    dirs["trap_sets"] = Path(os.path.abspath(trap_sets))
    for key, what in (("image_dir", "ISIC image"), ("mask_dir", "ISIC mask"), ("trap_sets", "")):
        if not dirs[key].is_dir():
            label = f"{what} folder" if what else "trap-set folder"
            raise ISICError(f"{label} not found: expected {dirs[key]}")
    return dirs


def prepare_isic(
    root: str | os.PathLike[str],
    trap_sets: str | os.PathLike[str],
    seed: int,
    out: str | os.PathLike[str],
    paper_splits: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/manifest.csv`` and ``out/summary.json`` for ISIC 2018 with trap-set splits.

    Args:
        root: Folder holding ``ISIC2018_Task1-2_Training_Input`` and
            ``ISIC2018_Task1_Training_GroundTruth``.
        trap_sets: Folder holding ``isic_annotated_{train,val,test}{seed}.csv``.
        seed: Trap-set split, 1..5.
        out: Output folder (created if missing; existing files are replaced atomically).
        paper_splits: Keep val images in train as in the original splits (val copies get the
            image_id ``<id>@val``); by default val images are removed from train.
        strict: Raise instead of skipping images whose image or mask file is missing.
        progress: Show a progress bar while checking the masks.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ISICError: On a bad seed, missing folders or CSVs, invalid CSV rows, bad masks (not
            binary, or not the image's size), or skipped images when ``strict``.
    """
    seed = check_seed(seed)
    dirs = _input_dirs(root, trap_sets)
    frame = read_trap_sets(dirs["trap_sets"], seed, paper_splits=paper_splits)
    split_stats = dict(frame.attrs["split_stats"])
    images = find_images(dirs["image_dir"])
    kept, skipped = _attach_files(frame, images, find_masks(dirs["mask_dir"]))
    if strict and skipped:
        shown = [f"{item['image_id']}: {item['reason']}" for item in skipped]
        raise ISICError(f"strict: {len(skipped)} listed image(s) would be skipped", shown)
    pairs = list(dict.fromkeys(zip(kept["image_path"], kept["mask_path"], strict=True)))
    problems, n_empty = check_masks(pairs, progress=progress)
    if problems:
        raise _problems_error("invalid ISIC masks", problems)
    association = artifact_association(frame)
    spurious = select_spurious(association)
    manifest = _manifest(kept, spurious)
    out = Path(os.path.abspath(out))
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, out / "manifest.csv")
    unlisted = len(set(images) - set(frame["source_id"]))
    summary = {
        "dataset": "isic",
        "seed": seed,
        "split_mode": "paper" if paper_splits else "disjoint",
        **split_stats,
        "definition": SPURIOUS_DEFINITION,
        "spurious_artifacts": spurious,
        "artifact_association": association,
        "attribute_columns": [*ARTIFACTS, "spurious"],
        "n_images": len(manifest),
        "n_source_images": int(manifest["source_id"].nunique()),
        "splits": _counts(manifest),
        "skipped": skipped,
        "skipped_counts": dict(Counter(item["reason"] for item in skipped)),
        "unlisted_images": unlisted,
        "empty_masks": n_empty,
        "inputs": _inputs(dirs, seed),
        "manifest": str(out / "manifest.csv"),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def _manifest(kept: pd.DataFrame, spurious: Sequence[str]) -> pd.DataFrame:
    out = kept.copy()
    flags = out[list(spurious)].to_numpy().any(axis=1) if spurious else np.zeros(len(out), bool)
    out["spurious"] = flags.astype(np.int64)
    out["mask_available"] = 1
    columns = ["image_id", "image_path", "label", "split", "spurious", "mask_path"]
    columns += ["mask_available", *ARTIFACTS, "label_string", "source_id"]
    return out[columns].reset_index(drop=True)


def _counts(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per split: images, positives, negatives, (label, spurious) cells, robust subgroup sizes.

    E.g. ``splits["test"]["label1_spurious0"]`` (positives without a spurious artifact).
    """
    counts = {}
    for split in _SPLIT_ORDER:
        part = manifest[manifest["split"] == split]
        cells: dict[str, Any] = {
            "images": len(part),
            "positive": int((part["label"] == 1).sum()),
            "negative": int((part["label"] == 0).sum()),
        }
        for label in (0, 1):
            for spur in (0, 1):
                hit = (part["label"] == label) & (part["spurious"] == spur)
                cells[f"label{label}_spurious{spur}"] = int(hit.sum())
        cells["robust_subgroups"] = {
            "positives_without_spurious": cells["label1_spurious0"],
            "negatives_with_spurious": cells["label0_spurious1"],
        }
        counts[split] = cells
    return counts


def _inputs(dirs: Mapping[str, Path], seed: int) -> dict[str, Any]:
    files = trap_set_paths(dirs["trap_sets"], seed)
    return {key: str(path) for key, path in dirs.items()} | {
        "trap_set_files": {split: str(path) for split, path in files.items()}
    }
