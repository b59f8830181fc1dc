"""What annotation a fit consumed: images per annotation kind, recorded in ``run.json``.

``spatialspec fit`` writes ``run.json["annotations"]`` (:func:`annotations_of`) from the data
module's manifest *after* the mask and attribute budgets (its ``frame``; the validation loaders'
``metric_frame`` for what model selection reads), so the counts are what the run trained and
selected its model on, not what the manifest holds. The sweep prices them
(:mod:`spatialspec.sweep.costs`) to plot robust AUROC against annotation hours.

Kinds (:data:`KINDS`), each counted in images:

* ``label``: images whose image-level label the run used: every **train** row (every method
  trains on labels) and every **val** row (model selection reads val labels, whatever the
  monitor).
* ``mask`` / ``box``: training **positives** whose pixel annotation the method trained on (rows
  with ``mask_available = 1`` after the budget). Which of the two a row costs is set by the
  level of the dense target (``data.specificity``; :data:`LEVEL_KIND`): ``mask`` and
  ``dilate:R`` need a drawn mask, ``box`` a box, ``grid:K`` (marking the grid cells that touch the
  finding: a few clicks, no outline) is priced as a box, and ``image`` needs nothing beyond the
  label. Methods that train on labels alone (``binary``, ``groupdro``, ...) consume none.
* ``attribute``: spurious-attribute labels (the manifest's ``spurious``, where known) of the
  split a method trains on (:attr:`~spatialspec.methods.SpatialMethod.attribute_split`:
  ``train`` for ``groupdro``, ``val`` for ``dfr``), after the attribute budget.

**Negatives' known-empty masks** are counted apart (``train.empty_targets``) and priced as
their label, not as a mask: a negative's target is empty whatever its mask file says (the data
set never reads it, :class:`~spatialspec.data.dataset.ManifestDataset`), so it follows from the
image label the annotator already gave; nobody is paid to draw it. (The annotator does inspect
the image, which is what the label's time pays for.)

**Validation**: labels always count (above). Val pixel annotations count when the monitor is
``val/loss`` of a method with a pixel loss (the loss reads them); val attributes count when the
method trains on them (``dfr``: those its attribute budget kept), when the monitor is
``val/robust_auroc`` (its subgroups need them: every known val attribute, which the validation
loader reads whatever the budget), or when the monitor is ``val/loss`` of a method that trains on
attributes (its loss may weigh groups). Test annotations are never counted: they measure, they
do not train.

A box or mask is counted once per image whatever the number of regions in it; published
annotation times are per object, and the synthetic benchmark has one region per positive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from spatialspec.data.datamodule import SpatialDataModule
    from spatialspec.methods import SpatialMethod

__all__ = [
    "KINDS",
    "LEVEL_KIND",
    "annotations_from_config",
    "annotations_of",
    "count_annotations",
    "pixel_kind",
]

#: The priced kinds, in the order of ``--costs`` and ``summary.csv``.
KINDS = ("label", "mask", "box", "attribute")
#: The pixel annotation a user pays for to get each specificity level's target (None: none).
LEVEL_KIND: dict[str, str | None] = {
    "mask": "mask", "dilate": "mask", "box": "box", "grid": "box", "image": None,
}  # fmt: skip
#: Monitors under which the val split's annotations beyond labels are read.
_ROBUST_MONITOR = "val/robust_auroc"
_LOSS_MONITOR = "val/loss"


def pixel_kind(specificity: str | None) -> str | None:
    """The annotation kind a dense target at ``specificity`` costs: ``"mask"``, ``"box"`` or
    None (no dense target, or ``image``, which the label implies).

    Raises:
        SpecificityError: ``specificity`` is not a level.
    """
    if specificity is None:
        return None
    from spatialspec.data.specificity import parse_specificity

    return LEVEL_KIND[parse_specificity(specificity).kind]


def _zero() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


def _known_attributes(rows: pd.DataFrame) -> int:
    return int(rows["spurious"].notna().sum()) if "spurious" in rows else 0


def _pixel_rows(rows: pd.DataFrame) -> tuple[int, int]:
    """(positives, negatives) with a known pixel annotation."""
    annotated = rows["mask_available"] == 1
    positive = rows["label"] == 1
    return int((annotated & positive).sum()), int((annotated & ~positive).sum())


def count_annotations(
    frame: pd.DataFrame,
    *,
    specificity: str | None,
    attribute_split: str | None = None,
    monitor: str = "val/auroc",
    metric_frame: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Images per annotation kind a fit consumed, from its manifest after the budgets.

    Args:
        frame: Manifest rows of every split (``split``, ``label``, ``mask_available``,
            ``spurious``) as the data module trains on them (budgets applied).
        specificity: The resolved level of the dense target (``data.specificity``; None for a
            method without one).
        attribute_split: The split whose attributes the method trains on (None, ``train``,
            ``val``).
        monitor: The model-selection metric (``val/auroc``, ``val/robust_auroc``,
            ``val/loss``).
        metric_frame: The rows the validation loader reads (every attribute kept; default
            ``frame``), for the val attributes a monitor reads.

    Returns:
        ``{"label", "mask", "box", "attribute"}`` totals over train and val; ``"train"`` and
        ``"val"`` with the same keys (train adds ``empty_targets``: negatives' known-empty
        targets, priced as their label); ``pixel_kind``, ``attribute_split``, ``monitor``.
    """
    kind = pixel_kind(specificity)
    train = frame[frame["split"] == "train"]
    val = frame[frame["split"] == "val"]
    used = {"train": _zero(), "val": _zero()}
    used["train"]["label"], used["val"]["label"] = len(train), len(val)
    positives, negatives = _pixel_rows(train)
    if kind is not None:
        used["train"][kind] = positives
        if monitor == _LOSS_MONITOR:
            used["val"][kind] = _pixel_rows(val)[0]
    used["train"]["empty_targets"] = negatives if kind is not None else 0
    if attribute_split == "train":
        used["train"]["attribute"] = _known_attributes(train)
    if attribute_split == "val":
        used["val"]["attribute"] = _known_attributes(val)
    if monitor == _ROBUST_MONITOR or (monitor == _LOSS_MONITOR and attribute_split is not None):
        metric = frame if metric_frame is None else metric_frame
        used["val"]["attribute"] = _known_attributes(metric[metric["split"] == "val"])
    totals = {k: used["train"][k] + used["val"][k] for k in KINDS}
    return {**totals, **used, "pixel_kind": kind, "attribute_split": attribute_split,
            "monitor": monitor}  # fmt: skip


def annotations_of(
    method_cls: type[SpatialMethod], data: SpatialDataModule, monitor: str
) -> dict[str, Any]:
    """:func:`count_annotations` of a fit: its method class, its data module (budgets applied
    by ``data.frame``; ``data.metric_frame`` what its validation loader reads) and its monitor.
    What ``run.json["annotations"]`` holds."""
    return count_annotations(
        data.frame,
        specificity=data.specificity,
        attribute_split=getattr(method_cls, "attribute_split", None),
        monitor=monitor,
        metric_frame=getattr(data, "metric_frame", None),
    )


def annotations_from_config(
    config: Mapping[str, Any], cache: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The counts of a run from its saved ``config.yaml`` (for runs whose ``run.json`` predates
    ``annotations``): the data module is rebuilt from ``data:`` and counted as a fit would.

    Args:
        config: The run's resolved config (``method``, ``monitor``, ``data``).
        cache: Counts already computed, by config (a sweep's runs share budgets).

    Raises:
        KeyError: The config lacks ``method`` or ``data`` (or names an unknown method).
        TypeError, ValueError, OSError: The data module cannot be rebuilt (an option it no
            longer takes, a manifest moved or changed, a bad budget).
    """
    from spatialspec.data.datamodule import SpatialDataModule
    from spatialspec.methods import get_method
    from spatialspec.training import DATA_FROM_METHOD

    method_cls = get_method(config["method"])
    data = {k: v for k, v in dict(config["data"]).items() if k not in DATA_FROM_METHOD}
    monitor = str(config.get("monitor") or "val/auroc")
    key = json.dumps([config["method"], monitor, data], sort_keys=True, default=str)
    if cache is not None and key in cache:
        return cache[key]
    split = getattr(method_cls, "attribute_split", None)
    module = SpatialDataModule(**data, annotation=method_cls.annotation, attribute_split=split)
    counts = annotations_of(method_cls, module, monitor)
    if cache is not None:
        cache[key] = counts
    return counts
