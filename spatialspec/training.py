"""``spatialspec fit``: config files + command-line overrides -> one Lightning fit in a run folder.

Config layout (YAML; any key can be overridden on the command line as ``--section.key value``)::

    method: seg              # registered method name
    seed: 0
    out_dir: runs/synthetic/seg
    monitor: val/auroc       # model selection metric, computed on val only
    model: {backbone: {...}, lr: ..., pooling: ...}   # the method's constructor arguments
    data: {manifest: ..., image_size: ..., batch_size: ...}
    trainer: {max_epochs: ..., ...}                   # lightning.Trainer arguments

A config file may name another as ``base: other.yaml`` (relative to itself); keys of the
including file win. The run folder receives ``config.yaml`` (the resolved config),
``run.json`` (seed, versions, git commit, best checkpoint and score), ``checkpoints/`` and
``logs/metrics.csv``.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from spatialspec.data.datamodule import SpatialDataModule
from spatialspec.methods import SpatialMethod, get_method
from spatialspec.runinfo import run_metadata, write_json_atomic, write_text_atomic

TRAINER_SKIP = {"callbacks", "logger", "default_root_dir", "plugins", "enable_checkpointing"}
DATA_FROM_METHOD = {"annotation", "channels"}
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
    parser.add_class_arguments(method_cls, "model")
    parser.add_class_arguments(SpatialDataModule, "data", skip=DATA_FROM_METHOD, instantiate=False)
    parser.add_class_arguments(L.Trainer, "trainer", skip=TRAINER_SKIP, instantiate=False)
    return parser


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
    ckpts = out_dir / "checkpoints"
    if ckpts.exists() and any(ckpts.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a run (checkpoints/ is not empty); choose another "
                "--out_dir or pass --overwrite true"
            )
        for f in ckpts.iterdir():
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
        **cfg.data.as_dict(), annotation=model.annotation, channels=model.backbone.in_channels
    )
    return model, data


def build_trainer(
    trainer_kwargs: dict[str, Any],
    out_dir: Path,
    monitor: str = "val/auroc",
    progress_every: int = 10,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer ``fit`` uses: CSV logs, best/last checkpoints in ``out_dir``, a progress bar
    refreshed every ``progress_every`` steps."""
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min" if monitor == "val/loss" else "max",
        save_last=True,
    )
    callbacks: list[L.Callback] = [checkpoint]
    if trainer_kwargs.get("enable_progress_bar", True) is not False:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, progress_every)))
    trainer = L.Trainer(
        **trainer_kwargs,
        default_root_dir=str(out_dir),
        logger=CSVLogger(save_dir=str(out_dir), name="logs", version=""),
        callbacks=callbacks,
    )
    return trainer, checkpoint


def fit(argv: Sequence[str]) -> dict[str, Any]:
    """Run ``spatialspec fit`` with command-line arguments ``argv``; returns ``run.json``."""
    parser, cfg = parse_fit_args(argv)
    return fit_config(cfg, parser)


def fit_config(cfg: Namespace, parser: ArgumentParser) -> dict[str, Any]:
    """Fit from a parsed config; writes the run folder and returns its ``run.json`` content."""
    out_dir = Path(cfg.out_dir)
    _prepare_run_dir(out_dir, cfg.overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = cfg.clone()
    saved.overwrite = False  # re-running a saved config.yaml must not wipe a run silently
    resolved = parser.dump(saved, skip_none=False)
    write_text_atomic(out_dir / "config.yaml", resolved)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, data = build_components(cfg, parser)
    model.run_config = resolved  # saved into checkpoints (see SpatialMethod.on_save_checkpoint)

    trainer, checkpoint = build_trainer(
        cfg.trainer.as_dict(), out_dir, cfg.monitor, cfg.progress_every
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    info = run_metadata(
        method=cfg.method,
        seed=cfg.seed,
        monitor=cfg.monitor,
        best_checkpoint=checkpoint.best_model_path or None,
        best_score=_to_float(checkpoint.best_model_score),
        last_checkpoint=checkpoint.last_model_path or None,
        epochs_run=trainer.current_epoch,
        global_steps=trainer.global_step,
        fit_seconds=round(time.perf_counter() - start, 2),
        mask_budget=getattr(data, "budget_info", None),
        config=yaml.safe_load(resolved),
    )
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "run.json", info)
    return info


def _to_float(value: Any) -> float | None:
    return None if value is None else float(value)
