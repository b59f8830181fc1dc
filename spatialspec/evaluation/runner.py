"""``spatialspec evaluate --checkpoint``: predict val + the split, save scores, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialspec.data.io import atomic_open
from spatialspec.evaluation.predict import datamodule_for, load_checkpoint, predict_splits
from spatialspec.evaluation.report import dataset_info, evaluate_frames
from spatialspec.runinfo import run_metadata, write_json_atomic


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
) -> dict[str, Any]:
    """Score val and ``split`` with a checkpoint, write the predictions CSV and the report.

    The accuracy threshold is chosen on val; the manifest defaults to the run's own.
    """
    method, config = load_checkpoint(checkpoint)
    data = datamodule_for(method, config, None if manifest is None else str(manifest))
    splits = ("val", split) if split != "val" else ("val",)
    preds = predict_splits(method, data, splits, accelerator=accelerator, progress=progress)
    pred_file = predictions_path(out)
    with atomic_open(pred_file, "w", newline="") as fh:
        preds.to_csv(fh, index=False)
    info = dataset_info(data.manifest_path)
    report = evaluate_frames(
        preds, data.frame, split, source=str(checkpoint), n_resamples=n_resamples, seed=seed,
        attributes=info.get("attribute_columns"),
    )  # fmt: skip
    if info.get("dataset"):
        report["dataset"] = info["dataset"]
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
