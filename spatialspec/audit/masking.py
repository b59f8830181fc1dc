"""ROI-masking audit ("Mask of truth", Sourget et al.): scores with parts of the image filled.

A trained model is scored on the test images under each condition of
:mod:`spatialspec.data.roi` -- ``original``, ``roi_removed``, ``roi_only``,
``spurious_removed``, and, where the manifest has ``roi_mask_path``, the anatomy (lungs)
``anatomy_removed`` / ``anatomy_only`` and its boxes ``anatomy_box_removed`` /
``anatomy_box_only`` -- each with its AUROC and robust AUROC and bootstrap CIs. A model that
still separates the classes with the pathology removed reads something else (the shortcut); one
that keeps its robust AUROC with the spurious region removed did not need it.

Around the conditions, as in the paper:

- a **dose-response** curve per area (:mod:`spatialspec.audit.dose_response`): the removed
  ROI / anatomy eroded and dilated, AUROCs against the visible fraction of the image;
- a **fill control** (:mod:`spatialspec.audit.fill_control`): the conditions under the
  ``zero``, ``mean``, ``noise`` and ``blur`` fills, flagging conclusions that change with the
  fill;
- **metadata-only references** (:mod:`spatialspec.audit.metadata_reference`): logistic
  regressions on manifest columns.

Images whose anatomy mask is missing are counted, reported and left out of the anatomy
conditions. Scores of images a masking leaves unchanged are reused from ``original``.
Models trained under a condition (``data.roi_masking``) are crossed with the test conditions by
:func:`audit_masking_matrix` (:mod:`spatialspec.audit.masking_matrix`).

Outputs (:func:`write_masking`): ``masking.json``, ``masking.md``, ``masking.png`` (example
images per condition above a bar chart of AUROC / robust AUROC per condition) and
``masking_dose_response.png``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec.audit.base import Audit, AuditResult, fmt, register_audit, write_result
from spatialspec.audit.common import load_audit_set, load_model
from spatialspec.audit.dose_response import (
    DEFAULT_DOSES,
    DOSE_CONDITIONS,
    curve_headline,
    dose_response,
)
from spatialspec.audit.fill_control import DEFAULT_FILLS, fill_control
from spatialspec.audit.masking_cli import (
    add_masking_options,
    add_masking_parser,
    masking_options,
    run_masking,
)
from spatialspec.audit.masking_conditions import (
    ANATOMY_COLUMN,
    Masking,
    MaskingScorer,
    MaskingSet,
    condition_masks,
    load_masking_set,
    mask_images,
    metrics_of,
)
from spatialspec.audit.masking_matrix import audit_masking_matrix, write_masking_matrix
from spatialspec.audit.masking_render import (
    dose_response_figure,
    masking_figure,
    masking_markdown,
    matrix_markdown,
)
from spatialspec.audit.metadata_reference import metadata_reference
from spatialspec.data.dataset import MEAN, STD
from spatialspec.data.roi import (
    CONDITIONS,
    DEFAULT_DILATE,
    check_masking,
    condition_area,
)
from spatialspec.methods import SpatialMethod
from spatialspec.runinfo import run_metadata

__all__ = [
    "CONDITIONS",
    "add_masking_parser",
    "audit_masking",
    "audit_masking_matrix",
    "condition_masks",
    "mask_images",
    "masking_markdown",
    "matrix_markdown",
    "run_masking",
    "write_masking",
    "write_masking_matrix",
]

#: One line per condition, for reports.
DESCRIPTIONS = {
    "original": "the test images as they are",
    "roi_removed": "the pathology region (ROI) filled",
    "roi_only": "everything outside the ROI filled (with the background's statistics); images "
    "without a ROI are filled entirely",
    "spurious_removed": "the spurious region (dilated) filled where a spurious mask exists",
    "anatomy_removed": "the anatomy region (roi_mask_path, e.g. the lungs) filled",
    "anatomy_only": "everything outside the anatomy region filled",
    "anatomy_box_removed": "the bounding box of each anatomy component filled",
    "anatomy_box_only": "everything outside the anatomy's bounding boxes filled",
}
#: Example rows of the figure: (label, spurious) cells, in this order, where present.
EXAMPLE_CELLS = {
    "positive + spurious": (1, 1.0),
    "positive, no spurious": (1, 0.0),
    "negative + spurious": (0, 1.0),
    "negative, no spurious": (0, 0.0),
}
_DOSE_AREAS = tuple(DOSE_CONDITIONS)


# --------------------------------------------------------------------------------- audit


def audit_masking(
    checkpoint: str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    conditions: Sequence[str] | None = None,
    region: str = "mask",
    fill: str = "mean",
    limit: int | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    dilate: int = DEFAULT_DILATE,
    metadata_columns: Sequence[str] | Sequence[Sequence[str]] | None = None,
    doses: Sequence[int] = DEFAULT_DOSES,
    dose_areas: Sequence[str] = _DOSE_AREAS,
    fills: Sequence[str] = DEFAULT_FILLS,
    fill_conditions: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on one split under each masking condition, curve and fill.

    Args:
        checkpoint: A spatialspec checkpoint.
        manifest: Manifest to audit on (default: the run's).
        split: Split to audit.
        conditions: Conditions of :data:`CONDITIONS` (``original`` gives the drops); None:
            every condition whose area the manifest has (the anatomy ones need
            ``roi_mask_path``; those left out are listed in ``skipped_conditions``).
        region: ``mask`` or ``box``: the ROI as its mask or its filled boxes.
        fill: The fill of the conditions and curves (:data:`FILLS`).
        limit: Audit a seeded random subset of this many images.
        n_resamples: Bootstrap resamples of the CIs.
        seed: Seed of the subset, the bootstrap and the noise.
        batch_size: Images scored at once.
        dilate: Pixels by which spurious masks are grown.
        metadata_columns: Manifest columns of the metadata-only reference, or a list of such
            lists (one reference each); None: ``spurious`` when the manifest knows it for some
            rows; an empty list: no reference.
        doses: Pixels by which the dose-response curves erode (< 0) / dilate (> 0) the area;
            empty: no curve.
        dose_areas: Areas with a curve (``roi``, ``anatomy``; one without masks is skipped).
        fills: Fills of the fill control; fewer than two: no fill control.
        fill_conditions: Conditions of the fill control (None: the audited ones).

    Returns:
        ``conditions`` (per condition: :func:`~spatialspec.audit.masking_conditions.metrics_of`
        with drops vs ``original``), ``skipped_conditions``, ``anatomy`` (missing masks,
        counted), ``dose_response`` (area -> curve), ``fill_control``, ``examples``,
        ``config``, ``checkpoint``, ``manifest``, ``method``, ``train_condition``,
        ``metadata_reference`` (the first; None without columns), ``metadata_references``,
        ``cost``, ``metadata``; and ``_example_images`` (arrays for the figure).
    """
    start = time.perf_counter()
    _check_options(fills, dose_areas)
    method, config, data = load_model(checkpoint, manifest)
    mset = load_masking_set(load_audit_set(data, split, limit=limit, seed=seed))
    conditions, skipped = _resolve_conditions(conditions, mset, region, fill, data)
    fill_rows, fill_skipped = _fill_rows(fill_conditions, conditions, mset, data)
    base = Masking("original", fill, region, dilate, seed=seed)
    scorer = MaskingScorer(method, mset, batch_size)
    original = scorer.original()
    results = {
        c: metrics_of(scorer(base.but(condition=c)), mset.audit, n_resamples, seed, original)
        for c in conditions
    }
    curves = _curves(scorer, base, doses, dose_areas, n_resamples, seed)
    control = _fill_control(scorer, base, fills, fill_rows, n_resamples, seed)
    references = _metadata_references(
        data, metadata_columns, split, mset.audit.image_ids, n_resamples, seed
    )
    examples = _example_rows(mset)
    run = {"limit": limit, "n_resamples": n_resamples, "batch_size": batch_size}
    extras = {"doses": sorted(set(doses)), "dose_areas": list(dose_areas), "fills": list(fills)}
    return {
        "split": split,
        "n": len(mset),
        "conditions": results,
        "skipped_conditions": {**skipped, **fill_skipped},
        "anatomy": _anatomy_counts(mset),
        "dose_response": curves,
        "fill_control": control,
        "examples": _examples(mset, examples, scorer, base, conditions),
        "config": {
            "conditions": conditions,
            **_settings(base),
            **run,
            **extras,
            "descriptions": {c: DESCRIPTIONS[c] for c in conditions},
        },
        "checkpoint": str(checkpoint),
        "manifest": str(data.manifest_path),
        "method": _method_name(config, method),
        "pooling": method.hparams.get("pooling"),
        "train_condition": train_condition(config),
        "metadata_reference": references[0] if references else None,
        "metadata_references": references,
        "cost": _cost(scorer, start),
        "metadata": run_metadata(audit="masking"),
        "_example_images": _example_images(mset, examples, conditions, base),
    }


def _check_options(fills: Sequence[str], dose_areas: Sequence[str]) -> None:
    """Fail before any scoring on an unknown fill or dose-response area."""
    for f in fills:
        check_masking(None, fill=f)
    unknown = [a for a in dose_areas if a not in DOSE_CONDITIONS]
    if unknown:
        raise ValueError(
            f"unknown dose-response area(s) {unknown}; valid: {', '.join(DOSE_CONDITIONS)}"
        )


def _settings(base: Masking) -> dict[str, Any]:
    return {"region": base.region, "fill": base.fill, "dilate": base.dilate, "seed": base.seed}


def _cost(scorer: MaskingScorer, start: float) -> dict[str, Any]:
    """Images passed through the network, distinct maskings, seconds since ``start`` (and of
    them in the network)."""
    seconds = round(time.perf_counter() - start, 1)
    return {
        "images_forward": scorer.n_forward,
        "maskings": len(scorer.cache),
        "seconds": seconds,
        "network_seconds": round(scorer.forward_seconds, 1),
    }


def _resolve_conditions(
    conditions: Sequence[str] | None, mset: MaskingSet, region: str, fill: str, data: Any
) -> tuple[list[str], dict[str, str]]:
    """The conditions to audit and those skipped (condition -> why).

    Raises:
        ValueError: No condition, an unknown one, or an anatomy condition asked for without any
            anatomy mask among the audited images.
    """
    check_masking(None, region, fill)
    why = _anatomy_unavailable(mset, data)
    if conditions is None:
        keep = [c for c in CONDITIONS if condition_area(c) != "anatomy" or not why]
        return keep, {c: why for c in CONDITIONS if c not in keep}
    conditions = list(conditions)
    if not conditions:
        raise ValueError("no masking condition to audit")
    for condition in conditions:
        check_masking(condition, region, fill)
        if condition_area(condition) == "anatomy" and why:
            raise ValueError(f"condition {condition!r} needs anatomy masks: {why}")
    return conditions, {}


def _fill_rows(
    fill_conditions: Sequence[str] | None, conditions: list[str], mset: MaskingSet, data: Any
) -> tuple[list[str], dict[str, str]]:
    """Conditions of the fill control (default: the audited ones); anatomy ones without masks
    are left out with the reason (keyed ``<condition> (fill control)``)."""
    if fill_conditions is None:
        return conditions, {}
    why = _anatomy_unavailable(mset, data)
    for condition in fill_conditions:
        check_masking(condition)
    keep = [c for c in fill_conditions if condition_area(c) != "anatomy" or not why]
    return keep, {f"{c} (fill control)": why for c in fill_conditions if c not in keep}


def _anatomy_unavailable(mset: MaskingSet, data: Any) -> str:
    """Why no anatomy condition can run ('' when some audited image has an anatomy mask)."""
    if not mset.anatomy_column:
        return f"{data.manifest_path} has no {ANATOMY_COLUMN} column"
    if not mset.has_anatomy_mask.any():
        return f"no audited image of {data.manifest_path} has a {ANATOMY_COLUMN}"
    return ""


def _anatomy_counts(mset: MaskingSet) -> dict[str, Any]:
    """Audited images without an anatomy mask: counted and named, never taken as empty."""
    return {
        "column": ANATOMY_COLUMN,
        "in_manifest": mset.anatomy_column,
        "n": len(mset),
        "n_missing": int((~mset.has_anatomy_mask).sum()),
        "missing_ids": mset.missing_ids(),
    }


def _curves(
    scorer: MaskingScorer,
    base: Masking,
    doses: Sequence[int],
    areas: Sequence[str],
    n_resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Area -> dose-response curve, for the areas some audited image has."""
    has = {"roi": scorer.mset.audit.has_roi_mask, "anatomy": scorer.mset.has_anatomy_mask}
    if not doses:
        return {}
    return {
        area: dose_response(scorer, area, doses, base, n_resamples, seed)
        for area in areas
        if has[area].any()
    }


def _fill_control(
    scorer: MaskingScorer,
    base: Masking,
    fills: Sequence[str],
    conditions: Sequence[str],
    n_resamples: int,
    seed: int,
) -> dict[str, Any] | None:
    """The fill control over ``conditions`` (None with fewer than two fills)."""
    if len(fills) < 2 or not [c for c in conditions if c != "original"]:
        return None
    return fill_control(scorer, conditions, fills, base, n_resamples, seed)


def _metadata_references(
    data: Any,
    columns: Sequence[str] | Sequence[Sequence[str]] | None,
    split: str,
    image_ids: Sequence[str],
    n_resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One reference per column set (default: ``spurious`` where known; none for ``[]``),
    fit on the training split and scored on the audited images of ``split`` only."""
    from spatialspec.data.manifest import load_manifest

    if columns is not None and not _column_sets(columns):
        return []
    frame = getattr(data, "frame", None)
    if frame is None or "split" not in frame:
        if columns is None and not Path(data.manifest_path).is_file():
            return []  # nothing to fit the default reference on
        frame = load_manifest(data.manifest_path, check_files=False)
    if columns is None:
        spurious = pd.to_numeric(frame.get("spurious", pd.Series(dtype=float)), errors="coerce")
        columns = [["spurious"]] if spurious.isin([0, 1]).any() else []
    sets = _column_sets(columns)
    frame = frame[(frame["split"] != split) | frame["image_id"].isin(set(image_ids))]
    return [
        metadata_reference(frame, cols, split=split, n_resamples=n_resamples, seed=seed)
        for cols in sets
    ]


def _column_sets(columns: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """One list of columns, or a list of them -> non-empty lists of columns."""
    if all(isinstance(c, str) for c in columns):
        return [list(columns)] if columns else []
    return [list(c) for c in columns if c]


def train_condition(config: Mapping[str, Any]) -> dict[str, Any]:
    """The masking a run was trained under (``data.roi_masking``; ``original`` if none)."""
    data = config.get("data") or {}
    return {
        "condition": data.get("roi_masking") or "original",
        "region": data.get("roi_masking_region", "mask"),
        "fill": data.get("roi_masking_fill", "mean"),
    }


def _method_name(config: Mapping[str, Any], method: SpatialMethod) -> str:
    from spatialspec.methods import METHODS

    return str(config.get("method") or METHODS.name_of(type(method)))


# ------------------------------------------------------------------------------ examples


def _example_rows(mset: MaskingSet) -> dict[str, int]:
    """Figure row name -> the first audit image of that (label, spurious) cell."""
    audit, rows = mset.audit, {}
    for name, (label, spurious) in EXAMPLE_CELLS.items():
        cell = (audit.labels == label) & (audit.spurious == spurious)
        if label == 1:
            cell &= audit.has_roi_mask
        if spurious == 1.0:
            cell &= audit.has_spurious_mask
        if cell.any():
            rows[name] = int(np.flatnonzero(cell)[0])
    return rows


def _examples(
    mset: MaskingSet,
    rows: Mapping[str, int],
    scorer: MaskingScorer,
    base: Masking,
    conditions: Sequence[str],
) -> list[dict[str, Any]]:
    """Id, label, spurious attribute and per-condition scores (None: area unknown)."""
    audit = mset.audit
    scores = {c: scorer(base.but(condition=c)).scores for c in conditions}
    return [
        {
            "name": name,
            "image_id": audit.image_ids[i],
            "label": int(audit.labels[i]),
            "spurious": None if np.isnan(audit.spurious[i]) else int(audit.spurious[i]),
            "scores": {c: None if np.isnan(v[i]) else float(v[i]) for c, v in scores.items()},
        }
        for name, i in rows.items()
    ]


def _example_images(
    mset: MaskingSet, rows: Mapping[str, int], conditions: Sequence[str], base: Masking
) -> dict[str, np.ndarray]:
    """Per condition, (K, S, S[, 3]) intensities in [0, 1] of the example images."""
    index = np.array(list(rows.values()), dtype=int)
    out = {}
    for condition in conditions:
        images = mset.audit.images[index].clone()  # (K, C, S, S); unknown area: as it is
        known = index[mset.known(condition)[index]]
        if known.size:
            m = base.but(condition=condition)
            filled, ref = condition_masks(mset, condition, known, m.region, m.dilate)
            ids = [mset.audit.image_ids[i] for i in known]
            at = np.flatnonzero(mset.known(condition)[index])
            images[at] = mask_images(images[at], filled, m.fill, m.seed, ids, ref)
        raw = np.clip(images.numpy().transpose(0, 2, 3, 1) * STD + MEAN, 0.0, 1.0)
        out[condition] = raw[..., 0] if raw.shape[-1] == 1 else raw
    return out


# ---------------------------------------------------------------------------------- files


def write_masking(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``masking.json``, ``masking.md``, ``masking.png`` (and the dose-response PNG)."""
    return write_result(MaskingAudit(), AuditResult("masking", dict(result)), out_dir)


# ---------------------------------------------------------------------------------- the audit

#: Conditions shown in ``audit all``'s summary table (all are in ``summary.json``).
SUMMARY_CONDITIONS = (
    "original",
    "roi_removed",
    "roi_only",
    "spurious_removed",
    "anatomy_removed",
    "anatomy_only",
)
#: ``audit all``'s default image count (a seeded subset of the split; ``--masking-limit``).
SUITE_LIMIT = 400
#: ``audit all``'s fill-control conditions, to keep ``make audit`` within its budget: the box
#: variants behave as the anatomy's, and ``roi_only`` fills negatives entirely (their score
#: is the fill's on SIIM / synthetic data, so it depends on the fill by construction).
SUITE_FILL_CONDITIONS = "roi_removed,spurious_removed,anatomy_removed,anatomy_only"


@register_audit
class MaskingAudit(Audit):
    """``masking``: scores with the ROI / anatomy / spurious region filled (Mask of truth)."""

    name = "masking"
    table_order = 2

    compute = staticmethod(audit_masking)

    def headline(self, result: AuditResult) -> dict[str, Any]:
        data = result.data
        conditions = data["conditions"]
        curves = data.get("dose_response", {})
        control = data.get("fill_control") or {}
        return {
            "method": data.get("method"),
            "masking": {name: c["robust_auroc"] for name, c in conditions.items()},
            "masking_auroc": {name: c["auroc"] for name, c in conditions.items()},
            "masking_drop": {name: c["robust_auroc_drop"] for name, c in conditions.items()},
            "masking_dose_response": curve_headline(curves.get("roi")),
            "masking_dose_response_anatomy": curve_headline(curves.get("anatomy")),
            "masking_fill_flagged": list(control.get("flagged", [])),
            "masking_metadata_reference": [
                {k: r[k] for k in ("columns", "auroc", "robust_auroc")}
                for r in data.get("metadata_references", [])
            ],
        }

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        masking = headline["masking"]
        cells = {f"robust AUROC: {c}": fmt(masking[c]) for c in SUMMARY_CONDITIONS if c in masking}
        cells["masking: fill-dependent"] = str(len(headline.get("masking_fill_flagged", [])))
        return cells

    def summary_note(self) -> str:
        return (
            "Masking: `fill-dependent` counts conditions whose conclusions change with the "
            "fill (`masking.md`, fill control)."
        )

    def markdown(self, data: Mapping[str, Any]) -> str:
        return masking_markdown(data)

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        figures = {"masking.png": masking_figure(data)}
        if data.get("dose_response"):
            figures["masking_dose_response.png"] = dose_response_figure(data)
        return figures

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        return add_masking_parser(sub)

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return run_masking(args)

    def add_suite_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_masking_options(parser, "masking-", SUITE_LIMIT, SUITE_FILL_CONDITIONS)

    def suite_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return masking_options(args, prefix="masking-")
