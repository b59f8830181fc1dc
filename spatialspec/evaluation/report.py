"""Per-image scores + manifest -> a robust-AUROC report (``report.json``; fields in README).

The decision threshold for accuracies is chosen on the *val* split (Youden's J: the threshold
maximising TPR - FPR) and only applied to the evaluated split, so nothing is tuned on test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatialspec._text import first_few
from spatialspec.data.manifest import load_manifest
from spatialspec.metrics import auroc, bootstrap_ci, robust_auroc, robust_subgroup_mask
from spatialspec.runinfo import run_metadata, write_json_atomic

SUBGROUPS = {
    "positive_with_spurious": (1, 1),
    "positive_without_spurious": (1, 0),
    "negative_with_spurious": (0, 1),
    "negative_without_spurious": (0, 0),
}
DEFAULT_THRESHOLD = 0.5


class PredictionsError(ValueError):
    """A predictions CSV is malformed or does not match the manifest."""


def _rows(lines: np.ndarray, ids: pd.Series) -> str:
    return first_few([f"line {ln} ({i})" for ln, i in zip(lines, ids, strict=True)])


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read and validate a predictions CSV with columns ``image_id,score`` (extra columns kept).

    Raises:
        PredictionsError: naming the file and the offending CSV lines.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file not found: {path}")
    frame = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
    missing = {"image_id", "score"} - set(frame.columns)
    if missing:
        raise PredictionsError(
            f"{path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}"
        )
    lines = np.arange(len(frame)) + 2  # header is line 1
    scores = pd.to_numeric(frame["score"], errors="coerce")
    bad = ~np.isfinite(scores.to_numpy(dtype=float))
    if bad.any():
        raise PredictionsError(
            f"{path}: score is not a finite number on {_rows(lines[bad], frame.image_id[bad])}"
        )
    dup = frame["image_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise PredictionsError(
            f"{path}: duplicate image_id on {_rows(lines[dup], frame.image_id[dup])}"
        )
    frame["score"] = scores.astype(float)
    return frame


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising Youden's J (TPR - FPR); predicts positive where score >= threshold."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0)) if np.isfinite(thresholds[best]) else 1.0


def subgroup_stats(
    scores: np.ndarray, labels: np.ndarray, spurious: np.ndarray, threshold: float
) -> dict[str, dict[str, Any]]:
    """Count, mean score and accuracy at ``threshold`` for each (label, spurious) cell."""
    correct = (scores >= threshold).astype(int) == labels
    out: dict[str, dict[str, Any]] = {}
    for name, (y, s) in SUBGROUPS.items():
        cell = (labels == y) & (spurious == s)
        out[name] = _cell(scores, correct, cell, y, s)
    unknown = np.isnan(spurious)
    if unknown.any():
        out["spurious_unknown"] = _cell(scores, correct, unknown, None, None)
    return out


def _cell(scores, correct, cell, y, s) -> dict[str, Any]:
    n = int(cell.sum())
    return {
        "label": y,
        "spurious": s,
        "n": n,
        "mean_score": float(scores[cell].mean()) if n else None,
        "accuracy": float(correct[cell].mean()) if n else None,
    }


def build_report(
    scores: np.ndarray,
    labels: np.ndarray,
    spurious: np.ndarray,
    *,
    threshold: float | None = None,
    threshold_source: str = "",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Metrics of one evaluated split. ``spurious`` holds NaN where unknown."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    spurious = np.asarray(spurious, float)
    if threshold is None:
        threshold, threshold_source = DEFAULT_THRESHOLD, "fixed 0.5 (no val predictions)"
    groups = subgroup_stats(scores, labels, spurious, threshold)
    known_accs = [g["accuracy"] for k, g in groups.items() if k in SUBGROUPS and g["n"]]
    boot = {"n_resamples": n_resamples, "alpha": alpha, "seed": seed}
    robust = _robust(scores, labels, spurious, boot)
    report = {
        "n": len(scores),
        "n_positive": int(labels.sum()),
        "n_negative": int((labels == 0).sum()),
        "auroc": auroc(scores, labels),
        "auroc_ci": list(bootstrap_ci(scores, labels, metric="auroc", **boot)),
        **robust,
        "threshold": float(threshold),
        "threshold_source": threshold_source,
        "accuracy": float(((scores >= threshold).astype(int) == labels).mean()),
        "worst_group_accuracy": float(min(known_accs)) if known_accs else None,
        "subgroups": groups,
        "bootstrap": {**boot, "method": "percentile; resampled within each class"},
    }
    return report


def _robust(
    scores: np.ndarray, labels: np.ndarray, attribute: np.ndarray, boot: dict[str, Any]
) -> dict[str, Any]:
    """Robust AUROC + CI w.r.t. one attribute; None where a robust subgroup is empty."""
    n_robust = int(robust_subgroup_mask(labels, attribute).sum())
    value = robust_auroc(scores, labels, attribute, on_single_class="nan")
    if np.isnan(value):
        return {"n_robust": n_robust, "robust_auroc": None, "robust_auroc_ci": [None, None]}
    ci = bootstrap_ci(scores, labels, attribute, metric="robust_auroc", **boot)
    return {"n_robust": n_robust, "robust_auroc": value, "robust_auroc_ci": list(ci)}


def attribute_reports(
    frame: pd.DataFrame, attributes: list[str], *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Robust AUROC with each attribute column in turn as the spurious feature.

    Args:
        frame: Evaluated rows with ``score``, ``label`` and the attribute columns (0/1, NaN
            where unknown).
        attributes: Column names.

    Returns:
        Per attribute: ``n_with``, ``positives_without``, ``negatives_with``, ``n_robust``,
        ``robust_auroc`` (None when a subgroup is empty) and ``robust_auroc_ci``.
    """
    boot = {"n_resamples": n_resamples, "alpha": 0.05, "seed": seed}
    scores, labels = frame["score"].to_numpy(float), frame["label"].to_numpy(int)
    out: dict[str, dict[str, Any]] = {}
    for name in attributes:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(float)
        out[name] = {
            "n_with": int((values == 1).sum()),
            "positives_without": int(((labels == 1) & (values == 0)).sum()),
            "negatives_with": int(((labels == 0) & (values == 1)).sum()),
            **_robust(scores, labels, values, boot),
        }
    return out


def dataset_info(manifest: str | Path) -> dict[str, Any]:
    """``dataset`` and ``attribute_columns`` from the ``summary.json`` beside a manifest.

    ``spatialspec prepare`` writes that file; a hand-made manifest without it has neither.
    """
    path = Path(manifest).with_name("summary.json")
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    return {
        "dataset": summary.get("dataset"),
        "attribute_columns": list(summary.get("attribute_columns", [])),
    }


def _join(
    predictions: pd.DataFrame, manifest: pd.DataFrame, split: str, source: str
) -> pd.DataFrame:
    part = manifest[manifest["split"] == split]
    if part.empty:
        raise PredictionsError(f"manifest has no {split!r} rows")
    merged = part.merge(predictions[["image_id", "score"]], on="image_id", how="left")
    missing = merged["score"].isna().to_numpy()
    if missing.any():
        ids = merged["image_id"][missing].tolist()
        raise PredictionsError(
            f"{source}: {len(ids)} of {len(part)} {split} images have no prediction: "
            f"{first_few(ids, 'images')}"
        )
    return merged


def evaluate_frames(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    split: str = "test",
    *,
    source: str = "predictions",
    n_resamples: int = 1000,
    seed: int = 0,
    attributes: list[str] | None = None,
) -> dict[str, Any]:
    """Report for ``split``; the threshold comes from val predictions when they are present.

    ``attributes`` (manifest columns) each get a robust AUROC of their own under
    ``report["attributes"]``; ``spurious`` itself is the headline and is not repeated.
    """
    test = _join(predictions, manifest, split, source)
    threshold, src = None, ""
    val_ids = set(manifest.loc[manifest["split"] == "val", "image_id"])
    val = predictions[predictions["image_id"].isin(val_ids)]
    if split != "val" and len(val):
        val = val.merge(manifest[["image_id", "label"]], on="image_id")
        if val["label"].nunique() == 2:
            threshold = choose_threshold(val["score"].to_numpy(), val["label"].to_numpy())
            src = f"val, Youden's J ({len(val)} images)"
    report = build_report(
        test["score"].to_numpy(),
        test["label"].to_numpy(),
        test["spurious"].to_numpy(dtype=float),
        threshold=threshold,
        threshold_source=src,
        n_resamples=n_resamples,
        seed=seed,
    )
    names = [a for a in (attributes or []) if a != "spurious"]
    missing = [a for a in names if a not in test.columns]
    if missing:
        raise PredictionsError(f"attribute column(s) {missing} are not in the manifest")
    if names:
        report["attributes"] = attribute_reports(test, names, n_resamples=n_resamples, seed=seed)
    return {"split": split, **report}


def evaluate_predictions(
    manifest: str | Path,
    predictions: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``spatialspec evaluate --predictions``: CSV of scores -> report (written to ``out``)."""
    frame = load_manifest(manifest)
    preds = read_predictions(predictions)
    info = dataset_info(manifest)
    report = evaluate_frames(
        preds, frame, split, source=str(predictions), n_resamples=n_resamples, seed=seed,
        attributes=info.get("attribute_columns"),
    )  # fmt: skip
    if info.get("dataset"):
        report["dataset"] = info["dataset"]
    report["metadata"] = run_metadata(
        manifest=str(Path(manifest).resolve()),
        predictions=str(Path(predictions).resolve()),
        **(extra or {}),
    )
    if out is not None:
        write_json_atomic(out, report)
    return report
