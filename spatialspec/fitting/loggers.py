"""Experiment loggers: the CSV log every run keeps, plus TensorBoard, MLflow, Weights & Biases.

``fit --loggers tensorboard,mlflow,wandb`` (config key ``loggers``) adds Lightning's loggers
beside ``logs/metrics.csv`` (which ``run.json`` and sweeps rely on). Each receives the resolved
run config as hyper-parameters, the training and validation curves, and, when the fit ends, the
best checkpoint's score and the last validation metrics (``best/<monitor>``, ``final/<metric>``).

* **TensorBoard** writes into the run folder (``<out_dir>/tensorboard``).
* **MLflow** logs to ``--mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local
  SQLite store beside the run folder (``<out_dir>/../mlflow.db``, artifacts in
  ``<out_dir>/../mlartifacts``), so the runs of one dataset share a store: ``mlflow ui
  --backend-store-uri sqlite:///runs/siim/mlflow.db``. (MLflow 3 keeps the older ``./mlruns``
  file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; pass
  ``--mlflow_tracking_uri file:...`` with that variable set to use it anyway.)
* **W&B** runs offline (files in ``<out_dir>/wandb``; ``wandb sync`` uploads them) unless the
  user configures W&B otherwise (``WANDB_MODE``).

The run name defaults to the run folder's name; ``--tags`` become MLflow run tags and W&B tags
(``key=value``). A resumed fit continues the same MLflow / W&B run (their ids are kept in
``logs/loggers.json``), appends to ``metrics.csv`` after moving the rows logged past the
checkpoint into ``logs/metrics.superseded.csv`` (they belong to the interrupted attempt), and
has TensorBoard hide the events past the checkpoint (``purge_step``).

Adding a logger touches this file only: register a factory with :data:`LOGGERS`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from spatialspec.data.io import atomic_open
from spatialspec.registry import Registry
from spatialspec.runinfo import write_json_atomic

__all__ = [
    "LOGGERS",
    "FinalMetrics",
    "LoggerSettings",
    "build_loggers",
    "log_run_config",
    "parse_logger_names",
    "save_logger_ids",
]

EXTRA = "pip install 'spatialspec[loggers]'"
IDS_FILE = "loggers.json"
SUPERSEDED = "metrics.superseded.csv"


@dataclass
class LoggerSettings:
    """What the loggers of one fit need.

    Attributes:
        out_dir: The run folder.
        experiment: MLflow experiment / W&B project.
        run_name: Run name in MLflow / W&B.
        tags: Run tags.
        mlflow_tracking_uri: MLflow store (None: see the module doc).
        resume_step: The step a resumed fit continues after (None: a fresh fit).
        ids: Logger run ids kept from an earlier attempt of this run (``logs/loggers.json``).
    """

    out_dir: Path
    experiment: str = "spatialspec"
    run_name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    mlflow_tracking_uri: str | None = None
    resume_step: int | None = None
    ids: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        """``<out_dir>/logs``."""
        return self.out_dir / "logs"


#: ``name -> factory(settings) -> Logger``, for the names ``--loggers`` accepts.
LOGGERS: Registry[Callable[[LoggerSettings], Logger]] = Registry("logger")


def parse_logger_names(value: str | Sequence[str] | None) -> list[str]:
    """``"tensorboard,mlflow"`` or a list -> validated names (``csv`` is always on, implicit).

    Raises:
        KeyError: An unknown name (the message lists the valid ones).
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item and item != "csv" and item not in names:
            LOGGERS.get(item)  # KeyError listing the valid names
            names.append(item)
    return names


def _require(module: str, logger: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"the {logger} logger needs the {module!r} package, which is not installed: {EXTRA}"
        )


def build_loggers(names: Sequence[str], settings: LoggerSettings) -> list[Logger]:
    """The CSV logger followed by the named ones.

    Raises:
        ModuleNotFoundError: A named logger's package is missing (the message names the extra).
    """
    return [csv_logger(settings), *(LOGGERS.get(name)(settings) for name in names)]


# ---------------------------------------------------------------------------------------------
# CSV: appends across resumed attempts
# ---------------------------------------------------------------------------------------------


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` (its columns known)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))

    def _check_log_dir_exists(self) -> None:  # nothing is deleted: no warning
        pass


class AppendingCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` that appends to its ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def cut_metrics_log(path: Path, step: int) -> int:
    """Move the rows of ``path`` logged after ``step`` to ``metrics.superseded.csv`` beside it.

    Returns:
        The number of rows moved.
    """
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    keep = [r for r in rows if r.get("step") in ("", None) or int(float(r["step"])) <= step]
    moved = [r for r in rows if r not in keep]
    if not moved:
        return 0
    aside = path.with_name(SUPERSEDED)
    new_file = not aside.is_file()
    with open(aside, "a", newline="") as fh:  # appended: every interrupted attempt is kept
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        writer.writerows(moved)
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(keep)
    return len(moved)


def csv_logger(settings: LoggerSettings) -> CSVLogger:
    """``<out_dir>/logs/metrics.csv`` (+ ``hparams.yaml``), cut at the resumed step."""
    metrics = settings.log_dir / ExperimentWriter.NAME_METRICS_FILE
    if rank_zero_only.rank == 0:
        cut_metrics_log(metrics, settings.resume_step if settings.resume_step is not None else -1)
    return AppendingCSVLogger(save_dir=str(settings.out_dir), name="logs", version="")


# ---------------------------------------------------------------------------------------------
# The optional loggers
# ---------------------------------------------------------------------------------------------


@LOGGERS.register("tensorboard")
def tensorboard_logger(settings: LoggerSettings) -> Logger:
    """TensorBoard event files in ``<out_dir>/tensorboard``."""
    _require("tensorboard", "tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    extra = {} if settings.resume_step is None else {"purge_step": settings.resume_step + 1}
    return TensorBoardLogger(
        save_dir=str(settings.out_dir),
        name="tensorboard",
        version="",
        default_hp_metric=False,
        **extra,
    )


def mlflow_store(settings: LoggerSettings) -> tuple[str, str | None]:
    """``(tracking URI, artifact location)``: the setting, the environment, or local SQLite."""
    uri = settings.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    root = settings.out_dir.resolve().parent
    return f"sqlite:///{root / 'mlflow.db'}", str(root / "mlartifacts")


@LOGGERS.register("mlflow")
def mlflow_logger(settings: LoggerSettings) -> Logger:
    """An MLflow run (continued by a resumed fit)."""
    _require("mlflow", "mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    uri, artifacts = mlflow_store(settings)
    previous = settings.ids.get("mlflow", {})
    run_id = previous.get("run_id") if previous.get("tracking_uri") == uri else None
    return MLFlowLogger(
        experiment_name=settings.experiment,
        run_name=settings.run_name,
        tracking_uri=uri,
        tags={str(k): str(v) for k, v in settings.tags.items()},
        artifact_location=artifacts,
        run_id=run_id,
    )


@LOGGERS.register("wandb")
def wandb_logger(settings: LoggerSettings) -> Logger:
    """A W&B run, offline unless ``WANDB_MODE`` says otherwise (continued by a resumed fit)."""
    _require("wandb", "wandb")
    from lightning.pytorch.loggers import WandbLogger

    run_id = settings.ids.get("wandb", {}).get("id")
    return WandbLogger(
        project=settings.experiment,
        name=settings.run_name,
        save_dir=str(settings.out_dir),
        offline="WANDB_MODE" not in os.environ,
        tags=[f"{k}={v}" for k, v in settings.tags.items()],
        id=run_id,
        resume="allow" if run_id else None,
    )


# ---------------------------------------------------------------------------------------------
# What every logger receives
# ---------------------------------------------------------------------------------------------


def save_logger_ids(loggers: Sequence[Logger], settings: LoggerSettings) -> None:
    """Keep the MLflow / W&B run ids in ``logs/loggers.json`` (rank 0), for resumed fits."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    ids: dict[str, dict[str, Any]] = {}
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            ids["mlflow"] = {
                "run_id": logger.run_id,
                "tracking_uri": logger._tracking_uri,
                "experiment_id": logger.experiment_id,
            }
        elif isinstance(logger, WandbLogger):
            ids["wandb"] = {"id": logger.experiment.id}  # starts the run: its id exists now
    if ids:
        write_json_atomic(settings.log_dir / IDS_FILE, ids)


def load_logger_ids(log_dir: Path) -> dict[str, dict[str, Any]]:
    """The ids :func:`save_logger_ids` kept (``{}`` without them)."""
    try:
        return json.loads((log_dir / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def log_run_config(loggers: Sequence[Logger], config: dict[str, Any], resumed: bool) -> None:
    """Log the resolved run config as every logger's hyper-parameters.

    MLflow parameters cannot change once logged: a resumed MLflow run gets only the keys it does
    not have yet, and a tag ``changed_on_resume/<key>`` (``old -> new``) for each changed value
    (the trainer's stopping limits, the only values a resume may change).
    """
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in loggers:
        if resumed and isinstance(logger, MLFlowLogger):
            _log_new_mlflow_params(logger, config)
        else:
            logger.log_hyperparams(config)


def _log_new_mlflow_params(logger: Any, config: dict[str, Any]) -> None:
    from lightning.fabric.utilities.logger import _flatten_dict

    existing = logger.experiment.get_run(logger.run_id).data.params
    flat = {k: str(v)[:250] for k, v in _flatten_dict(config).items()}
    logger.log_hyperparams({k: v for k, v in flat.items() if k not in existing})
    for key, value in flat.items():
        if key in existing and existing[key] != value:
            logger.experiment.set_tag(
                logger.run_id, f"changed_on_resume/{key}", f"{existing[key]} -> {value}"
            )


class FinalMetrics(L.Callback):
    """At the end of training, log ``best/<monitor>`` and the last ``val/*`` values as
    ``final/*`` to every logger (before Lightning finalizes them).

    Args:
        checkpoint: The ModelCheckpoint whose best score to report.
    """

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics: dict[str, float] = {}
        best = self.checkpoint.best_model_score
        if best is not None:
            metrics[f"best/{self.checkpoint.monitor}"] = float(best)
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/"):
                metrics[f"final/{key}"] = float(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
