"""``spatialspec fit``: config files + command-line overrides -> one Lightning fit in a run folder.

Config layout (YAML; any key can be overridden on the command line as ``--section.key value``)::

    method: seg              # registered method name
    seed: 0
    out_dir: runs/synthetic/seg
    monitor: val/auroc       # model selection metric, computed on val only
    loggers: [tensorboard]   # besides the CSV log: tensorboard, mlflow, wandb
    model: {backbone: {...}, lr: ..., pooling: ...}   # the method's constructor arguments
    data: {manifest: ..., image_size: ..., batch_size: ...}
    trainer: {max_epochs: ..., ...}                   # lightning.Trainer arguments

A config file may name another as ``base: other.yaml`` (relative to itself); keys of the
including file win. The run folder receives ``config.yaml`` (the resolved config),
``run.json`` (seed, versions, git commit, best checkpoint and score, the invocations that
trained it, the annotations it consumed: :mod:`spatialspec.annotations`), ``checkpoints/``
(``best.ckpt``, ``last.ckpt``) and ``logs/metrics.csv``.

**Several processes** (``--trainer.devices 2 --trainer.strategy ddp``, or one SLURM task per
GPU): Lightning runs the distribution; the data module deals each rank its share of every
epoch's draw, validation metrics are gathered over the ranks, and only rank 0 writes.

**Resuming** (``--resume auto``): a fit continues from the run folder's newest checkpoint
(weights, optimizer, epoch and step, the data loader's position, random states, the mean
teacher), and refuses a folder whose saved config differs in more than the stopping limits (see
:mod:`spatialspec.fitting.resume`). Under SLURM, the requeue signal saves a checkpoint at the
next batch boundary and requeues the job (:mod:`spatialspec.fitting.requeue`).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger

from spatialspec.annotations import annotations_of
from spatialspec.checkpoints import AtomicCheckpointIO
from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.data.specificity import resolve_specificity
from spatialspec.fitting.loggers import (
    FinalMetrics,
    LoggerSettings,
    build_loggers,
    load_logger_ids,
    log_run_config,
    parse_logger_names,
    save_logger_ids,
)
from spatialspec.fitting.requeue import BatchBoundaryRequeue, Requeued, hpc_checkpoints
from spatialspec.fitting.resume import ResumePoint, check_same_config, find_resume
from spatialspec.fitting.rng import RNGState
from spatialspec.methods import SpatialMethod, get_method
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

__all__ = [
    "Requeued",
    "build_components",
    "build_parser",
    "build_trainer",
    "deep_merge",
    "fit",
    "fit_config",
    "load_config_file",
    "parse_fit_args",
]

#: Trainer arguments fit sets itself (``use_distributed_sampler``: the data module shards).
TRAINER_SKIP = {"callbacks", "logger", "default_root_dir", "plugins", "enable_checkpointing",
                "use_distributed_sampler"}  # fmt: skip
#: Data-module arguments fit sets from the method (annotation, channels, attribute split) and
#: the run (seed). The annotation only sets the default of ``data.specificity`` (bbox: box;
#: seg*: mask), which a user may set for mask-annotated methods (see
#: :mod:`spatialspec.data.specificity`); the attribute split is where ``data.attribute_budget``
#: applies.
DATA_FROM_METHOD = {"annotation", "attribute_split", "channels", "seed"}
Monitor = Literal["val/auroc", "val/robust_auroc", "val/loss"]
MONITORS = get_args(Monitor)


# ---------------------------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------------------------


def load_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML config, resolving ``base:`` includes (deep-merged, including file wins)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"config include cycle: {' -> '.join(map(str, (*_seen, path)))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping, got {type(cfg).__name__}")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    return deep_merge(load_config_file(path.parent / base, (*_seen, path)), cfg)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _split_argv(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Merge every ``--config FILE`` of ``argv`` (in order) and return the remaining args."""
    merged: dict[str, Any] = {}
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            value = next(it, None)
            if value is None:
                raise ValueError("--config needs a file")
            merged = deep_merge(merged, load_config_file(value))
        elif arg.startswith("--config="):
            merged = deep_merge(merged, load_config_file(arg.split("=", 1)[1]))
        else:
            rest.append(arg)
    return merged, rest


def _method_name(config: dict[str, Any], rest: Sequence[str]) -> str:
    name = config.get("method")
    for i, arg in enumerate(rest):
        if arg == "--method" and i + 1 < len(rest):
            name = rest[i + 1]
        elif arg.startswith("--method="):
            name = arg.split("=", 1)[1]
    if not name:
        raise ValueError("no method given: set `method:` in the config or pass --method NAME")
    return name


def build_parser(method_cls: type[SpatialMethod]) -> ArgumentParser:
    """Parser of a fit config for one method class."""
    parser = ArgumentParser(prog="spatialspec fit", description="Train one method.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (repeatable)")
    parser.add_argument("--method", type=str, required=True, help="registered method name")
    parser.add_argument("--seed", type=int, default=0, help="global seed")
    parser.add_argument("--out_dir", type=str, required=True, help="run folder")
    parser.add_argument("--monitor", type=Monitor, default="val/auroc", help="selection metric")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing run")
    parser.add_argument(
        "--progress_every", type=int, default=10,
        help="steps between progress-bar refreshes (refreshing every step costs ~10%% on CPU)",
    )  # fmt: skip
    _add_run_arguments(parser)
    parser.add_class_arguments(method_cls, "model")
    parser.add_class_arguments(SpatialDataModule, "data", skip=DATA_FROM_METHOD, instantiate=False)
    parser.add_class_arguments(L.Trainer, "trainer", skip=TRAINER_SKIP, instantiate=False)
    return parser


def _add_run_arguments(parser: ArgumentParser) -> None:
    """Resuming and experiment-logger options."""
    parser.add_argument(
        "--resume",
        type=str | None,
        default=None,
        help="auto: continue from the run folder's newest checkpoint (start afresh if none); "
        "or a checkpoint path. Only trainer.max_epochs/max_steps/max_time may differ from the "
        "saved config.yaml",
    )
    parser.add_argument(
        "--loggers",
        type=list[str] | str | None,
        default=None,
        help="experiment loggers besides the CSV log: tensorboard, mlflow, wandb "
        "(comma-separated or a list)",
    )
    parser.add_argument(
        "--experiment", type=str, default="spatialspec", help="MLflow experiment / W&B project"
    )
    parser.add_argument(
        "--run_name",
        type=str | None,
        default=None,
        help="run name in MLflow / W&B (default: the run folder's name)",
    )
    parser.add_argument(
        "--tags", type=dict[str, str], default={}, help="run tags, e.g. {method: seg, seed: '1'}"
    )
    parser.add_argument(
        "--mlflow_tracking_uri",
        type=str | None,
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<out_dir>/../mlflow.db)",
    )


def parse_fit_args(argv: Sequence[str]) -> tuple[ArgumentParser, Namespace]:
    """Parse ``spatialspec fit`` arguments (config files first, then overrides)."""
    config, rest = _split_argv(argv)
    try:
        method_cls = get_method(_method_name(config, rest))
    except ValueError:
        if not {"-h", "--help"} & set(rest):
            raise
        method_cls = SpatialMethod  # generic help; `--method NAME --help` lists its options
    parser = build_parser(method_cls)
    args = ["--config", yaml.safe_dump(config)] if config else []
    return parser, parser.parse_args([*args, *rest])


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


def _prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    """A fresh fit's folder: refuse one holding checkpoints unless ``overwrite``, which clears
    them (SLURM's ``hpc_ckpt_*`` too) and the replaced run's logs."""
    ckpts = out_dir / "checkpoints"
    held = [*(ckpts.iterdir() if ckpts.is_dir() else ()), *hpc_checkpoints(out_dir)]
    if held:
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a run ({held[0].name}); continue it with --resume "
                "auto, choose another --out_dir, or pass --overwrite true"
            )
        for f in held:
            f.unlink()
    logs = out_dir / "logs"
    if logs.is_dir() and overwrite:  # the replaced run's metrics and hparams: no stale rows
        shutil.rmtree(logs)


def build_components(
    cfg: Namespace, parser: ArgumentParser
) -> tuple[SpatialMethod, SpatialDataModule]:
    """Instantiate the method and the data module from a parsed config."""
    model = parser.instantiate_classes(cfg).model
    data = SpatialDataModule(
        **cfg.data.as_dict(),
        annotation=model.annotation,
        attribute_split=model.attribute_split,
        channels=model.backbone.in_channels,
        seed=cfg.seed,
    )
    return model, data


def build_trainer(
    trainer_kwargs: dict[str, Any],
    out_dir: Path,
    monitor: str = "val/auroc",
    progress_every: int = 10,
    loggers: Sequence[Logger] | None = None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer ``fit`` uses.

    Best/last checkpoints in ``out_dir/checkpoints`` (saved atomically), the loggers (default:
    the CSV log alone), random states in checkpoints, the SLURM requeue at a batch boundary, the
    final metrics to every logger, a progress bar refreshed every ``progress_every`` steps, and
    the data module's own per-rank samplers (``use_distributed_sampler=False``).
    """
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min" if monitor == "val/loss" else "max",
    )
    # Lightning 2.6 writes save_last's last.ckpt only when a top-k checkpoint was saved at the
    # same step: a fit resumed after epochs without a new best would start from the best
    # epoch. A checkpoint without a monitor is the latest state, rewritten every epoch.
    last = ModelCheckpoint(
        dirpath=out_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
        enable_version_counter=False,
    )  # fmt: skip
    callbacks: list[L.Callback] = [
        checkpoint,
        last,
        RNGState(),
        BatchBoundaryRequeue(out_dir),
        FinalMetrics(checkpoint),
    ]
    if trainer_kwargs.get("enable_progress_bar", True) is not False:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, progress_every)))
    if loggers is None:
        loggers = build_loggers([], LoggerSettings(out_dir=out_dir))
    trainer = L.Trainer(
        **trainer_kwargs,
        default_root_dir=str(out_dir),
        logger=list(loggers),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
    )
    return trainer, checkpoint


def fit(argv: Sequence[str]) -> dict[str, Any]:
    """Run ``spatialspec fit`` with command-line arguments ``argv``; returns ``run.json``.

    Raises:
        Requeued: Under SLURM, the fit checkpointed and requeued its job (the job ends).
    """
    parser, cfg = parse_fit_args(argv)
    return fit_config(cfg, parser)


def fit_config(cfg: Namespace, parser: ArgumentParser) -> dict[str, Any]:
    """Fit from a parsed config; writes the run folder and returns its ``run.json`` content.

    Raises:
        ValueError: Contradictory options, or a resume refused (the config differs).
        CheckpointError: The checkpoint to resume from is unusable.
        FileExistsError: The folder holds a run and neither resume nor overwrite was asked.
        Requeued: Under SLURM, the fit checkpointed and requeued its job.
    """
    out_dir = Path(cfg.out_dir)
    if cfg.resume is not None and cfg.overwrite:
        raise ValueError("--resume continues a run and --overwrite true replaces it: pick one")
    cfg.loggers = parse_logger_names(cfg.loggers)
    cfg.data.specificity = _specificity(cfg)
    resolved = _resolved_config(cfg, parser)
    config = yaml.safe_load(resolved)
    point = find_resume(out_dir, cfg.resume)
    rank_zero = rank_zero_only.rank == 0
    if point is not None:
        check_same_config(out_dir, point, config, _defaults(cfg, parser))
    elif rank_zero:
        _prepare_run_dir(out_dir, cfg.overwrite)
    if rank_zero:
        write_text_atomic(out_dir / "config.yaml", resolved)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, data = build_components(cfg, parser)
    model.run_config = resolved  # saved into checkpoints (see SpatialMethod.on_save_checkpoint)
    settings = _logger_settings(cfg, out_dir, point)
    loggers = build_loggers(cfg.loggers, settings)
    trainer, checkpoint = build_trainer(
        cfg.trainer.as_dict(), out_dir, cfg.monitor, cfg.progress_every, loggers
    )
    if trainer.is_global_zero:
        save_logger_ids(loggers, settings)
        log_run_config(loggers, config, resumed=point is not None)
    start = time.perf_counter()
    ckpt_path = None if point is None else str(point.path)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    info = _run_info(cfg, config, trainer, checkpoint, data, point, time.perf_counter() - start)
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "run.json", info)
        for stale in hpc_checkpoints(out_dir):  # superseded by last.ckpt
            stale.unlink(missing_ok=True)
    return info


def _specificity(cfg: Namespace) -> str | None:
    """The run's ``data.specificity``, resolved against its method (saved in ``config.yaml``
    and ``run.json``): ``mask`` for seg by default, ``box`` for bbox, None for binary."""
    annotation = get_method(cfg.method).annotation
    level = resolve_specificity(annotation, cfg.data.specificity, method=cfg.method)
    return None if level is None else level.name


def _defaults(cfg: Namespace, parser: ArgumentParser) -> dict[str, Any]:
    """What this fit's keys would be if not given: the parser's defaults, with the
    specificity resolved for the method (what a run from before that option trained with)."""
    defaults = parser.get_defaults()
    defaults.method = cfg.method
    defaults.data.specificity = _specificity(defaults)
    return yaml.safe_load(parser.dump(defaults, skip_none=False, skip_check=True)) or {}


def _resolved_config(cfg: Namespace, parser: ArgumentParser) -> str:
    """The config as saved in ``config.yaml``: re-running it must not wipe or resume a run."""
    saved = cfg.clone()
    saved.overwrite = False
    saved.resume = None
    return parser.dump(saved, skip_none=False)


def _logger_settings(cfg: Namespace, out_dir: Path, point: ResumePoint | None) -> LoggerSettings:
    return LoggerSettings(
        out_dir=out_dir,
        experiment=cfg.experiment,
        run_name=cfg.run_name or out_dir.name,
        tags=dict(cfg.tags or {}),
        mlflow_tracking_uri=cfg.mlflow_tracking_uri,
        resume_step=None if point is None else point.logged_step,
        ids=load_logger_ids(out_dir / "logs") if point is not None else {},
    )


def _run_info(
    cfg: Namespace,
    config: dict[str, Any],
    trainer: L.Trainer,
    checkpoint: ModelCheckpoint,
    data: SpatialDataModule,
    point: ResumePoint | None,
    seconds: float,
) -> dict[str, Any]:
    """``run.json``: the fit's outcome, every invocation that trained the run to its end (one
    killed or requeued records nothing; the next one records where it resumed from), and the
    annotations it consumed (:func:`spatialspec.annotations.annotations_of`)."""
    previous = _read_json(Path(cfg.out_dir) / "run.json") if point is not None else {}
    invocations = list(previous.get("invocations", []))
    invocations.append(
        {
            "resumed_from": None if point is None else str(point.path),
            "from_epoch": 0 if point is None else point.epoch,
            "from_step": 0 if point is None else point.global_step,
            "to_epoch": trainer.current_epoch,
            "to_step": trainer.global_step,
            "seconds": round(seconds, 2),
            "world_size": trainer.world_size,
        }
    )
    return run_metadata(
        method=cfg.method,
        seed=cfg.seed,
        monitor=cfg.monitor,
        best_checkpoint=checkpoint.best_model_path or None,
        best_score=_to_float(checkpoint.best_model_score),
        last_checkpoint=_last_checkpoint(trainer),
        epochs_run=trainer.current_epoch,
        global_steps=trainer.global_step,
        fit_seconds=round(sum(i["seconds"] for i in invocations), 2),
        invocations=invocations,
        world_size=trainer.world_size,
        loggers=["csv", *cfg.loggers],
        mask_budget=getattr(data, "budget_info", None),
        specificity=cfg.data.specificity,
        annotations=annotations_of(get_method(cfg.method), data, cfg.monitor),
        config=config,
    )


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the latest-state checkpoint (``last.ckpt``) the fit wrote, if any."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.filename == "last":
            return callback.best_model_path or None
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _to_float(value: Any) -> float | None:
    return None if value is None else float(value)
