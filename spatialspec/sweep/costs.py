"""Annotation costs: seconds per annotated image of each kind, and what a run's annotations cost.

``spatialspec sweep --costs mask=79,box=7,attribute=1,label=1`` (sweep config key ``costs:``, a
mapping or the same text) prices the counts every fit records in ``run.json["annotations"]``
(:mod:`spatialspec.annotations`): ``annotation_seconds = Σ count[kind] × seconds[kind]``. Kinds
not given keep their default (:data:`DEFAULT_COSTS`); the costs used are recorded in
``sweep.json`` (``costs``) and kept by later invocations and ``--collect`` unless ``--costs``
changes some. Costs touch only the summaries: re-pricing a finished sweep is
``spatialspec sweep --out DIR --collect --costs mask=600``.

The defaults are published crowd-sourcing times on natural images (:data:`COST_SOURCES`), per
object instance; they are **not** measured on medical images, where an expert draws the mask
(slower, and dearer per hour). Set your own for your annotators.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from spatialspec.annotations import KINDS

__all__ = [
    "ANNOTATION_COLUMNS",
    "COST_SOURCES",
    "COUNT_COLUMNS",
    "DEFAULT_COSTS",
    "annotation_row",
    "annotation_seconds",
    "parse_costs",
    "recorded_costs",
    "resolve_costs",
    "run_annotations",
]

#: Seconds per annotated image of each kind (see :data:`COST_SOURCES`).
DEFAULT_COSTS: dict[str, float] = {"label": 1.0, "mask": 79.0, "box": 7.0, "attribute": 1.0}
#: Where each default comes from.
COST_SOURCES: dict[str, str] = {
    "label": "an image-level class label takes about 1 s per class (Bearman et al., What's the "
    "Point: Semantic Segmentation with Point Supervision, ECCV 2016; PASCAL VOC)",
    "mask": "a polygon mask takes 79 s per object instance (Lin et al., Microsoft COCO, ECCV "
    "2014: 22 worker-hours per 1,000 segmentations), the upper end of the 54-79 s per object "
    "outline quoted by Bearman et al. 2016",
    "box": "a box takes 7 s by extreme clicking (Papadopoulos et al., Extreme Clicking for "
    "Efficient Object Annotation, ICCV 2017; PASCAL VOC), against about 35 s drawn the "
    "traditional way (Su et al. 2012, as used for ILSVRC; also quoted by Papadopoulos et al., "
    "Training Object Class Detectors with Click Supervision, CVPR 2017)",
    "attribute": "whether an image shows the spurious feature (a tube, a ruler) is one more "
    "image-level yes/no label: the label's 1 s (Bearman et al. 2016)",
}


def _item_error(source: str, item: str, why: str) -> ValueError:
    return ValueError(f"{source}: {item!r}: {why} (kinds: {', '.join(KINDS)}; e.g. mask=79,box=7)")


def _seconds(value: Any, source: str, item: str) -> float:
    if isinstance(value, bool):
        raise _item_error(source, item, "seconds must be a number >= 0")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise _item_error(source, item, "seconds must be a number >= 0") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _item_error(source, item, "seconds must be a finite number >= 0")
    return seconds


def _pairs(value: str | Mapping[str, Any], source: str) -> list[tuple[str, Any, str]]:
    """``(kind, seconds, item as written)`` of a ``KIND=SECONDS,...`` text or a mapping."""
    if isinstance(value, Mapping):
        return [(str(k).strip(), v, f"{k}: {v}") for k, v in value.items()]
    if not isinstance(value, str):
        raise ValueError(f"{source}: expected KIND=SECONDS,... or a mapping, got {value!r}")
    out = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        kind, sep, seconds = item.partition("=")
        if not sep:
            raise _item_error(source, item, "expected KIND=SECONDS")
        out.append((kind.strip(), seconds.strip(), item))
    return out


def parse_costs(value: str | Mapping[str, Any] | None, source: str = "--costs") -> dict[str, float]:
    """The kinds given in ``value`` and their seconds (the others are left to the defaults).

    Args:
        value: ``"mask=79,box=7"``, ``{"mask": 79}`` or None (nothing given).
        source: Where the value comes from, for messages (``--costs``, a file's ``costs``).

    Raises:
        ValueError: An item without ``=``, an unknown kind, or seconds that are not a finite
            number >= 0; the message names the item.
    """
    if value is None:
        return {}
    costs: dict[str, float] = {}
    for kind, seconds, item in _pairs(value, source):
        if kind not in KINDS:
            raise _item_error(source, item, f"unknown annotation kind {kind!r}")
        costs[kind] = _seconds(seconds, source, item)
    return costs


def resolve_costs(*overrides: Mapping[str, float] | None) -> dict[str, float]:
    """:data:`DEFAULT_COSTS` with each of ``overrides`` applied in turn (later ones win)."""
    costs = dict(DEFAULT_COSTS)
    for given in overrides:
        costs.update(given or {})
    return costs


def recorded_costs(out: str | Path) -> dict[str, float]:
    """The costs an earlier invocation recorded in ``out/sweep.json`` (``{}`` if none)."""
    try:
        info = json.loads((Path(out) / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    recorded = info.get("costs") if isinstance(info, dict) else None
    try:
        return parse_costs(recorded, f"{out}/sweep.json: costs") if recorded else {}
    except ValueError:
        return {}  # a hand-edited record: fall back to the defaults and the flags


def annotation_seconds(counts: Mapping[str, Any] | None, costs: Mapping[str, float]) -> float:
    """``Σ counts[kind] × costs[kind]`` over :data:`~spatialspec.annotations.KINDS`; NaN when
    ``counts`` is None or lacks a kind (unknown is never 0)."""
    if counts is None or any(counts.get(kind) is None for kind in KINDS):
        return math.nan
    return float(sum(float(counts[kind]) * costs[kind] for kind in KINDS))


#: ``summary.csv`` columns of a run's annotations: images per kind, then the priced total.
COUNT_COLUMNS = tuple(f"{kind}_images" for kind in KINDS)
ANNOTATION_COLUMNS = (*COUNT_COLUMNS, "annotation_seconds", "annotation_source")


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config: ``config.yaml``, else the copy in ``run.json``."""
    path = run_dir / "config.yaml"
    if path.is_file():
        config = yaml.safe_load(path.read_text())
    else:
        config = _read(run_dir / "run.json").get("config")
    if not isinstance(config, dict):
        raise ValueError("no config.yaml and no config in run.json")
    return config


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_annotations(
    run_dir: str | Path, cache: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """A finished run's annotation counts and where they come from.

    ``run.json["annotations"]`` (source ``run.json``); for a run made before fits recorded them,
    the counts its saved config gives when the data module is rebuilt from it
    (:func:`~spatialspec.annotations.annotations_from_config`; source ``reconstructed``); else
    ``(None, "unknown: <why>")``.
    """
    from spatialspec.annotations import annotations_from_config

    run_dir = Path(run_dir)
    recorded = _read(run_dir / "run.json").get("annotations")
    if isinstance(recorded, dict):
        return recorded, "run.json"
    try:
        return annotations_from_config(_saved_config(run_dir), cache), "reconstructed"
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as err:  # reported, not 0
        why = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        return None, f"unknown: {type(err).__name__}: {why.splitlines()[0] if why else ''}"


def annotation_row(
    run_dir: str | Path, costs: Mapping[str, float], cache: dict[str, dict[str, Any]] | None
) -> dict[str, Any]:
    """The :data:`ANNOTATION_COLUMNS` of one finished run (NaN counts where unknown)."""
    counts, source = run_annotations(run_dir, cache)
    row: dict[str, Any] = {
        column: math.nan if counts is None else counts.get(kind, math.nan)
        for column, kind in zip(COUNT_COLUMNS, KINDS, strict=True)
    }
    row["annotation_seconds"] = annotation_seconds(counts, costs)
    row["annotation_source"] = source
    return row
