"""Sweep settings and where they come from: defaults < a YAML file < the command line.

Every setting of ``spatialspec sweep`` -- the grid, the fit config and overrides, the launcher
and its SLURM resources -- can live in a YAML file (``--config sweep.yaml``), so that a cluster
recipe is a file kept next to the data; flags given on the command line win over the file. ::

    fit_config: ../configs/siim/seg.yaml     # relative to this file, like a fit config's base:
    methods: [binary, seg, seg_ssl]
    budgets: [0, 10%, all]
    seeds: [1, 2, 3]
    specificities: [mask, dilate:4, box]     # optional: data.specificity as a grid axis
    out: results/siim-sweep                  # relative to the working folder, like --out
    launcher: slurm
    set: {trainer.max_epochs: 20, data.manifest: data/siim/manifest.csv}
    costs: {mask: 300, box: 20}               # seconds per annotated image (sweep.costs)
    slurm: {partition: gpu, gpus: 1, cpus: 8, mem_gb: 32, time_min: 240, account: lab,
            qos: normal, array_parallelism: 8, sbatch: {constraint: a100}}

Keys are the fields of :class:`SweepConfig` (and ``slurm:`` those of :class:`SlurmConfig`); an
unknown key is an error naming the key and the file. For compatibility, ``--config`` also
accepts a *fit* config (a file with fit keys such as ``model:``, ``data:``, ``trainer:``), which
is then the sweep's ``fit_config``. ``set:`` (a list of ``KEY=VALUE`` or a mapping) comes
before the command line's ``--set`` pairs, so a pair given on the command line wins; likewise
``costs:`` (a mapping or ``mask=300,box=20``) comes before ``--costs``, kind by kind.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from spatialspec.sweep.costs import parse_costs
from spatialspec.sweep.fitargs import flatten_set

#: Top-level keys that mark a file as a fit config (``spatialspec fit --config``).
FIT_KEYS = frozenset(
    {"base", "method", "seed", "out_dir", "monitor", "model", "data", "trainer", "overwrite",
     "progress_every", "resume", "run_name", "tags"}
)  # fmt: skip


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of each SLURM array task (one task = one run).

    Attributes:
        partition: ``--partition``; None: the cluster's default.
        gpus: GPUs per run (``--gpus-per-node``).
        cpus: CPU cores per run (``--cpus-per-task``; also the run's torch threads).
        mem_gb: Memory per run in GB (``--mem``); None: the cluster's default.
        time_min: Time limit per run in minutes (``--time``); a run that reaches it is requeued
            and resumes from its newest checkpoint, at most ``max_requeues`` times.
        account: ``--account``.
        qos: ``--qos``.
        array_parallelism: At most this many runs at a time (``--array=0-N%P``).
        sbatch: Further sbatch options, e.g. ``{"constraint": "a100", "mail-type": "END"}``.
        setup: Shell lines run before each task (e.g. ``module load cuda``).
        max_requeues: Requeues after time-outs before a run is given up.
        job_name: ``--job-name``.
    """

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    max_requeues: int = 3
    job_name: str = "spatialspec-sweep"


@dataclass(frozen=True)
class SweepConfig:
    """All settings of a sweep (see :func:`~spatialspec.sweep.driver.run_sweep`).

    Attributes:
        fit_config: The fit config (``<method>.yaml`` beside it is used for that method).
        methods: Registered method names (a list or ``"binary,seg"``).
        budgets: Mask budgets (counts, fractions, ``10%``, ``all``).
        seeds: Training (and mask-selection) seeds.
        specificities: Spatial specificity levels of the dense target, a grid axis (None: each
            method's own level).
        out: The sweep folder.
        jobs: Fits at a time with the local launcher.
        launcher: ``local``, ``slurm`` or ``print``.
        set: Fit overrides for every run, ``KEY=VALUE``.
        n_resamples: Bootstrap resamples of each test report.
        loggers: Experiment loggers passed to every fit (e.g. ``["tensorboard", "mlflow"]``).
        mlflow_tracking_uri: MLflow store; default with mlflow: ``sqlite:///<out>/mlflow.db``.
        wait: Whether the slurm launcher waits for its runs (then summarises).
        progress: Progress bar and per-run lines.
        slurm: SLURM resources per run.
        costs: Seconds per annotated image of the kinds given (``label``, ``mask``, ``box``,
            ``attribute``); the others keep :data:`~spatialspec.sweep.costs.DEFAULT_COSTS`.
    """

    fit_config: str | None = None
    methods: str | tuple[str, ...] = "binary,bbox,seg"
    budgets: str | tuple[Any, ...] = "0,10,25,50,100,all"
    seeds: str | tuple[Any, ...] = "1,2,3"
    specificities: str | tuple[Any, ...] | None = None
    out: str | None = None
    jobs: int = 1
    launcher: str = "local"
    set: tuple[str, ...] = ()
    n_resamples: int = 1000
    loggers: tuple[str, ...] | None = None
    mlflow_tracking_uri: str | None = None
    wait: bool = True
    progress: bool = True
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    costs: dict[str, float] = field(default_factory=dict)


SWEEP_KEYS = tuple(f.name for f in fields(SweepConfig))
SLURM_KEYS = tuple(f.name for f in fields(SlurmConfig))
#: Keys that only a sweep config has (``loggers`` / ``mlflow_tracking_uri`` may be either).
_SWEEP_ONLY = frozenset(SWEEP_KEYS) - {"loggers", "mlflow_tracking_uri"}


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def _positive(minimum: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"an integer >= {minimum}")
        try:
            number = int(value)
        except ValueError:
            raise TypeError(f"an integer >= {minimum}") from None
        if number < minimum:
            raise TypeError(f"an integer >= {minimum}")
        return number

    return check


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError("a string")
    return str(value)


def _maybe(check: Any) -> Any:
    return lambda value: None if value is None else check(value)


def _grid(value: Any) -> str | tuple[Any, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return tuple(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value,)
    raise TypeError("a list or a comma-separated string")


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError("a list of names or a comma-separated string")


def _pairs(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        return tuple(flatten_set(value))
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) and "=" in v for v in value):
        return tuple(value)
    raise TypeError("a mapping of fit keys or a list of KEY=VALUE")


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list | tuple) and all(isinstance(v, str) and "=" in v for v in value):
        return dict(v.split("=", 1) for v in value)
    raise TypeError("a mapping or a list of KEY=VALUE")


def _lines(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError("a shell line or a list of them")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("true or false")


def _mem(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise TypeError("a positive number of GB")
    return float(value)


_SWEEP_CHECKS: dict[str, Any] = {
    "fit_config": _maybe(_text), "methods": _grid, "budgets": _grid, "seeds": _grid,
    "specificities": _maybe(_grid),
    "out": _maybe(_text), "jobs": _positive(1), "launcher": _text, "set": _pairs,
    "n_resamples": _positive(1), "loggers": _maybe(_names), "mlflow_tracking_uri": _maybe(_text),
    "wait": _flag, "progress": _flag,
}  # fmt: skip
_SLURM_CHECKS: dict[str, Any] = {
    "partition": _maybe(_text), "gpus": _positive(0), "cpus": _positive(1),
    "mem_gb": _maybe(_mem), "time_min": _positive(1), "account": _maybe(_text),
    "qos": _maybe(_text), "array_parallelism": _maybe(_positive(1)), "sbatch": _mapping,
    "setup": _lines, "max_requeues": _positive(0), "job_name": _text,
}  # fmt: skip


def _checked(checks: dict[str, Any], key: str, value: Any, source: str, prefix: str = "") -> Any:
    try:
        return checks[key](value)
    except TypeError as err:
        raise ValueError(f"{source}: {prefix}{key} must be {err}, got {value!r}") from None


def _unknown(key: str, valid: tuple[str, ...], source: str, prefix: str = "") -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    if not prefix and key in FIT_KEYS:
        hint = " (a fit key: put fit settings under set: or into the fit config)"
    return ValueError(
        f"{source}: unknown key {prefix + key!r}{hint}; valid keys: {', '.join(valid)}"
    )


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def merge(base: SweepConfig, values: Mapping[str, Any], source: str) -> SweepConfig:
    """``base`` with ``values`` (YAML keys; ``slurm`` a mapping) applied and checked.

    ``set`` pairs, ``slurm.sbatch`` options and ``costs`` add to those of ``base``; the rest
    replaces.

    Raises:
        ValueError: An unknown key or a bad value, naming ``source`` and the key.
    """
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SWEEP_KEYS:
            raise _unknown(str(key), SWEEP_KEYS, source)
        if key == "slurm":
            changes["slurm"] = _merge_slurm(base.slurm, value, source)
            continue
        if key == "costs":
            where = "--costs" if source == "command line" else f"{source}: costs"
            changes["costs"] = {**base.costs, **parse_costs(value, where)}
            continue
        checked = _checked(_SWEEP_CHECKS, key, value, source)
        changes[key] = (*base.set, *checked) if key == "set" else checked
    return replace(base, **changes)


def _merge_slurm(base: SlurmConfig, values: Any, source: str) -> SlurmConfig:
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: slurm must be a mapping of {', '.join(SLURM_KEYS)}")
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SLURM_KEYS:
            raise _unknown(str(key), SLURM_KEYS, source, prefix="slurm.")
        checked = _checked(_SLURM_CHECKS, key, value, source, prefix="slurm.")
        changes[key] = {**base.sbatch, **checked} if key == "sbatch" else checked
    return replace(base, **changes)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def config_kind(data: Mapping[str, Any], path: str | Path) -> str:
    """``"sweep"`` or ``"fit"``: what a ``--config`` file is.

    Raises:
        ValueError: Neither (the message lists the keys of both kinds).
    """
    keys = set(data)
    if keys & _SWEEP_ONLY or (keys and keys <= set(SWEEP_KEYS)):
        return "sweep"
    if keys & FIT_KEYS:
        return "fit"
    raise ValueError(
        f"{path}: neither a sweep config (keys: {', '.join(SWEEP_KEYS)}) nor a fit config "
        f"(keys such as {', '.join(sorted(FIT_KEYS))}); found: {', '.join(map(str, keys))}"
    )


def load_config(path: str | Path, base: SweepConfig | None = None) -> SweepConfig:
    """Settings from a ``--config`` file applied over ``base`` (default: the defaults).

    A sweep config's ``fit_config`` is resolved relative to the file's folder; a fit config
    becomes the ``fit_config``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not YAML, not a mapping, an unknown key or a bad value (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: a config must be a non-empty YAML mapping")
    base = base or SweepConfig()
    if config_kind(data, path) == "fit":
        return replace(base, fit_config=str(path))
    config = merge(base, data, str(path))
    if "fit_config" in data and config.fit_config:
        config = replace(config, fit_config=str(path.parent / config.fit_config))
    return config
