"""Predictions -> reports (JSON / Markdown), plots."""

from spatialspec.evaluation.predict import load_checkpoint, predict_splits
from spatialspec.evaluation.report import (
    build_report,
    choose_threshold,
    evaluate_predictions,
    read_predictions,
)

__all__ = [
    "build_report",
    "choose_threshold",
    "evaluate_predictions",
    "load_checkpoint",
    "predict_splits",
    "read_predictions",
]
