"""``spatialspec evaluate --checkpoint``: predict val + the split, save scores, report.

A method that predicts more than an image score may define ``evaluation_metrics(outputs,
report_path) -> dict``: it gets its own ``predict_step`` results for the evaluated split (one
dict per batch, from the same pass that scores the images) and the report's path, may write
files beside the report, and returns JSON-ready fields that the report keeps under
``method_metrics`` (``detect``: box mAP@0.5 and its boxes file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from spatialspec.data.io import atomic_open
from spatialspec.evaluation.predict import (
    datamodule_for,
    load_checkpoint,
    predict_splits,
    trained_pooling,
)
from spatialspec.evaluation.report import dataset_info, evaluate_frames
from spatialspec.models.pooling import Pooling, parse_poolings
from spatialspec.runinfo import run_metadata, write_json_atomic

#: The fields of each ``report["poolings"]`` entry (the top-level fields of the same names).
POOLING_FIELDS = ("robust_auroc", "robust_auroc_ci", "auroc", "auroc_ci")


def predictions_path(report_path: str | Path) -> Path:
    """Where the per-image scores behind a report are saved: ``<report stem>.predictions.csv``."""
    report_path = Path(report_path)
    return report_path.with_name(report_path.stem + ".predictions.csv")


def evaluate_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    manifest: str | Path | None = None,
    split: str = "test",
    n_resamples: int = 1000,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
    pooling: str | Mapping[str, Pooling] | None = None,
) -> dict[str, Any]:
    """Score val and ``split`` with a checkpoint, write the predictions CSV and the report.

    The accuracy threshold is chosen on val; the manifest defaults to the run's own.

    Args:
        pooling: For a dense model: other poolings of its pixel logits, as ``--pooling``
            writes them (``max,mean,topk:16``) or parsed (:func:`parse_poolings`). The
            network runs once per image; ``report["poolings"]`` gets, per name, the robust
            AUROC and AUROC with their CIs under that pooling. The report's other numbers
            and the predictions CSV stay those of the trained pooling, which
            ``report["trained_pooling"]`` names (added to ``poolings`` first when not listed).

    Raises:
        ValueError: a bad pooling list (before the checkpoint is read), or poolings for a
            model without a pixel head.
    """
    poolings = parse_poolings(pooling) if isinstance(pooling, str) else dict(pooling or {})
    method, config = load_checkpoint(checkpoint)
    trained_name = None
    if poolings:
        trained = trained_pooling(method)
        trained_name = next((n for n, p in poolings.items() if p == trained), None)
        if trained_name is None:
            trained_name = trained.name
            poolings = {trained_name: trained, **poolings}
    data = datamodule_for(method, config, None if manifest is None else str(manifest))
    splits = ("val", split) if split != "val" else ("val",)
    extra = getattr(method, "evaluation_metrics", None)
    outputs: dict[str, list[dict[str, Any]]] | None = {} if extra is not None else None
    preds = predict_splits(
        method, data, splits, accelerator=accelerator, progress=progress, poolings=poolings,
        outputs=outputs,
    )  # fmt: skip
    pred_file = predictions_path(out)
    with atomic_open(pred_file, "w", newline="") as fh:
        preds[["image_id", "split", "score"]].to_csv(fh, index=False)
    info = dataset_info(data.manifest_path)
    report = evaluate_frames(
        preds, data.frame, split, source=str(checkpoint), n_resamples=n_resamples, seed=seed,
        attributes=info.get("attribute_columns"),
    )  # fmt: skip
    if info.get("dataset"):
        report["dataset"] = info["dataset"]
    if poolings:
        report["trained_pooling"] = trained_name
        report["poolings"] = pooling_metrics(
            preds, data.frame, split, list(poolings), source=str(checkpoint),
            n_resamples=n_resamples, seed=seed,
        )  # fmt: skip
    if extra is not None:
        report["method_metrics"] = extra(outputs[split], out)
    hp = dict(method.hparams)
    report["metadata"] = run_metadata(
        manifest=str(Path(data.manifest_path).resolve()),
        checkpoint=str(Path(checkpoint).resolve()),
        predictions=str(pred_file.resolve()),
        method=config.get("method"),
        pooling=hp.get("pooling"),
        topk=hp.get("topk") if hp.get("pooling") == "topk" else None,
        seed=config.get("seed"),
        config=config,
    )
    write_json_atomic(out, report)
    return report


def pooling_metrics(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    split: str,
    columns: list[str],
    *,
    source: str = "predictions",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Robust AUROC and AUROC with their CIs for each score column of ``predictions``.

    Each column is evaluated as the report's ``score`` would be (:func:`evaluate_frames`, the
    same bootstrap resamples), so a column equal to ``score`` gives the top-level numbers.

    Returns:
        Column name -> :data:`POOLING_FIELDS`.
    """
    out = {}
    for name in columns:
        frame = predictions[["image_id", "split"]].assign(score=predictions[name])
        report = evaluate_frames(
            frame, manifest, split, source=f"{source} ({name})", n_resamples=n_resamples,
            seed=seed,
        )  # fmt: skip
        out[name] = {key: report[key] for key in POOLING_FIELDS}
    return out
